#!/usr/bin/env bash
# Installs Synapse from Debian unstable into a debootstrap chroot, for the end-to-end tests and the
# demo. The chroot is cached as a zstd tarball under $CUSTODIAN_CACHE (default
# /var/cache/custodian) and reused across runs on the same machine. Prints the chroot path on
# stdout; progress goes to stderr.
#
# Requires root (debootstrap, chroot). Idempotent and safe to run concurrently: a ready chroot is
# left alone, and a lock serialises builds.
set -euo pipefail

cache=${CUSTODIAN_CACHE:-/var/cache/custodian}
# Bump to force a fresh chroot (for example to pick up a newer Synapse from sid).
rev=1
root=$cache/synapse-root-$rev
tarball=$cache/synapse-root-$rev.tar.zst

if [ "$(id -u)" != 0 ]; then
	echo "testbed-synapse: must run as root (debootstrap and chroot need it)" >&2
	exit 1
fi
mkdir -p "$cache"

ready() { [ -x "$root/usr/bin/python3" ] && [ -f "$root/.custodian-ready" ]; }

# Remove work directories that test runs killed without cleanup left behind (older than 12 h).
prune_stale() {
	if [ -d "$root/tmp" ]; then
		find "$root/tmp" -mindepth 1 -maxdepth 1 -name 'custodian-e2e-*' -mmin +720 \
			-exec rm -rf {} + 2>/dev/null || true
	fi
}

if ready; then
	prune_stale
	echo "$root"
	exit 0
fi

# Only one build at a time; a second caller waits (bounded) and then finds the chroot ready.
exec 9>"$cache/.synapse-root.lock"
if ! flock -w 900 9; then
	echo "testbed-synapse: timed out waiting for another build of $root" >&2
	exit 1
fi
if ready; then
	echo "$root"
	exit 0
fi

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v zstd >/dev/null || need+=(zstd)
if [ ${#need[@]} -gt 0 ]; then
	apt-get update -qq >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

rm -rf "$root"
if [ -f "$tarball" ]; then
	echo "testbed-synapse: restoring $root from $tarball" >&2
	mkdir -p "$root"
	if tar --zstd -xf "$tarball" -C "$root" && ready; then
		echo "$root"
		exit 0
	fi
	echo "testbed-synapse: cached tarball is unusable, rebuilding" >&2
	rm -rf "$root" "$tarball"
fi

mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian

echo "testbed-synapse: building Synapse chroot in $root (about a minute)" >&2
build=$root.build
rm -rf "$build"
debootstrap --variant=minbase sid "$build" "$mirror" >&2
echo 'Acquire::Check-Valid-Until "false";' >"$build/etc/apt/apt.conf.d/99snapshot"
printf '#!/bin/sh\nexit 101\n' >"$build/usr/sbin/policy-rc.d"
chmod +x "$build/usr/sbin/policy-rc.d"
chroot "$build" apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive chroot "$build" apt-get install -y -qq --no-install-recommends matrix-synapse >&2
chroot "$build" apt-get clean >&2
chroot "$build" python3 -c 'import synapse; print(synapse.__version__)' >"$build/.synapse-version"
chmod 1777 "$build/tmp"
touch "$build/.custodian-ready"
# Build under another name and rename, so an interrupted build never looks ready.
mv "$build" "$root"
tar --zstd -cf "$tarball.tmp" -C "$root" . && mv "$tarball.tmp" "$tarball"
echo "testbed-synapse: Synapse $(cat "$root/.synapse-version") ready in $root" >&2
echo "$root"

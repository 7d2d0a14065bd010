#!/usr/bin/env bash
# Prepares this machine for Custodian's whole test suite and demo: installs what is missing
# (PostgreSQL, debootstrap, zstd, make, and InspIRCd and Atheme for the IRC network of the
# end-to-end tests) with at most one apt-get update, then builds or restores the Synapse chroot
# (scripts/testbed-synapse.sh). Prints the chroot's path on stdout; progress goes to
# stderr. With --no-synapse (for benchmarks) it installs only PostgreSQL and prints nothing.
#
# Meant for a Debian 12 machine, run as root. Idempotent, and fast (well under a second) when
# everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

synapse=1
case "${1:-}" in
"") ;;
--no-synapse) synapse= ;;
*)
	echo "usage: $0 [--no-synapse]" >&2
	exit 2
	;;
esac

if [ "$(id -u)" != 0 ]; then
	echo "testbed-setup: must run as root (apt-get, debootstrap and chroot need it)" >&2
	exit 1
fi

need=()
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
command -v make >/dev/null || need+=(make)
command -v runuser >/dev/null || need+=(util-linux)
if [ -n "$synapse" ]; then
	command -v debootstrap >/dev/null || need+=(debootstrap)
	command -v zstd >/dev/null || need+=(zstd)
	command -v flock >/dev/null || need+=(util-linux)
	# scripts/testbed-irc.sh runs these for the IRC bridge's end-to-end tests.
	[ -x /usr/sbin/inspircd ] || need+=(inspircd)
	[ -x /usr/bin/atheme-services ] || need+=(atheme-services)
	# testbed-irc.sh makes the TLS client port's certificate with it (SASL EXTERNAL, ident).
	command -v openssl >/dev/null || need+=(openssl)
fi

if [ ${#need[@]} -gt 0 ]; then
	echo "testbed-setup: installing ${need[*]}" >&2
	# Keep package scripts from starting daemons (postgresql's own cluster, inspircd on port 6667):
	# tests start their own on random ports, and starting services can fail in containers without
	# an init.
	created_policy=
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod +x /usr/sbin/policy-rc.d
		created_policy=1
	fi
	cleanup() { if [ -n "$created_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi; }
	trap cleanup EXIT
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >&2
	# shellcheck disable=SC2046 # word splitting of the de-duplicated list is intended
	apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >&2
	cleanup
	trap - EXIT
fi

if ! id postgres >/dev/null 2>&1; then
	echo "testbed-setup: PostgreSQL is installed but there is no postgres user" >&2
	exit 1
fi

if [ -n "$synapse" ]; then
	scripts/testbed-synapse.sh
fi

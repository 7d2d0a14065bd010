#!/usr/bin/env bash
# Stops the throwaway PostgreSQL cluster that scripts/pg-start.sh started in DIR and deletes its
# files. Safe to call when nothing is running or DIR is already gone.
set -euo pipefail

if [ $# -ne 1 ] || [ -z "$1" ]; then
	echo "usage: $0 DIR" >&2
	exit 2
fi
[ -d "$1" ] || exit 0
dir=$(cd "$1" && pwd)
data=$dir/data

bindir=$(compgen -G '/usr/lib/postgresql/*/bin' | sort -V | tail -n 1 || true)
as_pg=()
if [ "$(id -u)" = 0 ]; then
	as_pg=(runuser -u postgres --)
fi
pg() { "${as_pg[@]}" "$@"; }

if [ -n "$bindir" ] && [ -f "$data/postmaster.pid" ]; then
	if ! pg "$bindir/pg_ctl" stop -D "$data" -m fast -w -t 60 >/dev/null 2>&1; then
		pg "$bindir/pg_ctl" stop -D "$data" -m immediate -w -t 30 >/dev/null 2>&1 || {
			echo "pg-stop: could not stop the cluster in $data" >&2
			exit 1
		}
	fi
fi
# Only delete what pg-start.sh created, in case DIR holds anything else.
rm -rf "$data" "$dir/uri" "$dir/initdb.log" "$dir/postgres.log"
rmdir "$dir" 2>/dev/null || true

#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster in DIR, listening on 127.0.0.1 on a random free port with
# trust authentication, and prints its URI:
#   postgres://postgres@127.0.0.1:PORT/postgres?sslmode=disable
# Stop it (and delete it) with scripts/pg-stop.sh DIR. If a cluster started by this script is
# already running in DIR, its URI is printed again.
#
# Uses Debian's binaries (/usr/lib/postgresql/<newest>/bin). As root the server runs as the
# postgres user, since PostgreSQL refuses to run as root. By default the cluster trades durability
# for speed (fsync off), which suits tests; set PG_DURABLE=1 for benchmarks.
set -euo pipefail

if [ $# -ne 1 ] || [ -z "$1" ]; then
	echo "usage: $0 DIR" >&2
	exit 2
fi
mkdir -p "$1"
dir=$(cd "$1" && pwd)

bindir=$(compgen -G '/usr/lib/postgresql/*/bin' | sort -V | tail -n 1 || true)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
	echo "pg-start: no PostgreSQL server under /usr/lib/postgresql; run scripts/testbed-setup.sh" >&2
	exit 1
fi

as_pg=()
if [ "$(id -u)" = 0 ]; then
	as_pg=(runuser -u postgres --)
	chown postgres: "$dir"
	chmod 0700 "$dir"
	if ! runuser -u postgres -- test -w "$dir"; then
		echo "pg-start: the postgres user cannot reach $dir; use a directory under /tmp" >&2
		exit 1
	fi
fi
pg() { "${as_pg[@]}" "$@"; }

data=$dir/data
if [ -f "$dir/uri" ] && pg "$bindir/pg_ctl" status -D "$data" >/dev/null 2>&1; then
	cat "$dir/uri"
	exit 0
fi

if [ ! -f "$data/PG_VERSION" ]; then
	pg "$bindir/initdb" -D "$data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync \
		>"$dir/initdb.log" 2>&1 || {
		cat "$dir/initdb.log" >&2
		exit 1
	}
fi

settings=(
	-c listen_addresses=127.0.0.1
	-c "unix_socket_directories=$dir"
	-c max_connections=300
)
if [ "${PG_DURABLE:-0}" != 1 ]; then
	settings+=(-c fsync=off -c synchronous_commit=off -c full_page_writes=off)
fi

# Pick a random port nobody answers on; the bind itself is the final check, so retry on a race.
for _ in $(seq 1 20); do
	port=$((20000 + RANDOM % 40000))
	if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
		continue
	fi
	if pg "$bindir/pg_ctl" start -D "$data" -w -t 60 -l "$dir/postgres.log" \
		-o "-p $port ${settings[*]}" >/dev/null; then
		uri="postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
		echo "$uri" >"$dir/uri"
		echo "$uri"
		exit 0
	fi
	if ! grep -q 'could not bind\|Address already in use' "$dir/postgres.log" 2>/dev/null; then
		break
	fi
done
echo "pg-start: PostgreSQL did not start; log follows" >&2
tail -n 30 "$dir/postgres.log" >&2 || true
exit 1

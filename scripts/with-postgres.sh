#!/usr/bin/env bash
# Runs a command with a throwaway PostgreSQL cluster: starts one (scripts/pg-start.sh) in a fresh
# directory under /tmp, exports its URI as POSTGRES_TEST_URI and its data directory (where the
# cluster's files and pg_wal live, for tests that read them) as POSTGRES_TEST_DATADIR, runs the
# command, and stops and deletes the cluster however the command ends. Exits with the command's
# status.
#
#   scripts/with-postgres.sh go test -tags goolm ./...
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -eq 0 ]; then
	echo "usage: $0 COMMAND [ARG...]" >&2
	exit 2
fi

pgdir=$(mktemp -d /tmp/custodian-pg.XXXXXX)
trap 'scripts/pg-stop.sh "$pgdir"' EXIT
# Turn signals into a normal exit so the EXIT trap stops the cluster.
trap 'exit 130' INT
trap 'exit 143' TERM
POSTGRES_TEST_URI=$(scripts/pg-start.sh "$pgdir")
POSTGRES_TEST_DATADIR=$pgdir/data
export POSTGRES_TEST_URI POSTGRES_TEST_DATADIR
echo "with-postgres: POSTGRES_TEST_URI=$POSTGRES_TEST_URI POSTGRES_TEST_DATADIR=$POSTGRES_TEST_DATADIR" >&2
status=0
"$@" || status=$?
exit "$status"

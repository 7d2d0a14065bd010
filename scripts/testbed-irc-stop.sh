#!/usr/bin/env bash
# Stops the IRC network scripts/testbed-irc.sh started in WORKDIR (by the PIDs it recorded) and
# waits up to 10 s for both daemons to exit. Pass --rm to delete WORKDIR afterwards.
set -euo pipefail
workdir=${1:?usage: testbed-irc-stop.sh WORKDIR [--rm]}
# shellcheck source=/dev/null
. "$workdir/env"
for pid in "$IRC_ATHEME_PID" "$IRC_INSPIRCD_PID"; do
	kill "$pid" 2>/dev/null || true
done
for _ in $(seq 50); do
	if ! kill -0 "$IRC_ATHEME_PID" 2>/dev/null && ! kill -0 "$IRC_INSPIRCD_PID" 2>/dev/null; then
		break
	fi
	sleep 0.2
done
for pid in "$IRC_ATHEME_PID" "$IRC_INSPIRCD_PID"; do
	kill -9 "$pid" 2>/dev/null || true
done
if [ "${2:-}" = --rm ]; then
	rm -rf "$workdir"
fi

#!/usr/bin/env bash
# Stops the IRC network scripts/testbed-irc.sh started in WORKDIR (by the PIDs it recorded) and
# waits up to 10 s for both daemons to exit; SIGTERM lets Atheme save its database, so
# `testbed-irc.sh --restart WORKDIR` finds the accounts again. Pass --rm to delete WORKDIR
# afterwards. A recorded PID is signalled only while its command line names WORKDIR, so a PID the
# kernel has since given to another process is left alone.
set -euo pipefail
workdir=${1:?usage: testbed-irc-stop.sh WORKDIR [--rm]}
if [ -f "$workdir/env" ]; then
	# shellcheck source=/dev/null
	. "$workdir/env"
	# Whether PID $1 is one of this network's daemons (and not a zombie, whose command line is
	# empty).
	ours() {
		local cmd
		cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline") && [[ $cmd == *" $IRC_WORKDIR/"* ]]
	}
	for pid in "$IRC_ATHEME_PID" "$IRC_INSPIRCD_PID"; do
		if ours "$pid"; then kill "$pid" 2>/dev/null || true; fi
	done
	for _ in $(seq 50); do
		if ! ours "$IRC_ATHEME_PID" && ! ours "$IRC_INSPIRCD_PID"; then
			break
		fi
		sleep 0.2
	done
	for pid in "$IRC_ATHEME_PID" "$IRC_INSPIRCD_PID"; do
		if ours "$pid"; then
			echo "testbed-irc-stop: PID $pid did not exit on SIGTERM within 10 s; killing it" >&2
			kill -9 "$pid" 2>/dev/null || true
		fi
	done
fi
if [ "${2:-}" = --rm ]; then
	rm -rf "$workdir"
fi

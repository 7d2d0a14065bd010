#!/usr/bin/env bash
# Starts a throwaway IRC network for the IRC bridge's tests: InspIRCd 3 with Atheme services
# linked (SASL PLAIN, NickServ REGISTER without e-mail, IRCv3 caps), on 127.0.0.1 with free
# ports. Installs inspircd and atheme-services with apt if missing (needs root on Debian 12).
#
#   port=$(scripts/testbed-irc.sh [WORKDIR])          # prints the client port once SASL is offered
#   port=$(scripts/testbed-irc.sh --restart WORKDIR)  # the same network again, after a stop
#   scripts/testbed-irc-stop.sh WORKDIR [--rm]        # stops both daemons
#
# WORKDIR defaults to a new directory under /tmp; its path, the ports and the PIDs are written to
# $WORKDIR/env (shell syntax). Everything else goes to stderr. The settings follow the team's
# notes in TESTBED.md: no clone, flood or registration limits, no rDNS, and on the client port
# no ident and no TLS. A second client port (IRC_TLS_PORT) speaks TLS with a self-signed
# certificate for 127.0.0.1 ($WORKDIR/inspircd/tls.crt), asks clients for a certificate
# (SHA-256 fingerprints, which Atheme's NickServ CERT ADD and SASL EXTERNAL use), and asks
# each client's ident server (port 113 of 127.0.0.1) who it is; it is left out if openssl is
# missing.
#
# --restart starts the network of an existing WORKDIR again with its configs, its ports and
# Atheme's database (services.db, which Atheme writes when it stops), so registered accounts
# survive. It first stops that WORKDIR's daemons if they still run.
#
# With IRC_WATCH_PID set, a watchdog stops both daemons once that process is gone, so that a test
# binary killed before its cleanups ran leaves no daemons behind.
set -euo pipefail

log() { echo "testbed-irc: $*" >&2; }

# Starts both daemons from the configs in $workdir, records them in $workdir/env, and exits once
# a client sees sasl in CAP LS (offered only while Atheme is linked), printing the client port.
launch() {
	# Only what this launch logs counts (the logs are appended to).
	local logstart
	logstart=$({ wc -l <"$workdir/inspircd/stdout.log"; } 2>/dev/null || echo 0)
	/usr/sbin/inspircd --config "$workdir/inspircd/inspircd.conf" --nofork --runasroot \
		>>"$workdir/inspircd/stdout.log" 2>&1 </dev/null &
	ircd_pid=$!
	/usr/bin/atheme-services -n -c "$workdir/atheme/atheme.conf" -D "$workdir/atheme" \
		-l "$workdir/atheme/atheme.log" -p "$workdir/atheme/atheme.pid" \
		>>"$workdir/atheme/stdout.log" 2>&1 </dev/null &
	services_pid=$!
	printf '%s\n' "IRC_WORKDIR=$workdir" "IRC_PORT=$client_port" "IRC_LINK_PORT=$link_port" \
		"IRC_TLS_PORT=$tls_port" "IRC_INSPIRCD_PID=$ircd_pid" "IRC_ATHEME_PID=$services_pid" >"$workdir/env"
	if [ -n "${IRC_WATCH_PID:-}" ]; then
		watchdog "$IRC_WATCH_PID" >/dev/null 2>&1 </dev/null &
	fi

	for _ in $(seq 60); do
		if ! kill -0 "$ircd_pid" 2>/dev/null || ! kill -0 "$services_pid" 2>/dev/null; then
			log "a daemon exited; see $workdir/inspircd/ and $workdir/atheme/"
			kill "$ircd_pid" "$services_pid" 2>/dev/null || true
			return 1
		fi
		if tail -n "+$((logstart + 1))" "$workdir/inspircd/stdout.log" 2>/dev/null | grep -q "listeners failed to bind"; then
			# Another process took a port between free_port and the bind.
			log "a port was taken; see $workdir/inspircd/stdout.log"
			kill "$ircd_pid" "$services_pid" 2>/dev/null || true
			wait "$ircd_pid" "$services_pid" 2>/dev/null || true
			return 2
		fi
		if sasl_offered 2>/dev/null; then
			log "ready in $workdir"
			echo "$client_port"
			return 0
		fi
		sleep 0.5
	done
	log "sasl not offered after 30 s; see $workdir/inspircd/ircd.log and $workdir/atheme/atheme.log"
	kill "$ircd_pid" "$services_pid" 2>/dev/null || true
	return 1
}

# Whether a client on the client port sees sasl in CAP LS from our server (irc.test), not from
# whatever else may have taken the port.
sasl_offered() {
	local line
	exec 3<>"/dev/tcp/127.0.0.1/$client_port" || return 1
	printf 'CAP LS 302\r\n' >&3
	while IFS= read -r -t 3 line <&3; do
		case $line in
		":irc.test CAP "*" LS "*sasl*) exec 3<&-; return 0 ;;
		*" CAP "*" LS :"*) break ;; # the last CAP LS line, without sasl
		esac
	done
	exec 3<&-
	return 1
}

# Whether process $1 runs: exists and is no zombie (the daemons outlive this script, and an init
# that is slow to reap leaves them as zombies).
alive() {
	local state
	{ read -r _ _ state _ </proc/"$1"/stat; } 2>/dev/null && [ "$state" != Z ]
}

# Runs in the background while either daemon runs, and stops both (SIGTERM, so that Atheme saves
# its database) if process $1 is gone first.
watchdog() {
	while alive "$ircd_pid" || alive "$services_pid"; do
		if ! alive "$1"; then
			kill "$services_pid" "$ircd_pid" 2>/dev/null || true
			return
		fi
		sleep 1
	done
}

restart=
if [ "${1:-}" = --restart ]; then
	restart=1
	if [ -z "${2:-}" ]; then
		echo "usage: $0 [WORKDIR] | $0 --restart WORKDIR" >&2
		exit 2
	fi
fi

if ! [ -x /usr/sbin/inspircd ] || ! [ -x /usr/bin/atheme-services ]; then
	log "installing inspircd and atheme-services"
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y --no-install-recommends inspircd atheme-services >&2 ||
		{ apt-get update >&2 && apt-get install -y --no-install-recommends inspircd atheme-services >&2; }
fi

if [ -n "$restart" ]; then
	workdir=$(cd "$2" && pwd)
	for f in env inspircd/inspircd.conf atheme/atheme.conf; do
		if ! [ -f "$workdir/$f" ]; then
			log "$workdir has no $f: not a testbed-irc.sh work directory"
			exit 1
		fi
	done
	"$(dirname "$0")/testbed-irc-stop.sh" "$workdir"
	# shellcheck source=/dev/null
	. "$workdir/env"
	client_port=$IRC_PORT
	link_port=$IRC_LINK_PORT
	tls_port=${IRC_TLS_PORT:-}
	rc=0
	launch || rc=$?
	exit "$rc"
fi

workdir=${1:-$(mktemp -d /tmp/custodian-irc.XXXXXX)}
mkdir -p "$workdir/inspircd" "$workdir/atheme"
workdir=$(cd "$workdir" && pwd)

# A port nobody listens on. Another process may take it before the daemon binds it; the
# readiness check in launch then fails and says so.
free_port() {
	local p
	for _ in $(seq 100); do
		p=$((20000 + RANDOM % 40000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return
		fi
	done
	log "no free port found"
	exit 1
}
# configure picks free ports and writes both daemons' configs into $workdir.
configure() {
client_port=$(free_port)
link_port=$(free_port)
while [ "$link_port" = "$client_port" ]; do link_port=$(free_port); done
tls_port=
if command -v openssl >/dev/null; then
	tls_port=$(free_port)
	while [ "$tls_port" = "$client_port" ] || [ "$tls_port" = "$link_port" ]; do tls_port=$(free_port); done
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=irc.test \
		-addext subjectAltName=IP:127.0.0.1 -keyout "$workdir/inspircd/tls.key" -out "$workdir/inspircd/tls.crt" 2>/dev/null
fi
linkpass=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')

: >"$workdir/inspircd/motd.txt"
cat >"$workdir/inspircd/inspircd.conf" <<EOF
<config format="xml">
<server name="irc.test" description="Custodian test network" network="TestNet" id="0IR">
<admin name="test" nick="test" email="admin@example.com">
<path configdir="$workdir/inspircd" datadir="$workdir/inspircd" logdir="$workdir/inspircd" moduledir="/usr/lib/inspircd/modules">
<pid file="$workdir/inspircd/inspircd.pid">
<files motd="$workdir/inspircd/motd.txt">
<log method="file" type="* -USERINPUT -USEROUTPUT" level="default" target="$workdir/inspircd/ircd.log">

<bind address="127.0.0.1" port="$client_port" type="clients">
<bind address="127.0.0.1" port="$link_port" type="servers">
<dns server="127.0.0.1" timeout="1">

EOF
if [ -n "$tls_port" ]; then
	cat >>"$workdir/inspircd/inspircd.conf" <<EOF
<module name="ssl_gnutls">
<module name="sslinfo">
<module name="ident">
<ident timeout="3">
<sslprofile name="clients" provider="gnutls" certfile="$workdir/inspircd/tls.crt" keyfile="$workdir/inspircd/tls.key"
            dhfile="" cafile="" crlfile="" hash="sha256" requestclientcert="yes" mindhbits="1024">
<bind address="127.0.0.1" port="$tls_port" type="clients" sslprofile="clients">
# Clients of the TLS port are asked who they are (ident); those of the plain port are not.
<connect name="tls" allow="*" port="$tls_port" maxchans="1000" timeout="60" pingfreq="5m"
         hardsendq="64M" softsendq="16M" recvq="16M"
         threshold="1000000" commandrate="100000000" fakelag="yes"
         localmax="100000" globalmax="100000" maxconnwarn="no" limit="100000"
         resolvehostnames="no" useident="yes" usests="no">
EOF
fi
cat >>"$workdir/inspircd/inspircd.conf" <<EOF
<connect name="main" allow="*" maxchans="1000" timeout="60" pingfreq="5m"
         hardsendq="64M" softsendq="16M" recvq="16M"
         threshold="1000000" commandrate="100000000" fakelag="yes"
         localmax="100000" globalmax="100000" maxconnwarn="no" limit="100000"
         resolvehostnames="no" useident="no" usests="no">
<cidr ipv4clone="32" ipv6clone="128">
<channels users="1000" opers="1000">
<performance netbuffersize="65534" somaxconn="4096" softlimit="19968"
             clonesonconnect="no" timeskipwarn="0" quietbursts="yes">
<options syntaxhints="no" announcets="yes" allowmismatch="no" defaultbind="auto"
         hostintopic="yes" pingwarning="15" serverpingfreq="1m" splitwhois="no"
         defaultmodes="not" allowzerolimit="no" modesinlist="no">
<security announceinvites="dynamic" hideulines="no" flatlinks="no" hidebans="no"
          hidekills="" hideulinekills="yes" hidesplits="no" maxtargets="20"
          customversion="" restrictbannedusers="yes" genericoper="no" userstats="Pu">
<limits maxaway="200" maxchan="64" maxhost="64" maxident="10" maxkick="300"
        maxmodes="20" maxnick="30" maxquit="300" maxreal="130" maxtopic="330">
<whowas groupsize="10" maxgroups="10000" maxkeep="1h">

EOF
# Modules: the services link and what Atheme needs (deaf is required: Atheme's clients are
# +d), then the IRCv3 capabilities the bridge uses.
for m in spanningtree services_account cap sasl chghost cban svshold servprotect hidechans deaf alias \
	ircv3 ircv3_accounttag ircv3_batch ircv3_capnotify ircv3_chghost ircv3_ctctags ircv3_echomessage \
	ircv3_invitenotify ircv3_labeledresponse ircv3_msgid ircv3_servertime monitor namesx uhnames setname botmode \
	chanhistory permchannels; do
	echo "<module name=\"$m\">"
done >>"$workdir/inspircd/inspircd.conf"
cat >>"$workdir/inspircd/inspircd.conf" <<EOF

<sasl target="services.int" requiressl="no">
<monitor maxentries="1000">
<link name="services.int" ipaddr="127.0.0.1" port="$link_port" allowmask="127.0.0.1/32" timeout="30"
      sendpass="$linkpass" recvpass="$linkpass" hidden="no">
<uline server="services.int" silent="yes">
<chanhistory maxlines="100" prefixmsg="no" bots="yes">
# #persist outlives restarts and replays its last 100 lines (of the past day) to whoever joins,
# so a test can check what reached the channel while no test client was in it.
<permchannels channel="#persist" modes="ntPH 100:1d" topic="Custodian test channel">
EOF
for svc in NickServ ChanServ SaslServ; do
	echo "<badnick nick=\"$svc\" reason=\"Reserved for services\">"
done >>"$workdir/inspircd/inspircd.conf"
for alias in NICKSERV:NickServ NS:NickServ CHANSERV:ChanServ CS:ChanServ; do
	echo "<alias text=\"${alias%%:*}\" replace=\"PRIVMSG ${alias##*:} :\$2-\" requires=\"${alias##*:}\" uline=\"yes\">"
done >>"$workdir/inspircd/inspircd.conf"

{
	echo 'loadmodule "modules/protocol/inspircd";'
	echo 'loadmodule "modules/backend/opensex";'
	echo 'loadmodule "modules/crypto/posix";'
	for m in nickserv/main nickserv/register nickserv/identify nickserv/logout nickserv/info nickserv/help \
		nickserv/drop nickserv/ghost nickserv/group nickserv/status nickserv/set_core nickserv/set_password \
		nickserv/set_email nickserv/set_accountname chanserv/main chanserv/register chanserv/drop chanserv/info \
		chanserv/help chanserv/flags chanserv/op chanserv/voice saslserv/main saslserv/plain \
		saslserv/external nickserv/cert; do
		echo "loadmodule \"modules/$m\";"
	done
	cat <<EOF
serverinfo {
	name = "services.int"; desc = "Atheme IRC Services"; numeric = "00A"; recontime = 1;
	netname = "TestNet"; hidehostsuffix = "users.testnet";
	adminname = "test"; adminemail = "admin@example.com"; registeremail = "noreply@example.com";
	loglevel = { error; info; admin; network; register; };
	maxlogins = 1000; maxusers = 0; mdlimit = 30; emaillimit = 10; emailtime = 300;
	auth = none; casemapping = rfc1459;
};
uplink "irc.test" { host = "127.0.0.1"; port = $link_port; send_password = "$linkpass"; receive_password = "$linkpass"; };
nickserv { nick = "NickServ"; user = "NickServ"; host = "services.int"; real = "Nickname Services"; maxnicks = 5; expire = 0; };
chanserv {
	nick = "ChanServ"; user = "ChanServ"; host = "services.int"; real = "Channel Services";
	maxchans = 1000; trigger = "!"; expire = 0; maxchanacs = 0; maxfounders = 4;
	templates { vop = "+AV"; hop = "+AHehitrv"; aop = "+AOehiortv"; sop = "+AOaefhiorstv"; founder = "+AFORaefhiorstv"; };
};
saslserv { nick = "SaslServ"; user = "SaslServ"; host = "services.int"; real = "SASL Authentication Agent"; };
logfile "$workdir/atheme/account.log" { register; set; };
/* No flood detection and no ratelimit_* keys: the REGISTER throttle is off. */
general { flood_msgs = 0; flood_time = 10; kline_time = 7; clone_time = 0; commit_interval = 1;
	uplink_sendq_limit = 104857600; language = "en"; exempts { }; immune_level = immune; };
operclass "user" { };
EOF
} >"$workdir/atheme/atheme.conf"
chmod 600 "$workdir/inspircd/inspircd.conf" "$workdir/atheme/atheme.conf"
}

for attempt in 1 2 3 4 5; do
	configure
	rc=0
	launch || rc=$?
	case $rc in
	0) exit 0 ;;
	2) log "retrying with other ports (attempt $attempt)" ;;
	*) exit 1 ;;
	esac
done
exit 1

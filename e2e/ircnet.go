//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ergochat/irc-go/ircmsg"
)

// Deadlines of the IRC network's scripts and of the IRC client's own waits.
const (
	// ircStartTimeout covers testbed-irc.sh installing inspircd and atheme-services with apt.
	ircStartTimeout = 5 * time.Minute
	ircStopTimeout  = time.Minute
	// ircWait bounds each step of connecting, joining, WHOIS and NAMES.
	ircWait = 15 * time.Second
)

// IRCNetworkID is the network ID under which [WithIRCBridge] configures the test network
// (bridges.irc.networks.testnet): the <id> of ghosts' user IDs and portal aliases.
const IRCNetworkID = "testnet"

// IRCNet is a throwaway IRC network on 127.0.0.1: InspIRCd with Atheme services linked, as
// scripts/testbed-irc.sh starts it. Clients may log in with SASL PLAIN to accounts that
// [IRCNet.RegisterAccount] creates. Create it with [StartIRC]; it is stopped and its work
// directory removed when the test ends. Its methods must be called from the test's goroutine.
type IRCNet struct {
	dir  string
	port int
	// mediaPort is the port of the IRC bridge's media listener, chosen by StartIRC.
	mediaPort int
}

// MediaURL is the public URL of the IRC bridge's media listener that [WithIRCBridge] configures
// (media_proxy): links to Matrix media that IRC users get start with it.
func (n *IRCNet) MediaURL() string { return "http://127.0.0.1:" + strconv.Itoa(n.mediaPort) }

// StartIRC starts an IRC network for t with scripts/testbed-irc.sh (which installs inspircd and
// atheme-services with apt if they are missing) and returns once it offers SASL. When t ends, the
// network is stopped and its work directory removed (kept for a failed test with
// CUSTODIAN_E2E_KEEP=1); if t failed, the tails of the daemons' logs are printed first. Should
// the test binary die without running its cleanups, a watchdog of the script stops the daemons.
func StartIRC(t testing.TB) *IRCNet {
	t.Helper()
	n := &IRCNet{dir: workDir(t, "custodian-e2e-irc-")}
	t.Cleanup(func() { n.teardown(t) })
	n.port = n.start(t, n.dir)
	n.mediaPort = FreePort(t)
	return n
}

// Addr is the network's client address, 127.0.0.1:<port>. It stays the same across
// [IRCNet.Restart].
func (n *IRCNet) Addr() string { return "127.0.0.1:" + strconv.Itoa(n.port) }

// Port is the network's client port on 127.0.0.1.
func (n *IRCNet) Port() int { return n.port }

// TLSAddr is the network's TLS client address, 127.0.0.1:<port>, where clients may present a
// certificate (SASL EXTERNAL after NickServ CERT ADD of its SHA-256 fingerprint) and where the
// server asks port 113 of 127.0.0.1 who each client is (ident). The test fails if the network
// has no TLS port (scripts/testbed-irc.sh found no openssl).
func (n *IRCNet) TLSAddr(t testing.TB) string {
	t.Helper()
	env, err := os.ReadFile(filepath.Join(n.dir, "env"))
	if err != nil {
		t.Fatalf("reading the IRC network's env: %v", err)
	}
	for _, line := range strings.Split(string(env), "\n") {
		if port, ok := strings.CutPrefix(line, "IRC_TLS_PORT="); ok && port != "" {
			return "127.0.0.1:" + port
		}
	}
	t.Fatal("the IRC network has no TLS port (is openssl installed?)")
	return ""
}

// TLSCAFile is the PEM file of the TLS port's self-signed certificate, to trust it.
func (n *IRCNet) TLSCAFile() string { return filepath.Join(n.dir, "inspircd", "tls.crt") }

// Dir is the network's work directory: the configs, the daemons' logs (inspircd/ircd.log,
// atheme/atheme.log) and Atheme's database.
func (n *IRCNet) Dir() string { return n.dir }

// Stop stops both daemons (Atheme saves its database). Connected clients are disconnected. The
// network can be started again with [IRCNet.Start].
func (n *IRCNet) Stop(t testing.TB) {
	t.Helper()
	runIRCScript(t, ircStopTimeout, "testbed-irc-stop.sh", n.dir)
}

// Start starts the network again after [IRCNet.Stop], on the same port and with the same
// configs and Atheme database, so accounts registered before still exist; it returns once SASL
// is offered again. If the network still runs, it is stopped first.
func (n *IRCNet) Start(t testing.TB) {
	t.Helper()
	if port := n.start(t, "--restart", n.dir); port != n.port {
		t.Fatalf("the IRC network came back on port %d, want %d", port, n.port)
	}
}

// Restart stops the network and starts it again: [IRCNet.Stop], then [IRCNet.Start].
func (n *IRCNet) Restart(t testing.TB) {
	t.Helper()
	n.Stop(t)
	n.Start(t)
}

// RegisterAccount registers a NickServ account with the given name and password: a throwaway
// client with nick account sends NickServ REGISTER and waits for the confirmation. SASL PLAIN
// then works for the account. account must be a valid nick that no client uses.
func (n *IRCNet) RegisterAccount(t testing.TB, account, password string) {
	t.Helper()
	if strings.ContainsAny(password, " \r\n") {
		t.Fatalf("RegisterAccount(%q): the password must not contain spaces or line breaks", account)
	}
	c := n.Connect(t, account)
	from := c.mark()
	c.Privmsg(t, "NickServ", "REGISTER "+password+" "+account+"@example.com")
	line := c.waitFrom(t, from, ircWait, "NickServ's answer to REGISTER", func(m *ircmsg.Message) bool {
		if m.Command != "NOTICE" || !ircEqualFold(m.Nick(), "NickServ") || len(m.Params) < 2 {
			return false
		}
		text := m.Params[len(m.Params)-1]
		// Skip NickServ's other notices, such as the one about a registered nick on connect.
		return strings.Contains(text, "is now registered") || strings.Contains(text, "already registered") ||
			strings.HasPrefix(text, "Invalid") || strings.HasPrefix(text, "Insufficient") ||
			strings.HasPrefix(text, "You cannot") || strings.HasPrefix(text, "You must")
	})
	if text := line.msg.Params[len(line.msg.Params)-1]; !strings.Contains(text, "is now registered") {
		t.Fatalf("RegisterAccount(%q): NickServ answered %q", account, text)
	}
	c.Quit(t)
}

// TrySASL tries a SASL PLAIN login to account with password on a throwaway connection, which it
// then closes without completing registration. It reports true on 903 (success) and false on
// 904 (wrong account or password), and fails the test on any other outcome.
func (n *IRCNet) TrySASL(t testing.TB, account, password string) bool {
	t.Helper()
	c := n.dial(t, "sasl"+randomHex(t, 4), ircOptions{})
	c.negotiate(t, []string{"sasl"})
	res := c.authenticate(t, account, password)
	c.Quit(t)
	switch res.msg.Command {
	case rplSASLSuccess:
		return true
	case errSASLFail:
		return false
	}
	t.Fatalf("TrySASL(%q): the server answered %s", account, res.raw)
	return false
}

// start runs testbed-irc.sh with args and returns the port it printed.
func (n *IRCNet) start(t testing.TB, args ...string) int {
	t.Helper()
	out := runIRCScript(t, ircStartTimeout, "testbed-irc.sh", args...)
	port, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("testbed-irc.sh printed %q, not a port", out)
	}
	return port
}

// teardown stops the daemons, after printing their logs' tails if t failed. workDir's cleanup,
// registered before, removes the directory afterwards.
func (n *IRCNet) teardown(t testing.TB) {
	if t.Failed() {
		logTail(t, "InspIRCd", filepath.Join(n.dir, "inspircd", "ircd.log"))
		logTail(t, "Atheme", filepath.Join(n.dir, "atheme", "atheme.log"))
	}
	if _, err := os.Stat(filepath.Join(n.dir, "env")); err != nil {
		return // testbed-irc.sh failed before it started anything
	}
	out, err := runCommand(t, ircStopTimeout, n.dir, ircScript(t, "testbed-irc-stop.sh"), n.dir)
	if err != nil {
		t.Errorf("stopping the IRC network: %v\n%s", err, out)
	}
}

// runIRCScript runs one of the IRC network's scripts and returns its stdout; it fails the test,
// with the script's stderr, if the script fails. IRC_WATCH_PID lets testbed-irc.sh's watchdog
// stop the daemons if this process dies.
func runIRCScript(t testing.TB, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, ircScript(t, name), args...)
	cmd.Env = append(os.Environ(), "IRC_WATCH_PID="+strconv.Itoa(os.Getpid()))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("did not finish within %v: %w", timeout, err)
	}
	if err != nil {
		t.Fatalf("scripts/%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.Bytes())
	}
	return stdout.String()
}

func ircScript(t testing.TB, name string) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatalf("finding scripts/%s: %v", name, err)
	}
	return filepath.Join(root, "scripts", name)
}

// WithIRCBridge enables the IRC bridge (bridges.irc) with one network, [IRCNetworkID], on
// ircNet: no TLS, SASL PLAIN for account linking, puppets named {localpart}[m], short reconnect
// delays and generous rate limits. The test keeps ircNet to restart it or to connect IRC
// clients.
func WithIRCBridge(ircNet *IRCNet) Option {
	return WithConfig(func(cfg map[string]any) {
		SetPath(cfg, "bridges.irc", map[string]any{
			"idle_timeout": "10m",
			"message_ttl":  "168h",
			"reconnect":    map[string]any{"initial": "200ms", "max": "2s"},
			"connect_rate": map[string]any{"per_second": 100, "burst": 100},
			"media_proxy": map[string]any{
				"listen":     "127.0.0.1:" + strconv.Itoa(ircNet.mediaPort),
				"public_url": ircNet.MediaURL(),
			},
			"networks": map[string]any{
				IRCNetworkID: map[string]any{
					"name":            "TestNet",
					"address":         ircNet.Addr(),
					"tls":             false,
					"sasl_mechanisms": []any{"PLAIN"},
					"nick_template":   "{localpart}[m]",
					"bot_nick":        "custodianbot",
					"max_puppets":     100,
					"line_rate":       map[string]any{"per_second": 100, "burst": 100},
				},
			},
		})
	})
}

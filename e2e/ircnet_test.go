//go:build e2e

package e2e_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ergochat/irc-go/ircmsg"

	"github.com/custodian-matrix/custodian/e2e"
)

// TestIRCNet checks the IRC network harness on its own, without Synapse or Custodian: accounts,
// SASL logins, WHOIS, channels and messages with IRCv3 tags.
func TestIRCNet(t *testing.T) {
	t.Parallel()
	irc := e2e.StartIRC(t)
	if !strings.HasPrefix(irc.Addr(), "127.0.0.1:") {
		t.Fatalf("Addr() = %q, want 127.0.0.1:<port>", irc.Addr())
	}
	irc.RegisterAccount(t, "alice", "alice-secret")

	t.Run("TrySASL", func(t *testing.T) {
		tests := []struct {
			name              string
			account, password string
			want              bool
		}{
			{"right password", "alice", "alice-secret", true},
			{"wrong password", "alice", "wrong", false},
			{"no such account", "nobody", "alice-secret", false},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				if got := irc.TrySASL(t, tt.account, tt.password); got != tt.want {
					t.Errorf("TrySASL(%q, %q) = %v, want %v", tt.account, tt.password, got, tt.want)
				}
			})
		}
	})

	alice := irc.Connect(t, "alice", e2e.WithSASL("alice", "alice-secret"))
	bob := irc.Connect(t, "bob")

	t.Run("Whois", func(t *testing.T) {
		if got := bob.WhoisAccount(t, "alice"); got != "alice" {
			t.Errorf("WhoisAccount(alice) = %q, want %q", got, "alice")
		}
		if got := alice.WhoisAccount(t, "bob"); got != "" {
			t.Errorf("WhoisAccount(bob) = %q, want \"\" (not logged in)", got)
		}
		if w := alice.Whois(t, "nobody"); w.Online || w.Account != "" {
			t.Errorf("Whois(nobody) = %+v, want offline", w)
		}
		if w := alice.Whois(t, "bob"); !w.Online || w.User != "e2e" {
			t.Errorf("Whois(bob) = %+v, want online with user e2e", w)
		}
	})

	t.Run("Channel", func(t *testing.T) {
		const channel = "#e2e"
		alice.Join(t, channel)
		bob.Join(t, channel)
		alice.WaitFor(t, 10*time.Second, e2e.IsIRCMessage("JOIN", "bob", channel))
		names := alice.Names(t, channel)
		slices.Sort(names)
		if want := []string{"alice", "bob"}; !slices.Equal(names, want) {
			t.Errorf("Names(%s) = %q, want %q", channel, names, want)
		}

		sent := time.Now()
		alice.Privmsg(t, channel, "hello bob")
		msg := bob.WaitFor(t, 10*time.Second, e2e.IsIRCMessage("PRIVMSG", "alice", channel, "hello bob"))
		checkServerTime(t, msg, sent)
		if _, account := msg.GetTag("account"); account != "alice" {
			t.Errorf("account tag of alice's message = %q, want %q", account, "alice")
		}

		bob.Notice(t, channel, "a notice")
		checkServerTime(t, alice.WaitFor(t, 10*time.Second, e2e.IsIRCMessage("NOTICE", "bob", channel, "a notice")), sent)
		bob.Action(t, channel, "waves")
		alice.WaitFor(t, 10*time.Second, e2e.IsIRCMessage("PRIVMSG", "bob", channel, "\x01ACTION waves\x01"))
		// Without echo-message a client does not get its own messages back; bob's answers came
		// after alice's message, so an echo would have arrived by now.
		for _, line := range alice.Lines() {
			if strings.Contains(line, "PRIVMSG "+channel+" :hello bob") {
				t.Errorf("alice received her own message without echo-message: %s", line)
			}
		}
	})

	t.Run("EchoMessage", func(t *testing.T) {
		const channel = "#echo"
		carol := irc.Connect(t, "carol", e2e.WithCaps("echo-message"))
		carol.Join(t, channel)
		bob.Join(t, channel)
		carol.Privmsg(t, channel, "echo me")
		carol.WaitFor(t, 10*time.Second, e2e.IsIRCMessage("PRIVMSG", "carol", channel, "echo me"))
		bob.WaitFor(t, 10*time.Second, e2e.IsIRCMessage("PRIVMSG", "carol", channel, "echo me"))
		carol.Quit(t)
		bob.WaitFor(t, 10*time.Second, e2e.IsIRCMessage("QUIT", "carol"))
	})
}

// TestIRCNetRestart checks that a restarted network keeps its port and its accounts, and that
// clients of the old one see their connection end.
func TestIRCNetRestart(t *testing.T) {
	t.Parallel()
	irc := e2e.StartIRC(t)
	irc.RegisterAccount(t, "dave", "dave-secret")
	addr := irc.Addr()
	dave := irc.Connect(t, "dave", e2e.WithSASL("dave", "dave-secret"))

	irc.Restart(t)
	if irc.Addr() != addr {
		t.Fatalf("Addr() after Restart = %q, want %q", irc.Addr(), addr)
	}
	dave.WaitFor(t, 10*time.Second, func(m *ircmsg.Message) bool { return m.Command == "ERROR" })

	if !irc.TrySASL(t, "dave", "dave-secret") {
		t.Fatalf("TrySASL(dave) after Restart = false, want true: the account did not survive")
	}
	irc.Connect(t, "dave", e2e.WithSASL("dave", "dave-secret"))
	eve := irc.Connect(t, "eve")
	eve.WaitWhois(t, 10*time.Second, "dave", func(w e2e.IRCWhois) bool { return w.Account == "dave" })
}

// checkServerTime checks that msg carries a server-time tag between sent (less a second, for the
// tag's millisecond precision and clock reading order) and now.
func checkServerTime(t *testing.T, msg *ircmsg.Message, sent time.Time) {
	t.Helper()
	present, value := msg.GetTag("time")
	if !present {
		t.Errorf("message %v has no server-time tag", msg)
		return
	}
	at, err := time.Parse(time.RFC3339Nano, value)
	if err != nil {
		t.Errorf("server-time tag %q: %v", value, err)
		return
	}
	if at.Before(sent.Add(-time.Second)) || at.After(time.Now().Add(time.Second)) {
		t.Errorf("server-time %s is not between %s and now", at.Format(time.RFC3339Nano), sent.Format(time.RFC3339Nano))
	}
}

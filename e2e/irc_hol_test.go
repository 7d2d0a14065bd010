//go:build e2e

package e2e_test

import (
	"slices"
	"strings"
	"testing"

	"maunium.net/go/mautrix/event"

	"github.com/custodian-matrix/custodian/e2e"
)

// TestIRCNoHeadOfLineBlocking: a message waits only for its own sender's IRC connection. carol
// speaks for the first time (her puppet must register, which takes InspIRCd about a second)
// and alice, whose puppet is connected, answers right after her: alice's answer reaches the
// channel before carol's first message, and carol's messages arrive in order.
func TestIRCNoHeadOfLineBlocking(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		ircNet, env := startIRCEnv(t, backend)
		alice := env.Register(t, "alice")
		carol := env.Register(t, "carol")
		bob := ircNet.Connect(t, "bob")
		bob.Join(t, ircChannel)
		roomID := mustJoinPortal(t, env, alice, ircChannel)
		mustJoinPortal(t, env, carol, ircChannel)
		env.MustSyncUntil(t, alice, ircWait, e2e.IsMember(roomID, carol.UserID, event.MembershipJoin))

		env.SendText(t, alice, roomID, "alice warms up")
		bob.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "alice[m]", ircChannel, "alice warms up"))

		env.SendText(t, carol, roomID, "carol first")
		env.SendText(t, alice, roomID, "alice after carol")
		env.SendText(t, carol, roomID, "carol second")
		bob.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "carol[m]", ircChannel, "carol second"))
		bob.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "alice[m]", ircChannel, "alice after carol"))
		bob.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "carol[m]", ircChannel, "carol first"))

		lines := bob.Lines()
		at := func(text string) int {
			return slices.IndexFunc(lines, func(l string) bool {
				return strings.Contains(l, " PRIVMSG "+ircChannel+" :"+text)
			})
		}
		for _, text := range []string{"alice after carol", "carol first", "carol second"} {
			if at(text) < 0 {
				t.Fatalf("bob's lines hold no PRIVMSG %q: %q", text, lines)
			}
		}
		if at("alice after carol") > at("carol first") {
			t.Errorf("alice's message waited for carol's registration: bob got %q", lines)
		}
		if at("carol first") > at("carol second") {
			t.Errorf("carol's messages arrived out of order: bob got %q", lines)
		}
	})
}

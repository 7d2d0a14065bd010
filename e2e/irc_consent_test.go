//go:build e2e

package e2e_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/ergochat/irc-go/ircmsg"
	"maunium.net/go/mautrix/event"

	"github.com/custodian-matrix/custodian/e2e"
)

// botNickE2E is the bridge's nick on the test network (see e2e.WithIRCBridge).
const botNickE2E = "custodianbot"

// isConsentRequest matches the bridge's request to an operator to agree to linking channel.
func isConsentRequest(op, channel string) func(*ircmsg.Message) bool {
	return func(m *ircmsg.Message) bool {
		return e2e.IsIRCMessage("PRIVMSG", botNickE2E, op)(m) && len(m.Params) > 1 &&
			strings.Contains(m.Params[1], channel) && strings.Contains(m.Params[1], "yes")
	}
}

// TestIRCKeyedChannelLink: linking a room to a channel with a key (+k) makes the bridge's
// connection and a puppet join it with the key and relay both ways; the command, which carries
// the key, is redacted by the bot at once, and the key is stored only sealed.
func TestIRCKeyedChannelLink(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		const channel, key = "#keyed", "k3y-for-e2e"
		ircNet, env := startIRCEnv(t, backend)
		alice, carol := env.Register(t, "alice"), env.Register(t, "carol")
		dan := ircNet.Connect(t, "dan")
		mustJoinAsOp(t, dan, channel)
		dan.Send(t, "MODE "+channel+" +k "+key)
		dan.WaitFor(t, ircWait, e2e.IsIRCMessage("MODE", "dan", channel, "+k"))
		danGhost := ircGhost(t, "dan")

		roomID := mustCreateGroupRoom(t, env, alice, carol)
		link := env.SendText(t, alice, roomID, "!irc link testnet "+channel+" "+key)
		env.MustSyncUntil(t, alice, replyWait, func(evt *event.Event) bool {
			return evt.Type == event.EventRedaction && evt.Redacts == link && evt.Sender == env.BotUserID()
		})
		mustBotReply(t, env, alice, roomID, link, "I asked")
		dan.WaitFor(t, ircWait, isConsentRequest("dan", channel))
		dan.Privmsg(t, botNickE2E, "yes")
		dan.WaitFor(t, ircWait, e2e.IsIRCMessage("JOIN", botNickE2E, channel))
		mustReadBotDM(t, env, alice, roomID, "agreed")

		env.SendText(t, alice, roomID, "hello keyed channel")
		dan.WaitFor(t, ircWait, e2e.IsIRCMessage("JOIN", "alice[m]", channel))
		dan.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "alice[m]", channel, "hello keyed channel"))
		dan.Privmsg(t, channel, "hello from the keyed channel")
		env.MustSyncUntil(t, alice, ircWait, isMessage(roomID, danGhost, event.MsgText, "hello from the keyed channel"))

		var sealed []byte
		if err := env.DB(t).QueryRow(`SELECT channel_key FROM irc_channel_key`).Scan(&sealed); err != nil {
			t.Fatalf("reading the stored channel key: %v", err)
		}
		if len(sealed) == 0 || bytes.Contains(sealed, []byte(key)) {
			t.Errorf("irc_channel_key holds %d bytes containing the plaintext key, want it sealed", len(sealed))
		}
	})
}

// TestIRCLinkConsent: "!irc link" asks an operator of the channel on IRC; "no" refuses the link
// (the linker is told, the bridge does not join), "yes" to a second request links the room.
func TestIRCLinkConsent(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		const channel = "#consent"
		ircNet, env := startIRCEnv(t, backend)
		alice, carol := env.Register(t, "alice"), env.Register(t, "carol")
		dan := ircNet.Connect(t, "dan")
		mustJoinAsOp(t, dan, channel)
		danGhost := ircGhost(t, "dan")
		roomID := mustCreateGroupRoom(t, env, alice, carol)

		refused := env.SendText(t, alice, roomID, "!irc link testnet "+channel)
		mustBotReply(t, env, alice, roomID, refused, "I asked")
		ask := dan.WaitFor(t, ircWait, isConsentRequest("dan", channel))
		if !strings.Contains(ask.Params[1], alice.UserID.String()) || !strings.Contains(ask.Params[1], roomID.String()) {
			t.Errorf("the consent request says %q, want the linker and the room", ask.Params[1])
		}
		dan.Privmsg(t, botNickE2E, "no")
		dan.WaitFor(t, ircWait, e2e.IsIRCMessage("NOTICE", botNickE2E, "dan"))
		mustReadBotDM(t, env, alice, roomID, "refused to bridge")
		if n := ircRows(t, env, "irc_portal", alice.UserID); n != 0 {
			t.Fatalf("after the operator said no, irc_portal has %d rows linked by alice", n)
		}

		agreed := env.SendText(t, alice, roomID, "!irc link testnet "+channel)
		mustBotReply(t, env, alice, roomID, agreed, "I asked")
		dan.WaitFor(t, ircWait, isConsentRequest("dan", channel))
		dan.Privmsg(t, botNickE2E, "yes")
		dan.WaitFor(t, ircWait, e2e.IsIRCMessage("JOIN", botNickE2E, channel))
		mustReadBotDM(t, env, alice, roomID, "agreed")
		dan.Privmsg(t, channel, "consented")
		env.MustSyncUntil(t, alice, ircWait, isMessage(roomID, danGhost, event.MsgText, "consented"))
		if n := ircRows(t, env, "irc_portal", alice.UserID); n != 1 {
			t.Errorf("after the operator said yes, irc_portal has %d rows linked by alice, want 1", n)
		}
	})
}

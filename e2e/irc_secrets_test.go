//go:build e2e

package e2e_test

import (
	"strings"
	"testing"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/e2e"
)

// isRedactionOf matches a redaction of eventID in roomID.
func isRedactionOf(roomID id.RoomID, eventID id.EventID) func(*event.Event) bool {
	return func(evt *event.Event) bool {
		if evt.RoomID != roomID || evt.Type != event.EventRedaction {
			return false
		}
		return evt.Redacts == eventID || evt.Content.AsRedaction().Redacts == eventID
	}
}

// TestIRCSecretsNotRelayed: in a portal room, `!irc login` sent as a reply (under its
// fallback), as an edit of an innocuous message, and with leading white space never reaches IRC;
// the bot redacts each on Matrix. A reply to one of those withheld messages arrives on IRC
// without a quote of it. A control message sent last does arrive, so the IRC client had the
// chance to receive everything before it.
func TestIRCSecretsNotRelayed(t *testing.T) {
	const channel = "#secrets"
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		ircNet := e2e.StartIRC(t)
		env := e2e.New(t, backend, e2e.WithIRCBridge(ircNet))
		alice := env.Register(t, "alice")
		bob := ircNet.Connect(t, "bob")
		bob.Join(t, channel)
		roomID := mustJoinPortal(t, env, alice, channel)

		innocuous := env.SendText(t, alice, roomID, "an innocuous message")
		bob.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "alice[m]", channel, "an innocuous message"))

		login := func(password string) string {
			return "!irc login " + e2e.IRCNetworkID + " aliceacct " + password
		}
		passwords := []string{"pw-as-reply-7f3a", "pw-as-edit-9c1b", "pw-with-space-4d2e"}

		reply := &event.MessageEventContent{
			MsgType: event.MsgText,
			Body:    "> <" + alice.UserID.String() + "> an innocuous message\n\n" + login(passwords[0]),
			Format:  event.FormatHTML,
			FormattedBody: "<mx-reply><blockquote>an innocuous message</blockquote></mx-reply>" +
				login(passwords[0]),
			RelatesTo: &event.RelatesTo{InReplyTo: &event.InReplyTo{EventID: innocuous}},
		}
		asReply := sendContent(t, alice, roomID, reply)

		edit := &event.MessageEventContent{MsgType: event.MsgText, Body: login(passwords[1])}
		edit.SetEdit(innocuous)
		asEdit := sendContent(t, alice, roomID, edit)

		withSpace := env.SendText(t, alice, roomID, "  \u00a0"+login(passwords[2]))

		// A reply to a withheld message: its text is not quoted.
		answer := &event.MessageEventContent{MsgType: event.MsgText, Body: "answer to the withheld one"}
		answer.RelatesTo = &event.RelatesTo{InReplyTo: &event.InReplyTo{EventID: withSpace}}
		sendContent(t, alice, roomID, answer)
		bob.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "alice[m]", channel, "answer to the withheld one"))

		env.SendText(t, alice, roomID, "control after the secrets")
		bob.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "alice[m]", channel, "control after the secrets"))

		for _, line := range bob.Lines() {
			for _, pw := range passwords {
				if strings.Contains(line, pw) {
					t.Errorf("the IRC client received a password: %q", line)
				}
			}
			// A reply's quote is `nick: "quote" <- answer` (messages.reply_format).
			if strings.Contains(line, `" <- `) && !strings.Contains(line, `"an innocuous message" <- `) {
				t.Errorf("the IRC client received a quote of a withheld message: %q", line)
			}
		}
		for _, evtID := range []id.EventID{asReply, asEdit, withSpace} {
			env.MustSyncUntil(t, alice, ircWait, isRedactionOf(roomID, evtID))
		}
	})
}

//go:build e2e

package e2e_test

import (
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"

	"github.com/custodian-matrix/custodian/e2e"
)

// TestBotCommands: an allowed user invites the bot, it joins and records its setup, and answers
// !help, !ping and !setup with notices.
func TestBotCommands(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		env := e2e.New(t, backend)
		bot := env.BotUserID()
		alice := env.Register(t, "alice")
		roomID := env.MustCreateRoomWithBot(t, alice)

		// The setup is recorded when the bot joins.
		e2e.Eventually(t, 30*time.Second, func() error {
			var inviter sql.NullString
			err := env.DB(t).QueryRow(
				`SELECT inviter_mxid FROM as_bot_setup WHERE room_id=$1 AND bot=$2`,
				roomID.String(), "custodian",
			).Scan(&inviter)
			switch {
			case errors.Is(err, sql.ErrNoRows):
				return fmt.Errorf("no as_bot_setup row for %s", roomID)
			case err != nil:
				return err
			case inviter.String != alice.UserID.String():
				return fmt.Errorf("as_bot_setup.inviter_mxid = %q, want %q", inviter.String, alice.UserID)
			}
			return nil
		})

		help := env.SendText(t, alice, roomID, "!help")
		reply := env.MustSyncUntil(t, alice, 30*time.Second, e2e.After(help, e2e.IsNoticeFrom(roomID, bot)))
		msg := reply.Content.AsMessage()
		if msg.Format != event.FormatHTML || msg.FormattedBody == "" {
			t.Errorf("!help reply has format %q and %d bytes of formatted_body, want %q and HTML",
				msg.Format, len(msg.FormattedBody), event.FormatHTML)
		}
		for _, command := range []string{"help", "ping", "setup"} {
			if !strings.Contains(msg.Body, command) {
				t.Errorf("!help reply does not list %q:\n%s", command, msg.Body)
			}
		}

		ping := env.SendText(t, alice, roomID, "!ping")
		pong := env.MustSyncUntil(t, alice, 30*time.Second, e2e.IsReplyTo(roomID, bot, ping))
		if got := pong.Content.AsMessage().MsgType; got != event.MsgNotice {
			t.Errorf("!ping reply has msgtype %q, want %q", got, event.MsgNotice)
		}

		setup := env.SendText(t, alice, roomID, "!setup")
		answer := env.MustSyncUntil(t, alice, 30*time.Second, e2e.After(setup, e2e.IsNoticeFrom(roomID, bot)))
		if body := answer.Content.AsMessage().Body; !strings.Contains(body, alice.UserID.String()) {
			t.Errorf("!setup reply does not name the inviter %s:\n%s", alice.UserID, body)
		}
	})
}

//go:build e2e

package e2e_test

import (
	"database/sql"
	"fmt"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/e2e"
)

// botSetupID is the value of as_bot_setup.bot for the Custodian bot: the bot's Matrix ID.
const botSetupID = "@custodian:localhost"

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
			return checkBotSetup(t, env, roomID.String(), botSetupID, alice.UserID.String())
		})

		// The bot may greet the room when it joins, and the greeting may land after !help, so
		// take the first notice after !help that answers it.
		help := env.SendText(t, alice, roomID, "!help")
		mustWaitForNotice(t, env, alice, roomID, help, func(msg *event.MessageEventContent) error {
			var missing []string
			for _, command := range []string{"help", "ping", "setup"} {
				if !strings.Contains(msg.Body, command) {
					missing = append(missing, command)
				}
			}
			switch {
			case len(missing) > 0:
				return fmt.Errorf("does not list %v", missing)
			case msg.Format != event.FormatHTML || msg.FormattedBody == "":
				return fmt.Errorf("has format %q and %d bytes of formatted_body, want %q and HTML",
					msg.Format, len(msg.FormattedBody), event.FormatHTML)
			}
			return nil
		})

		ping := env.SendText(t, alice, roomID, "!ping")
		pong := env.MustSyncUntil(t, alice, 30*time.Second, e2e.IsReplyTo(roomID, bot, ping))
		if got := pong.Content.AsMessage().MsgType; got != event.MsgNotice {
			t.Errorf("!ping reply has msgtype %q, want %q", got, event.MsgNotice)
		}

		setup := env.SendText(t, alice, roomID, "!setup")
		mustWaitForNotice(t, env, alice, roomID, setup, func(msg *event.MessageEventContent) error {
			if !strings.Contains(msg.Body, alice.UserID.String()) {
				return fmt.Errorf("does not name the inviter %s", alice.UserID)
			}
			return nil
		})
	})
}

// checkBotSetup checks that as_bot_setup has the row (roomID, bot) with the given inviter, and
// says which rows the room has if not.
func checkBotSetup(t *testing.T, env *e2e.Env, roomID, bot, inviter string) error {
	t.Helper()
	rows, err := env.DB(t).Query(`SELECT bot, inviter_mxid FROM as_bot_setup WHERE room_id=$1`, roomID)
	if err != nil {
		return err
	}
	defer rows.Close()
	var found []string
	for rows.Next() {
		var gotBot string
		var gotInviter sql.NullString
		if err := rows.Scan(&gotBot, &gotInviter); err != nil {
			return err
		}
		if gotBot == bot && gotInviter.String == inviter {
			return nil
		}
		found = append(found, fmt.Sprintf("(bot=%q, inviter_mxid=%q)", gotBot, gotInviter.String))
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return fmt.Errorf("as_bot_setup has no row (room_id=%s, bot=%q, inviter_mxid=%q); the room's rows: %v",
		roomID, bot, inviter, found)
}

// mustWaitForNotice waits up to 30 s for a notice from the bot in roomID, after the event after,
// that check accepts, and returns it. On a timeout it fails the test listing the bot's notices
// that check rejected, with the reasons.
func mustWaitForNotice(t *testing.T, env *e2e.Env, cli *mautrix.Client, roomID id.RoomID, after id.EventID, check func(*event.MessageEventContent) error) *event.Event {
	t.Helper()
	var rejected []string
	evt, err := env.SyncUntil(cli, 30*time.Second, e2e.After(after, func(evt *event.Event) bool {
		if !e2e.IsNoticeFrom(roomID, env.BotUserID())(evt) {
			return false
		}
		msg := evt.Content.AsMessage()
		if err := check(msg); err != nil {
			rejected = append(rejected, fmt.Sprintf("%s %v:\n%s", evt.ID, err, msg.Body))
			return false
		}
		return true
	}))
	if err != nil {
		t.Fatalf("no acceptable notice from the bot after %s; %d rejected:\n%s\n%v",
			after, len(rejected), strings.Join(rejected, "\n"), err)
	}
	return evt
}

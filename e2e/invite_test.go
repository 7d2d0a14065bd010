//go:build e2e

package e2e_test

import (
	"testing"
	"time"

	"maunium.net/go/mautrix/event"

	"github.com/custodian-matrix/custodian/e2e"
)

// TestInvitePolicy: with bot.invite_policy.allowed_users set, the bot rejects an invite from
// anyone else, with a reason, and records no setup; a listed user's invite is still accepted.
func TestInvitePolicy(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		env := e2e.New(t, backend,
			e2e.WithConfigValue("bot.invite_policy.allowed_users", []string{"@alice:localhost"}))
		bot := env.BotUserID()
		alice := env.Register(t, "alice")
		bob := env.Register(t, "bob")

		bobRoom := env.MustCreateRoom(t, bob, bot)
		leave := env.MustSyncUntil(t, bob, 30*time.Second, e2e.IsMember(bobRoom, bot, event.MembershipLeave))
		if leave.Sender != bot {
			t.Errorf("the bot's leave in %s was sent by %s, want the bot rejecting the invite", bobRoom, leave.Sender)
		}
		if reason := leave.Content.AsMember().Reason; reason == "" {
			t.Errorf("the bot rejected bob's invite without a reason")
		}

		// An allowed invite still works, which also shows the policy was loaded, not just broken.
		aliceRoom := env.MustCreateRoomWithBot(t, alice)

		var n int
		if err := env.DB(t).QueryRow(`SELECT COUNT(*) FROM as_bot_setup WHERE room_id=$1`, bobRoom.String()).Scan(&n); err != nil {
			t.Fatalf("counting as_bot_setup rows: %v", err)
		}
		if n != 0 {
			t.Errorf("as_bot_setup has %d rows for the rejected room %s, want 0", n, bobRoom)
		}
		e2e.Eventually(t, 30*time.Second, func() error {
			return checkBotSetup(t, env, aliceRoom.String(), botSetupID, alice.UserID.String())
		})
	})
}

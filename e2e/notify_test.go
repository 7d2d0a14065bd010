//go:build e2e

package e2e_test

import (
	"context"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"

	"github.com/custodian-matrix/custodian/e2e"
)

// TestNoticeReopensManagementRoom: the bot sends alice her first webhook's URL in a private
// room it opens (her management room) and the next one there too; once she left that room, the
// next URL arrives in a new private room of her and the bot.
func TestNoticeReopensManagementRoom(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		env, alice, roomID := startWebhookGroupRoom(t, backend)
		bot := env.BotUserID()

		first := mustAddInbound(t, env, alice, roomID, "ci")
		if first.DMRoomID == roomID {
			t.Fatal("the URL went to the group room")
		}
		second := mustAddInbound(t, env, alice, roomID, "deploy")
		if second.DMRoomID != first.DMRoomID {
			t.Fatalf("the second URL went to %s, want the management room %s", second.DMRoomID, first.DMRoomID)
		}

		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := alice.LeaveRoom(ctx, first.DMRoomID, &mautrix.ReqLeave{}); err != nil {
			t.Fatal(err)
		}
		env.MustSyncUntil(t, alice, replyWait, e2e.IsMember(first.DMRoomID, alice.UserID, event.MembershipLeave))

		third := mustAddInbound(t, env, alice, roomID, "release")
		if third.DMRoomID == first.DMRoomID || third.DMRoomID == roomID {
			t.Fatalf("after alice left her management room the URL went to %s (old %s, group %s), want a new room",
				third.DMRoomID, first.DMRoomID, roomID)
		}
		members, err := alice.JoinedMembers(ctx, third.DMRoomID)
		if err != nil {
			t.Fatal(err)
		}
		_, aliceIn := members.Joined[alice.UserID]
		_, botIn := members.Joined[bot]
		if len(members.Joined) != 2 || !aliceIn || !botIn {
			t.Errorf("the new room's members = %v, want alice and the bot", members.Joined)
		}
	})
}

package appservice

import (
	"context"
	"strings"
	"testing"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
)

// pvGhost is a ghost of the "hooks" test bridge (say, a user of a bridged network).
const pvGhost = id.UserID("@hooks_remote:example.org")

// privacyCommands gives the privacy test bridges a room configuration command, "<id> configure",
// which records who ran it.
func (pb *privacyBridge) Commands() []*Command {
	return []*Command{{Name: "configure", RoomConfig: true, Scope: ScopeRoom, Handler: func(ctx context.Context, ce *CommandEvent) error {
		pb.lock.Lock()
		pb.configured = append(pb.configured, ce.Sender)
		pb.lock.Unlock()
		return ce.Reply(ctx, "Configured")
	}}}
}

// KeepsRoom keeps the rooms in keeps (RoomKeeper).
func (pb *privacyBridge) KeepsRoom(_ context.Context, roomID id.RoomID) (bool, error) {
	pb.lock.Lock()
	defer pb.lock.Unlock()
	return pb.keeps[roomID], nil
}

// PurgeRoom records the rooms whose configuration the core asked the bridge to purge.
func (pb *privacyBridge) PurgeRoom(_ context.Context, roomID id.RoomID) error {
	pb.lock.Lock()
	defer pb.lock.Unlock()
	pb.purgedRooms = append(pb.purgedRooms, roomID)
	return nil
}

func (pb *privacyBridge) purgedRoom(roomID id.RoomID) bool {
	pb.lock.Lock()
	defer pb.lock.Unlock()
	for _, r := range pb.purgedRooms {
		if r == roomID {
			return true
		}
	}
	return false
}

func (pb *privacyBridge) configuredBy() []id.UserID {
	pb.lock.Lock()
	defer pb.lock.Unlock()
	return append([]id.UserID(nil), pb.configured...)
}

// join makes user a joined member of roomID, on the homeserver and in the event stream.
func (env *privacyEnv) join(roomID id.RoomID, user id.UserID) {
	env.t.Helper()
	env.hs.SetMembership(roomID, user, event.MembershipJoin)
	env.member(roomID, user, user, event.MembershipJoin, nil)
}

// checkRoomUntouched fails unless the bot is still joined to roomID with its setup, and no bridge
// was asked to purge the room.
func (env *privacyEnv) checkRoomUntouched(roomID id.RoomID) {
	env.t.Helper()
	if got := env.hs.Membership(roomID, pvBot); got != event.MembershipJoin {
		env.t.Errorf("bot membership in shared room %s = %q, want join", roomID, got)
	}
	if n := env.count(`SELECT COUNT(*) FROM as_bot_setup WHERE room_id=$1`, roomID); n != 1 {
		env.t.Errorf("%d setup rows for shared room %s, want 1", n, roomID)
	}
	if env.hooks.purgedRoom(roomID) || env.other.purgedRoom(roomID) {
		env.t.Errorf("shared room %s was purged", roomID)
	}
}

func TestForgetLeavesSharedRoomsAlone(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			t.Run("ghost in the room", func(t *testing.T) {
				env := newPrivacyEnv(t, dialect, nil).start()
				env.setUpRoom(pvDM, true, pvAlice)
				// Alice, a bridge's ghost and the bot: a bridged room, not her direct chat, even
				// though she invited the bot "as a DM".
				env.join(pvRoom, pvGhost)
				env.setUpRoom(pvRoom, true, pvAlice)

				env.text(pvDM, pvAlice, "forget")
				env.text(pvDM, pvAlice, "forget confirm")
				if exists, _ := env.svc.db.User.Exists(env.ctx, pvAlice); exists {
					t.Fatal("alice was not erased")
				}
				env.checkRoomUntouched(pvRoom)
				if got := env.hs.Membership(pvDM, pvBot); got != event.MembershipLeave {
					t.Errorf("bot membership in alice's direct chat = %q, want leave", got)
				}
				if !env.hooks.purgedRoom(pvDM) {
					t.Error("alice's direct chat was not purged")
				}
			})
			t.Run("cache scrubbed by an earlier erasure", func(t *testing.T) {
				env := newPrivacyEnv(t, dialect, nil).start()
				env.setUpRoom(pvRoom, false, pvAlice, pvBob)
				// Alice's data is erased while she is still in the room: her cached membership
				// goes, so the cache alone would show bob alone with the bot.
				if _, err := env.svc.engine.Erase(env.ctx, pvAlice, EraseRequest{Trigger: TriggerAdmin}); err != nil {
					t.Fatal(err)
				}
				env.checkRoomUntouched(pvRoom)
				if _, err := env.svc.engine.Erase(env.ctx, pvBob, EraseRequest{Trigger: TriggerAdmin}); err != nil {
					t.Fatal(err)
				}
				env.checkRoomUntouched(pvRoom)
			})
			t.Run("user already left", func(t *testing.T) {
				env := newPrivacyEnv(t, dialect, nil).start()
				env.setUpRoom(pvDM, true, pvAlice)
				env.setUpRoom(pvRoom, false, pvAlice, pvBob)
				// Alice's leave of the direct chat is not yet handled by the bot when she is
				// erased: the bot is alone there and leaves; the room with bob stays.
				env.hs.SetMembership(pvDM, pvAlice, event.MembershipLeave)
				if _, err := env.svc.engine.Erase(env.ctx, pvAlice, EraseRequest{Trigger: TriggerAdmin}); err != nil {
					t.Fatal(err)
				}
				if got := env.hs.Membership(pvDM, pvBot); got != event.MembershipLeave {
					t.Errorf("bot membership in the direct chat alice left = %q, want leave", got)
				}
				env.checkRoomUntouched(pvRoom)
			})
		})
	}
}

func TestDirectChatIsDecidedByMembers(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newPrivacyEnv(t, dialect, nil).start()
			// Alice invites the bot "as a direct chat" into a room of four.
			env.setUpRoom(pvRoom, true, pvAlice, pvBob, pvCarol)
			if got := env.lastNotice(pvRoom); !strings.Contains(got, "`!help`") {
				t.Errorf("welcome in a group room = %q, want it to name the prefixed help", got)
			}
			before := len(env.notices(pvRoom))
			env.text(pvRoom, pvBob, "mydata")
			env.text(pvRoom, pvBob, "pause")
			if got := len(env.notices(pvRoom)); got != before {
				t.Errorf("the bot answered %d prefix-less commands in a group room, want none", got-before)
			}
			if paused, err := env.svc.db.User.IsPaused(env.ctx, pvBob); err != nil || paused {
				t.Errorf("bob paused = %v (%v) after a prefix-less pause in a group room, want false", paused, err)
			}

			// A real direct chat still takes commands without the prefix, also when the state
			// cache lost her membership (as an erasure's scrub leaves it).
			env.setUpRoom(pvDM, true, pvAlice)
			if got := env.lastNotice(pvDM); !strings.Contains(got, "`help`") || strings.Contains(got, "`!help`") {
				t.Errorf("welcome in a direct chat = %q, want it to name help without prefix", got)
			}
			env.exec(`DELETE FROM mx_user_profile WHERE room_id=$1 AND user_id=$2`, pvDM, pvAlice)
			env.exec(`UPDATE mx_room_state SET members_fetched=false WHERE room_id=$1`, pvDM)
			env.text(pvDM, pvAlice, "pause")
			if paused, err := env.svc.db.User.IsPaused(env.ctx, pvAlice); err != nil || !paused {
				t.Errorf("alice paused = %v (%v) after pause in her direct chat, want true", paused, err)
			}

			// Once someone else joins, it is no longer a direct chat, even if the bot missed
			// the join.
			env.hs.SetMembership(pvDM, pvBob, event.MembershipJoin)
			before = len(env.notices(pvDM))
			env.text(pvDM, pvAlice, "resume")
			if got := len(env.notices(pvDM)); got != before {
				t.Errorf("the bot answered a prefix-less command in a room of three, want no answer")
			}
			if paused, _ := env.svc.db.User.IsPaused(env.ctx, pvAlice); !paused {
				t.Error("alice was resumed by a prefix-less command in a room of three")
			}
		})
	}
}

func TestPowerLevelsAfterBotReturns(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newPrivacyEnv(t, dialect, nil).start()
			env.setUpRoom(pvRoom, false, pvAlice, pvBob)
			levels := func(bob int) map[string]any {
				return map[string]any{
					"users":         map[string]any{pvAlice.String(): 100, pvBob.String(): bob},
					"state_default": 50, "redact": 50,
				}
			}
			env.hs.SetState(pvRoom, event.StatePowerLevels, "", pvAlice, levels(50))
			stateKey := ""
			env.deliver(pvRoom, event.StatePowerLevels, pvAlice, &stateKey, levels(50), nil)
			env.text(pvRoom, pvBob, "!hooks configure")
			if got := env.hooks.configuredBy(); len(got) != 1 || got[0] != pvBob {
				t.Fatalf("configure runs = %v, want one by bob while he is a moderator", got)
			}

			// Alice kicks the bot and demotes bob; the bot hears nothing of the demotion.
			env.hs.SetMembership(pvRoom, pvBot, event.MembershipLeave)
			env.member(pvRoom, pvAlice, pvBot, event.MembershipLeave, nil)
			env.hs.SetState(pvRoom, event.StatePowerLevels, "", pvAlice, levels(0))
			env.hs.SetMembership(pvRoom, pvBot, event.MembershipInvite)
			env.member(pvRoom, pvAlice, pvBot, event.MembershipInvite, nil)
			if got := env.hs.Membership(pvRoom, pvBot); got != event.MembershipJoin {
				t.Fatalf("bot membership after the new invite = %q, want join", got)
			}

			env.text(pvRoom, pvBob, "!hooks configure")
			if got := env.hooks.configuredBy(); len(got) != 1 {
				t.Errorf("configure runs = %v, want bob's second one refused", got)
			}
			if got := env.lastNotice(pvRoom); !strings.Contains(got, "You need power level 50") {
				t.Errorf("reply to a demoted user's configure = %q, want a refusal", got)
			}
			env.addHook(env.hooks, "alice-hook", pvAlice, pvRoom, "$alice-add")
			env.deliver(pvRoom, event.EventRedaction, pvBob, nil, map[string]any{}, map[string]any{"redacts": "$alice-add"})
			if n := env.count(`SELECT COUNT(*) FROM hooks_hook WHERE hook_id='alice-hook'`); n != 1 {
				t.Errorf("%d hooks of alice after a demoted user's redaction, want 1", n)
			}
		})
	}
}

// TestErasureCleanupRechecksMembers: the rooms an erasure leaves are chosen before it commits,
// but its clean-up may run much later (a retried receipt, a restart). A room someone joined
// meanwhile is shared by then and stays as it is; a room still holding only the bot and the
// erased user is left.
func TestErasureCleanupRechecksMembers(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newPrivacyEnv(t, dialect, nil).start()
			env.setUpRoom(pvDM, true, pvAlice)
			env.setUpRoom(pvRoom, true, pvAlice)
			hash, _, err := env.svc.engine.UserHash(env.ctx, pvAlice)
			if err != nil {
				t.Fatal(err)
			}
			// Bob joins one of alice's former direct chats between the commit and the clean-up.
			env.join(pvRoom, pvBob)
			// What the engine's clean-up does for each room the erasure chose.
			for _, roomID := range []id.RoomID{pvDM, pvRoom} {
				engineHost{env.svc}.LeaveAfterErasure(env.ctx, roomID, hash)
			}
			env.checkRoomUntouched(pvRoom)
			if got := env.hs.Membership(pvDM, pvBot); got != event.MembershipLeave {
				t.Errorf("bot membership in the direct chat only alice shares = %q, want leave", got)
			}
		})
	}
}

// TestErasureCleanupStaysInKeptRooms: a room a bridge keeps (an IRC portal) is not left at an
// erasure, even when only the bot and the erased user were in it.
func TestErasureCleanupStaysInKeptRooms(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newPrivacyEnv(t, dialect, nil).start()
			env.setUpRoom(pvDM, true, pvAlice)
			env.setUpRoom(pvRoom, true, pvAlice)
			if err := env.svc.bridgeByID[env.hooks.id].ClaimRoom(env.ctx, pvRoom, Provenance{}); err != nil {
				t.Fatal(err)
			}
			env.hooks.lock.Lock()
			env.hooks.keeps = map[id.RoomID]bool{pvRoom: true}
			env.hooks.lock.Unlock()
			hash, _, err := env.svc.engine.UserHash(env.ctx, pvAlice)
			if err != nil {
				t.Fatal(err)
			}
			for _, roomID := range []id.RoomID{pvDM, pvRoom} {
				engineHost{env.svc}.LeaveAfterErasure(env.ctx, roomID, hash)
			}
			env.checkRoomUntouched(pvRoom)
			if got := env.hs.Membership(pvDM, pvBot); got != event.MembershipLeave {
				t.Errorf("bot membership in the direct chat = %q, want leave", got)
			}
		})
	}
}

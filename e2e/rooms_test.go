//go:build e2e

package e2e_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/e2e"
)

// TestForgetLeavesBridgedRoomAlone: a portal room holding alice, an IRC user's ghost and the
// bot is not alice's direct chat. Her !forget leaves her direct chat with the bot, but not the
// portal: the bot stays joined and the portal goes on relaying, for bob who joins it afterwards.
func TestForgetLeavesBridgedRoomAlone(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		ircNet, env := startIRCEnv(t, backend)
		alice := env.Register(t, "alice")
		bob := env.Register(t, "bob")
		bot := env.BotUserID()
		channel := "#shared" + e2e.RandomHex(t, 4)
		dave := ircNet.Connect(t, "dave")
		dave.Join(t, channel)
		daveGhost := ircGhost(t, "dave")

		roomID := mustJoinPortal(t, env, alice, channel)
		env.MustSyncUntil(t, alice, ircWait, e2e.IsMember(roomID, daveGhost, event.MembershipJoin))
		env.MustSyncUntil(t, alice, ircWait, e2e.IsMember(roomID, bot, event.MembershipJoin))
		env.SendText(t, alice, roomID, "alice before forgetting")
		dave.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "alice[m]", channel, "alice before forgetting"))

		dm := env.MustCreateDMWithBot(t, alice)
		fg := env.SendText(t, alice, dm, "!forget")
		mustBotReply(t, env, alice, dm, fg, "forget confirm")
		confirm := env.SendText(t, alice, dm, "!forget confirm")
		env.MustSyncUntil(t, alice, replyWait, e2e.After(confirm, func(evt *event.Event) bool {
			return e2e.IsNoticeFrom(dm, bot)(evt) && strings.Contains(evt.Content.AsMessage().Body, "Done: I erased everything")
		}))
		// The erasure's last step: the bot leaves alice's direct chat, and only that room.
		env.MustSyncUntil(t, alice, replyWait, e2e.IsMember(dm, bot, event.MembershipLeave))
		waitInboxEmpty(t, env)

		ctx, cancel := context.WithTimeout(context.Background(), replyWait)
		defer cancel()
		var member event.MemberEventContent
		if err := alice.StateEvent(ctx, roomID, event.StateMember, bot.String(), &member); err != nil {
			t.Fatalf("reading the bot's membership in the portal: %v", err)
		} else if member.Membership != event.MembershipJoin {
			t.Fatalf("the bot's membership in the portal after alice's forget = %q, want join", member.Membership)
		}

		// The portal still relays both ways, for bob who joins it now.
		env.MustJoinRoom(t, bob, roomID)
		env.SendText(t, bob, roomID, "bob after the erasure")
		dave.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "bob[m]", channel, "bob after the erasure"))
		dave.Privmsg(t, channel, "dave to bob")
		env.MustSyncUntil(t, bob, ircWait, isMessage(roomID, daveGhost, event.MsgText, "dave to bob"))
	})
}

// TestDirectFlagDoesNotMakeGroupRoomDM: alice invites the bot "as a direct chat" (is_direct)
// into a room with bob and carol. Prefix-less commands from bob there do nothing: his "mydata"
// gets no answer and his "pause" does not pause him. In a real direct chat of bob and the bot,
// prefix-less commands work.
func TestDirectFlagDoesNotMakeGroupRoomDM(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		env := e2e.New(t, backend)
		alice := env.Register(t, "alice")
		bob := env.Register(t, "bob")
		carol := env.Register(t, "carol")
		bot := env.BotUserID()

		ctx, cancel := context.WithTimeout(context.Background(), replyWait)
		defer cancel()
		resp, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{
			Preset: "private_chat", IsDirect: true, Invite: []id.UserID{bot, bob.UserID, carol.UserID},
		})
		if err != nil {
			t.Fatalf("creating the room: %v", err)
		}
		roomID := resp.RoomID
		for _, cli := range []*mautrix.Client{bob, carol} {
			env.MustSyncUntil(t, cli, replyWait, e2e.IsMember(roomID, cli.UserID, event.MembershipInvite))
			env.MustJoinRoom(t, cli, roomID)
		}
		env.MustSyncUntil(t, alice, 2*replyWait, e2e.IsMember(roomID, bot, event.MembershipJoin))
		for _, cli := range []*mautrix.Client{bob, carol} {
			env.MustSyncUntil(t, alice, replyWait, e2e.IsMember(roomID, cli.UserID, event.MembershipJoin))
		}

		mydata := env.SendText(t, bob, roomID, "mydata")
		pause := env.SendText(t, bob, roomID, "pause")
		// A room's events are handled in order: once alice's ping is answered, bob's messages
		// were handled.
		ping := env.SendText(t, alice, roomID, "!ping")
		mustBotReply(t, env, alice, roomID, ping, "Pong")
		// Alice's synced history holds everything up to the Pong, with parsed content.
		for _, cmd := range []id.EventID{mydata, pause} {
			if reply, err := env.SyncUntil(alice, time.Second, e2e.IsReplyTo(roomID, bot, cmd)); err == nil {
				t.Errorf("the bot answered bob's prefix-less command %s in a room of four: %q", cmd, reply.Content.AsMessage().Body)
			} else if !errors.Is(err, e2e.ErrSyncTimeout) {
				t.Fatal(err)
			}
		}
		q := "SELECT COUNT(*) FROM users WHERE mxid=$1 AND paused"
		if env.DBDriver() == "sqlite3" {
			q = strings.Replace(q, "$1", "?", 1)
		}
		var paused int
		if err := env.DB(t).QueryRow(q, bob.UserID.String()).Scan(&paused); err != nil {
			t.Fatalf("reading bob's paused flag: %v", err)
		} else if paused != 0 {
			t.Error("bob's prefix-less pause in a room of four paused him")
		}

		// A real direct chat takes commands without the prefix.
		dm := env.MustCreateDMWithBot(t, bob)
		dmPing := env.SendText(t, bob, dm, "ping")
		mustBotReply(t, env, bob, dm, dmPing, "Pong")
	})
}

package appservice

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"

	mxas "maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/database"
)

type notifyEnv struct {
	hs  *astest.FakeHomeserver
	db  *database.Database
	nf  *Notifier
	bot id.UserID
	ctx context.Context
}

func newNotifyEnv(t *testing.T, dialect string) *notifyEnv {
	t.Helper()
	env := &notifyEnv{
		hs:  astest.NewFakeHomeserver(t, testDomain, testASToken),
		db:  astest.CoreDB(t, dialect),
		ctx: testLogger(t).WithContext(context.Background()),
	}
	as := mxas.Create()
	as.HomeserverDomain = testDomain
	as.Registration = &mxas.Registration{ID: "custodian", AppToken: testASToken, SenderLocalpart: "custodian"}
	as.DefaultHTTPRetries = 0
	if err := as.SetHomeserverURL(env.hs.URL()); err != nil {
		t.Fatal(err)
	}
	as.BotIntent().Registered = true
	env.bot = as.BotMXID()
	env.nf = NewNotifier(as.BotIntent(), env.db.User)
	return env
}

func notice(cause, purpose, body string) Notice {
	return Notice{Cause: cause, Purpose: purpose, Content: &event.MessageEventContent{MsgType: event.MsgNotice, Body: body}}
}

// mustNotify sends n to user as scope and fails the test if that fails.
func (env *notifyEnv) mustNotify(t *testing.T, user id.UserID, scope string, n Notice) (id.RoomID, id.EventID) {
	t.Helper()
	roomID, evtID, err := env.nf.Notify(env.ctx, user, scope, n)
	if err != nil {
		t.Fatal(err)
	}
	return roomID, evtID
}

// messages returns the bodies of the m.room.message events in roomID.
func (env *notifyEnv) messages(t *testing.T, roomID id.RoomID) []string {
	t.Helper()
	var out []string
	for _, evt := range env.hs.Messages(roomID) {
		var content event.MessageEventContent
		if err := json.Unmarshal(evt.Content, &content); err != nil {
			t.Fatal(err)
		}
		out = append(out, content.Body)
	}
	return out
}

func (env *notifyEnv) managementRoom(t *testing.T, user id.UserID) id.RoomID {
	t.Helper()
	roomID, err := env.db.User.ManagementRoom(env.ctx, user)
	if err != nil {
		t.Fatal(err)
	}
	return roomID
}

func TestNotifyUserOpensRecordsAndReusesRoom(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newNotifyEnv(t, dialect)
			alice := id.UserID("@alice:" + testDomain)
			roomID, evtID := env.mustNotify(t, alice, "irc", notice("$cause", "hello", "first"))
			if roomID == "" || evtID == "" {
				t.Fatalf("got room %q event %q", roomID, evtID)
			}
			if got := env.managementRoom(t, alice); got != roomID {
				t.Fatalf("recorded management room %q, want %q", got, roomID)
			}
			creates := env.hs.RequestsTo(astest.PatternCreateRoom)
			if len(creates) != 1 {
				t.Fatalf("%d rooms created, want 1", len(creates))
			}
			var req struct {
				Preset       string      `json:"preset"`
				IsDirect     bool        `json:"is_direct"`
				Invite       []id.UserID `json:"invite"`
				InitialState []struct {
					Type    string         `json:"type"`
					Content map[string]any `json:"content"`
				} `json:"initial_state"`
			}
			if err := creates[0].DecodeBody(&req); err != nil {
				t.Fatal(err)
			}
			if req.Preset != "trusted_private_chat" || !req.IsDirect || len(req.Invite) != 1 || req.Invite[0] != alice ||
				len(req.InitialState) != 1 || req.InitialState[0].Type != event.StateHistoryVisibility.Type ||
				req.InitialState[0].Content["history_visibility"] != "invited" {
				t.Fatalf("createRoom request %+v", req)
			}
			// Still invited: the room is reused.
			if room2, _ := env.mustNotify(t, alice, "irc", notice("$cause2", "hello", "second")); room2 != roomID {
				t.Fatalf("second notice went to %q, want %q", room2, roomID)
			}
			// Joined: still reused.
			env.hs.SetMembership(roomID, alice, event.MembershipJoin)
			if room3, _ := env.mustNotify(t, alice, "irc", notice("$cause3", "hello", "third")); room3 != roomID {
				t.Fatalf("third notice went to %q, want %q", room3, roomID)
			}
			if got := env.messages(t, roomID); len(got) != 3 || got[0] != "first" || got[2] != "third" {
				t.Fatalf("messages %q", got)
			}
			if n := len(env.hs.RequestsTo(astest.PatternCreateRoom)); n != 1 {
				t.Fatalf("%d rooms created, want 1", n)
			}
		})
	}
}

func TestNotifyUserReplayPostsOnce(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newNotifyEnv(t, dialect)
			alice := id.UserID("@alice:" + testDomain)
			room1, evt1 := env.mustNotify(t, alice, "irc", notice("$cause", "quit", "bye"))
			room2, evt2 := env.mustNotify(t, alice, "irc", notice("$cause", "quit", "bye"))
			if room1 != room2 || evt1 != evt2 {
				t.Fatalf("replay went to %s/%s, first to %s/%s", room2, evt2, room1, evt1)
			}
			// Another purpose, or the same purpose of another scope, is another message.
			env.mustNotify(t, alice, "irc", notice("$cause", "other", "other"))
			env.mustNotify(t, alice, "webhook", notice("$cause", "quit", "webhook"))
			if got := env.messages(t, room1); len(got) != 3 {
				t.Fatalf("messages %q, want 3", got)
			}
			sends := env.hs.RequestsTo(astest.PatternSend)
			if len(sends) != 4 || sends[0].PathValues["txnID"] != sends[1].PathValues["txnID"] ||
				sends[0].PathValues["txnID"] != NoticeTxnID("irc", notice("$cause", "quit", "")) {
				t.Fatalf("sends %+v", sends)
			}
		})
	}
}

func TestNotifyUserReopens(t *testing.T) {
	carol := id.UserID("@carol:" + testDomain)
	ghost := id.UserID("@irc_bob:" + testDomain)
	for _, tc := range []struct {
		name   string
		change func(env *notifyEnv, roomID id.RoomID)
	}{
		{"user left", func(env *notifyEnv, roomID id.RoomID) {
			env.hs.SetMembership(roomID, id.UserID("@alice:"+testDomain), event.MembershipLeave)
		}},
		{"user rejected the invite and was banned", func(env *notifyEnv, roomID id.RoomID) {
			env.hs.SetMembership(roomID, id.UserID("@alice:"+testDomain), event.MembershipBan)
		}},
		{"someone else joined", func(env *notifyEnv, roomID id.RoomID) {
			env.hs.SetMembership(roomID, carol, event.MembershipJoin)
		}},
		{"a ghost joined", func(env *notifyEnv, roomID id.RoomID) {
			env.hs.SetMembership(roomID, ghost, event.MembershipJoin)
		}},
		{"someone else was invited", func(env *notifyEnv, roomID id.RoomID) {
			env.hs.SetMembership(roomID, carol, event.MembershipInvite)
		}},
		{"someone else knocks", func(env *notifyEnv, roomID id.RoomID) {
			env.hs.SetMembership(roomID, carol, event.MembershipKnock)
		}},
		{"the bot was removed", func(env *notifyEnv, roomID id.RoomID) {
			env.hs.SetMembership(roomID, env.bot, event.MembershipLeave)
		}},
	} {
		for _, dialect := range astest.Dialects(t) {
			t.Run(tc.name+"/"+dialect, func(t *testing.T) {
				env := newNotifyEnv(t, dialect)
				alice := id.UserID("@alice:" + testDomain)
				room1, _ := env.mustNotify(t, alice, "core", notice("$one", "", "one"))
				env.hs.SetMembership(room1, alice, event.MembershipJoin)
				tc.change(env, room1)
				room2, _ := env.mustNotify(t, alice, "core", notice("$two", "", "two"))
				if room2 == room1 || room2 == "" {
					t.Fatalf("second notice went to %q, first to %q", room2, room1)
				}
				if got := env.managementRoom(t, alice); got != room2 {
					t.Fatalf("recorded %q, want the new room %q", got, room2)
				}
				if got := env.messages(t, room2); len(got) != 1 || got[0] != "two" {
					t.Fatalf("new room has %q", got)
				}
				if got := env.messages(t, room1); len(got) != 1 {
					t.Fatalf("old room has %q, want only the first notice", got)
				}
			})
		}
	}
}

func TestNotifyUserConcurrentFirstNoticesOpenOneRoom(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newNotifyEnv(t, dialect)
			alice := id.UserID("@alice:" + testDomain)
			const n = 8
			rooms := make([]id.RoomID, n)
			errs := make([]error, n)
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					rooms[i], _, errs[i] = env.nf.Notify(env.ctx, alice, "core", notice("$c", string(rune('a'+i)), "hi"))
				}()
			}
			close(start)
			wg.Wait()
			for i := range n {
				if errs[i] != nil {
					t.Fatal(errs[i])
				}
				if rooms[i] != rooms[0] {
					t.Fatalf("notices went to %q", rooms)
				}
			}
			if c := len(env.hs.RequestsTo(astest.PatternCreateRoom)); c != 1 {
				t.Fatalf("%d rooms created, want 1", c)
			}
			if got := env.messages(t, rooms[0]); len(got) != n {
				t.Fatalf("%d messages, want %d", len(got), n)
			}
		})
	}
}

func TestNotifyUserRejectsIncompleteNotice(t *testing.T) {
	env := newNotifyEnv(t, astest.SQLite)
	alice := id.UserID("@alice:" + testDomain)
	for _, n := range []Notice{{Content: &event.MessageEventContent{Body: "x"}}, {Cause: "$c"}} {
		if _, _, err := env.nf.Notify(env.ctx, alice, "core", n); err != ErrInvalidNotice {
			t.Fatalf("Notify(%+v) = %v, want ErrInvalidNotice", n, err)
		}
	}
	if c := len(env.hs.RequestsTo(astest.PatternCreateRoom)); c != 0 {
		t.Fatalf("%d rooms created for invalid notices", c)
	}
}

// TestDirectChatCommandUsesThatRoom: a command run in a direct chat with the bot makes that chat
// the sender's management room, so the export file arrives where the user asked for it, even
// when an older management room is recorded.
func TestDirectChatCommandUsesThatRoom(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newPrivacyEnv(t, dialect, nil).start()
			old := id.RoomID("!old:example.org")
			env.hs.SetMembership(old, pvBot, event.MembershipJoin)
			env.hs.SetMembership(old, pvAlice, event.MembershipJoin)
			if err := env.svc.db.User.SetManagementRoom(env.ctx, pvAlice, old); err != nil {
				t.Fatal(err)
			}
			env.setUpRoom(pvDM, true, pvAlice)
			env.text(pvDM, pvAlice, "export")
			if got := env.lastNotice(pvDM); got != "custodian-export-2026-03-01.json" {
				t.Fatalf("last message in the direct chat %q, want the export file", got)
			}
			if got := env.notices(old); len(got) != 0 {
				t.Errorf("the old management room got %q", got)
			}
			if n := env.count(`SELECT COUNT(*) FROM users WHERE mxid=$1 AND management_room=$2`, pvAlice, pvDM); n != 1 {
				t.Errorf("the direct chat is not recorded as alice's management room")
			}
			if n := env.count(`SELECT COUNT(*) FROM as_export WHERE room_id=$1 AND event_id IS NOT NULL`, pvDM); n != 1 {
				t.Errorf("%d export files tracked in the direct chat, want 1", n)
			}
			if n := len(env.hs.RequestsTo(astest.PatternCreateRoom)); n != 0 {
				t.Errorf("%d rooms created, want none", n)
			}

			// A command in a room shared with others records nothing.
			group := id.RoomID("!group:example.org")
			env.setUpRoom(group, false, pvAlice, pvBob)
			env.text(group, pvAlice, "!help")
			if n := env.count(`SELECT COUNT(*) FROM users WHERE mxid=$1 AND management_room=$2`, pvAlice, pvDM); n != 1 {
				t.Errorf("a command in a group room changed alice's management room")
			}
		})
	}
}

// TestCommandRoomHint: while a command runs in a direct chat, the sender's notices go there and
// record it, even for a user without a users row (who gets one only then); another user's
// notices are not affected.
func TestCommandRoomHint(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newPrivacyEnv(t, dialect, nil).start()
			env.hs.SetMembership(pvDM, pvBot, event.MembershipJoin)
			env.hs.SetMembership(pvDM, pvAlice, event.MembershipJoin)
			ctx := env.svc.useAsManagementRoom(env.ctx, pvAlice, pvDM)
			if n := env.count(`SELECT COUNT(*) FROM users WHERE mxid=$1`, pvAlice); n != 0 {
				t.Fatalf("running a command created a users row")
			}
			roomID, _, err := env.svc.NotifyUser(ctx, pvAlice, notice("$cmd", "file", "here"))
			if err != nil || roomID != pvDM {
				t.Fatalf("notice went to %q (%v), want the command's room", roomID, err)
			}
			if n := env.count(`SELECT COUNT(*) FROM users WHERE mxid=$1 AND management_room=$2`, pvAlice, pvDM); n != 1 {
				t.Errorf("the command's room is not recorded")
			}
			bobRoom, _, err := env.svc.NotifyUser(ctx, pvBob, notice("$cmd", "bob", "bob"))
			if err != nil || bobRoom == pvDM || bobRoom == "" {
				t.Fatalf("bob's notice went to %q (%v), want a room of his own", bobRoom, err)
			}
		})
	}
}

// TestEraseLeavesManagementRoom: the erasure leaves the user's management room even when the
// state cache never saw the user there (they were only invited), and its record goes with the
// users row; a management room someone else joined is kept.
func TestEraseLeavesManagementRoom(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newPrivacyEnv(t, dialect, nil).start()
			aliceRoom, _, err := env.svc.NotifyUser(env.ctx, pvAlice, notice("$a", "", "for alice"))
			if err != nil {
				t.Fatal(err)
			}
			bobRoom, _, err := env.svc.NotifyUser(env.ctx, pvBob, notice("$b", "", "for bob"))
			if err != nil {
				t.Fatal(err)
			}
			env.hs.SetMembership(bobRoom, pvBob, event.MembershipJoin)
			env.hs.SetMembership(bobRoom, pvCarol, event.MembershipJoin)
			// The state cache lost what it knew of alice's room (say it was created while the
			// cache was cleared): only the users row names it.
			env.exec(`DELETE FROM mx_user_profile WHERE room_id=$1`, aliceRoom)
			for _, user := range []id.UserID{pvAlice, pvBob} {
				if _, err = env.svc.engine.Erase(env.ctx, user, EraseRequest{Trigger: TriggerAdmin}); err != nil {
					t.Fatal(err)
				}
			}
			if got := env.hs.Membership(aliceRoom, pvBot); got == event.MembershipJoin {
				t.Errorf("the bot is still in alice's management room after her erasure")
			}
			if got := env.hs.Membership(bobRoom, pvBot); got != event.MembershipJoin {
				t.Errorf("the bot left bob's management room, which carol joined: %q", got)
			}
			if n := env.count(`SELECT COUNT(*) FROM users WHERE management_room IS NOT NULL`); n != 0 {
				t.Errorf("%d management rooms recorded after the erasures", n)
			}
		})
	}
}

// TestNotifyUserErasedMeanwhile: an erasure that commits after the pending-erasure check, while
// the notice is on its way, is noticed when the room is recorded: the notice is dropped with
// ErrUserBeingErased, the users row is not brought back, and the bot leaves the room it opened.
func TestNotifyUserErasedMeanwhile(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newNotifyEnv(t, dialect)
			alice := id.UserID("@alice:" + testDomain)
			if err := env.db.User.Ensure(env.ctx, alice); err != nil {
				t.Fatal(err)
			}
			env.nf.RefuseDuringErasure(func(ctx context.Context, user id.UserID) (bool, error) {
				// The erasure commits right after the check.
				_, err := env.db.Exec(ctx, `DELETE FROM users WHERE mxid=$1`, user)
				return false, err
			})
			_, _, err := env.nf.Notify(env.ctx, alice, "irc", notice("$late", "", "too late"))
			if !errors.Is(err, ErrUserBeingErased) {
				t.Fatalf("Notify = %v, want ErrUserBeingErased", err)
			}
			var n int
			if err = env.db.QueryRow(env.ctx, `SELECT COUNT(*) FROM users WHERE mxid=$1`, alice).Scan(&n); err != nil || n != 0 {
				t.Fatalf("%d users rows for alice (%v), want 0", n, err)
			}
			for _, req := range env.hs.RequestsTo(astest.PatternCreateRoom) {
				if got := len(env.hs.RequestsTo(astest.PatternLeave)); got != 1 {
					t.Errorf("the bot left %d rooms after opening %s, want 1", got, req.Path)
				}
			}
		})
	}
}

// TestCommandRoomHintOnlyWhenPrivate: a direct chat a command runs in is used for notices only
// while nobody else is joined or invited, and with its history hidden from later members (the
// bot sets history_visibility to invited); otherwise the notice goes to a room the bot opens.
func TestCommandRoomHintOnlyWhenPrivate(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newPrivacyEnv(t, dialect, nil).start()
			env.hs.SetMembership(pvDM, pvBot, event.MembershipJoin)
			env.hs.SetMembership(pvDM, pvAlice, event.MembershipJoin)
			env.hs.SetMembership(pvDM, pvBob, event.MembershipInvite)
			ctx := env.svc.useAsManagementRoom(env.ctx, pvAlice, pvDM)
			roomID, _, err := env.svc.NotifyUser(ctx, pvAlice, notice("$cmd", "secret", "the secret"))
			if err != nil {
				t.Fatal(err)
			}
			if roomID == pvDM {
				t.Fatal("a notice went to a direct chat with a pending invite for bob")
			}
			env.hs.SetMembership(pvDM, pvBob, event.MembershipLeave)
			roomID, _, err = env.svc.NotifyUser(ctx, pvAlice, notice("$cmd2", "secret", "the secret"))
			if err != nil || roomID != pvDM {
				t.Fatalf("notice went to %q (%v), want the direct chat once it is private", roomID, err)
			}
			hidden := false
			for _, req := range env.hs.RequestsTo(astest.PatternPutState) {
				if strings.Contains(req.Path, string(pvDM)) && strings.Contains(req.Path, event.StateHistoryVisibility.Type) {
					hidden = true
				}
			}
			if !hidden {
				t.Error("the bot did not hide the direct chat's history before using it")
			}
		})
	}
}

package database_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/database"
)

func TestBotSetupQuery(t *testing.T) {
	astest.ForEachDialect(t, func(t *testing.T, raw *dbutil.Database) {
		ctx := zerolog.New(astest.LogWriter(t)).WithContext(context.Background())
		db := database.New(raw)
		if err := db.Upgrade(ctx); err != nil {
			t.Fatal(err)
		}
		const (
			room1   = id.RoomID("!one:example.org")
			room2   = id.RoomID("!two:example.org")
			bot     = id.UserID("@custodian:example.org")
			feedBot = id.UserID("@feeds_bot:example.org")
			alice   = id.UserID("@alice:example.org")
		)
		invited := time.UnixMilli(1700000000000)
		joined := invited.Add(1500 * time.Millisecond)
		put := func(setup *database.BotSetup) {
			t.Helper()
			err := db.DoTxn(ctx, nil, func(ctx context.Context) error {
				if setup.Inviter != "" {
					if err := db.User.Ensure(ctx, setup.Inviter); err != nil {
						return err
					}
				}
				return db.BotSetup.Put(ctx, setup)
			})
			if err != nil {
				t.Fatalf("Put(%s, %s) failed: %v", setup.RoomID, setup.Bot, err)
			}
		}

		if got, err := db.BotSetup.Get(ctx, room1, bot); err != nil || got != nil {
			t.Fatalf("Get on empty table = %v, %v; want nil, nil", got, err)
		}
		want := &database.BotSetup{
			RoomID: room1, Bot: bot, Inviter: alice, InviteEventID: "$invite1",
			InvitedAt: invited, JoinedAt: joined, IsDirect: true,
			Config: json.RawMessage(`{"command_prefix":"!"}`),
		}
		put(want)
		// Putting the same setup again (a replayed invite) is harmless.
		put(want)
		put(&database.BotSetup{RoomID: room1, Bot: feedBot, Inviter: alice, InviteEventID: "$invite2", InvitedAt: invited, JoinedAt: joined})
		put(&database.BotSetup{RoomID: room2, Bot: bot, Inviter: alice, InviteEventID: "$invite3", InvitedAt: invited, JoinedAt: joined.Add(time.Second)})

		got, err := db.BotSetup.Get(ctx, room1, bot)
		if err != nil {
			t.Fatal(err)
		}
		if got.RoomID != want.RoomID || got.Bot != want.Bot || got.Inviter != want.Inviter ||
			got.InviteEventID != want.InviteEventID || !got.InvitedAt.Equal(want.InvitedAt) ||
			!got.JoinedAt.Equal(want.JoinedAt) || got.IsDirect != want.IsDirect || string(got.Config) != string(want.Config) {
			t.Errorf("Get(%s, %s) = %+v, want %+v", room1, bot, got, want)
		}
		if other, err := db.BotSetup.Get(ctx, room1, feedBot); err != nil || string(other.Config) != "{}" {
			t.Errorf("Get(%s, %s) config = %v (%v), want {} for an empty config", room1, feedBot, other, err)
		}

		inRoom, err := db.BotSetup.GetAllForRoom(ctx, room1)
		if err != nil || len(inRoom) != 2 || inRoom[0].Bot != bot || inRoom[1].Bot != feedBot {
			t.Errorf("GetAllForRoom(%s) = %v, %v; want the two bots in order", room1, inRoom, err)
		}
		byAlice, err := db.BotSetup.GetAllByInviter(ctx, alice)
		if err != nil || len(byAlice) != 3 {
			t.Errorf("GetAllByInviter(%s) = %d setups, %v; want 3", alice, len(byAlice), err)
		}
		if none, err := db.BotSetup.GetAllForRoom(ctx, "!nothing:example.org"); err != nil || none == nil || len(none) != 0 {
			t.Errorf("GetAllForRoom(unknown) = %#v, %v; want an empty, non-nil slice", none, err)
		}

		if deleted, err := db.BotSetup.Delete(ctx, room1, feedBot); err != nil || !deleted {
			t.Errorf("Delete(%s, %s) = %v, %v; want true, nil", room1, feedBot, deleted, err)
		}
		if deleted, err := db.BotSetup.Delete(ctx, room1, feedBot); err != nil || deleted {
			t.Errorf("second Delete(%s, %s) = %v, %v; want false, nil", room1, feedBot, deleted, err)
		}
		if n, err := db.BotSetup.DeleteAllForRoom(ctx, room2); err != nil || n != 1 {
			t.Errorf("DeleteAllForRoom(%s) = %d, %v; want 1, nil", room2, n, err)
		}

		// Erasing the inviter keeps the setup but forgets who set it up.
		if _, err := raw.Exec(ctx, `DELETE FROM users WHERE mxid=$1`, alice); err != nil {
			t.Fatal(err)
		}
		got, err = db.BotSetup.Get(ctx, room1, bot)
		if err != nil || got == nil || got.Inviter != "" {
			t.Errorf("Get after erasing the inviter = %+v, %v; want the setup with no inviter", got, err)
		}

		if err := db.BotSetup.Put(ctx, &database.BotSetup{RoomID: room2, Bot: bot, InviteEventID: "$x", Config: json.RawMessage(`{`)}); err == nil {
			t.Error("Put with invalid JSON config succeeded, want an error")
		}
	})
}

package fakehost

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice"
	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/vault"
)

// nopBridge is the smallest bridge a Host can be made for.
type nopBridge struct{}

func (nopBridge) ID() string                                                        { return "nop" }
func (nopBridge) Namespaces() appservice.Namespaces                                 { return appservice.Namespaces{UserPrefix: "nop_"} }
func (nopBridge) Config() (string, any)                                             { return "", nil }
func (nopBridge) Migrations() dbutil.UpgradeTable                                   { return dbutil.UpgradeTable{} }
func (nopBridge) PersonalData() []appservice.UserTable                              { return nil }
func (nopBridge) Init(appservice.Host) error                                        { return nil }
func (nopBridge) Start(context.Context) error                                       { return nil }
func (nopBridge) Stop(context.Context) error                                        { return nil }
func (nopBridge) HandleEvent(context.Context, *event.Event, appservice.Route) error { return nil }

func TestMemoryVault(t *testing.T) {
	ctx := context.Background()
	mv := NewMemoryVault()
	store := mv.For("nop")
	alice, bob := id.UserID("@alice:example.org"), id.UserID("@bob:example.org")
	sealed, err := store.Seal(ctx, alice, "token/1", vault.NewSecret("hunter2"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := store.Open(ctx, alice, "token/1", sealed); err != nil || got.Reveal() != "hunter2" {
		t.Fatalf("Open = %v, %v; want the secret", got, err)
	}
	_, _ = store.Seal(ctx, bob, "x", vault.NewSecret("y"))
	tests := []struct {
		name    string
		store   appservice.SecretStore
		user    id.UserID
		secret  string
		wantErr error
	}{
		{name: "other name", store: store, user: alice, secret: "token/2", wantErr: vault.ErrDecrypt},
		{name: "other user", store: store, user: bob, secret: "token/1", wantErr: vault.ErrDecrypt},
		{name: "other bridge", store: mv.For("other"), user: alice, secret: "token/1", wantErr: vault.ErrDecrypt},
	}
	for _, tt := range tests {
		if _, err := tt.store.Open(ctx, tt.user, tt.secret, sealed); !errors.Is(err, tt.wantErr) {
			t.Errorf("%s: Open = %v, want %v", tt.name, err, tt.wantErr)
		}
	}
	mv.SetKeyUnavailable(true)
	if _, err := store.Open(ctx, alice, "token/1", sealed); !errors.Is(err, vault.ErrKeyUnavailable) {
		t.Errorf("Open with the key unavailable = %v", err)
	}
	if _, err := store.Seal(ctx, alice, "token/1", vault.NewSecret("x")); !errors.Is(err, vault.ErrNoKey) {
		t.Errorf("Seal with the key unavailable = %v", err)
	}
	mv.SetKeyUnavailable(false)
	mv.Forget(alice)
	if _, err := store.Open(ctx, alice, "token/1", sealed); !errors.Is(err, vault.ErrDecrypt) {
		t.Errorf("Open after Forget = %v, want ErrDecrypt", err)
	}
	mv.SetDisabled(true)
	if _, err := store.Seal(ctx, alice, "token/1", vault.NewSecret("x")); !errors.Is(err, appservice.ErrVaultDisabled) {
		t.Errorf("Seal with the vault disabled = %v", err)
	}
}

func TestHost(t *testing.T) {
	h := New(t, "sqlite", nopBridge{})
	ctx := context.Background()
	if _, err := h.Intent("other_x"); !errors.Is(err, appservice.ErrOutsideNamespace) {
		t.Errorf("Intent outside the namespace = %v", err)
	}
	room := id.RoomID("!r:example.org")
	alice := id.UserID("@alice:example.org")
	h.SetUpRoom(t, room, alice)
	if err := h.ClaimRoom(ctx, room, appservice.Provenance{Actor: alice, EventID: "$e"}); err != nil || !h.Claimed(t, room) {
		t.Fatalf("ClaimRoom = %v, claimed %v", err, h.Claimed(t, room))
	}
	// Ghosts join through the bot's invite, via the front's invite endpoint.
	ghost, err := h.Intent("nop_ghost")
	if err != nil {
		t.Fatal(err)
	}
	if _, err = ghost.SendText(ctx, room, "hi"); err != nil {
		t.Fatal(err)
	}
	if inv := h.Invites(); len(inv) != 1 || inv[0].Invitee != ghost.UserID || inv[0].Inviter != h.BotID() {
		t.Errorf("invites = %+v, want the bot inviting the ghost", inv)
	}
	// Rooms can be created.
	resp, err := h.Bot().CreateRoom(ctx, &mautrix.ReqCreateRoom{IsDirect: true, Invite: []id.UserID{alice}})
	if err != nil {
		t.Fatal(err)
	}
	if created := h.CreatedRooms(); len(created) != 1 || created[0].RoomID != resp.RoomID || !created[0].IsDirect {
		t.Errorf("created rooms = %+v", created)
	}
	if m := h.HS.Membership(resp.RoomID, alice); m != event.MembershipInvite {
		t.Errorf("invitee membership = %q", m)
	}
	h.SetPaused(t, alice, true)
	if paused, err := h.IsPaused(ctx, alice); err != nil || !paused {
		t.Errorf("IsPaused = %v, %v", paused, err)
	}
}

// noteBridge keeps one table about users, with provenance, and records what the engine asks of
// it.
type noteBridge struct {
	nopBridge
	erased []id.UserID
	purged []map[string]int64
}

func (*noteBridge) Migrations() dbutil.UpgradeTable {
	return dbutil.BuildUpgradeTable().WithRaw(0, 1, 0, "Notes", dbutil.TxnModeOn, func(ctx context.Context, db *dbutil.Database) error {
		_, err := db.Exec(ctx, `CREATE TABLE nop_note (
			user_mxid TEXT NOT NULL REFERENCES users (mxid) ON DELETE CASCADE ON UPDATE CASCADE,
			room_id   TEXT NOT NULL,
			event_id  TEXT NOT NULL,
			body      TEXT NOT NULL
		)`)
		return err
	}).Finish()
}

func (*noteBridge) PersonalData() []appservice.UserTable {
	return []appservice.UserTable{{
		Table: "nop_note", UserColumn: "user_mxid", Export: []string{"body"},
		SourceEventColumn: "event_id", RoomColumn: "room_id", Description: "your notes",
	}}
}

func (nb *noteBridge) EraseRemote(_ context.Context, user id.UserID) error {
	nb.erased = append(nb.erased, user)
	return nil
}

func (nb *noteBridge) RedactionPurged(_ context.Context, _ id.RoomID, _ id.EventID, purged map[string]int64) error {
	nb.purged = append(nb.purged, purged)
	return nil
}

// TestHostRunsTheRealEngine: export, redaction purge and erasure are the core's, with their
// checks and bookkeeping, not shortcuts.
func TestHostRunsTheRealEngine(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			nb := &noteBridge{}
			h := New(t, dialect, nb)
			ctx := context.Background()
			room := id.RoomID("!r:example.org")
			alice, bob := id.UserID("@alice:example.org"), id.UserID("@bob:example.org")
			for i, body := range []string{"one", "two"} {
				if err := h.EnsureUser(ctx, alice); err != nil {
					t.Fatal(err)
				}
				if _, err := h.RawDB.Exec(ctx, `INSERT INTO nop_note (user_mxid, room_id, event_id, body) VALUES ($1, $2, $3, $4)`,
					alice, room, fmt.Sprintf("$note%d", i), body); err != nil {
					t.Fatal(err)
				}
			}

			if export := h.Export(t, alice); export.Modules["nop"]["nop_note"].RowCount != 2 || export.Modules[appservice.CoreModule]["users"].RowCount != 1 {
				t.Errorf("export = %+v, want alice's notes and users row", export.Modules)
			}

			// Bob neither wrote the note nor may redact others' events: nothing is purged.
			h.SetPowerLevels(t, room, &event.PowerLevelsEventContent{})
			redaction := func(sender id.UserID, redacts id.EventID) *event.Event {
				return &event.Event{ID: "$redaction", RoomID: room, Sender: sender, Type: event.EventRedaction,
					Content: event.Content{Parsed: &event.RedactionEventContent{Redacts: redacts}}}
			}
			if purged := h.PurgeRedacted(t, redaction(bob, "$note0")); len(purged) != 0 || len(nb.purged) != 0 {
				t.Errorf("purge by an unprivileged other user = %v (bridge told %v), want nothing", purged, nb.purged)
			}
			if purged := h.PurgeRedacted(t, redaction(alice, "$note0")); purged["nop_note"] != 1 || len(nb.purged) != 1 {
				t.Errorf("purge by the note's author = %v (bridge told %v), want one row", purged, nb.purged)
			}

			receipt := h.EraseUser(t, alice)
			if len(nb.erased) != 1 || nb.erased[0] != alice {
				t.Errorf("EraseRemote calls = %v, want alice's", nb.erased)
			}
			if receipt.Erased["nop"]["nop_note"] != 1 || receipt.Erased[appservice.CoreModule]["users"] != 1 {
				t.Errorf("receipt counts = %v, want the remaining note and the users row", receipt.Erased)
			}
			var left int
			if err := h.RawDB.QueryRow(ctx, `SELECT (SELECT COUNT(*) FROM nop_note) + (SELECT COUNT(*) FROM users WHERE mxid=$1)`, alice).Scan(&left); err != nil || left != 0 {
				t.Errorf("rows about alice after erasure = %d, %v; want 0", left, err)
			}
			hash, _, err := h.Engine.UserHash(ctx, alice)
			if err != nil {
				t.Fatal(err)
			}
			if tombstones, err := h.Engine.Store().Tombstones(ctx, hash); err != nil || len(tombstones) != 1 {
				t.Errorf("tombstones = %d, %v; want the erasure's one", len(tombstones), err)
			}
		})
	}
}

// TestNotifyUser: the fake runs the core's notifier: the first notice opens and records a
// management room, a replay of the same cause and purpose is one message and one record with
// the core's transaction ID, and a user who left gets a new room.
func TestNotifyUser(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			h := New(t, dialect, nopBridge{})
			ctx := context.Background()
			alice := id.UserID("@alice:example.org")
			n := appservice.Notice{Cause: "$cause", Purpose: "hello", Content: &event.MessageEventContent{MsgType: event.MsgNotice, Body: "hi"}}
			room, evt, err := h.NotifyUser(ctx, alice, n)
			if err != nil {
				t.Fatal(err)
			}
			if again, evt2, err := h.NotifyUser(ctx, alice, n); err != nil || again != room || evt2 != evt {
				t.Fatalf("replay = %s %s %v, want %s %s", again, evt2, err, room, evt)
			}
			if got := h.ManagementRoom(t, alice); got != room {
				t.Fatalf("management room %q, want %q", got, room)
			}
			notices := h.Notices(alice)
			if len(notices) != 1 || notices[0].TxnID != appservice.NoticeTxnID("nop", n) || notices[0].EventID != evt {
				t.Fatalf("notices = %+v, want one with the core's transaction ID", notices)
			}
			if msgs := h.HS.Messages(room); len(msgs) != 1 {
				t.Fatalf("%d messages in the management room, want 1", len(msgs))
			}
			created := h.CreatedRooms()
			if len(created) != 1 || !created[0].IsDirect || created[0].Preset != "trusted_private_chat" {
				t.Fatalf("created rooms = %+v, want one private direct chat", created)
			}
			h.SetMembership(t, room, alice, event.MembershipLeave)
			n.Cause = "$later"
			if room2, _, err := h.NotifyUser(ctx, alice, n); err != nil || room2 == room {
				t.Fatalf("after alice left, notice went to %s (%v), want a new room", room2, err)
			}
			if notices = h.Notices(alice); len(notices) != 2 {
				t.Fatalf("%d notices recorded, want 2", len(notices))
			}
		})
	}
}

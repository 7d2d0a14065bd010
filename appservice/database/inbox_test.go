package database_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/database"
	"github.com/custodian-matrix/custodian/appservice/database/upgrades"
	"github.com/custodian-matrix/custodian/appservice/vault"
)

func inboxEvents(txnID string, eventIDs ...string) []*database.InboxEvent {
	out := make([]*database.InboxEvent, len(eventIDs))
	for i, evtID := range eventIDs {
		out[i] = &database.InboxEvent{
			TxnID:   txnID,
			Index:   i,
			EventID: id.EventID(evtID),
			RoomID:  "!room:example.org",
			Sender:  "@alice:example.org",
			JSON:    []byte(fmt.Sprintf(`{"event_id":%q}`, evtID)),
		}
	}
	return out
}

func eventIDs(events []*database.InboxEvent) []id.EventID {
	out := make([]id.EventID, len(events))
	for i, evt := range events {
		out[i] = evt.EventID
	}
	return out
}

func TestInboxAccept(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1_700_000_000, 0)
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			db := astest.CoreDB(t, dialect)
			iq := db.Inbox

			added, dup, err := iq.Accept(ctx, "1", inboxEvents("1", "$a", "$b", "$a"), now)
			if err != nil || dup {
				t.Fatalf("Accept(1) = dup %v, err %v; want new", dup, err)
			}
			if got := eventIDs(added); len(got) != 2 || got[0] != "$a" || got[1] != "$b" {
				t.Fatalf("Accept(1) added %v, want [$a $b] (in-batch duplicate dropped)", got)
			}

			added, dup, err = iq.Accept(ctx, "1", inboxEvents("1", "$c"), now)
			if err != nil || !dup || added != nil {
				t.Fatalf("repeated Accept(1) = %v, dup %v, err %v; want duplicate and nothing added", added, dup, err)
			}

			// $b is still pending: a new transaction repeating it must not queue it again.
			added, _, err = iq.Accept(ctx, "2", inboxEvents("2", "$b", "$c"), now)
			if err != nil {
				t.Fatal(err)
			}
			if got := eventIDs(added); len(got) != 1 || got[0] != "$c" {
				t.Fatalf("Accept(2) added %v, want [$c]", got)
			}

			pending, err := iq.Pending(ctx, 0, 100)
			if err != nil {
				t.Fatal(err)
			}
			if got := eventIDs(pending); fmt.Sprint(got) != "[$a $b $c]" {
				t.Fatalf("Pending = %v, want [$a $b $c] in order", got)
			}
			if string(pending[0].JSON) != `{"event_id":"$a"}` || pending[2].TxnID != "2" || pending[2].Index != 1 {
				t.Fatalf("Pending[0..2] = %+v %+v, stored fields changed", pending[0], pending[2])
			}

			if err = iq.MarkDone(ctx, []database.Done{{TxnID: "1", Index: 0, EventID: "$a"}}, now); err != nil {
				t.Fatal(err)
			}
			if n, err := iq.CountPending(ctx); err != nil || n != 2 {
				t.Fatalf("CountPending after MarkDone = %d, %v; want 2", n, err)
			}
			// $a is done: the homeserver sending it again in yet another transaction is a no-op.
			added, _, err = iq.Accept(ctx, "3", inboxEvents("3", "$a"), now)
			if err != nil || len(added) != 0 {
				t.Fatalf("Accept(3) of a handled event added %v, err %v; want nothing", eventIDs(added), err)
			}
			pending, err = iq.Pending(ctx, pending[1].Seq, 100)
			if err != nil || fmt.Sprint(eventIDs(pending)) != "[$c]" {
				t.Fatalf("Pending after $b = %v, %v; want [$c]", eventIDs(pending), err)
			}

			txns, evts, err := iq.Prune(ctx, now.Add(time.Second))
			if err != nil || txns != 2 || evts != 1 {
				t.Fatalf("Prune = %d txns, %d events, %v; want 2 (all but the newest), 1", txns, evts, err)
			}
		})
	}
}

func TestInboxEphemeralAndLargeTransactions(t *testing.T) {
	ctx := context.Background()
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			db := astest.CoreDB(t, dialect)
			// More events than one INSERT chunk, plus ephemeral events without IDs.
			var events []*database.InboxEvent
			for i := 0; i < 600; i++ {
				evt := &database.InboxEvent{TxnID: "big", Index: i, RoomID: "!r:x", Sender: "@u:x", JSON: []byte(`{}`)}
				if i%3 == 0 {
					evt.Ephemeral = true
				} else {
					evt.EventID = id.EventID(fmt.Sprintf("$e%d", i))
				}
				events = append(events, evt)
			}
			added, dup, err := db.Inbox.Accept(ctx, "big", events, time.Now())
			if err != nil || dup || len(added) != 600 {
				t.Fatalf("Accept(big) = %d added, dup %v, err %v; want 600", len(added), dup, err)
			}
			if n, err := db.Inbox.CountPending(ctx); err != nil || n != 600 {
				t.Fatalf("CountPending = %d, %v; want 600", n, err)
			}
			done := make([]database.Done, len(events))
			for i, evt := range events {
				done[i] = database.Done{TxnID: evt.TxnID, Index: evt.Index, EventID: evt.EventID}
			}
			if err = db.Inbox.MarkDone(ctx, done, time.Now()); err != nil {
				t.Fatal(err)
			}
			if n, err := db.Inbox.CountPending(ctx); err != nil || n != 0 {
				t.Fatalf("CountPending after MarkDone = %d, %v; want 0", n, err)
			}
			var remembered int
			if err = db.QueryRow(ctx, `SELECT COUNT(*) FROM as_event_done`).Scan(&remembered); err != nil || remembered != 400 {
				t.Fatalf("as_event_done has %d rows, %v; want 400 (ephemeral events have no ID)", remembered, err)
			}
		})
	}
}

// TestInboxUpgradeFromV2 builds the v2 schema, stores an event the way the version before sealing
// did (plaintext, no event_sealed column), upgrades, and checks that the row is still read back,
// then sealed by SealPlaintext and opened again, with no plaintext left in the row.
func TestInboxUpgradeFromV2(t *testing.T) {
	v2, err := os.ReadFile("testdata/v2-schema.sql")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	astest.ForEachDialect(t, func(t *testing.T, raw *dbutil.Database) {
		raw.UpgradeTable = dbutil.BuildUpgradeTable().WithFS(fstest.MapFS{"00-latest-schema.sql": {Data: v2}}).Finish()
		if err := raw.Upgrade(ctx); err != nil {
			t.Fatalf("creating the v2 schema: %v", err)
		}
		const body = `{"type":"m.room.message","content":{"body":"old-secret"}}`
		if _, err := raw.Exec(ctx, `INSERT INTO as_inbox (txn_id, idx, event_id, room_id, sender, ephemeral, event_json, received_at)
			VALUES ('1', 0, '$old', '!r:x', '@alice:x', false, $1, 1)`, body); err != nil {
			t.Fatal(err)
		}
		db := database.New(raw)
		if err := db.Upgrade(ctx); err != nil {
			t.Fatalf("upgrading to the latest version: %v", err)
		}
		// The sealed inbox must not meet a binary from before it: every later migration keeps
		// the oldest compatible version at the one that introduced sealing, as fresh installs
		// record it from 00-latest-schema.sql.
		var version, compat int
		if err := raw.QueryRow(ctx, `SELECT version, compat FROM version`).Scan(&version, &compat); err != nil {
			t.Fatal(err)
		}
		if version != len(upgrades.Table) || compat != 4 {
			t.Errorf("after upgrading from v2: version %d, compat %d; want %d and 4", version, compat, len(upgrades.Table))
		}
		events, err := db.Inbox.Pending(ctx, 0, 10)
		if err != nil || len(events) != 1 || string(events[0].JSON) != body || events[0].Sealed {
			t.Fatalf("Pending() after the upgrade = %+v, %v; want the plaintext row", events, err)
		}

		child := vault.ChildDB(raw, zerolog.Nop())
		if err = child.Upgrade(ctx); err != nil {
			t.Fatal(err)
		}
		k, err := vault.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		v := vault.New(child, vault.Options{Keys: vault.StaticKeys{k}})
		if err = v.Reload(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err = v.LoadInboxKeys(ctx); err != nil {
			t.Fatal(err)
		}
		db.Inbox.SetSealer(v)
		if n, err := db.Inbox.SealPlaintext(ctx); err != nil || n != 1 {
			t.Fatalf("SealPlaintext() = %d, %v; want 1", n, err)
		}
		var plain string
		var sealed []byte
		if err = raw.QueryRow(ctx, `SELECT event_json, event_sealed FROM as_inbox`).Scan(&plain, &sealed); err != nil {
			t.Fatal(err)
		}
		if plain != "" || len(sealed) == 0 || strings.Contains(string(sealed), "old-secret") {
			t.Errorf("row after sealing = %q, %x; want only ciphertext", plain, sealed)
		}
		events, err = db.Inbox.Pending(ctx, 0, 10)
		if err != nil || len(events) != 1 || string(events[0].JSON) != body || !events[0].Sealed || events[0].OpenErr != nil {
			t.Fatalf("Pending() after sealing = %+v, %v; want the row opened", events, err)
		}
		// Bound to its row: the same ciphertext under another event ID does not open.
		if _, err = raw.Exec(ctx, `UPDATE as_inbox SET event_id='$moved'`); err != nil {
			t.Fatal(err)
		}
		events, err = db.Inbox.Pending(ctx, 0, 10)
		if err != nil || len(events) != 1 || !errors.Is(events[0].OpenErr, vault.ErrDecrypt) || events[0].JSON != nil {
			t.Fatalf("Pending() after moving the ciphertext = %+v, %v; want ErrDecrypt", events, err)
		}
	})
}

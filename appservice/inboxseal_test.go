package appservice

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/clock"
	"github.com/custodian-matrix/custodian/appservice/privacy"
	"github.com/custodian-matrix/custodian/appservice/vault"
)

// gatedBridge is a recording bridge whose handler waits for release before it returns, so that
// a test can look at the inbox while an event is acknowledged but not yet handled.
type gatedBridge struct {
	*recordingBridge
	release chan struct{}
}

func (gb *gatedBridge) HandleEvent(ctx context.Context, evt *event.Event, _ Route) error {
	select {
	case <-gb.release:
	case <-time.After(30 * time.Second):
		return errors.New("gate never released")
	}
	return gb.recordingBridge.HandleEvent(ctx, evt, Route{})
}

// sqliteFiles returns the contents of db's SQLite database file and its -wal and -shm files,
// concatenated, and the path of the database file.
func sqliteFiles(t *testing.T, db *dbutil.Database) ([]byte, string) {
	t.Helper()
	var seq int
	var name, path string
	if err := db.QueryRow(context.Background(), "PRAGMA database_list").Scan(&seq, &name, &path); err != nil {
		t.Fatal(err)
	}
	var all []byte
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		data, err := os.ReadFile(p)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		all = append(all, data...)
	}
	return all, path
}

func newKeyFile(t *testing.T) (string, vault.Key) {
	t.Helper()
	keyFile := filepath.Join(t.TempDir(), "custodian.key")
	k := mustGenerateKey(t)
	writeKeys(t, keyFile, k)
	return keyFile, k
}

// TestInboxHoldsNoPlaintextInSQLiteFiles ingests a message whose body holds a marker and reads
// the SQLite database, -wal and -shm files byte by byte, while the event waits in the inbox and
// after it was handled: with the vault on, the marker is in none of them. With the vault off the
// same reading finds it, which shows the check can fail.
func TestInboxHoldsNoPlaintextInSQLiteFiles(t *testing.T) {
	tests := []struct {
		name      string
		vaultOn   bool
		wantFound bool
	}{
		{"vault on", true, false},
		{"vault off (control)", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := newTestDB(t, astest.SQLite)
			cfg := testConfig(deadHomeserver(t).URL)
			if tt.vaultOn {
				keyFile, _ := newKeyFile(t)
				cfg.Vault = VaultConfig{KeyFile: &keyFile}
			}
			br := &gatedBridge{recordingBridge: newRecordingBridge("rec"), release: make(chan struct{})}
			svc, base := startTestService(t, db, cfg, br)
			room := id.RoomID("!portal:example.org")
			if err := svc.db.Room.Claim(context.Background(), room, "rec", "", "", time.Now()); err != nil {
				t.Fatal(err)
			}
			marker := "inbox-marker-" + strings.Repeat("q", 8) + "-hunter2"
			body := transaction(messageEvent("$m", string(room), "@alice:example.org", "!irc login libera alice "+marker))
			if status, _ := do(t, base, testRequest{http.MethodPut, "/_matrix/app/v1/transactions/1", testHSToken, body}); status != http.StatusOK {
				t.Fatalf("transaction = %d, want 200", status)
			}
			if n := countRows(t, db, "as_inbox"); n != 1 {
				t.Fatalf("inbox rows while the event is being handled = %d, want 1", n)
			}
			data, path := sqliteFiles(t, db)
			if got := bytes.Contains(data, []byte(marker)); got != tt.wantFound {
				t.Errorf("marker in %s, -wal, -shm while the event is pending = %v, want %v", path, got, tt.wantFound)
			}
			close(br.release)
			if got := br.next(t).ID; got != "$m" {
				t.Fatalf("bridge handled %s, want $m", got)
			}
			// Stopping the dispatcher waits for the handler and flushes the done marks, which
			// delete the inbox row.
			svc.dispatcher.stop(context.Background())
			if n := countRows(t, db, "as_inbox"); n != 0 {
				t.Fatalf("inbox rows after the event was handled = %d, want 0", n)
			}
			data, _ = sqliteFiles(t, db)
			if tt.vaultOn && bytes.Contains(data, []byte(marker)) {
				t.Errorf("marker in %s, -wal, -shm after the event was handled", path)
			}
		})
	}
}

// prepareService builds a service on db with the vault section vc, runs its migrations and sets
// up its vault and inbox sealing, as start does, without starting anything else: a process that
// acknowledges transactions and then dies.
func prepareService(t *testing.T, db *dbutil.Database, vc VaultConfig) *Service {
	t.Helper()
	cfg := testConfig(deadHomeserver(t).URL)
	cfg.Vault = vc
	log := zerolog.New(astest.LogWriter(t)).Level(zerolog.WarnLevel)
	svc, err := newService(cfg, testRegistration(), nil, log, db)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(log.WithContext(context.Background()))
	if err = svc.upgradeDatabases(ctx); err != nil {
		t.Fatal(err)
	}
	svc.setupVault(ctx)
	t.Cleanup(func() {
		cancel()
		svc.bg.Wait()
	})
	return svc
}

func acceptDirect(t *testing.T, svc *Service, txnID string, events ...map[string]any) {
	t.Helper()
	parsed, _, err := parseTransaction(txnID, []byte(transaction(events...)))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err = svc.db.Inbox.Accept(context.Background(), txnID, parsed, time.Now()); err != nil {
		t.Fatal(err)
	}
}

// inboxColumns returns every inbox row's event_json and event_sealed, in order.
func inboxColumns(t *testing.T, db *dbutil.Database) (plain []string, sealed [][]byte) {
	t.Helper()
	rows, err := db.Query(context.Background(), `SELECT event_json, event_sealed FROM as_inbox ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var p string
		var s []byte
		if err = rows.Scan(&p, &s); err != nil {
			t.Fatal(err)
		}
		plain, sealed = append(plain, p), append(sealed, s)
	}
	return plain, sealed
}

// TestInboxSealedReplayAfterCrash stores events sealed, as a run that acknowledged them and died
// would, and checks that the next run opens and handles them in order.
func TestInboxSealedReplayAfterCrash(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			db := newTestDB(t, dialect)
			keyFile, _ := newKeyFile(t)
			vc := VaultConfig{KeyFile: &keyFile}
			room := id.RoomID("!portal:example.org")
			svc1 := prepareService(t, db, vc)
			if err := svc1.db.Room.Claim(context.Background(), room, "rec", "", "", time.Now()); err != nil {
				t.Fatal(err)
			}
			acceptDirect(t, svc1, "7",
				messageEvent("$1", string(room), "@alice:example.org", "body-one"),
				messageEvent("$2", string(room), "@alice:example.org", "body-two"),
				messageEvent("$3", string(room), "@alice:example.org", "body-three"),
			)
			plain, sealed := inboxColumns(t, db)
			if len(sealed) != 3 {
				t.Fatalf("inbox rows = %d, want 3", len(sealed))
			}
			for i := range sealed {
				if plain[i] != "" || len(sealed[i]) == 0 || bytes.Contains(sealed[i], []byte("body-")) {
					t.Errorf("row %d stored as event_json %q, event_sealed %d bytes; want only ciphertext", i, plain[i], len(sealed[i]))
				}
			}

			br := newRecordingBridge("rec")
			cfg := testConfig(deadHomeserver(t).URL)
			cfg.Vault = vc
			startTestService(t, db, cfg, br)
			var got []string
			for range 3 {
				evt := br.next(t)
				got = append(got, fmt.Sprintf("%s:%s", evt.ID, evt.Content.AsMessage().Body))
			}
			if want := "[$1:body-one $2:body-two $3:body-three]"; fmt.Sprint(got) != want {
				t.Fatalf("replay handled %v, want %s", got, want)
			}
		})
	}
}

// TestInboxSealsPlaintextRowsAtStart covers an upgrade: rows an older version stored in
// plaintext (event_sealed NULL) are sealed at start, before the replay, and still handled.
func TestInboxSealsPlaintextRowsAtStart(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			db := newTestDB(t, dialect)
			room := id.RoomID("!portal:example.org")
			// The vault off stores rows exactly as the version before sealing did.
			old := prepareService(t, db, VaultConfig{})
			if err := old.db.Room.Claim(context.Background(), room, "rec", "", "", time.Now()); err != nil {
				t.Fatal(err)
			}
			acceptDirect(t, old, "1", messageEvent("$old", string(room), "@alice:example.org", "old-body"))
			if plain, sealed := inboxColumns(t, db); len(plain) != 1 || !strings.Contains(plain[0], "old-body") || sealed[0] != nil {
				t.Fatalf("row stored by the old path = %q, %x; want plaintext", plain, sealed)
			}

			keyFile, _ := newKeyFile(t)
			svc := prepareService(t, db, VaultConfig{KeyFile: &keyFile})
			plain, sealed := inboxColumns(t, db)
			if len(plain) != 1 || plain[0] != "" || len(sealed[0]) == 0 {
				t.Fatalf("row after a start with the vault on = %q, %d bytes sealed; want it sealed", plain, len(sealed[0]))
			}
			events, err := svc.db.Inbox.Pending(context.Background(), 0, 10)
			if err != nil || len(events) != 1 || events[0].OpenErr != nil || !strings.Contains(string(events[0].JSON), "old-body") {
				t.Fatalf("Pending() after sealing = %+v, %v; want the old event, opened", events, err)
			}
		})
	}
}

// TestInboxEventsHeldWhileKeyMissing seals events under an inbox key whose master key then goes
// missing: the next run keeps them in the inbox unhandled (never dropped), seals new events under
// a new inbox key and handles those, and handles the held ones once the key is back.
func TestInboxEventsHeldWhileKeyMissing(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			db := newTestDB(t, dialect)
			keyFile, k1 := newKeyFile(t)
			room := id.RoomID("!portal:example.org")
			svc1 := prepareService(t, db, VaultConfig{KeyFile: &keyFile})
			if err := svc1.db.Room.Claim(context.Background(), room, "rec", "", "", time.Now()); err != nil {
				t.Fatal(err)
			}
			acceptDirect(t, svc1, "1", messageEvent("$held", string(room), "@alice:example.org", "held-body"))

			k2 := mustGenerateKey(t)
			writeKeys(t, keyFile, k2)
			clock := clock.NewFake(time.Now())
			br := newRecordingBridge("rec")
			cfg := testConfig(deadHomeserver(t).URL)
			cfg.Vault = VaultConfig{KeyFile: &keyFile}
			logs := &lockedBuffer{}
			log := zerolog.New(logs).Level(zerolog.InfoLevel)
			svc, err := newService(cfg, testRegistration(), []Bridge{br}, log, db)
			if err != nil {
				t.Fatal(err)
			}
			svc.clk = clock
			ctx, cancel := context.WithCancel(log.WithContext(context.Background()))
			if err = svc.start(ctx); err != nil {
				cancel()
				t.Fatalf("start() = %v; a missing key must not stop the service", err)
			}
			t.Cleanup(func() {
				cancel()
				svc.stopServing()
			})
			base := "http://" + svc.listenAddr.String()
			body := transaction(messageEvent("$new", string(room), "@alice:example.org", "new-body"))
			if status, _ := do(t, base, testRequest{http.MethodPut, "/_matrix/app/v1/transactions/2", testHSToken, body}); status != http.StatusOK {
				t.Fatalf("transaction = %d, want 200", status)
			}
			if got := br.next(t); got.ID != "$new" {
				t.Fatalf("handled %s first, want $new (the held event cannot be opened)", got.ID)
			}
			br.assertNoEvent(t, 200*time.Millisecond)
			if n := countRows(t, db, "as_inbox"); n != 1 {
				t.Fatalf("inbox rows while the key is missing = %d, want 1 (the held event)", n)
			}
			if !strings.Contains(logs.String(), "Inbox events cannot be opened") {
				t.Errorf("no Error about the held inbox events in the log:\n%s", logs.String())
			}
			_, sealed := inboxColumns(t, db)
			if len(sealed) != 1 || len(sealed[0]) == 0 {
				t.Fatalf("held row = %x, want it still sealed", sealed)
			}

			writeKeys(t, keyFile, k2, k1)
			if clock.BlockUntilInterval(astest.Within(t, 10*time.Second), inboxRetryInterval) != nil {
				t.Fatal("the inbox retry loop never started its ticker")
			}
			clock.Advance(inboxRetryInterval)
			evt := br.next(t)
			if evt.ID != "$held" || evt.Content.AsMessage().Body != "held-body" {
				t.Fatalf("after the key came back, handled %s %q; want $held", evt.ID, evt.Content.AsMessage().Body)
			}
		})
	}
}

// TestReplaceInboxKeyReseals checks the shred step on a running service: pending rows are
// re-sealed under a new inbox key, the old inbox key is deleted, and a copy of a row taken
// before (an old WAL frame or a backup) no longer opens.
func TestReplaceInboxKeyReseals(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			db := newTestDB(t, dialect)
			keyFile, _ := newKeyFile(t)
			svc := prepareService(t, db, VaultConfig{KeyFile: &keyFile})
			acceptDirect(t, svc, "1", messageEvent("$p", "!room:example.org", "@alice:example.org", "pending-body"))
			_, before := inboxColumns(t, db)
			ctx := context.Background()
			if err := svc.replaceInboxKey(ctx); err != nil {
				t.Fatalf("replaceInboxKey() = %v", err)
			}
			_, after := inboxColumns(t, db)
			if len(after) != 1 || bytes.Equal(before[0], after[0]) {
				t.Fatalf("row after replacement = %x, want it re-sealed", after)
			}
			oldID, _ := vault.InboxKeyID(before[0])
			newID, _ := vault.InboxKeyID(after[0])
			if newID == oldID {
				t.Errorf("re-sealed under inbox key %d, want a new key", newID)
			}
			events, err := svc.db.Inbox.Pending(ctx, 0, 10)
			if err != nil || len(events) != 1 || !strings.Contains(string(events[0].JSON), "pending-body") {
				t.Fatalf("Pending() after replacement = %+v, %v", events, err)
			}
			// A fresh process with the same master key cannot open the copy taken before.
			fresh := vault.New(vault.ChildDB(db, zerolog.Nop()), vault.Options{Keys: vault.FileKeys(keyFile)})
			if err = fresh.Reload(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err = fresh.LoadInboxKeys(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err = fresh.OpenInbox(before[0], nil); !errors.Is(err, vault.ErrKeyUnavailable) {
				t.Errorf("OpenInbox(copy from before) = %v, want ErrKeyUnavailable", err)
			}
			var keys int
			if err = db.QueryRow(ctx, `SELECT COUNT(*) FROM as_vault_inbox_key`).Scan(&keys); err != nil || keys != 1 {
				t.Errorf("inbox keys after replacement = %d, %v; want 1", keys, err)
			}
		})
	}
}

// TestShredRotationRetiresInboxKey runs one shred rotation (vault.shred_backups) and checks that
// the inbox key was replaced before the master key that wrapped it was retired: a backup of the
// inbox key and a pending row, taken before, cannot be opened with the key file afterwards.
func TestShredRotationRetiresInboxKey(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			db := newTestDB(t, dialect)
			keyFile, k1 := newKeyFile(t)
			svc := prepareService(t, db, VaultConfig{KeyFile: &keyFile})
			acceptDirect(t, svc, "1", messageEvent("$p", "!room:example.org", "@alice:example.org", "pending-body"))
			ctx := zerolog.New(astest.LogWriter(t)).WithContext(context.Background())
			_, before := inboxColumns(t, db)
			var oldWrapped []byte
			var oldKEK string
			if err := db.QueryRow(ctx, `SELECT kek_id, wrapped FROM as_vault_inbox_key`).Scan(&oldKEK, &oldWrapped); err != nil {
				t.Fatal(err)
			}
			if oldKEK != k1.ID() {
				t.Fatalf("inbox key wrapped by %s, want %s", oldKEK, k1.ID())
			}

			bs := privacy.NewBackupShredder(privacy.ShredderOptions{Vault: svc.inboxKeys, KeyFile: keyFile, ReplaceInboxKey: svc.replaceInboxKey})
			res, err := bs.Rotate(ctx, true)
			if err != nil {
				t.Fatalf("shred rotation = %v", err)
			}
			if len(res.Retired) != 1 || res.Retired[0] != k1.ID() {
				t.Errorf("shred retired %v, want [%s]", res.Retired, k1.ID())
			}
			var kekID string
			if err = db.QueryRow(ctx, `SELECT kek_id FROM as_vault_inbox_key`).Scan(&kekID); err != nil || kekID != res.KeyID {
				t.Errorf("inbox key after the shred wrapped by %s, %v; want the new master key %s", kekID, err, res.KeyID)
			}
			// The backup: old inbox key row and old ciphertext, opened with the key file now.
			backup := astest.TestDB(t, dialect)
			backupVault := vault.ChildDB(backup, zerolog.Nop())
			bdb := prepareBackup(t, ctx, backup, backupVault)
			if _, err = bdb.Exec(ctx, `INSERT INTO as_vault_kek (kek_id, check_value, created_at) VALUES ($1, $2, 0)`, k1.ID(), []byte{0}); err != nil {
				t.Fatal(err)
			}
			if _, err = bdb.Exec(ctx, `INSERT INTO as_vault_inbox_key (key_id, kek_id, wrapped, created_at) VALUES (1, $1, $2, 0)`, k1.ID(), oldWrapped); err != nil {
				t.Fatal(err)
			}
			fromBackup := vault.New(bdb, vault.Options{Keys: vault.FileKeys(keyFile)})
			_ = fromBackup.Reload(ctx)
			st, _ := fromBackup.LoadInboxKeys(ctx)
			if len(st.Unavailable) != 1 {
				t.Errorf("backup's inbox key with the key file after the shred: %+v, want it unavailable", st)
			}
			if _, err = fromBackup.OpenInbox(before[0], nil); !errors.Is(err, vault.ErrKeyUnavailable) {
				t.Errorf("backup OpenInbox(pending row from before) = %v, want ErrKeyUnavailable", err)
			}
			// The live service still handles the pending row.
			events, err := svc.db.Inbox.Pending(ctx, 0, 10)
			if err != nil || len(events) != 1 || events[0].OpenErr != nil {
				t.Fatalf("live Pending() after the shred = %+v, %v", events, err)
			}
		})
	}
}

// prepareBackup migrates a fresh database like the service does and returns its vault child.
func prepareBackup(t *testing.T, ctx context.Context, raw, child *dbutil.Database) *dbutil.Database {
	t.Helper()
	svc, err := newService(testConfig("http://127.0.0.1:1"), testRegistration(), nil, zerolog.Nop(), raw)
	if err != nil {
		t.Fatal(err)
	}
	if err = svc.upgradeDatabases(ctx); err != nil {
		t.Fatal(err)
	}
	return child
}

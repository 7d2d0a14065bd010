package database_test

import (
	"context"
	"os"
	"slices"
	"testing"
	"testing/fstest"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/database"
	"github.com/custodian-matrix/custodian/appservice/privacy"
)

// schemaOf returns "table.column" for every column of the privacy tables, sorted.
func schemaOf(t *testing.T, ctx context.Context, db *dbutil.Database) []string {
	t.Helper()
	var out []string
	for _, table := range []string{"as_activity", "as_erasure", "as_tombstone", "as_privacy_key", "as_export"} {
		query := `SELECT name FROM pragma_table_info($1)`
		if db.Dialect == dbutil.Postgres {
			query = `SELECT column_name FROM information_schema.columns WHERE table_schema=current_schema() AND table_name=$1`
		}
		rows, err := db.Query(ctx, query, table)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var col string
			if err = rows.Scan(&col); err != nil {
				t.Fatal(err)
			}
			out = append(out, table+"."+col)
		}
		_ = rows.Close()
	}
	slices.Sort(out)
	return out
}

// TestPrivacyUpgradeFromV1 upgrades a v1 database holding users to v2 and checks that it ends
// up with the same privacy tables as a fresh install, and that they work.
func TestPrivacyUpgradeFromV1(t *testing.T) {
	v1, err := os.ReadFile("testdata/v1-schema.sql")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	astest.ForEachDialect(t, func(t *testing.T, raw *dbutil.Database) {
		raw.UpgradeTable = dbutil.BuildUpgradeTable().WithFS(fstest.MapFS{"00-latest-schema.sql": {Data: v1}}).Finish()
		if err := raw.Upgrade(ctx); err != nil {
			t.Fatalf("creating the v1 schema: %v", err)
		}
		if _, err := raw.Exec(ctx, `INSERT INTO users (mxid, created_at) VALUES ('@alice:example.org', 1)`); err != nil {
			t.Fatal(err)
		}
		db := database.New(raw)
		if err := db.Upgrade(ctx); err != nil {
			t.Fatalf("upgrading to v2: %v", err)
		}
		fresh := astest.CoreDB(t, map[dbutil.Dialect]string{dbutil.SQLite: astest.SQLite, dbutil.Postgres: astest.Postgres}[raw.Dialect])
		if got, want := schemaOf(t, ctx, raw), schemaOf(t, ctx, fresh.Database); !slices.Equal(got, want) || len(got) == 0 {
			t.Errorf("upgraded schema = %v, want the fresh one %v", got, want)
		}

		pq := db.Privacy()
		store := privacy.NewStore(raw)
		now := time.UnixMilli(1_700_000_000_000)
		if err := pq.RecordActivity(ctx, "$e1", "@alice:example.org", "!r:x", "ping", now); err != nil {
			t.Fatal(err)
		}
		if err := pq.RecordActivity(ctx, "$e1", "@alice:example.org", "!r:x", "ping", now); err != nil {
			t.Fatalf("recording the same activity again = %v, want nil", err)
		}
		job := &privacy.ErasureJob{JobID: "er_1", User: "@alice:example.org", UserHash: "h", HashKeyID: "k", Trigger: "user", Modules: []string{"a", "b"}, NotifyRoom: "!dm:x", CreatedAt: now}
		if created, err := store.CreateErasure(ctx, job); err != nil || !created {
			t.Fatalf("CreateErasure = %v, %v", created, err)
		}
		if created, err := store.CreateErasure(ctx, job); err != nil || created {
			t.Fatalf("second CreateErasure = %v, %v; want false, nil", created, err)
		}
		job.LeaveRooms = []id.RoomID{"!dm:x"}
		job.Counts = []byte(`{"erased":{}}`)
		job.RemoteFailed = []string{"a"}
		if err := store.CommitErasure(ctx, job, privacy.ErasureCleanup, now); err != nil {
			t.Fatal(err)
		}
		got, err := store.GetErasure(ctx, "er_1")
		if err != nil || got.User != "" || got.State != privacy.ErasureCleanup || !slices.Equal(got.Modules, []string{"a", "b"}) ||
			!slices.Equal(got.LeaveRooms, job.LeaveRooms) || !slices.Equal(got.RemoteFailed, []string{"a"}) || got.NotifyRoom != "!dm:x" {
			t.Errorf("GetErasure after commit = %+v, %v", got, err)
		}
		if unfinished, err := store.UnfinishedErasures(ctx); err != nil || len(unfinished) != 1 {
			t.Errorf("UnfinishedErasures = %d, %v; want 1", len(unfinished), err)
		}
		if err := store.FinishErasure(ctx, "er_1", now); err != nil {
			t.Fatal(err)
		}
		if unfinished, err := store.UnfinishedErasures(ctx); err != nil || len(unfinished) != 0 {
			t.Errorf("UnfinishedErasures after finishing = %d, %v; want 0", len(unfinished), err)
		}
		key, err := store.GetOrCreateKey(ctx, "k", func() ([]byte, error) { return []byte{1, 2, 3}, nil })
		if err != nil || string(key) != "\x01\x02\x03" {
			t.Fatalf("GetOrCreateKey = %x, %v", key, err)
		}
		if again, _ := store.GetOrCreateKey(ctx, "k", func() ([]byte, error) { return []byte{9}, nil }); string(again) != string(key) {
			t.Errorf("second GetOrCreateKey = %x, want the stored %x", again, key)
		}
		users, err := pq.LocalUsers(ctx, "example.org", "", 10)
		if err != nil || len(users) != 1 || users[0] != "@alice:example.org" {
			t.Errorf("LocalUsers = %v, %v", users, err)
		}
		if users, _ = pq.LocalUsers(ctx, "example_org", "", 10); len(users) != 0 {
			t.Errorf("LocalUsers treats _ as a wildcard: %v", users)
		}
	})
}

func TestEscapeLike(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain", "plain"},
		{"a_b%c", `a\_b\%c`},
		{`back\slash`, `back\\slash`},
	}
	for _, tt := range tests {
		if got := database.EscapeLike(tt.in); got != tt.want {
			t.Errorf("EscapeLike(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

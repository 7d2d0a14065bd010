package webhookdb_test

import (
	"context"
	"database/sql"
	"os"
	"testing"
	"testing/fstest"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/database"
	"github.com/custodian-matrix/custodian/bridges/webhook/webhookdb"
)

// TestUpgradeMovesDirectChatsToManagementRooms builds the bridge's v3 schema, which kept the
// secrets rooms in webhook_dm, on a current core schema, records two users' rooms there (one
// user already has a management room in the core), upgrades, and checks that the core now
// holds the rooms, a recorded management room wins, and webhook_dm is gone.
func TestUpgradeMovesDirectChatsToManagementRooms(t *testing.T) {
	v3, err := os.ReadFile("testdata/v3-schema.sql")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	astest.ForEachDialect(t, func(t *testing.T, raw *dbutil.Database) {
		core := database.New(raw)
		if err := core.Upgrade(ctx); err != nil {
			t.Fatal(err)
		}
		old := raw.Child("webhook_version",
			dbutil.BuildUpgradeTable().WithFS(fstest.MapFS{"00-latest-schema.sql": {Data: v3}}).Finish(),
			dbutil.ZeroLogger(zerolog.Nop()))
		if err := old.Upgrade(ctx); err != nil {
			t.Fatalf("creating the v3 schema: %v", err)
		}
		for _, user := range []string{"@alice:example.org", "@bob:example.org", "@carol:example.org"} {
			if err := core.User.Ensure(ctx, id.UserID(user)); err != nil {
				t.Fatal(err)
			}
		}
		if err := core.User.SetManagementRoom(ctx, "@bob:example.org", "!core-bob:example.org"); err != nil {
			t.Fatal(err)
		}
		for _, row := range [][2]string{{"@alice:example.org", "!dm-alice:example.org"}, {"@bob:example.org", "!dm-bob:example.org"}} {
			if _, err := raw.Exec(ctx, `INSERT INTO webhook_dm (user_mxid, room_id, created_at) VALUES ($1, $2, 1)`, row[0], row[1]); err != nil {
				t.Fatal(err)
			}
		}

		db := raw.Child("webhook_version", webhookdb.UpgradeTable(), dbutil.ZeroLogger(zerolog.Nop()))
		if err := db.Upgrade(ctx); err != nil {
			t.Fatalf("upgrading: %v", err)
		}
		for user, want := range map[string]string{
			"@alice:example.org": "!dm-alice:example.org",
			"@bob:example.org":   "!core-bob:example.org",
			"@carol:example.org": "",
		} {
			got, err := core.User.ManagementRoom(ctx, id.UserID(user))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != want {
				t.Errorf("management room of %s = %q, want %q", user, got, want)
			}
		}
		var n int
		err := raw.QueryRow(ctx, `SELECT COUNT(*) FROM webhook_dm`).Scan(&n)
		if err == nil || err == sql.ErrNoRows {
			t.Errorf("webhook_dm still exists after the upgrade (%d rows)", n)
		}
	})
}

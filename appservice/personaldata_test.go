package appservice

import (
	"context"
	"strings"
	"testing"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/privacy"
)

// migratedService returns a service whose core, state-store and bridge migrations have run on a
// fresh database of the given dialect.
func migratedService(t *testing.T, dialect string, bridges ...Bridge) *Service {
	t.Helper()
	svc, err := newService(testConfig("http://127.0.0.1:1"), testRegistration(), bridges, testLogger(t), astest.TestDB(t, dialect))
	if err != nil {
		t.Fatal(err)
	}
	if err = svc.upgradeDatabases(context.Background()); err != nil {
		t.Fatal(err)
	}
	return svc
}

// TestPersonalDataInventoryMatchesSchema is the invariant test: after every migration, every
// table that references users or holds a user-ID column is declared, with a foreign key that
// matches its erase policy.
func TestPersonalDataInventoryMatchesSchema(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			svc := migratedService(t, dialect, newRecordingBridge("rec"))
			if err := privacy.CheckInventory(context.Background(), svc.rawDB, svc.inventory()); err != nil {
				t.Fatalf("inventory check failed on the real schema:\n%v", err)
			}
		})
	}
}

func TestCheckInventoryCatchesUndeclaredData(t *testing.T) {
	tests := []struct {
		name    string
		ddl     string
		extra   []UserTable
		wantErr string
	}{
		{
			name:    "table referencing users, undeclared",
			ddl:     `CREATE TABLE x_hook (id TEXT PRIMARY KEY, owner TEXT REFERENCES users (mxid) ON DELETE CASCADE)`,
			wantErr: "table x_hook references users but is not declared",
		},
		{
			name:    "user-ID column without a foreign key, undeclared",
			ddl:     `CREATE TABLE x_log (id TEXT PRIMARY KEY, creator_mxid TEXT)`,
			wantErr: "table x_log has user-ID column creator_mxid",
		},
		{
			name:    "declared cascade but the key does not cascade",
			ddl:     `CREATE TABLE x_acct (user_mxid TEXT REFERENCES users (mxid) ON DELETE SET NULL)`,
			extra:   []UserTable{{Table: "x_acct", UserColumn: "user_mxid"}},
			wantErr: "must reference users (mxid) ON DELETE CASCADE",
		},
		{
			name:    "declared cascade without any key",
			ddl:     `CREATE TABLE x_acct (user_mxid TEXT)`,
			extra:   []UserTable{{Table: "x_acct", UserColumn: "user_mxid"}},
			wantErr: "must reference users (mxid) ON DELETE CASCADE",
		},
		{
			name:    "declared column missing",
			ddl:     `CREATE TABLE x_acct (user_mxid TEXT REFERENCES users (mxid) ON DELETE CASCADE)`,
			extra:   []UserTable{{Table: "x_acct", UserColumn: "user_mxid", Export: []string{"nick"}}},
			wantErr: "declared column nick does not exist",
		},
		{
			name:    "declared source event column missing",
			ddl:     `CREATE TABLE x_acct (user_mxid TEXT REFERENCES users (mxid) ON DELETE CASCADE)`,
			extra:   []UserTable{{Table: "x_acct", UserColumn: "user_mxid", SourceEventColumn: "source_event"}},
			wantErr: "declared column source_event does not exist",
		},
		{
			name:    "retain without reason",
			ddl:     `CREATE TABLE x_audit (actor_mxid TEXT)`,
			extra:   []UserTable{{Table: "x_audit", UserColumn: "actor_mxid", Policy: EraseRetain}},
			wantErr: "EraseRetain needs a Reason",
		},
		{
			name:    "match with a cascading policy",
			ddl:     `CREATE TABLE x_sess (sender_key TEXT)`,
			extra:   []UserTable{{Table: "x_sess", UserColumn: "sender_key", Match: `sender_key=$1`}},
			wantErr: "Match needs EraseDeleteRows",
		},
		{
			name:  "match deleting rows",
			ddl:   `CREATE TABLE x_sess (sender_key TEXT)`,
			extra: []UserTable{{Table: "x_sess", UserColumn: "sender_key", Match: `sender_key=$1`, Policy: EraseDeleteRows}},
		},
		{
			name:  "declared and cascading",
			ddl:   `CREATE TABLE x_acct (user_mxid TEXT REFERENCES users (mxid) ON DELETE CASCADE, nick TEXT)`,
			extra: []UserTable{{Table: "x_acct", UserColumn: "user_mxid", Export: []string{"nick"}}},
		},
	}
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					svc := migratedService(t, dialect)
					ctx := context.Background()
					if _, err := svc.rawDB.Exec(ctx, tt.ddl); err != nil {
						t.Fatal(err)
					}
					inv := svc.inventory()
					inv["x"] = tt.extra
					err := privacy.CheckInventory(ctx, svc.rawDB, inv)
					if tt.wantErr == "" {
						if err != nil {
							t.Fatalf("CheckInventory = %v, want nil", err)
						}
					} else if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
						t.Fatalf("CheckInventory = %v, want an error containing %q", err, tt.wantErr)
					}
				})
			}
		})
	}
}

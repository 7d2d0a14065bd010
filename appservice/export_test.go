package appservice

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/custodian-matrix/custodian/appservice/astest"
)

func TestExportHoldsEverythingButSecrets(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newPrivacyEnv(t, dialect, nil).start()
			env.seedUser(pvAlice, pvDM)
			env.seedUser(pvBob, "!dm-bob:example.org")
			export, err := env.svc.engine.Export(env.ctx, pvAlice)
			if err != nil {
				t.Fatal(err)
			}
			data, err := json.Marshal(export)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(data), pvBob.String()) {
				t.Error("alice's export mentions bob")
			}
			if strings.Contains(string(data), "sealed-secret-bytes") {
				t.Error("the export holds a secret's value")
			}
			var doc struct {
				SchemaVersion int       `json:"schema_version"`
				GeneratedAt   time.Time `json:"generated_at"`
				User          string    `json:"user"`
				Modules       map[string]map[string]struct {
					Description   string           `json:"description"`
					OnErasure     string           `json:"on_erasure"`
					Retention     string           `json:"retention"`
					SecretColumns []string         `json:"secret_columns"`
					RowCount      int              `json:"row_count"`
					Rows          []map[string]any `json:"rows"`
				} `json:"modules"`
			}
			if err = json.Unmarshal(data, &doc); err != nil {
				t.Fatal(err)
			}
			if doc.SchemaVersion != 1 || doc.User != pvAlice.String() || !doc.GeneratedAt.Equal(pvEpoch) {
				t.Errorf("header = %d, %s, %s; want 1, alice, the clock's time", doc.SchemaVersion, doc.User, doc.GeneratedAt)
			}
			for module, tables := range env.svc.inventory() {
				for _, ut := range tables {
					if _, ok := doc.Modules[module][ut.Table]; !ok {
						t.Errorf("export lacks declared table %s.%s", module, ut.Table)
					}
				}
			}

			users := doc.Modules[CoreModule]["users"]
			if users.RowCount != 1 || users.Rows[0]["mxid"] != pvAlice.String() || users.Rows[0]["management_room"] != pvDM.String() {
				t.Errorf("users = %+v, want alice's row with her management room", users)
			}

			setup := doc.Modules[CoreModule]["as_bot_setup"]
			if setup.RowCount != 1 || setup.OnErasure != "set_null" {
				t.Fatalf("as_bot_setup = %+v, want one row, set_null", setup)
			}
			row := setup.Rows[0]
			cfg, _ := row["config"].(map[string]any)
			if row["room_id"] != pvDM.String() || row["invite_event_id"] != "$invite-"+pvDM.String() || row["is_direct"] != true ||
				row["invited_at"] != "2026-03-01T12:00:00Z" || cfg["command_prefix"] != "!" {
				t.Errorf("setup metadata = %v, want room, invite event, direct flag, time and the configuration as JSON", row)
			}

			hooks := doc.Modules["hooks"]["hooks_hook"]
			if hooks.RowCount != 2 || len(hooks.SecretColumns) != 1 || hooks.SecretColumns[0] != "token_sealed" {
				t.Fatalf("hooks_hook = %+v, want two rows and the secret column listed", hooks)
			}
			hook := hooks.Rows[0]
			if hook["token_sealed"] != "[redacted]" || hook["room_id"] != "!claimed-alice:example.org" ||
				!strings.HasPrefix(hook["source_event"].(string), "$add-alice-") || hook["created_at"] != "2026-03-01T12:00:00Z" || hook["name"] == nil {
				t.Errorf("hook row = %v, want provenance, the time, and the secret redacted", hook)
			}
			if callers := doc.Modules["hooks"]["hooks_caller"]; callers.Retention != "60 days" || callers.Rows[0]["ip"] != "192.0.2.7" {
				t.Errorf("hooks_caller = %+v, want the network retention and the IP", callers)
			}
			if activity := doc.Modules[CoreModule]["as_activity"]; activity.Retention != "14 days" || activity.RowCount != 2 || activity.Rows[0]["action"] != "ping" {
				t.Errorf("as_activity = %+v, want two ping rows kept 14 days", activity)
			}
			if reg := doc.Modules[CoreModule]["mx_registrations"]; reg.RowCount != 1 || len(reg.Rows) != 0 {
				t.Errorf("mx_registrations = %+v, want a count without columns", reg)
			}
			if jobs := doc.Modules[CoreModule]["as_erasure"]; jobs.Rows == nil || jobs.RowCount != 0 {
				t.Errorf("as_erasure = %+v, want no rows (as an empty list)", jobs)
			}

			// Someone Custodian knows nothing about gets an empty export.
			empty, err := env.svc.engine.Export(env.ctx, "@nobody:example.org")
			if err != nil {
				t.Fatal(err)
			}
			for module, tables := range empty.Modules {
				for table, et := range tables {
					if et.RowCount != 0 {
						t.Errorf("export of an unknown user has %d rows in %s.%s", et.RowCount, module, table)
					}
				}
			}
		})
	}
}

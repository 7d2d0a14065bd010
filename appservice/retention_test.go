package appservice

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/privacy"
)

// seedAged adds an activity record and a caller record for each bridge for alice, age old.
func (env *privacyEnv) seedAged(age time.Duration, tag string) {
	env.t.Helper()
	at := env.clock.Now().Add(-age)
	if err := env.svc.db.Privacy().RecordActivity(env.ctx, id.EventID("$act-"+tag), pvAlice, pvDM, "ping", at); err != nil {
		env.t.Fatal(err)
	}
	for _, br := range []string{"hooks", "other"} {
		env.exec(fmt.Sprintf(`INSERT INTO %s_caller (user_mxid, ip, user_agent, seen_at) VALUES ($1, $2, $3, $4)`, br),
			pvAlice, "192.0.2."+tag, "curl", at.UnixMilli())
	}
}

func TestRetentionSweep(t *testing.T) {
	day := 24 * time.Hour
	tests := []struct {
		name         string
		activity     time.Duration // privacy.activity_retention; 0 for the default
		wantActivity []string      // tags of the activity rows left
	}{
		{name: "defaults", wantActivity: []string{"1", "2", "3"}},
		{name: "one hour of activity", activity: time.Hour, wantActivity: []string{"1"}},
	}
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					env := newPrivacyEnv(t, dialect, func(cfg *Config) { cfg.Privacy.ActivityRetention = tt.activity })
					env.start()
					env.seedAged(time.Minute, "1")
					env.seedAged(day, "2")
					env.seedAged(13*day, "3")
					env.seedAged(15*day, "4")
					env.seedAged(61*day, "5")
					env.addHook(env.hooks, "h-old", pvAlice, pvRoom, "$old") // no retention: kept
					env.exec(`UPDATE hooks_hook SET created_at=0`)
					// A finished erasure job of long ago goes; its tombstone stays.
					old := &privacy.ErasureJob{JobID: "er_old", UserHash: "h", HashKeyID: "k", Trigger: TriggerAdmin, CreatedAt: env.clock.Now().Add(-100 * day)}
					if _, err := env.svc.engine.Store().CreateErasure(env.ctx, old); err != nil {
						t.Fatal(err)
					}
					if err := env.svc.engine.Store().FinishErasure(env.ctx, "er_old", env.clock.Now().Add(-91*day)); err != nil {
						t.Fatal(err)
					}

					if _, err := env.svc.engine.SweepRetention(env.ctx); err != nil {
						t.Fatal(err)
					}
					if got := env.tags(`SELECT event_id FROM as_activity ORDER BY event_id`, "$act-"); strings.Join(got, ",") != strings.Join(tt.wantActivity, ",") {
						t.Errorf("activity left = %v, want %v", got, tt.wantActivity)
					}
					wantCallers := []string{"1", "2", "3", "4"}
					for _, br := range []string{"hooks", "other"} {
						if got := env.tags(fmt.Sprintf(`SELECT ip FROM %s_caller ORDER BY ip`, br), "192.0.2."); strings.Join(got, ",") != strings.Join(wantCallers, ",") {
							t.Errorf("%s callers left = %v, want %v (network retention 60 days)", br, got, wantCallers)
						}
					}
					if n := env.count(`SELECT COUNT(*) FROM hooks_hook`); n != 1 {
						t.Errorf("%d hooks left, want 1: no retention declared", n)
					}
					if n := env.count(`SELECT COUNT(*) FROM as_erasure`); n != 0 {
						t.Errorf("%d old erasure jobs left, want 0", n)
					}
				})
			}
		})
	}
}

// tags returns the first column of query's rows with prefix cut off.
func (env *privacyEnv) tags(query, prefix string) []string {
	env.t.Helper()
	rows, err := env.svc.rawDB.Query(env.ctx, query)
	if err != nil {
		env.t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err = rows.Scan(&s); err != nil {
			env.t.Fatal(err)
		}
		out = append(out, strings.TrimPrefix(s, prefix))
	}
	return out
}

func TestRetentionLoopRunsOnTheClock(t *testing.T) {
	env := newPrivacyEnv(t, astest.SQLite, func(cfg *Config) { cfg.Privacy.SweepInterval = 5 * time.Minute })
	env.start()
	env.seedAged(time.Hour, "1")
	// Other loops tick on the same clock (pruning every 10 minutes, the homeserver ping's
	// backoff), so wait for the sweep's own interval.
	if env.clock.BlockUntilInterval(astest.Within(t, 10*time.Second), 5*time.Minute) != nil {
		t.Fatal("the retention loop did not start its ticker")
	}
	env.clock.Advance(4 * time.Minute)
	if strings.Contains(env.logs.String(), retentionPass) {
		t.Fatal("swept before the interval passed")
	}
	// Fifteen days later the activity record is past its retention.
	env.clock.Set(env.clock.Now().Add(15 * 24 * time.Hour))
	env.clock.Advance(time.Minute)
	if n := env.pass(retentionPass, 1, "rows"); n != 1 {
		t.Errorf("sweep deleted %d rows, want 1 (the activity record)", n)
	}
}

func TestRetentionSweepTakesTheLockOnPostgres(t *testing.T) {
	if !strings.Contains(strings.Join(astest.Dialects(t), ","), astest.Postgres) {
		t.Skip("needs PostgreSQL (POSTGRES_TEST_URI)")
	}
	env := newPrivacyEnv(t, astest.Postgres, nil).start()
	env.seedAged(61*24*time.Hour, "1")
	// Another instance is sweeping: it holds the lock on its own connection.
	conn, err := env.svc.rawDB.RawDB.Conn(env.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var got bool
	if err = conn.QueryRowContext(env.ctx, `SELECT pg_try_advisory_lock($1)`, privacy.SweepLockKey("retention")).Scan(&got); err != nil || !got {
		t.Fatalf("taking the lock = %v, %v", got, err)
	}
	if n, err := env.svc.engine.SweepRetention(env.ctx); err != nil || n != 0 {
		t.Errorf("sweep while another instance holds the lock = %d rows, %v; want 0, nil", n, err)
	}
	if n := env.count(`SELECT COUNT(*) FROM as_activity`); n != 1 {
		t.Errorf("%d activity rows after a skipped sweep, want 1", n)
	}
	if _, err = conn.ExecContext(env.ctx, `SELECT pg_advisory_unlock($1)`, privacy.SweepLockKey("retention")); err != nil {
		t.Fatal(err)
	}
	if n, err := env.svc.engine.SweepRetention(env.ctx); err != nil || n != 3 {
		t.Errorf("sweep after the lock was released = %d rows, %v; want 3, nil", n, err)
	}
}

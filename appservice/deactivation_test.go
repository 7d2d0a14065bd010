package appservice

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
)

const pvAdminToken = "synapse-admin-token-for-tests"

// withAdminToken configures privacy.deactivation.admin_token_file.
func withAdminToken(t *testing.T) func(cfg *Config) {
	path := filepath.Join(t.TempDir(), "admin.token")
	if err := os.WriteFile(path, []byte(pvAdminToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return func(cfg *Config) { cfg.Privacy.Deactivation.AdminTokenFile = &path }
}

func TestDeactivationAfterLeave(t *testing.T) {
	ghost := "hooks_admin"
	tests := []struct {
		name        string
		access      string // "token", "ghost" or "" for none
		deactivated bool
		hasProfile  bool
		kicked      bool
		wantErased  bool
		wantSuspect bool
	}{
		{name: "admin token, deactivated", access: "token", deactivated: true, wantErased: true},
		{name: "admin token, active", access: "token", hasProfile: true},
		{name: "admin token, active without profile", access: "token"},
		{name: "promoted ghost, deactivated", access: "ghost", deactivated: true, wantErased: true},
		// Synapse answers 404 for the profile of any local user without a display name and an
		// avatar: without admin access that is a suspicion, never an erasure.
		{name: "no admin access, profile gone", deactivated: true, wantSuspect: true},
		{name: "no admin access, active without profile", wantSuspect: true},
		{name: "no admin access, profile present", hasProfile: true},
		{name: "kicked, not a leave of their own", deactivated: true, kicked: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var access func(cfg *Config)
			switch tt.access {
			case "token":
				access = withAdminToken(t)
			case "ghost":
				access = func(cfg *Config) { cfg.Privacy.Deactivation.AdminLocalpart = &ghost }
			}
			adminAPI := withAdminAPI(t, pvAdminAPIToken)
			env := newPrivacyEnv(t, astest.SQLite, func(cfg *Config) {
				adminAPI(cfg)
				if access != nil {
					access(cfg)
				}
			})
			env.hs.adminToken = pvAdminToken
			env.hs.adminGhost = id.NewUserID(ghost, testDomain)
			env.start()
			if tt.access != "" {
				// Let the sweep at start pass before alice has data, so that it asks nothing.
				env.logs.waitFor(t, deactivationPass)
			}
			env.setUpRoom(pvRoom, false, pvAlice, pvBob)
			env.setUpRoom(pvDM, true, pvAlice)
			env.addHook(env.hooks, "h1", pvAlice, pvRoom, "$add1")
			if tt.deactivated {
				env.hs.setDeactivated(pvAlice)
			}
			if tt.hasProfile {
				env.hs.SetProfileField(pvAlice, "displayname", "Alice")
			}
			sender := pvAlice
			if tt.kicked {
				sender = pvBob
			}
			// Synapse sends one leave per room, all at once.
			for _, room := range []id.RoomID{pvRoom, pvDM} {
				env.hs.SetMembership(room, pvAlice, event.MembershipLeave)
				env.member(room, sender, pvAlice, event.MembershipLeave, nil)
			}
			if tt.wantSuspect {
				// A later leave, past the recheck interval, is checked again: the suspicion's
				// count grows, and it is not logged again.
				env.clock.Advance(deactivationRecheck)
				env.hs.SetMembership(pvRoom, pvAlice, event.MembershipJoin)
				env.member(pvRoom, pvAlice, pvAlice, event.MembershipJoin, nil)
				env.hs.SetMembership(pvRoom, pvAlice, event.MembershipLeave)
				env.member(pvRoom, pvAlice, pvAlice, event.MembershipLeave, nil)
			}
			env.awaitErasures()

			exists, err := env.svc.db.User.Exists(env.ctx, pvAlice)
			if err != nil {
				t.Fatal(err)
			}
			if exists == tt.wantErased {
				t.Errorf("users row exists = %v after the leaves, want erased = %v", exists, tt.wantErased)
			}
			if tt.wantErased {
				if rows := rowsMentioning(dumpDatabase(t, env.ctx, env.svc.rawDB), pvAlice.String()); len(rows) > 0 {
					t.Errorf("rows still name alice after her account's deactivation: %q", rows)
				}
				if n := env.count(`SELECT COUNT(*) FROM as_tombstone WHERE erase_trigger='deactivation'`); n != 1 {
					t.Errorf("%d deactivation tombstones, want 1", n)
				}
			}
			status, body := env.adminRequest(http.MethodGet, AdminAPIPrefix+"/deactivation-suspects", "Bearer "+pvAdminAPIToken, "")
			var listed struct {
				Suspects []struct {
					User   id.UserID `json:"user_id"`
					Reason string    `json:"reason"`
					Leaves int       `json:"leaves"`
				} `json:"suspects"`
			}
			if err = json.Unmarshal(body, &listed); status != http.StatusOK || err != nil {
				t.Fatalf("GET deactivation-suspects = %d %s (%v), want 200 and a list", status, body, err)
			}
			if tt.wantSuspect {
				if len(listed.Suspects) != 1 || listed.Suspects[0].User != pvAlice || listed.Suspects[0].Leaves != 2 {
					t.Errorf("deactivation suspects = %s, want alice, seen twice (one check per burst of leaves)", body)
				}
				if n := strings.Count(env.logs.String(), "Account of a leaving user looks deactivated"); n != 1 {
					t.Errorf("%d log lines about the new suspicion, want 1", n)
				}
			} else if len(listed.Suspects) != 0 {
				t.Errorf("deactivation suspects = %s, want none", body)
			}
			if tt.access != "" && !tt.kicked {
				env.hs.lock.Lock()
				calls := env.hs.adminCalls
				env.hs.lock.Unlock()
				if calls != 1 {
					t.Errorf("admin API calls for two leaves = %d, want 1", calls)
				}
			}
		})
	}
}

func TestDeactivationSweep(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newPrivacyEnv(t, dialect, withAdminToken(t))
			env.hs.adminToken = pvAdminToken
			env.start()
			// The sweep at start finds nobody (see TestDeactivationSweepAtStart).
			if n := env.pass(deactivationPass, 1, "erased"); n != 0 {
				t.Fatalf("the sweep at start erased %d users, want 0", n)
			}
			env.seedUser(pvAlice, pvDM)
			env.seedUser(pvBob, "!dm-bob:example.org")
			env.seedUser("@dave:elsewhere.example", "!dm-dave:example.org")
			env.hs.setDeactivated(pvAlice)

			// The sweep runs every privacy.deactivation.sweep_interval (6h by default).
			if env.clock.BlockUntilInterval(astest.Within(t, 10*time.Second), 6*time.Hour) != nil {
				t.Fatal("the deactivation loop did not start its ticker")
			}
			env.clock.Advance(6 * time.Hour)
			if n := env.pass(deactivationPass, 2, "erased"); n != 1 {
				t.Errorf("sweep erased %d users, want 1", n)
			}
			for user, want := range map[id.UserID]bool{pvAlice: false, pvBob: true, "@dave:elsewhere.example": true} {
				if exists, _ := env.svc.db.User.Exists(env.ctx, user); exists != want {
					t.Errorf("users row of %s exists = %v, want %v", user, exists, want)
				}
			}
			env.hs.lock.Lock()
			calls := env.hs.adminCalls
			env.hs.lock.Unlock()
			if calls != 2 {
				t.Errorf("admin API calls = %d, want 2 (the local users, not the remote one)", calls)
			}
		})
	}
}

func TestDeactivationNeedsAUsableAdminGhost(t *testing.T) {
	notOurs := "someone"
	env := newPrivacyEnv(t, astest.SQLite, func(cfg *Config) { cfg.Privacy.Deactivation.AdminLocalpart = &notOurs })
	err := env.svc.start(env.ctx)
	env.started = true
	if err == nil {
		t.Fatal("start with an admin ghost outside every namespace succeeded, want an error")
	}
}

// TestDeactivationSweepAtStart: a user deactivated while Custodian was down (or before admin
// access was configured) is erased right after the start, without waiting for a sweep interval.
func TestDeactivationSweepAtStart(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newPrivacyEnv(t, dialect, withAdminToken(t))
			env.hs.adminToken = pvAdminToken
			env.seedUser(pvAlice, pvDM)
			env.seedUser(pvBob, "!dm-bob:example.org")
			env.hs.setDeactivated(pvAlice)
			env.start()
			// The clock was not advanced: this is the sweep at start.
			if n := env.pass(deactivationPass, 1, "erased"); n != 1 {
				t.Errorf("the sweep at start erased %d users, want 1", n)
			}
			env.awaitErasures()
			for user, want := range map[id.UserID]bool{pvAlice: false, pvBob: true} {
				if exists, _ := env.svc.db.User.Exists(env.ctx, user); exists != want {
					t.Errorf("users row of %s exists = %v, want %v", user, exists, want)
				}
			}
		})
	}
}

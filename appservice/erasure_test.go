package appservice

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/privacy"
	"github.com/custodian-matrix/custodian/appservice/vault"
)

func TestEraseLeavesNoRowNamingTheUser(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newPrivacyEnv(t, dialect, nil).start()
			env.seedUser(pvAlice, pvDM)
			env.seedUser(pvBob, "!dm-bob:example.org")
			before := dumpDatabase(t, env.ctx, env.svc.rawDB)
			if len(rowsMentioning(before, pvAlice.String())) < 17 {
				t.Fatalf("seeding left only %d rows naming alice; the test would prove little", len(rowsMentioning(before, pvAlice.String())))
			}

			receipt, err := env.svc.engine.Erase(env.ctx, pvAlice, EraseRequest{Trigger: TriggerAdmin})
			if err != nil {
				t.Fatalf("Erase = %v", err)
			}
			after := dumpDatabase(t, env.ctx, env.svc.rawDB)
			if rows := rowsMentioning(after, pvAlice.String()); len(rows) > 0 {
				t.Errorf("after erasure %d rows still name alice:\n%s", len(rows), strings.Join(rows, "\n"))
			}
			if n := env.count(`SELECT COUNT(*) FROM users WHERE management_room=$1`, pvDM); n != 0 {
				t.Errorf("alice's management room is still recorded %d times after her erasure", n)
			}
			if n := env.count(`SELECT COUNT(*) FROM users WHERE management_room IS NOT NULL`); n != 1 {
				t.Errorf("%d management rooms recorded after alice's erasure, want bob's", n)
			}
			if b, a := len(rowsMentioning(before, pvBob.String())), len(rowsMentioning(after, pvBob.String())); a != b {
				t.Errorf("rows naming bob: %d before, %d after alice's erasure; want them untouched", b, a)
			}

			want := map[string]map[string]int64{
				CoreModule: {
					"users": 1, "as_bot_setup": 1, "as_room": 1, "as_inbox": 2, "mx_user_profile": 2,
					"mx_registrations": 1, "as_activity": 2, "mx_room_state": 4,
				},
				"hooks": {"hooks_hook": 2, "hooks_caller": 1},
				"other": {"other_hook": 1, "other_caller": 1},
			}
			if !equalCounts(receipt.Erased, want) {
				t.Errorf("receipt erased = %v, want %v", receipt.Erased, want)
			}
			if receipt.State != string(privacy.ErasureDone) || receipt.Trigger != TriggerAdmin || receipt.FinishedAt == nil {
				t.Errorf("receipt = %+v, want a finished admin erasure", receipt)
			}
			// Derived rows went with their hooks.
			if n := env.count(`SELECT COUNT(*) FROM hooks_delivery WHERE hook_id LIKE 'hook-alice-%'`); n != 0 {
				t.Errorf("%d deliveries of alice's hooks remain, want 0", n)
			}
			for _, br := range []*privacyBridge{env.hooks, env.other} {
				if got := br.erasedUsers(); !slices.Equal(got, []id.UserID{pvAlice}) {
					t.Errorf("%s EraseRemote calls = %v, want [%s]", br.id, got, pvAlice)
				}
			}
			// The bot left the direct chat it shared with alice alone, and its setup there ended.
			if got := env.hs.Membership(pvDM, pvBot); got == event.MembershipJoin {
				t.Errorf("bot membership in alice's DM = %q, want it gone", got)
			}

			hash, _, err := env.svc.engine.UserHash(env.ctx, pvAlice)
			if err != nil {
				t.Fatal(err)
			}
			tombstones, err := env.svc.engine.Store().Tombstones(env.ctx, hash)
			if err != nil || len(tombstones) != 1 || tombstones[0].JobID != receipt.JobID || tombstones[0].Trigger != TriggerAdmin {
				t.Fatalf("tombstones = %+v, %v; want one for job %s", tombstones, err, receipt.JobID)
			}
			if strings.Contains(string(tombstones[0].Counts), "alice") || !strings.Contains(string(tombstones[0].Counts), `"hooks_hook":2`) {
				t.Errorf("tombstone counts = %s, want counts and no user", tombstones[0].Counts)
			}

			// Erasing again is harmless: nothing more to erase, one more tombstone.
			again, err := env.svc.engine.Erase(env.ctx, pvAlice, EraseRequest{Trigger: TriggerAdmin})
			if err != nil {
				t.Fatalf("second Erase = %v", err)
			}
			if again.Total() != 0 || again.JobID == receipt.JobID {
				t.Errorf("second erase = %d rows in job %s, want 0 rows in a new job", again.Total(), again.JobID)
			}
			if rows := rowsMentioning(dumpDatabase(t, env.ctx, env.svc.rawDB), pvAlice.String()); len(rows) > 0 {
				t.Errorf("after the second erasure rows name alice:\n%s", strings.Join(rows, "\n"))
			}
			if tombstones, _ = env.svc.engine.Store().Tombstones(env.ctx, hash); len(tombstones) != 2 {
				t.Errorf("%d tombstones after two erasures, want 2", len(tombstones))
			}
		})
	}
}

func equalCounts(got, want map[string]map[string]int64) bool {
	if len(got) != len(want) {
		return false
	}
	for module, tables := range want {
		if !maps.Equal(got[module], tables) {
			return false
		}
	}
	return true
}

func TestEraseWithRequestIDIsIdempotent(t *testing.T) {
	env := newPrivacyEnv(t, astest.SQLite, nil).start()
	env.seedUser(pvAlice, pvDM)
	req := EraseRequest{Trigger: TriggerUser, RequestID: "command:$forget"}
	first, err := env.svc.engine.Erase(env.ctx, pvAlice, req)
	if err != nil {
		t.Fatal(err)
	}
	second, err := env.svc.engine.Erase(env.ctx, pvAlice, req)
	if err != nil {
		t.Fatal(err)
	}
	if second.JobID != first.JobID || second.Total() != first.Total() || first.Total() == 0 {
		t.Errorf("repeated request = job %s with %d rows, want the first job %s with its %d rows", second.JobID, second.Total(), first.JobID, first.Total())
	}
	if n := env.count(`SELECT COUNT(*) FROM as_tombstone`); n != 1 {
		t.Errorf("%d tombstones after a repeated request, want 1", n)
	}
	if strings.Contains(first.JobID, "forget") {
		t.Errorf("job ID %q reveals the request ID", first.JobID)
	}
}

func TestEraseRejectsBadRequests(t *testing.T) {
	env := newPrivacyEnv(t, astest.SQLite, nil).start()
	tests := []struct {
		name string
		user id.UserID
		req  EraseRequest
		want error
	}{
		{name: "unknown module", user: pvAlice, req: EraseRequest{Trigger: TriggerUser, Modules: []string{"nope"}}, want: ErrUnknownModule},
		{name: "core alone", user: pvAlice, req: EraseRequest{Trigger: TriggerUser, Modules: []string{CoreModule}}, want: ErrUnknownModule},
		{name: "not a user ID", user: "alice", req: EraseRequest{Trigger: TriggerAdmin}, want: privacy.ErrNoUser},
		{name: "unknown trigger", user: pvAlice, req: EraseRequest{Trigger: "cron"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := env.svc.engine.Erase(env.ctx, tt.user, tt.req)
			if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) {
				t.Errorf("Erase = %v, want %v", err, tt.want)
			}
		})
	}
	if n := env.count(`SELECT COUNT(*) FROM as_erasure`); n != 0 {
		t.Errorf("%d jobs recorded for refused requests, want 0", n)
	}
}

func TestEraseOneModule(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newPrivacyEnv(t, dialect, nil).start()
			env.seedUser(pvAlice, pvDM)
			env.seedUser(pvBob, "!dm-bob:example.org")
			before := dumpDatabase(t, env.ctx, env.svc.rawDB)
			receipt, err := env.svc.engine.Erase(env.ctx, pvAlice, EraseRequest{Trigger: TriggerUser, Modules: []string{"hooks"}})
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]map[string]int64{"hooks": {"hooks_hook": 2, "hooks_caller": 1}}
			if !equalCounts(receipt.Erased, want) {
				t.Errorf("receipt erased = %v, want %v", receipt.Erased, want)
			}
			after := dumpDatabase(t, env.ctx, env.svc.rawDB)
			for _, row := range rowsMentioning(before, pvAlice.String()) {
				gone := !slices.Contains(after, row)
				if strings.HasPrefix(row, "hooks_") != gone {
					t.Errorf("row %q: gone = %v, want only the hooks bridge's rows gone", row, gone)
				}
			}
			if n := env.count(`SELECT COUNT(*) FROM hooks_delivery WHERE hook_id LIKE 'hook-alice-%'`); n != 0 {
				t.Errorf("%d deliveries of alice's hooks remain, want 0", n)
			}
			if got := env.hooks.erasedUsers(); !slices.Equal(got, []id.UserID{pvAlice}) {
				t.Errorf("hooks EraseRemote calls = %v, want [%s]", got, pvAlice)
			}
			if got := env.other.erasedUsers(); len(got) != 0 {
				t.Errorf("other EraseRemote calls = %v, want none", got)
			}
			if got := env.hs.Membership(pvDM, pvBot); got != "" && got != event.MembershipJoin {
				t.Errorf("bot membership in alice's DM after a one-bridge erasure = %q, want it to stay", got)
			}
			if n := env.count(`SELECT COUNT(*) FROM as_erasure WHERE user_mxid IS NOT NULL`); n != 0 {
				t.Errorf("%d erasure jobs still name a user, want 0", n)
			}
		})
	}
}

func TestEraseGoesOnWhenRemoteErasureFails(t *testing.T) {
	env := newPrivacyEnv(t, astest.SQLite, nil).start()
	env.seedUser(pvAlice, pvDM)
	env.hooks.eraseErr = errors.New("remote unreachable")
	receipt, err := env.svc.engine.Erase(env.ctx, pvAlice, EraseRequest{Trigger: TriggerAdmin})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(receipt.RemoteFailures, []string{"hooks"}) {
		t.Errorf("remote failures = %v, want [hooks]", receipt.RemoteFailures)
	}
	if n := env.count(`SELECT COUNT(*) FROM hooks_hook WHERE owner_mxid=$1`, pvAlice); n != 0 {
		t.Errorf("%d of alice's hooks remain after a failed remote erasure, want 0", n)
	}
}

// TestNoNoticeToAUserBeingErased: a notice a bridge sends while the user's erasure runs (a late
// goroutine, a timeout firing) is refused, so it neither recreates the users row nor opens a
// management room after the erasure deleted them.
func TestNoNoticeToAUserBeingErased(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newPrivacyEnv(t, dialect, nil).start()
			env.seedUser(pvAlice, pvDM)
			env.hooks.lock.Lock()
			env.hooks.notifyInErase = true
			env.hooks.lock.Unlock()
			rooms := len(env.hs.RequestsTo(astest.PatternCreateRoom))
			if _, err := env.svc.engine.Erase(env.ctx, pvAlice, EraseRequest{Trigger: TriggerAdmin}); err != nil {
				t.Fatal(err)
			}
			env.hooks.lock.Lock()
			notifyErr := env.hooks.notifyErr
			env.hooks.lock.Unlock()
			if !errors.Is(notifyErr, ErrUserBeingErased) {
				t.Errorf("NotifyUser during the erasure = %v, want ErrUserBeingErased", notifyErr)
			}
			if n := env.count(`SELECT COUNT(*) FROM users WHERE mxid=$1`, pvAlice); n != 0 {
				t.Errorf("%d users rows for alice after the erasure, want 0", n)
			}
			if got := len(env.hs.RequestsTo(astest.PatternCreateRoom)); got != rooms {
				t.Errorf("%d rooms created during the erasure, want none", got-rooms)
			}
		})
	}
}

func TestEraseResumesAfterCrash(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newPrivacyEnv(t, dialect, nil)
			env.seedUser(pvAlice, pvDM)
			// A crash after the job was recorded, before the data was erased.
			hash, keyID, err := env.svc.engine.UserHash(env.ctx, pvAlice)
			if err != nil {
				t.Fatal(err)
			}
			pending := &privacy.ErasureJob{
				JobID: "er_pending", User: pvAlice, UserHash: hash, HashKeyID: keyID, Trigger: TriggerDeactivation,
				CreatedAt: env.clock.Now(),
			}
			// And another crash after an erasure's data was gone, before its receipt was sent.
			cleanup := &privacy.ErasureJob{
				JobID: "er_cleanup", User: pvBob, UserHash: "x", HashKeyID: keyID, Trigger: TriggerUser,
				NotifyRoom: pvRoom, CreatedAt: env.clock.Now(), Counts: []byte(`{"erased":{"hooks":{"hooks_hook":3}}}`),
			}
			for _, job := range []*privacy.ErasureJob{pending, cleanup} {
				if _, err = env.svc.engine.Store().CreateErasure(env.ctx, job); err != nil {
					t.Fatal(err)
				}
			}
			if err = env.svc.engine.Store().CommitErasure(env.ctx, cleanup, privacy.ErasureCleanup, env.clock.Now()); err != nil {
				t.Fatal(err)
			}
			env.hs.SetMembership(pvRoom, pvBot, event.MembershipJoin)

			env.start()

			for _, jobID := range []string{"er_pending", "er_cleanup"} {
				status, err := env.svc.engine.ErasureStatus(env.ctx, jobID)
				if err != nil || status.State != string(privacy.ErasureDone) {
					t.Errorf("status of %s after restart = %+v, %v; want done", jobID, status, err)
				}
			}
			if rows := rowsMentioning(dumpDatabase(t, env.ctx, env.svc.rawDB), pvAlice.String()); len(rows) > 0 {
				t.Errorf("after resuming, rows name alice:\n%s", strings.Join(rows, "\n"))
			}
			if tombstones, _ := env.svc.engine.Store().Tombstones(env.ctx, hash); len(tombstones) != 1 {
				t.Errorf("%d tombstones for alice after resuming, want 1", len(tombstones))
			}
			if got := env.lastNotice(pvRoom); !strings.Contains(got, "Done: I erased everything") || !strings.Contains(got, "hooks: 3 entries") {
				t.Errorf("receipt after resuming = %q, want the stored counts", got)
			}
		})
	}
}

func TestEraseEvictsVaultCacheAndDerivesTombstoneKey(t *testing.T) {
	env := newPrivacyEnv(t, astest.SQLite, nil)
	vault := &fakeVault{key: []byte("0123456789abcdef0123456789abcdef")}
	env.svc.vault = vault
	env.start()
	env.seedUser(pvAlice, pvDM)
	receipt, err := env.svc.engine.Erase(env.ctx, pvAlice, EraseRequest{Trigger: TriggerAdmin})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(vault.forgotten, []id.UserID{pvAlice}) {
		t.Errorf("vault Forget calls = %v, want [%s]", vault.forgotten, pvAlice)
	}
	if want := testKeyedHash(vault.key, "user\x00"+pvAlice.String()); receipt.UserHash != want {
		t.Errorf("user hash = %s, want the hash under the vault-derived key %s", receipt.UserHash, want)
	}
	if n := env.count(`SELECT COUNT(*) FROM as_privacy_key`); n != 0 {
		t.Errorf("%d keys stored in the database with a deriving vault, want 0", n)
	}
	var keyID string
	if err = env.svc.rawDB.QueryRow(env.ctx, `SELECT hash_key_id FROM as_tombstone`).Scan(&keyID); err != nil || keyID != "vault:kek1" {
		t.Errorf("tombstone key ID = %q (%v), want vault:kek1", keyID, err)
	}
}

// fakeVault stands in for the credential vault: it records cache evictions, reports key status
// and derives keys.
type fakeVault struct {
	key       []byte
	forgotten []id.UserID
}

var _ vaultBackend = (*fakeVault)(nil)

func (fv *fakeVault) Seal(context.Context, id.UserID, string, string, vault.Secret) ([]byte, error) {
	return nil, errors.New("fakeVault does not seal")
}

func (fv *fakeVault) Open(context.Context, id.UserID, string, string, []byte) (vault.Secret, error) {
	return vault.Secret{}, errors.New("fakeVault does not open")
}

func (fv *fakeVault) Forget(user id.UserID) { fv.forgotten = append(fv.forgotten, user) }

func (fv *fakeVault) DeriveKey(_ context.Context, purpose string) ([]byte, string, error) {
	if purpose != "custodian tombstone v1" {
		return nil, "", fmt.Errorf("unexpected purpose %q", purpose)
	}
	return fv.key, "kek1", nil
}

func (fv *fakeVault) Status(context.Context) (map[string]int, error) {
	return map[string]int{"kek1": 3}, nil
}

// TestErasureLogsNeverNameTheUser captures everything the service logs while an erasure
// triggered by a dispatched event runs (the dispatcher's logger carries the sender): no log line
// about the erasure (one with its job ID or hash) holds the user ID.
func TestErasureLogsNeverNameTheUser(t *testing.T) {
	tests := []struct {
		name    string
		trigger string
	}{
		{name: "forget command", trigger: TriggerUser},
		{name: "deactivation after a leave", trigger: TriggerDeactivation},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := newPrivacyEnv(t, astest.SQLite, withAdminToken(t))
			env.hs.adminToken = pvAdminToken
			env.startAndSweep()
			env.setUpRoom(pvDM, true, pvAlice)
			env.setUpRoom(pvRoom, false, pvAlice, pvBob)
			env.addHook(env.hooks, "h1", pvAlice, pvRoom, "$add1")
			switch tt.trigger {
			case TriggerUser:
				env.text(pvDM, pvAlice, "forget")
				env.text(pvDM, pvAlice, "forget confirm")
			case TriggerDeactivation:
				env.hs.setDeactivated(pvAlice)
				env.hs.SetMembership(pvRoom, pvAlice, event.MembershipLeave)
				env.member(pvRoom, pvAlice, pvAlice, event.MembershipLeave, nil)
			}
			env.awaitErasures()
			if n := env.count(`SELECT COUNT(*) FROM as_tombstone WHERE erase_trigger=$1`, tt.trigger); n != 1 {
				t.Fatalf("%d tombstones of trigger %s, want 1", n, tt.trigger)
			}
			var erasureLines int
			for _, line := range strings.Split(env.logs.String(), "\n") {
				if !strings.Contains(line, `"job_id"`) && !strings.Contains(line, `"user_hash"`) {
					continue
				}
				erasureLines++
				if strings.Contains(line, pvAlice.String()) {
					t.Errorf("an erasure log line names the user: %s", line)
				}
			}
			if erasureLines == 0 {
				t.Fatal("no log line about the erasure; the test would prove nothing")
			}
		})
	}
}

// TestErasureRunnerFinishesQueuedJobs: erasure jobs run on the service's erasure runner while
// the service runs, not only at the next start. A deactivation erasure is queued by the leave's
// handler, which returns while the remote step is still blocked; a job recorded directly (as by
// another instance, or a request whose wake-up was missed) is found by the runner's poll.
func TestErasureRunnerFinishesQueuedJobs(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newPrivacyEnv(t, dialect, withAdminToken(t))
			env.hs.adminToken = pvAdminToken
			env.startAndSweep()
			env.setUpRoom(pvRoom, false, pvAlice, pvBob)
			env.addHook(env.hooks, "h1", pvAlice, pvRoom, "$add1")
			block := make(chan struct{})
			env.hooks.lock.Lock()
			env.hooks.block = block
			env.hooks.lock.Unlock()

			env.hs.setDeactivated(pvAlice)
			env.hs.SetMembership(pvRoom, pvAlice, event.MembershipLeave)
			handled := make(chan struct{})
			go func() {
				defer close(handled)
				env.member(pvRoom, pvAlice, pvAlice, event.MembershipLeave, nil)
			}()
			select {
			case <-handled:
			case <-time.After(10 * time.Second):
				close(block)
				t.Fatal("the leave's handler waited for the erasure")
			}
			if n := env.count(`SELECT COUNT(*) FROM as_erasure WHERE state='pending' AND erase_trigger='deactivation'`); n != 1 {
				t.Errorf("%d pending deactivation jobs after the leave, want 1", n)
			}
			close(block)
			env.awaitErasures()
			if exists, _ := env.svc.db.User.Exists(env.ctx, pvAlice); exists {
				t.Error("alice's users row exists after her queued erasure ran")
			}

			// A job recorded behind the runner's back waits for the next poll, not a restart.
			env.seedUser(pvBob, "!dm-bob:example.org")
			hash, keyID, err := env.svc.engine.UserHash(env.ctx, pvBob)
			if err != nil {
				t.Fatal(err)
			}
			if env.clock.BlockUntilInterval(astest.Within(t, 10*time.Second), privacy.ErasurePoll) != nil {
				t.Fatal("the erasure runner is not waiting for its poll")
			}
			if _, err = env.svc.engine.Store().CreateErasure(env.ctx, &privacy.ErasureJob{
				JobID: "er_direct", User: pvBob, UserHash: hash, HashKeyID: keyID, Trigger: TriggerAdmin,
				State: privacy.ErasurePending, CreatedAt: env.clock.Now(),
			}); err != nil {
				t.Fatal(err)
			}
			// Other loops arm timers of the same length; the runner may still be finishing
			// alice's cleanup and arm its poll only after this advance: advance again, boundedly,
			// until the runner took the job.
			for attempt := 0; env.count(`SELECT COUNT(*) FROM as_erasure WHERE state='pending'`) > 0; attempt++ {
				if attempt == 10 {
					t.Fatal("the directly recorded job is still pending after 10 polls")
				}
				if attempt > 0 && env.clock.BlockUntilInterval(astest.Within(t, 10*time.Second), privacy.ErasurePoll) != nil {
					t.Fatal("the erasure runner is not waiting for its poll")
				}
				env.clock.Advance(privacy.ErasurePoll)
				select {
				case <-env.erasureRan:
				case <-time.After(5 * time.Second):
				}
			}
			env.awaitErasures()
			if exists, _ := env.svc.db.User.Exists(env.ctx, pvBob); exists {
				t.Error("bob's users row exists after the runner's poll")
			}
			if n := env.count(`SELECT COUNT(*) FROM as_tombstone WHERE job_id='er_direct'`); n != 1 {
				t.Errorf("%d tombstones of the directly recorded job, want 1", n)
			}
		})
	}
}

// TestLeaveOfUserBeingErasedNotRouted: a deactivated user's leave queues their erasure and does
// not reach the bridges: their remote presence ends in the erasure's own remote step (an IRC
// QUIT that every channel sees), not as a PART relayed before it.
func TestLeaveOfUserBeingErasedNotRouted(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newPrivacyEnv(t, dialect, withAdminToken(t))
			env.hs.adminToken = pvAdminToken
			env.startAndSweep()
			if err := env.svc.db.User.Ensure(env.ctx, pvAlice); err != nil {
				t.Fatal(err)
			}
			if err := env.svc.db.Room.Claim(env.ctx, pvRoom, env.hooks.id, pvAlice, "$claim", env.clock.Now()); err != nil {
				t.Fatal(err)
			}
			// Carol stays, so the room keeps its setup and claim after the others leave.
			env.setUpRoom(pvRoom, false, pvAlice, pvBob, pvCarol)
			env.addHook(env.hooks, "h1", pvAlice, pvRoom, "$add1")
			block := make(chan struct{})
			env.hooks.lock.Lock()
			env.hooks.block = block
			env.hooks.lock.Unlock()
			defer close(block)

			isLeaveOf := func(user id.UserID) bool {
				env.hooks.lock.Lock()
				defer env.hooks.lock.Unlock()
				for _, evt := range env.hooks.events {
					if evt.Type == event.StateMember && evt.GetStateKey() == user.String() &&
						evt.Content.AsMember().Membership == event.MembershipLeave {
						return true
					}
				}
				return false
			}
			// Control: an active user's leave reaches the bridge.
			env.hs.SetMembership(pvRoom, pvBob, event.MembershipLeave)
			env.member(pvRoom, pvBob, pvBob, event.MembershipLeave, nil)
			if !isLeaveOf(pvBob) {
				t.Fatal("the bridge did not see an active user's leave")
			}

			env.hs.setDeactivated(pvAlice)
			env.hs.SetMembership(pvRoom, pvAlice, event.MembershipLeave)
			env.member(pvRoom, pvAlice, pvAlice, event.MembershipLeave, nil)
			if n := env.count(`SELECT COUNT(*) FROM as_erasure WHERE state='pending'`); n != 1 {
				t.Fatalf("%d pending erasure jobs after the deactivated user's leave, want 1", n)
			}
			if isLeaveOf(pvAlice) {
				t.Error("the bridge saw the leave of a user whose erasure is queued")
			}
		})
	}
}

// testKeyedHash is the tombstone hash as documented: hex HMAC-SHA256 of msg under key.
func testKeyedHash(key []byte, msg string) string {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(msg))
	return hex.EncodeToString(mac.Sum(nil))
}

package appservice

import (
	"maps"
	"net/http"
	"slices"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/clock"
	"github.com/custodian-matrix/custodian/appservice/e2ee"
	"github.com/custodian-matrix/custodian/appservice/privacy"
)

// finalScrubEnv builds an e2eeEnv on dialect with the olm machine set up, the service's fake
// clock and a channel of final scrub outcomes, without starting the service: no erasure runner,
// so each Erase runs its job once, in the test's goroutine.
func finalScrubEnv(t *testing.T, dialect string) (*e2eeEnv, *clock.Fake, chan error) {
	t.Helper()
	env := newE2EEEnv(t, astest.TestDB(t, dialect), nil, nil)
	clk := clock.NewFake(time.Now())
	env.svc.clk = clk
	ran := make(chan error, 8)
	env.svc.privacy.scrubRan = func(_ string, err error) { ran <- err }
	env.setupCrypto()
	if !env.svc.cryptoPresent() {
		t.Fatal("the olm machine was not set up")
	}
	return env, clk, ran
}

// armedFinalScrubs returns the jobs whose final scrub is armed, sorted.
func armedFinalScrubs(env *e2eeEnv) []string {
	env.svc.privacy.lock.Lock()
	defer env.svc.privacy.lock.Unlock()
	return slices.Sorted(maps.Keys(env.svc.privacy.finalScrubs))
}

// noFinalScrub fails if a final scrub outcome is waiting in ran.
func noFinalScrub(t *testing.T, ran <-chan error, when string) {
	t.Helper()
	select {
	case err := <-ran:
		t.Fatalf("a final scrub ran %s (err %v)", when, err)
	default:
	}
}

// TestFinalScrubWhileTheProbeFailed erases Alice's crypto rows while the olm machine exists but
// the start-up probe failed (encryption not active, the machine still writes): the final scrub
// is armed by the cleanup, and at a start, and deletes the rows written since.
func TestFinalScrubWhileTheProbeFailed(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		for _, restart := range []bool{false, true} {
			name := dialect + "/armed by the cleanup"
			if restart {
				name = dialect + "/armed at start"
			}
			t.Run(name, func(t *testing.T) {
				env, clk, ran := finalScrubEnv(t, dialect)
				env.svc.cryptoState.broken.Store(true)
				if env.svc.encryptionActive() {
					t.Fatal("encryption is active; the test would prove nothing")
				}
				env.svc.startFinalScrubs(env.ctx)
				receipt, err := env.svc.engine.Erase(env.ctx, e2eeAlice, EraseRequest{Trigger: TriggerAdmin, Modules: []string{e2ee.Module}})
				if err != nil {
					t.Fatalf("Erase = %v", err)
				}
				if receipt.State != string(privacy.ErasureDone) {
					t.Fatalf("erasure state = %s, want done", receipt.State)
				}
				if restart {
					env.svc.stopFinalScrubs()
					env.svc.privacy.lock.Lock()
					env.svc.privacy.scrubUsers = nil
					env.svc.privacy.lock.Unlock()
					env.svc.startFinalScrubs(env.ctx)
				}
				if armed := armedFinalScrubs(env); !slices.Equal(armed, []string{receipt.JobID}) {
					t.Fatalf("final scrubs armed: %v, want %s", armed, receipt.JobID)
				}
				if err = writeLateRows(env, e2eeAlice, "LATE", false); err != nil {
					t.Fatal(err)
				}
				clk.Advance(erasureQuietPeriod)
				waitScrubbed(t, ran)
				if n := countQuery(t, env, `SELECT COUNT(*) FROM crypto_device WHERE user_id=$1`, e2eeAlice); n != 0 {
					t.Errorf("after the final scrub %d devices of alice remain", n)
				}
			})
		}
	}
}

// TestQuietPeriodRunsFromTheEndOfTheCleanup is the review's scenario: the homeserver refuses
// sends for more than erasureQuietPeriod, so Alice's receipt is retried and her erasure stays in
// cleanup; it goes out at minute 6. Alice's to-device traffic stays gated all along, also at
// minute 7 (a key request or room key then is dropped) and until a quiet period after the
// cleanup ended, and the final scrub runs a quiet period after the cleanup's scrub, not before.
func TestQuietPeriodRunsFromTheEndOfTheCleanup(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env, clk, ran := finalScrubEnv(t, dialect)
			env.svc.startFinalScrubs(env.ctx)
			const plain = id.RoomID("!plain:example.org")
			for _, user := range []id.UserID{env.svc.as.BotMXID(), e2eeAlice} {
				env.hs.SetMembership(plain, user, event.MembershipJoin)
			}
			// gate checks erasureQuietUntil against wantUntil (zero: no gate at all) and whether
			// traffic arriving now is gated.
			gate := func(when string, wantGated bool, wantUntil time.Time) {
				t.Helper()
				until, found, err := env.svc.erasureQuietUntil(env.ctx, e2eeAlice)
				if err != nil {
					t.Fatalf("%s: erasureQuietUntil = %v", when, err)
				}
				if wantFound := !wantUntil.IsZero(); found != wantFound || (found && !until.Equal(wantUntil)) {
					t.Errorf("%s: erasureQuietUntil = %v, %v; want %v, %v", when, until, found, wantUntil, wantFound)
				}
				if got, err := env.svc.toDeviceSenderGated(env.ctx, e2eeAlice, env.svc.now()); err != nil {
					t.Fatalf("%s: toDeviceSenderGated: %v", when, err)
				} else if got != wantGated {
					t.Errorf("%s: toDeviceSenderGated = %v, want %v", when, got, wantGated)
				}
			}
			gate("before the erasure", false, time.Time{})

			start := clk.Now()
			env.hs.Fail(astest.PatternSend, http.StatusForbidden, "M_FORBIDDEN")
			req := EraseRequest{Trigger: TriggerUser, NotifyRoom: plain, RequestID: "$forget-alice"}
			receipt, err := env.svc.engine.Erase(env.ctx, e2eeAlice, req)
			if err != nil {
				t.Fatalf("Erase = %v", err)
			}
			if receipt.State != string(privacy.ErasureCleanup) {
				t.Fatalf("erasure state with the receipt refused = %s, want cleanup", receipt.State)
			}
			gate("in cleanup", true, gatedForever)
			clk.Advance(erasureQuietPeriod + time.Second)
			gate("in cleanup past the quiet period", true, gatedForever)
			noFinalScrub(t, ran, "while the erasure was in cleanup")
			if armed := armedFinalScrubs(env); len(armed) != 0 {
				t.Errorf("final scrubs armed while the receipt is not sent: %v", armed)
			}

			// Minute 6: the homeserver takes the receipt; the cleanup ends.
			clk.Advance(start.Add(6 * time.Minute).Sub(clk.Now()))
			env.hs.Unfail(astest.PatternSend)
			if receipt, err = env.svc.engine.Erase(env.ctx, e2eeAlice, req); err != nil {
				t.Fatalf("Erase again = %v", err)
			}
			if receipt.State != string(privacy.ErasureDone) || len(env.hs.Messages(plain)) != 1 {
				t.Fatalf("erasure state = %s with %d receipts, want done with one", receipt.State, len(env.hs.Messages(plain)))
			}
			cleanupEnd := clk.Now()
			quietEnd := cleanupEnd.Add(erasureQuietPeriod)
			clk.Advance(time.Minute)
			gate("at minute 7", true, quietEnd.Truncate(time.Millisecond))

			// A racing goroutine stores her device after the cleanup's scrub.
			if err = writeLateRows(env, e2eeAlice, "LATE", false); err != nil {
				t.Fatal(err)
			}
			clk.Advance(quietEnd.Add(-time.Second).Sub(clk.Now()))
			noFinalScrub(t, ran, "before a quiet period after the cleanup")
			if n := countQuery(t, env, `SELECT COUNT(*) FROM crypto_device WHERE user_id=$1`, e2eeAlice); n == 0 {
				t.Fatal("the late device is gone before a quiet period after the cleanup")
			}
			clk.Advance(time.Second)
			waitScrubbed(t, ran)
			if n := countQuery(t, env, `SELECT COUNT(*) FROM crypto_device WHERE user_id=$1`, e2eeAlice); n != 0 {
				t.Errorf("after the final scrub %d devices of alice remain", n)
			}
			gate("after the quiet period", false, quietEnd.Truncate(time.Millisecond))
		})
	}
}

// TestStartArmsTheFinalScrubsOfTheLastDay erases users while no final scrub can be armed (the
// service is down), then starts: the final scrub of an erasure of the last finalScrubWindow that
// fell due meanwhile runs at once, one not yet due is armed for later, and none is armed for an
// older erasure or for a job still in cleanup (its cleanup's scrub arms it); one erased longer
// ago whose cleanup ended within the window (a receipt refused for a day) is armed from its end.
// With a cap, only the newest finished erasures are looked at: unfinished ones do not count.
func TestStartArmsTheFinalScrubsOfTheLastDay(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env, clk, ran := finalScrubEnv(t, dialect)
			var (
				old    = id.UserID("@old:example.org")
				missed = id.UserID("@missed:example.org")
				due    = id.UserID("@due:example.org")
				held   = id.UserID("@held:example.org")
				slow   = id.UserID("@slow:example.org")
				plain  = id.RoomID("!heldplain:example.org")
				slowDM = id.RoomID("!slowplain:example.org")
			)
			for _, user := range []id.UserID{env.svc.as.BotMXID(), held} {
				env.hs.SetMembership(plain, user, event.MembershipJoin)
			}
			for _, user := range []id.UserID{env.svc.as.BotMXID(), slow} {
				env.hs.SetMembership(slowDM, user, event.MembershipJoin)
			}
			erase := func(user id.UserID, notify id.RoomID, wantState privacy.ErasureState) string {
				t.Helper()
				receipt, err := env.svc.engine.Erase(env.ctx, user, EraseRequest{Trigger: TriggerAdmin, Modules: []string{e2ee.Module}, NotifyRoom: notify})
				if err != nil {
					t.Fatalf("Erase(%s) = %v", user, err)
				}
				if receipt.State != string(wantState) {
					t.Fatalf("Erase(%s) state = %s, want %s", user, receipt.State, wantState)
				}
				return receipt.JobID
			}
			slowReq := EraseRequest{Trigger: TriggerUser, Modules: []string{e2ee.Module}, NotifyRoom: slowDM, RequestID: "$forget-slow"}
			env.hs.Fail(astest.PatternSend, http.StatusForbidden, "M_FORBIDDEN")
			slowReceipt, err := env.svc.engine.Erase(env.ctx, slow, slowReq)
			if err != nil || slowReceipt.State != string(privacy.ErasureCleanup) {
				t.Fatalf("Erase(slow) = %v, %v; want it in cleanup", slowReceipt, err)
			}
			slowJob := slowReceipt.JobID
			env.hs.Unfail(astest.PatternSend)
			erase(old, "", privacy.ErasureDone)
			clk.Advance(finalScrubWindow)
			missedJob := erase(missed, "", privacy.ErasureDone)
			clk.Advance(2 * time.Hour)
			// The homeserver takes slow's receipt a day and two hours after the erasure.
			if slowReceipt, err = env.svc.engine.Erase(env.ctx, slow, slowReq); err != nil || slowReceipt.State != string(privacy.ErasureDone) || slowReceipt.JobID != slowJob {
				t.Fatalf("Erase(slow) again = %v, %v; want its job done", slowReceipt, err)
			}
			clk.Advance(time.Minute)
			dueJob := erase(due, "", privacy.ErasureDone)
			clk.Advance(time.Minute)
			env.hs.Fail(astest.PatternSend, http.StatusForbidden, "M_FORBIDDEN")
			erase(held, plain, privacy.ErasureCleanup)
			// Rows racing goroutines stored about each before the service stopped.
			for _, user := range []id.UserID{old, missed, due, held, slow} {
				if err := env.svc.crypto.Store().PutDevice(env.ctx, user, &id.Device{UserID: user, DeviceID: "LATE", IdentityKey: id.Curve25519(user + "key"), SigningKey: id.Ed25519(user + "sign")}); err != nil {
					t.Fatal(err)
				}
			}
			devices := func(user id.UserID) int {
				return countQuery(t, env, `SELECT COUNT(*) FROM crypto_device WHERE user_id=$1`, user)
			}

			// A start with a cap of one looks at due's tombstone only: held's, newer, is unfinished.
			env.svc.privacy.lock.Lock()
			env.svc.privacy.scrubCtx, env.svc.privacy.scrubsStopped = env.ctx, false
			env.svc.privacy.lock.Unlock()
			env.svc.armRecentFinalScrubs(env.ctx, 1)
			if armed := armedFinalScrubs(env); !slices.Equal(armed, []string{dueJob}) {
				t.Fatalf("final scrubs armed with a cap of 1: %v, want only %s", armed, dueJob)
			}
			env.svc.stopFinalScrubs()
			noFinalScrub(t, ran, "with a cap that left the missed one out")

			env.svc.startFinalScrubs(env.ctx)
			waitScrubbed(t, ran)
			if n := devices(missed); n != 0 {
				t.Errorf("after the missed final scrub %d devices of the user remain", n)
			}
			want := []string{dueJob, slowJob}
			slices.Sort(want)
			if armed := armedFinalScrubs(env); !slices.Equal(armed, want) {
				t.Errorf("final scrubs armed after the start: %v, want %v (missed: %s)", armed, want, missedJob)
			}
			for _, user := range []id.UserID{old, due, held, slow} {
				if n := devices(user); n != 1 {
					t.Errorf("after the start %d devices of %s remain, want its late one", n, user)
				}
			}
			clk.Advance(erasureQuietPeriod)
			waitScrubbed(t, ran) // slow's, then due's
			waitScrubbed(t, ran)
			for _, user := range []id.UserID{due, slow} {
				if n := devices(user); n != 0 {
					t.Errorf("after its final scrub %d devices of %s remain", n, user)
				}
			}
		})
	}
}

// TestTombstonesWithTheirJobs reads tombstones joined with their erasure jobs: the job's state
// and finish time while its row exists, none once it is deleted (then the gate and the start's
// arming fall back on the tombstone's time); the recent ones newest first, at most the limit.
func TestTombstonesWithTheirJobs(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env, clk, _ := finalScrubEnv(t, dialect)
			store := env.svc.engine.Store()
			gone, kept := id.UserID("@gone:example.org"), id.UserID("@kept:example.org")
			goneReceipt, err := env.svc.engine.Erase(env.ctx, gone, EraseRequest{Trigger: TriggerAdmin, Modules: []string{e2ee.Module}})
			if err != nil {
				t.Fatal(err)
			}
			goneAt := clk.Now()
			clk.Advance(time.Minute)
			// The job's row goes, as finishedErasureTTL after it was done; the tombstone stays.
			if n, err := store.DeleteFinishedErasures(env.ctx, clk.Now()); err != nil || n != 1 {
				t.Fatalf("DeleteFinishedErasures = %d, %v; want 1", n, err)
			}
			clk.Advance(time.Minute)
			keptReceipt, err := env.svc.engine.Erase(env.ctx, kept, EraseRequest{Trigger: TriggerAdmin})
			if err != nil {
				t.Fatal(err)
			}
			keptAt := clk.Now().Truncate(time.Millisecond)

			list, err := store.TombstonesWithJobs(env.ctx, goneReceipt.UserHash)
			if err != nil || len(list) != 1 {
				t.Fatalf("TombstonesWithJobs(gone) = %v, %v; want one", list, err)
			}
			if list[0].JobState != "" || !list[0].JobFinishedAt.IsZero() {
				t.Errorf("gone's tombstone has job state %q finished %v, want none", list[0].JobState, list[0].JobFinishedAt)
			}
			list, err = store.TombstonesWithJobs(env.ctx, keptReceipt.UserHash)
			if err != nil || len(list) != 1 {
				t.Fatalf("TombstonesWithJobs(kept) = %v, %v; want one", list, err)
			}
			if list[0].JobState != privacy.ErasureDone || !list[0].JobFinishedAt.Equal(keptAt) {
				t.Errorf("kept's tombstone has job state %q finished %v, want done at %v", list[0].JobState, list[0].JobFinishedAt, keptAt)
			}

			recent, err := store.RecentTombstonesWithJobs(env.ctx, goneAt.Add(-time.Hour), 10)
			if err != nil {
				t.Fatal(err)
			}
			var jobs []string
			for _, ts := range recent {
				jobs = append(jobs, ts.JobID)
			}
			if want := []string{keptReceipt.JobID, goneReceipt.JobID}; !slices.Equal(jobs, want) {
				t.Errorf("RecentTombstonesWithJobs = %v, want %v (newest first)", jobs, want)
			}
			if recent, err = store.RecentTombstonesWithJobs(env.ctx, goneAt.Add(-time.Hour), 1); err != nil || len(recent) != 1 || recent[0].JobID != keptReceipt.JobID {
				t.Errorf("RecentTombstonesWithJobs with limit 1 = %v, %v; want only %s", recent, err, keptReceipt.JobID)
			}
			if recent, err = store.RecentTombstonesWithJobs(env.ctx, keptAt.Add(time.Millisecond), 10); err != nil || len(recent) != 0 {
				t.Errorf("RecentTombstonesWithJobs after the last erasure = %v, %v; want none", recent, err)
			}

			// Without its job, gone's gate ends a quiet period after the tombstone's time.
			until, gated, err := env.svc.erasureQuietUntil(env.ctx, gone)
			if want := goneAt.Truncate(time.Millisecond).Add(erasureQuietPeriod); err != nil || !gated || !until.Equal(want) {
				t.Errorf("erasureQuietUntil(gone) = %v, %v, %v; want %v, gated", until, gated, err, want)
			}
		})
	}
}

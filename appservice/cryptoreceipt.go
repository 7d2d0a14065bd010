package appservice

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/clock"
	"github.com/custodian-matrix/custodian/appservice/e2ee"
	"github.com/custodian-matrix/custodian/appservice/privacy"
)

// prepareEncryptedReceipt makes the receipt of erasure jobID readable to the erased user
// (keyed hash userHash) when roomID is encrypted and encryption is on. The erasure deleted the
// user's member row in the state cache, so the room key would go to the bot's own device only:
// it reads the room's joined members from the homeserver, records the one whose keyed hash is
// userHash as joined, remembers them for the job's scrubs (see scrubAfterErasure)
// and drops the room's outbound megolm session, so that the receipt goes out under a fresh room
// key shared with the user's devices. The user ID is never logged.
//
// The member row and the devices the share stores are deleted again by the job's scrubs (see
// scrubAfterErasure).
func (svc *Service) prepareEncryptedReceipt(ctx context.Context, roomID id.RoomID, jobID, userHash string, modules []string) error {
	if !svc.encryptionActive() || userHash == "" {
		return nil
	}
	if crypto, stateCache := scrubScope(modules); !crypto && !stateCache {
		// The erasure left the user's member row and devices: the room key reaches them.
		return nil
	}
	encrypted, err := roomEncrypted(ctx, svc.as.BotClient(), roomID)
	if err != nil {
		return fmt.Errorf("failed to check whether the receipt room is encrypted: %w", err)
	} else if !encrypted {
		return nil
	}
	members, err := svc.joinedMembersNow(ctx, roomID)
	if err != nil {
		return err
	}
	botID := svc.as.BotMXID()
	var user id.UserID
	for _, member := range members {
		if member == botID {
			continue
		}
		hash, _, err := svc.engine.UserHash(ctx, member)
		if err != nil {
			return err
		}
		if hash == userHash {
			user = member
			break
		}
	}
	if user == "" {
		// The user left: nobody to make the receipt readable to.
		zerolog.Ctx(ctx).Info().Stringer("room_id", roomID).Msg("Erased user is not in the encrypted receipt room")
		return nil
	}
	svc.rememberScrubUsers(jobID, user)
	if err = svc.stateStore.SetMembership(ctx, roomID, user, event.MembershipJoin); err != nil {
		return fmt.Errorf("failed to record the erased user's membership for the receipt: %w", err)
	}
	if err = svc.crypto.Store().RemoveOutboundGroupSession(ctx, roomID); err != nil {
		return fmt.Errorf("failed to drop the receipt room's outbound session: %w", err)
	}
	return nil
}

// finalScrubRetry is how long a failed final scrub waits before it runs again.
const finalScrubRetry = time.Minute

// scrubAfterErasure deletes again, in the cleanup of erasure jobID and after its receipt was sent
// and the rooms were left, every row naming the erased user (keyed hash userHash) in the crypto
// store's tables and in the state cache, each only if the job's scope modules covered it (see
// scrubErasure). It runs on every cleanup attempt, for every job whose scope covers either, with
// or without a receipt. After each scrub that succeeded it arms the job's final scrub (anew, if
// an earlier attempt armed it) for erasureQuietPeriod later, while the olm machine exists: so
// the final scrub comes a quiet period after the cleanup's last scrub, however long the receipt
// took. Unless a final scrub is still to come, it then forgets the job's users. It is
// idempotent: with nothing left to delete it does nothing.
func (svc *Service) scrubAfterErasure(ctx context.Context, jobID, userHash string, modules []string) error {
	if err := svc.scrubErasure(ctx, jobID, userHash, modules); err != nil {
		return err
	}
	if svc.cryptoPresent() {
		svc.armFinalScrub(jobID, userHash, modules, erasureQuietPeriod, true)
	}
	svc.privacy.lock.Lock()
	if _, pending := svc.privacy.finalScrubs[jobID]; !pending {
		delete(svc.privacy.scrubUsers, jobID)
	}
	svc.privacy.lock.Unlock()
	return nil
}

// scrubErasure deletes again every row naming the users of erasure jobID (keyed hash userHash)
// in the crypto store's tables and in the state cache, each only if the job's scope modules
// covered it, one transaction per user ([privacy.Engine.EraseAgain]), and then drops the olm
// sessions and the decryption cache kept in memory. The users are the ones remembered for the
// job (see usersOfErasure). It never logs a user ID.
func (svc *Service) scrubErasure(ctx context.Context, jobID, userHash string, modules []string) error {
	crypto, stateCache := scrubScope(modules)
	if userHash == "" || (!crypto && !stateCache) {
		return nil
	}
	var cryptoModules []string
	if crypto {
		cryptoModules = []string{e2ee.Module}
	}
	users, err := svc.usersOfErasure(ctx, jobID, userHash, cryptoModules)
	if err != nil {
		return err
	}
	var changed int64
	for _, user := range users {
		// Under the user's erasure gate, as the erasure itself: a to-device event past its gate
		// check cannot commit rows behind the scrub.
		unlock := svc.erasureGate.lock(user)
		n, err := svc.engine.EraseAgain(ctx, user, cryptoModules, stateCache)
		unlock()
		if err != nil {
			return err
		}
		changed += n
	}
	svc.evictOlmSessions()
	zerolog.Ctx(ctx).Debug().Int64("rows", changed).Msg("Scrubbed the rows stored about the erased user since the erasure")
	return nil
}

// usersOfErasure returns the erased users of job jobID: the ones remembered for it in this run
// (the erasure's user, and the one an encrypted receipt was shared with). After a restart it
// finds them, by their keyed hash userHash, among the users the state cache's member rows and
// the crypto store's user columns (cryptoModules) name ([privacy.Engine.UsersWithHash], a scan
// of those rows) and remembers them, so that the scan runs once per job and run whatever the
// retries, not at each one; a scan that found nobody is not remembered, since there was nothing
// to delete.
func (svc *Service) usersOfErasure(ctx context.Context, jobID, userHash string, cryptoModules []string) ([]id.UserID, error) {
	svc.privacy.lock.Lock()
	users, ok := svc.privacy.scrubUsers[jobID]
	users = slices.Clone(users)
	svc.privacy.lock.Unlock()
	if ok {
		return users, nil
	}
	svc.privacy.lock.Lock()
	svc.privacy.scrubLookups++
	svc.privacy.lock.Unlock()
	users, err := svc.engine.UsersWithHash(ctx, userHash, cryptoModules)
	if err != nil {
		return nil, err
	}
	svc.rememberScrubUsers(jobID, users...)
	return users, nil
}

// rememberScrubUsers adds users to the ones the scrubs of erasure job jobID delete again.
func (svc *Service) rememberScrubUsers(jobID string, users ...id.UserID) {
	if len(users) == 0 {
		return
	}
	svc.privacy.lock.Lock()
	defer svc.privacy.lock.Unlock()
	if svc.privacy.scrubUsers == nil {
		svc.privacy.scrubUsers = make(map[string][]id.UserID)
	}
	for _, user := range users {
		if !slices.Contains(svc.privacy.scrubUsers[jobID], user) {
			svc.privacy.scrubUsers[jobID] = append(svc.privacy.scrubUsers[jobID], user)
		}
	}
}

// erasureCommittedScrub runs once erasure c committed. If its scope covers the crypto store or
// the state cache, it remembers the user for the job's scrubs. The job's final scrub is armed by
// its cleanup's scrub (see scrubAfterErasure).
func (svc *Service) erasureCommittedScrub(c privacy.CommittedErasure) {
	if crypto, stateCache := scrubScope(c.Modules); !crypto && !stateCache {
		return
	}
	svc.rememberScrubUsers(c.JobID, c.User)
}

// finalScrubWindow is how far back startFinalScrubs looks for erasures whose final scrub may
// still be due, or fell due while the service was down; finalScrubsAtStart caps how many it
// arms (the newest), each of which may scan the state cache and the crypto store's user columns
// once (usersOfErasure).
const (
	finalScrubWindow   = 24 * time.Hour
	finalScrubsAtStart = 1000
)

// startFinalScrubs lets final scrubs run in ctx, the service's context, and, while the olm
// machine exists, arms the final scrubs of recent erasures (see armRecentFinalScrubs).
func (svc *Service) startFinalScrubs(ctx context.Context) {
	svc.privacy.lock.Lock()
	svc.privacy.scrubCtx, svc.privacy.scrubsStopped = ctx, false
	svc.privacy.lock.Unlock()
	if svc.cryptoPresent() {
		svc.armRecentFinalScrubs(ctx, finalScrubsAtStart)
	}
}

// armRecentFinalScrubs arms the final scrub of every erasure that covered the crypto store or
// the state cache and whose job finished less than finalScrubWindow ago, for a quiet period
// after its cleanup ended (the job's finish time; the tombstone's time once the job's row is
// gone): later if that is still to come, at once if it fell due while the service was down (the
// scrub is idempotent). Only the newest limit such erasures are looked at (the database filters
// scope and state before the limit, so other erasures cannot push them out). A job still
// unfinished is left to its cleanup, which the erasure runner resumes and whose scrub arms it.
func (svc *Service) armRecentFinalScrubs(ctx context.Context, limit int) {
	now := svc.now()
	tombstones, err := svc.engine.Store().RecentTombstonesWithJobs(ctx, now.Add(-finalScrubWindow), limit, e2ee.Module, CoreModule)
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to find the erasures whose final scrub is due; skipping them")
		return
	}
	for _, ts := range tombstones {
		if crypto, stateCache := scrubScope(ts.Modules); !crypto && !stateCache {
			continue
		}
		end := ts.ErasedAt
		switch ts.JobState {
		case privacy.ErasureDone:
			if !ts.JobFinishedAt.IsZero() {
				end = ts.JobFinishedAt
			}
		case "":
		default:
			continue
		}
		svc.armFinalScrub(ts.JobID, ts.UserHash, ts.Modules, end.Add(erasureQuietPeriod).Sub(now), false)
	}
}

// stopFinalScrubs stops every final scrub not yet running; none starts after it returned.
func (svc *Service) stopFinalScrubs() {
	svc.privacy.lock.Lock()
	defer svc.privacy.lock.Unlock()
	svc.privacy.scrubsStopped = true
	for jobID, armed := range svc.privacy.finalScrubs {
		armed.timer.Stop()
		delete(svc.privacy.finalScrubs, jobID)
	}
}

// armedScrub is a final scrub armed and not yet run (see armFinalScrub).
type armedScrub struct {
	timer clock.Timer
}

// armFinalScrub arms the final scrub of erasure job jobID to run in d (at once if d is not
// positive), unless the service does not run. If the job's final scrub is armed already, rearm
// replaces it (the cleanup scrubbed again), else it is left as it is. The final scrub is the
// job's scrub (scrubErasure) once more, when the quiet period after the job's cleanup has ended;
// it deletes what a goroutine racing the erasure stored about the user since. Final scrubs run
// one at a time. A failure is logged and retried after finalScrubRetry.
func (svc *Service) armFinalScrub(jobID, userHash string, modules []string, d time.Duration, rearm bool) {
	svc.privacy.lock.Lock()
	defer svc.privacy.lock.Unlock()
	if svc.privacy.scrubCtx == nil || svc.privacy.scrubsStopped {
		return
	}
	if old, armed := svc.privacy.finalScrubs[jobID]; armed {
		if !rearm {
			return
		}
		old.timer.Stop()
	}
	svc.armFinalScrubLocked(jobID, userHash, modules, d)
}

// armFinalScrubLocked arms the final scrub of job jobID in d; the caller holds privacy.lock.
func (svc *Service) armFinalScrubLocked(jobID, userHash string, modules []string, d time.Duration) {
	if svc.privacy.finalScrubs == nil {
		svc.privacy.finalScrubs = make(map[string]*armedScrub)
	}
	armed := &armedScrub{}
	// The timer's function takes privacy.lock first, so it sees armed.timer set.
	armed.timer = svc.clock().AfterFunc(max(d, 0), func() {
		svc.runFinalScrub(armed, jobID, userHash, modules)
	})
	svc.privacy.finalScrubs[jobID] = armed
}

// runFinalScrub runs the final scrub armed of erasure job jobID (see armFinalScrub), in the
// service's context, unless the service is stopping or the job's final scrub was armed anew
// meanwhile.
func (svc *Service) runFinalScrub(armed *armedScrub, jobID, userHash string, modules []string) {
	svc.privacy.scrubRun.Lock()
	defer svc.privacy.scrubRun.Unlock()
	svc.privacy.lock.Lock()
	if svc.privacy.scrubsStopped || svc.privacy.scrubCtx == nil || svc.privacy.finalScrubs[jobID] != armed {
		svc.privacy.lock.Unlock()
		return
	}
	ctx := svc.privacy.scrubCtx
	svc.privacy.loops.Add(1)
	svc.privacy.lock.Unlock()
	defer svc.privacy.loops.Done()
	// The service's logger, with the job ID: never one that may carry a user ID.
	log := svc.log.With().Str("action", "final erasure scrub").Str("job_id", jobID).Logger()
	err := svc.scrubErasure(log.WithContext(ctx), jobID, userHash, modules)
	svc.privacy.lock.Lock()
	if svc.privacy.finalScrubs[jobID] == armed {
		if err == nil {
			delete(svc.privacy.finalScrubs, jobID)
			delete(svc.privacy.scrubUsers, jobID)
		} else if !svc.privacy.scrubsStopped {
			svc.armFinalScrubLocked(jobID, userHash, modules, finalScrubRetry)
		}
	}
	hook := svc.privacy.scrubRan
	svc.privacy.lock.Unlock()
	if err != nil {
		log.Warn().Err(err).Msg("Failed to run the final scrub after an erasure; will retry")
	} else {
		log.Info().Msg("Ran the final scrub after an erasure")
	}
	if hook != nil {
		hook(jobID, err)
	}
}

// scrubScope reports which of the stores an erasure's scrubs cover an erasure of modules (empty:
// full) erased: the crypto store's rows, the state cache's (the core's).
func scrubScope(modules []string) (crypto, stateCache bool) {
	if len(modules) == 0 {
		return true, true
	}
	return slices.Contains(modules, e2ee.Module), slices.Contains(modules, CoreModule)
}

// receiptJobScope returns the scope modules of erasure job jobID (empty: a full erasure).
func (svc *Service) receiptJobScope(ctx context.Context, jobID string) ([]string, error) {
	job, err := svc.engine.Store().GetErasure(ctx, jobID)
	if err != nil {
		return nil, err
	} else if job == nil {
		return nil, fmt.Errorf("erasure job %s not found", jobID)
	}
	return job.Modules, nil
}

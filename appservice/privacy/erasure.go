package privacy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/format"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/database"
)

// Erasure triggers, recorded in the job, the tombstone and the logs.
const (
	// TriggerUser is an erasure the user asked for (!forget).
	TriggerUser = "user"
	// TriggerAdmin is an erasure an admin asked for (admin API, custodian forget).
	TriggerAdmin = "admin"
	// TriggerDeactivation is an erasure after the homeserver deactivated the account.
	TriggerDeactivation = "deactivation"
)

// bookkeepingTables are declared tables that erasure handles itself and does not count: the
// erasure jobs name the user only while pending, and the erasing transaction clears that.
var bookkeepingTables = []string{"as_erasure"}

// EraseRequest says what [Engine.Erase] erases, why, and whom it tells.
type EraseRequest struct {
	// Trigger is [TriggerUser], [TriggerAdmin] or [TriggerDeactivation].
	Trigger string
	// Modules limits the erasure to these bridges' data (bridge IDs); nil or empty erases
	// everything, including the users row, the state cache entries about the user and, through
	// the cascade, their vault data key. The core's own module cannot be erased alone.
	Modules []string
	// NotifyRoom, if set, is where the bot posts the receipt once the data is gone (the
	// user's direct chat with the bot). Empty sends none.
	NotifyRoom id.RoomID
	// RequestID, if set, makes the request idempotent: another Erase with the same RequestID
	// finishes or returns the first one's job instead of starting a new one. Commands pass
	// their event ID, so that a command handled again after a crash erases once.
	RequestID string
}

// EraseReceipt says what an erasure did. It never names the user.
type EraseReceipt struct {
	// JobID identifies the erasure (admin API: GET /_custodian/admin/v1/erasures/{jobId}).
	JobID string `json:"job_id"`
	// State is "pending", "cleanup" (data erased; telling the user, leaving their direct chats,
	// scrubbing what was stored about them since (see [ErasureScrubber]) or, on SQLite,
	// truncating the write-ahead log is still to do, and the erasure runner retries it) or
	// "done".
	State string `json:"state"`
	// Trigger is who asked, see [EraseRequest].
	Trigger string `json:"trigger"`
	// Modules is the scope; empty means everything.
	Modules []string `json:"modules,omitempty"`
	// UserHash is the keyed hash the tombstone records instead of the user ID.
	UserHash string `json:"user_hash"`
	// Erased counts the rows erased (deleted, or for provenance unlinked from the user) per
	// module and table.
	Erased map[string]map[string]int64 `json:"erased"`
	// Kept counts the rows kept for a declared reason (EraseRetain) per module and table.
	Kept map[string]map[string]int64 `json:"kept,omitempty"`
	// RemoteFailures lists the bridges whose remote erasure (EraseRemote) failed; their local
	// data was erased regardless.
	RemoteFailures []string `json:"remote_failures,omitempty"`
	// StartedAt is when the job was recorded; FinishedAt when it was done (nil before).
	StartedAt  time.Time  `json:"started_at"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
}

// ModuleTotals returns the rows erased per module.
func (r *EraseReceipt) ModuleTotals() map[string]int64 {
	out := make(map[string]int64, len(r.Erased))
	for module, tables := range r.Erased {
		for _, n := range tables {
			out[module] += n
		}
	}
	return out
}

// Total returns the rows erased in all modules.
func (r *EraseReceipt) Total() int64 {
	var total int64
	for _, n := range r.ModuleTotals() {
		total += n
	}
	return total
}

// eraseCounts is the JSON stored in as_erasure.counts and as_tombstone.counts.
type eraseCounts struct {
	Erased map[string]map[string]int64 `json:"erased"`
	Kept   map[string]map[string]int64 `json:"kept,omitempty"`
}

// ErasureCommitter is an optional interface that a [Host] can implement to drop copies of
// erased rows it keeps in memory (the crypto store's olm sessions) after any erasure, full or
// limited to some modules.
type ErasureCommitter interface {
	Host
	// ErasureCommitted runs once an erasure's transaction has committed. It must not block for
	// long, and must never log c.User next to c.UserHash or c.JobID.
	ErasureCommitted(ctx context.Context, c CommittedErasure)
}

// CommittedErasure is what [ErasureCommitter.ErasureCommitted] learns of an erasure that has
// just committed.
type CommittedErasure struct {
	// JobID is the erasure job's ID.
	JobID string
	// User is the erased user. The engine forgets them once ErasureCommitted returned.
	User id.UserID
	// UserHash is the user's keyed hash, as in the tombstone.
	UserHash string
	// Modules is the scope: empty for a full erasure.
	Modules []string
	// ErasedAt is when the erasing transaction ran (the tombstone's time).
	ErasedAt time.Time
}

// ErasureLocker is an optional interface that a [Host] can implement to keep its own writers of
// a user's rows (the crypto store's to-device handling) out while an erasure deletes them.
type ErasureLocker interface {
	Host
	// LockForErasure is called before the erasing transaction of user begins, with the
	// erasure's modules (empty for a full erasure); the engine calls the returned function once
	// that transaction ended, committed or not. It may block until a writer of user's rows
	// finished, but must not wait for the database.
	LockForErasure(ctx context.Context, user id.UserID, modules []string) (unlock func())
}

// ErrUnknownModule is returned by [Engine.Erase] when EraseRequest.Modules names something
// that is not a bridge of this service. The caller should show the user the valid names.
var ErrUnknownModule = errors.New("appservice: unknown module")

// ErrUnknownErasure is returned by [Engine.ErasureStatus] for a job ID that does not exist.
var ErrUnknownErasure = errors.New("appservice: unknown erasure job")

// Erase erases what Custodian holds about user, and returns the receipt.
//
// It first records a job (as_erasure), so that an erasure interrupted by a crash or a failure
// is finished later, then hands it to the erasure runner (see [Engine.Start]), which runs
// jobs one at a time, and waits for the runner's attempt at it. The runner asks every bridge in
// scope that implements [Eraser] to undo the user's remote side effects (best effort: a failure
// is logged with the bridge ID and listed in the receipt). Then, in one database transaction, it
// counts the user's rows in every declared table in scope and deletes them: for everything, the
// rows of EraseDeleteRows tables, the state cache's entries that mention the user, and the users
// row, whose deletion cascades to every EraseCascade table (the vault's data keys too:
// crypto-shredding) and unlinks EraseSetNull provenance; for some modules, each declared table's
// rows directly. The same transaction records a tombstone (when, trigger, scope, counts, under a
// keyed hash of the user ID), clears the job's user ID and, for a full erasure with
// vault.shred_backups, records the shred request. After the commit the runner evicts the user
// from the vault's cache, posts the receipt in req.NotifyRoom, leaves the direct chats the bot
// shared with the user alone (full erasure), and on SQLite truncates the write-ahead log; until
// all that succeeded the job stays in cleanup and the runner retries it.
//
// The receipt's State is "cleanup" or "done" once the data is erased. If ctx ends first, Erase
// returns ctx's error and the job goes on in the background. Before the service has started (no
// runner), Erase runs the job itself.
//
// Erase is idempotent: erasing again erases nothing more and records another tombstone, unless
// req.RequestID repeats an earlier request, which returns that request's receipt. It never logs
// the user ID: log lines carry the job ID and the hash, from a logger that is not ctx's.
func (e *Engine) Erase(ctx context.Context, user id.UserID, req EraseRequest) (*EraseReceipt, error) {
	job, wait, err := e.requestErasure(ctx, user, req)
	if err != nil {
		return nil, err
	}
	if wait == nil {
		if job.State == ErasureDone {
			return ReceiptOf(job)
		}
		// No runner: run the job here, one erasure at a time all the same.
		ctx = e.erasureContext(ctx)
		e.eraseLock.Lock()
		defer e.eraseLock.Unlock()
		current, err := e.queries().GetErasure(ctx, job.JobID)
		if err != nil {
			return nil, err
		} else if current == nil {
			return nil, fmt.Errorf("erasure job %s vanished", job.JobID)
		}
		return e.runErasure(ctx, current)
	}
	select {
	case out := <-wait:
		return out.receipt, out.err
	case <-ctx.Done():
		e.dropErasureWaiter(job.JobID, wait)
		return nil, fmt.Errorf("stopped waiting for erasure job %s, which goes on in the background: %w", job.JobID, ctx.Err())
	case <-e.erasureRunnerDone():
		return nil, fmt.Errorf("the service stopped before erasure job %s ran; it is resumed at the next start", job.JobID)
	}
}

// QueueErasure records an erasure job for user and wakes the runner, without waiting for it. It
// is how handlers on a room's worker ask for an erasure (a confirmed deactivation): they must
// return quickly, and the runner finishes the job whatever happens to the handler.
func (e *Engine) QueueErasure(ctx context.Context, user id.UserID, req EraseRequest) (jobID string, err error) {
	job, wait, err := e.requestErasure(ctx, user, req)
	if err != nil {
		return "", err
	}
	if wait != nil {
		e.dropErasureWaiter(job.JobID, wait)
	}
	return job.JobID, nil
}

// erasureOutcome is what the runner tells a waiting [Engine.Erase] after an attempt at its job.
type erasureOutcome struct {
	receipt *EraseReceipt
	err     error
}

// requestErasure validates req, records the job unless it exists (a repeated RequestID) and
// wakes the runner. wait receives the outcome of the runner's next attempt at the job; it is nil
// when there is no runner (the service has not started) or the job was done already.
func (e *Engine) requestErasure(ctx context.Context, user id.UserID, req EraseRequest) (job *ErasureJob, wait chan erasureOutcome, err error) {
	if err := CheckUserID(user); err != nil {
		return nil, nil, err
	}
	switch req.Trigger {
	case TriggerUser, TriggerAdmin, TriggerDeactivation:
	default:
		return nil, nil, fmt.Errorf("appservice: invalid erasure trigger %q", req.Trigger)
	}
	modules, err := e.EraseScope(req.Modules)
	if err != nil {
		return nil, nil, err
	}
	ctx = e.erasureContext(ctx)
	hash, keyID, err := e.UserHash(ctx, user)
	if err != nil {
		return nil, nil, err
	}
	var jobID string
	if req.RequestID != "" {
		if jobID, err = e.RequestJobID(ctx, req.RequestID); err != nil {
			return nil, nil, err
		}
	} else {
		var buf [12]byte
		_, _ = rand.Read(buf[:])
		jobID = "er_" + hex.EncodeToString(buf[:])
	}
	// Waiting starts before the job exists, so that the runner's attempt cannot come first.
	wait = e.addErasureWaiter(jobID)
	job = &ErasureJob{
		JobID: jobID, User: user, UserHash: hash, HashKeyID: keyID, Trigger: req.Trigger,
		Modules: modules, State: ErasurePending, NotifyRoom: req.NotifyRoom, CreatedAt: e.now(),
	}
	created, err := e.queries().CreateErasure(ctx, job)
	if err == nil && !created {
		if job, err = e.queries().GetErasure(ctx, jobID); err == nil && job == nil {
			err = fmt.Errorf("erasure job %s vanished", jobID)
		}
		if err == nil {
			zerolog.Ctx(ctx).Debug().Str("job_id", jobID).Str("state", string(job.State)).
				Msg("Erasure request seen before; continuing its job")
		}
	}
	if err != nil || job.State == ErasureDone {
		e.dropErasureWaiter(jobID, wait)
		return job, nil, err
	}
	if wait != nil {
		zerolog.Ctx(ctx).Info().Str("job_id", jobID).Str("trigger", job.Trigger).Msg("Erasure queued")
		e.wakeErasureRunner()
	}
	return job, wait, nil
}

// addErasureWaiter registers a channel for the outcome of the runner's next attempt at jobID;
// nil if there is no runner.
func (e *Engine) addErasureWaiter(jobID string) chan erasureOutcome {
	e.lock.Lock()
	defer e.lock.Unlock()
	if e.runnerDone == nil {
		return nil
	}
	if e.eraseWaiters == nil {
		e.eraseWaiters = make(map[string][]chan erasureOutcome)
	}
	ch := make(chan erasureOutcome, 1)
	e.eraseWaiters[jobID] = append(e.eraseWaiters[jobID], ch)
	return ch
}

// dropErasureWaiter unregisters ch; a nil ch is ignored.
func (e *Engine) dropErasureWaiter(jobID string, ch chan erasureOutcome) {
	if ch == nil {
		return
	}
	e.lock.Lock()
	defer e.lock.Unlock()
	waiters := slices.DeleteFunc(e.eraseWaiters[jobID], func(c chan erasureOutcome) bool { return c == ch })
	if len(waiters) == 0 {
		delete(e.eraseWaiters, jobID)
	} else {
		e.eraseWaiters[jobID] = waiters
	}
}

// notifyErasureWaiters hands the outcome of an attempt at jobID to everyone waiting for it.
func (e *Engine) notifyErasureWaiters(jobID string, out erasureOutcome) {
	e.lock.Lock()
	waiters := e.eraseWaiters[jobID]
	delete(e.eraseWaiters, jobID)
	e.lock.Unlock()
	for _, ch := range waiters {
		ch <- out
	}
}

// waitingErasures returns the job IDs someone waits for.
func (e *Engine) waitingErasures() []string {
	e.lock.Lock()
	defer e.lock.Unlock()
	return slices.Collect(maps.Keys(e.eraseWaiters))
}

// erasureRunnerDone returns the channel closed when the runner stops (nil before start).
func (e *Engine) erasureRunnerDone() <-chan struct{} {
	e.lock.Lock()
	defer e.lock.Unlock()
	return e.runnerDone
}

// wakeErasureRunner makes the runner look for jobs now. It never blocks.
func (e *Engine) wakeErasureRunner() {
	select {
	case e.eraseWake <- struct{}{}:
	default:
	}
}

// erasureContext returns ctx with a logger built from the service's logger alone. The caller's
// logger may carry the user ID (the dispatcher adds the event's sender), and an erasure's log
// lines carry its job ID and hash: together they would tie the tombstone to the user.
func (e *Engine) erasureContext(ctx context.Context) context.Context {
	return e.log.With().Str("component", "erasure").Logger().WithContext(ctx)
}

// EraseScope validates, sorts and deduplicates the modules of an erasure request; an unknown
// module (or the core's, which cannot be erased alone) gives [ErrUnknownModule].
func (e *Engine) EraseScope(modules []string) ([]string, error) {
	if len(modules) == 0 {
		return nil, nil
	}
	out := make([]string, 0, len(modules))
	inv := e.host.Inventory()
	for _, module := range modules {
		if _, ok := inv[module]; !ok || module == CoreModule {
			return nil, fmt.Errorf("%w %q", ErrUnknownModule, module)
		}
		if !slices.Contains(out, module) {
			out = append(out, module)
		}
	}
	slices.Sort(out)
	return out, nil
}

// runErasure takes job from wherever it is to done. The caller holds eraseLock.
func (e *Engine) runErasure(ctx context.Context, job *ErasureJob) (*EraseReceipt, error) {
	scope := ScopeAll
	if len(job.Modules) > 0 {
		scope = strings.Join(job.Modules, ",")
	}
	log := zerolog.Ctx(ctx).With().
		Str("job_id", job.JobID).
		Str("user_hash", job.UserHash[:min(16, len(job.UserHash))]).
		Str("trigger", job.Trigger).
		Str("scope", scope).
		Logger()
	ctx = log.WithContext(ctx)

	if job.State == ErasurePending && job.User == "" {
		// A full erasure of the same user superseded this job while it was pending.
		if err := e.queries().FinishErasure(ctx, job.JobID, e.now()); err != nil {
			return nil, err
		}
		job.State = ErasureDone
	}
	if job.State == ErasurePending {
		start := time.Now()
		user := job.User
		log.Info().Msg("Erasing user data")
		job.RemoteFailed = e.eraseRemote(ctx, user, job.Modules)
		// Every export file holds the data about to be erased, also a one-module erasure's:
		// withdrawn, before the transaction below cascades the tracking rows away (full erasure).
		e.withdrawExportsOf(ctx, user)
		if len(job.Modules) == 0 {
			job.LeaveRooms = e.host.PrepareFullErasure(ctx, user)
		}
		counts, erasedAt, err := e.eraseRows(ctx, job)
		if err != nil {
			return nil, fmt.Errorf("failed to erase user data: %w", err)
		}
		if ec, ok := e.host.(ErasureCommitter); ok {
			ec.ErasureCommitted(ctx, CommittedErasure{
				JobID: job.JobID, User: user, UserHash: job.UserHash, Modules: job.Modules, ErasedAt: erasedAt,
			})
		}
		if len(job.Modules) == 0 {
			// The data key is gone with the users row: the host drops any copy kept in memory.
			// With vault.shred_backups, backups taken before now become unreadable once the
			// master key that wraps the data keys in them is rotated out. The request is in the
			// database already; this only wakes the shredder.
			if e.host.FullErasureCommitted(ctx, user) {
				log.Info().Msg("Erasure committed; database backups will be shredded at the next master key rotation, within seconds")
			}
		}
		var erased, kept int64
		for _, tables := range counts.Erased {
			for _, n := range tables {
				erased += n
			}
		}
		for _, tables := range counts.Kept {
			for _, n := range tables {
				kept += n
			}
		}
		log.Info().
			Int64("rows_erased", erased).
			Int64("rows_kept", kept).
			Int("remote_failures", len(job.RemoteFailed)).
			Int("direct_chats", len(job.LeaveRooms)).
			Dur("duration", time.Since(start)).
			Msg("Erased user data")
	}
	if job.State == ErasureCleanup {
		e.cleanUpErasure(ctx, job)
	}
	return ReceiptOf(job)
}

// eraseRemote asks every module in scope (every bridge for a full erasure) to undo the user's
// remote side effects (see [Host.EraseRemote]), each within a minute. It returns the modules
// that failed; their failures are logged, not returned.
func (e *Engine) eraseRemote(ctx context.Context, user id.UserID, modules []string) (failed []string) {
	if len(modules) == 0 {
		modules = sortedKeys(e.host.Inventory())
	}
	for _, module := range modules {
		if module == CoreModule {
			continue
		}
		bctx, cancel := context.WithTimeout(zerolog.Ctx(ctx).With().Str("bridge", module).Logger().WithContext(ctx), time.Minute)
		err := callSafely(func() error { return e.host.EraseRemote(bctx, module, user) })
		cancel()
		if err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Str("bridge", module).Msg("Remote erasure failed; erasing the local data anyway")
			failed = append(failed, module)
		}
	}
	return failed
}

// callSafely calls fn, turning a panic into an error.
func callSafely(fn func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	return fn()
}

// eraseRows is the erasure's one database transaction; see [Engine.Erase]. It moves the job
// to cleanup (or done, if there is nothing left to do) and records the tombstone. A host that
// implements [ErasureLocker] has the user locked from before the transaction to its end. It
// returns the counts and the tombstone's time.
func (e *Engine) eraseRows(ctx context.Context, job *ErasureJob) (*eraseCounts, time.Time, error) {
	full := len(job.Modules) == 0
	user := job.User
	inv := e.host.Inventory()
	modules := job.Modules
	if full {
		modules = sortedKeys(inv)
	}
	var counts *eraseCounts
	if el, ok := e.host.(ErasureLocker); ok {
		defer el.LockForErasure(ctx, user, job.Modules)()
	}
	now := e.now()
	err := e.db.DoTxn(ctx, nil, func(ctx context.Context) error {
		counts = &eraseCounts{Erased: map[string]map[string]int64{}, Kept: map[string]map[string]int64{}}
		add := func(into map[string]map[string]int64, module, table string, n int64) {
			if n == 0 {
				return
			}
			if into[module] == nil {
				into[module] = map[string]int64{}
			}
			into[module][table] += n
		}
		if full {
			// Before the state cache's member rows go: the rooms whose member lists will be
			// incomplete must be fetched again when needed.
			scrubbed, err := e.scrubStateCache(ctx, user)
			if err != nil {
				return err
			}
			add(counts.Erased, CoreModule, "mx_room_state", scrubbed)
		}
		for _, module := range modules {
			tables := inv[module]
			for _, ut := range tables {
				if slices.Contains(bookkeepingTables, ut.Table) {
					continue
				}
				n, err := e.countUserRows(ctx, ut, user)
				if err != nil {
					return err
				}
				if ut.Policy == EraseRetain {
					add(counts.Kept, module, ut.Table, n)
				} else {
					add(counts.Erased, module, ut.Table, n)
				}
			}
			// Children before parents, in case a table references another without cascading.
			for i := len(tables) - 1; i >= 0; i-- {
				ut := tables[i]
				var query string
				switch {
				case ut.Table == "users" || ut.Policy == EraseRetain || slices.Contains(bookkeepingTables, ut.Table):
					continue
				case full && (ut.Policy == EraseCascade || ut.Policy == EraseSetNull):
					// Deleting the users row takes care of these.
					continue
				case ut.Policy == EraseSetNull:
					query = fmt.Sprintf(`UPDATE %s SET %s=NULL WHERE %s=$1`, quoteIdent(ut.Table), quoteIdent(ut.UserColumn), quoteIdent(ut.UserColumn))
				default:
					query = fmt.Sprintf(`DELETE FROM %s WHERE %s`, quoteIdent(ut.Table), ut.userCondition())
				}
				if _, err := e.db.Exec(ctx, query, user); err != nil {
					return fmt.Errorf("failed to erase rows of %s: %w", ut.Table, err)
				}
			}
		}
		if full {
			if _, err := e.queries().SupersedeErasures(ctx, user, job.JobID, now); err != nil {
				return err
			}
			if _, err := e.db.Exec(ctx, `DELETE FROM users WHERE mxid=$1`, user); err != nil {
				return fmt.Errorf("failed to delete users row: %w", err)
			}
			if err := e.host.InFullErasure(ctx); err != nil {
				return err
			}
		}
		if len(counts.Kept) == 0 {
			counts.Kept = nil
		}
		data, err := json.Marshal(counts)
		if err != nil {
			return err
		}
		job.Counts = data
		err = e.queries().PutTombstone(ctx, &Tombstone{
			JobID: job.JobID, UserHash: job.UserHash, HashKeyID: job.HashKeyID, Trigger: job.Trigger,
			Modules: job.Modules, ErasedAt: now, Counts: data,
		})
		if err != nil {
			return err
		}
		next := ErasureDone
		if job.NotifyRoom != "" || len(job.LeaveRooms) > 0 || e.scrubs(job.Modules) || e.db.Dialect == dbutil.SQLite {
			// On SQLite, cleanup also truncates the WAL (checkpointAfterErasure).
			next = ErasureCleanup
		}
		if err = e.queries().CommitErasure(ctx, job, next, now); err != nil {
			return err
		}
		job.State = next
		return nil
	})
	if err != nil {
		return nil, time.Time{}, err
	}
	job.User = ""
	if job.State == ErasureDone {
		job.FinishedAt = now
	}
	return counts, now, nil
}

// scrubs reports whether the host scrubs again after an erasure of modules (see
// [ErasureScrubber]).
func (e *Engine) scrubs(modules []string) bool {
	scrubber, ok := e.host.(ErasureScrubber)
	return ok && scrubber.ScrubsAfterErasure(modules)
}

// countUserRows counts ut's rows about user.
func (e *Engine) countUserRows(ctx context.Context, ut UserTable, user id.UserID) (int64, error) {
	var n int64
	query := fmt.Sprintf(`SELECT COUNT(*) FROM %s WHERE %s`, quoteIdent(ut.Table), ut.userCondition())
	if err := e.db.QueryRow(ctx, query, user).Scan(&n); err != nil {
		return 0, fmt.Errorf("failed to count rows of %s: %w", ut.Table, err)
	}
	return n, nil
}

// scrubStateCache clears what the mautrix state cache holds about user besides their member
// rows (which the inventory deletes): cached power levels and create events whose JSON mentions
// them. The cache fetches those from the homeserver again when it needs them. Rooms where the
// user's member row goes are marked as not having their full member list. It returns how many
// cached room-state rows it changed.
func (e *Engine) scrubStateCache(ctx context.Context, user id.UserID) (int64, error) {
	if _, err := e.db.Exec(ctx, `
		UPDATE mx_room_state SET members_fetched=false
		WHERE room_id IN (SELECT room_id FROM mx_user_profile WHERE user_id=$1)`, user); err != nil {
		return 0, fmt.Errorf("failed to reset member lists in the state cache: %w", err)
	}
	pattern := "%" + database.EscapeLike(jsonStringBody(user.String())) + "%"
	var total int64
	for _, column := range []string{"power_levels", "create_event"} {
		res, err := e.db.Exec(ctx, fmt.Sprintf(
			`UPDATE mx_room_state SET %[1]s=NULL WHERE %[1]s IS NOT NULL AND CAST(%[1]s AS TEXT) LIKE $1 ESCAPE '\'`, column), pattern)
		if err != nil {
			return 0, fmt.Errorf("failed to clear %s in the state cache: %w", column, err)
		}
		n, _ := res.RowsAffected()
		total += n
	}
	return total, nil
}

// EraseAgain deletes, in one transaction, the rows naming user that appeared after their erasure
// committed in the tables of modules (as the erasure deletes them, set-null columns set to NULL,
// retained tables kept) and, with stateCache, in the state cache: their member rows and cached
// state mentioning them (see scrubStateCache). It records no job and no tombstone: it finishes an
// erasure that has one. It returns how many rows it changed.
func (e *Engine) EraseAgain(ctx context.Context, user id.UserID, modules []string, stateCache bool) (int64, error) {
	inv := e.host.Inventory()
	var total int64
	err := e.db.DoTxn(ctx, nil, func(ctx context.Context) error {
		total = 0
		if !stateCache {
			return e.eraseModulesAgain(ctx, inv, user, modules, &total)
		}
		scrubbed, err := e.scrubStateCache(ctx, user)
		if err != nil {
			return err
		}
		total += scrubbed
		res, err := e.db.Exec(ctx, `DELETE FROM mx_user_profile WHERE user_id=$1`, user)
		if err != nil {
			return fmt.Errorf("failed to erase the state cache's member rows: %w", err)
		}
		n, _ := res.RowsAffected()
		total += n
		return e.eraseModulesAgain(ctx, inv, user, modules, &total)
	})
	if err != nil {
		return 0, err
	}
	return total, nil
}

// eraseModulesAgain is EraseAgain's erasure of modules' tables, in the caller's transaction; it
// adds the rows it changed to total.
func (e *Engine) eraseModulesAgain(ctx context.Context, inv map[string][]UserTable, user id.UserID, modules []string, total *int64) error {
	for _, module := range modules {
		tables, ok := inv[module]
		if !ok {
			return fmt.Errorf("%w %q", ErrUnknownModule, module)
		}
		for i := len(tables) - 1; i >= 0; i-- {
			ut := tables[i]
			var query string
			switch {
			case ut.Table == "users" || ut.Policy == EraseRetain || slices.Contains(bookkeepingTables, ut.Table):
				continue
			case ut.Policy == EraseSetNull:
				query = fmt.Sprintf(`UPDATE %s SET %s=NULL WHERE %s=$1`, quoteIdent(ut.Table), quoteIdent(ut.UserColumn), quoteIdent(ut.UserColumn))
			default:
				query = fmt.Sprintf(`DELETE FROM %s WHERE %s`, quoteIdent(ut.Table), ut.userCondition())
			}
			res, err := e.db.Exec(ctx, query, user)
			if err != nil {
				return fmt.Errorf("failed to erase rows of %s again: %w", ut.Table, err)
			}
			n, _ := res.RowsAffected()
			*total += n
		}
	}
	return nil
}

// UsersWithHash returns the users whose keyed hash (see [Engine.UserHash]) is userHash among
// those the state cache's member rows and the plain user columns of modules' tables name. It
// finds an erased user again, after a restart, from the rows that still name them.
func (e *Engine) UsersWithHash(ctx context.Context, userHash string, modules []string) ([]id.UserID, error) {
	inv := e.host.Inventory()
	queries := []string{`SELECT DISTINCT user_id FROM mx_user_profile`}
	for _, module := range modules {
		for _, ut := range inv[module] {
			if ut.Match != "" || ut.UserColumn == "" || ut.Policy == EraseRetain {
				continue
			}
			queries = append(queries, fmt.Sprintf(`SELECT DISTINCT %[1]s FROM %[2]s WHERE %[1]s IS NOT NULL`, quoteIdent(ut.UserColumn), quoteIdent(ut.Table)))
		}
	}
	var out []id.UserID
	for _, query := range queries {
		rows, err := e.db.Query(ctx, query)
		if err != nil {
			return nil, fmt.Errorf("failed to list users: %w", err)
		}
		var users []id.UserID
		for rows.Next() {
			var user id.UserID
			if err = rows.Scan(&user); err != nil {
				_ = rows.Close()
				return nil, fmt.Errorf("failed to list users: %w", err)
			}
			users = append(users, user)
		}
		if err = rows.Err(); err != nil {
			_ = rows.Close()
			return nil, fmt.Errorf("failed to list users: %w", err)
		}
		if err = rows.Close(); err != nil {
			return nil, fmt.Errorf("failed to list users: %w", err)
		}
		for _, user := range users {
			if slices.Contains(out, user) {
				continue
			}
			hash, _, err := e.UserHash(ctx, user)
			if err != nil {
				return nil, err
			}
			if hash == userHash {
				out = append(out, user)
			}
		}
	}
	return out, nil
}

// jsonStringBody returns s as it appears inside a JSON string, without the quotes.
func jsonStringBody(s string) string {
	var sb strings.Builder
	enc := json.NewEncoder(&sb)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	out := strings.TrimSpace(sb.String())
	return out[1 : len(out)-1]
}

// quoteIdent quotes a SQL identifier for both dialects. Identifiers come from the inventory,
// which is code, never from users, and the schema check has made sure they exist.
func quoteIdent(name string) string {
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
}

// cleanUpErasure tells the user (if asked to) and leaves the direct chats the bot shared with
// them, then lets an [ErasureScrubber] host delete what was stored about them since the erasure
// (the receipt's room key share among it), then, on SQLite, checkpoints and truncates the WAL,
// then marks the job done. Each step is
// retried by the erasure runner until it succeeds: a failure to send the receipt or to
// checkpoint leaves the job in cleanup (the receipt carries a transaction ID, so a retry does
// not post it twice). Failures to leave a room are logged, not retried.
func (e *Engine) cleanUpErasure(ctx context.Context, job *ErasureJob) {
	log := zerolog.Ctx(ctx)
	if job.NotifyRoom != "" {
		receipt, err := ReceiptOf(job)
		if err == nil {
			err = e.host.SendErasureReceipt(ctx, job.NotifyRoom, job.JobID, job.UserHash, receiptMarkdown(receipt, len(job.LeaveRooms) > 0))
		}
		if err != nil {
			log.Warn().Err(err).Msg("Failed to send the erasure receipt; will retry")
			return
		}
	}
	for _, roomID := range job.LeaveRooms {
		// The rooms were chosen before the erasure committed; a retried or resumed cleanup may
		// come much later, when someone else has joined: the host leaves only a room that still
		// holds nobody but the bot and (by the job's keyed hash) the erased user.
		e.host.LeaveAfterErasure(ctx, roomID, job.UserHash)
	}
	if e.scrubs(job.Modules) {
		// After the rooms are left, so that nothing shares a room key with the user again.
		if err := e.host.(ErasureScrubber).ScrubAfterErasure(ctx, job.JobID, job.UserHash, job.Modules); err != nil {
			log.Warn().Err(err).Msg("Failed to scrub the rows stored about the user since the erasure; will retry")
			return
		}
	}
	if job.NotifyRoom != "" || len(job.LeaveRooms) > 0 {
		if err := e.queries().ClearErasureCleanup(ctx, job.JobID); err != nil {
			log.Warn().Err(err).Msg("Failed to record that the erasure receipt was sent; will retry")
			return
		}
		job.NotifyRoom, job.LeaveRooms = "", nil
	}
	if !e.checkpointAfterErasure(ctx) {
		return
	}
	if err := e.queries().FinishErasure(ctx, job.JobID, e.now()); err != nil {
		log.Warn().Err(err).Msg("Failed to mark erasure job done; will retry")
		return
	}
	job.State = ErasureDone
	job.FinishedAt = e.now()
}

// ReceiptOf builds the receipt of job as it stands.
func ReceiptOf(job *ErasureJob) (*EraseReceipt, error) {
	r := &EraseReceipt{
		JobID: job.JobID, State: string(job.State), Trigger: job.Trigger, Modules: job.Modules,
		UserHash: job.UserHash, RemoteFailures: job.RemoteFailed, StartedAt: job.CreatedAt,
		Erased: map[string]map[string]int64{},
	}
	if !job.FinishedAt.IsZero() {
		finished := job.FinishedAt
		r.FinishedAt = &finished
	}
	if len(job.Counts) > 0 {
		var counts eraseCounts
		if err := json.Unmarshal(job.Counts, &counts); err != nil {
			return nil, fmt.Errorf("invalid counts in erasure job %s: %w", job.JobID, err)
		}
		if counts.Erased != nil {
			r.Erased = counts.Erased
		}
		r.Kept = counts.Kept
	}
	return r, nil
}

// receiptMarkdown is the receipt the user gets in their direct chat.
func receiptMarkdown(r *EraseReceipt, leaving bool) string {
	var sb strings.Builder
	totals := r.ModuleTotals()
	if len(r.Modules) == 0 {
		sb.WriteString("Done: I erased everything Custodian held about you.\n\n")
	} else {
		fmt.Fprintf(&sb, "Done: I erased what %s held about you. Everything else is untouched, but any export file I sent you "+
			"is withdrawn, since it held this data too: send `export` for a new one.\n\n", strings.Join(r.Modules, ", "))
	}
	if len(totals) == 0 {
		sb.WriteString("There was nothing to erase.\n")
	}
	for _, module := range slices.Sorted(maps.Keys(totals)) {
		fmt.Fprintf(&sb, "* %s: %s\n", module, Plural(totals[module], "entry", "entries"))
	}
	for _, module := range slices.Sorted(maps.Keys(r.Kept)) {
		var n int64
		for _, c := range r.Kept[module] {
			n += c
		}
		fmt.Fprintf(&sb, "* %s kept %s for a stated reason until they expire (send `mydata` to see why)\n", module, Plural(n, "entry", "entries"))
	}
	if len(r.RemoteFailures) > 0 {
		fmt.Fprintf(&sb, "\nUndoing what %s did for you on the remote side failed; the administrator can see it in the logs. Your data here is erased regardless.\n",
			strings.Join(r.RemoteFailures, ", "))
	}
	fmt.Fprintf(&sb, "\nAll that remains is a record that an erasure happened, when, and these counts, filed under a one-way keyed hash instead of your user ID (erasure %s).",
		format.SafeMarkdownCode(r.JobID))
	if leaving {
		sb.WriteString(" I'm leaving this chat now; invite me again whenever you like, and I will start from scratch.")
	}
	return sb.String()
}

// Plural returns n and the noun for it: "1 entry", "2 entries".
func Plural(n int64, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// Timing of the erasure runner, on the service's clock.
const (
	// ErasurePoll is how often the runner looks for jobs when none is unfinished: jobs recorded
	// by another instance sharing the database, or by a request whose wake-up it missed.
	ErasurePoll = time.Minute
	// ErasureRetryMin and ErasureRetryMax bound the wait before the runner tries unfinished jobs
	// again (a failed step, a busy SQLite WAL); it doubles from the one to the other.
	ErasureRetryMin = 5 * time.Second
	ErasureRetryMax = 10 * time.Minute
)

// erasureLoop is the erasure runner: it runs every pending or cleanup job, one at a time, at
// start (jobs an earlier run left), whenever a request wakes it, every ErasurePoll, and while
// jobs stay unfinished, again after a growing delay. It closes e.resumed after its
// first round and runs until ctx ends.
func (e *Engine) erasureLoop(ctx context.Context) {
	defer close(e.runnerDone)
	ctx = e.erasureContext(ctx)
	retry := ErasureRetryMin
	for first := true; ; first = false {
		unfinished := e.runErasureJobs(ctx, first)
		if first {
			close(e.resumed)
		}
		wait := ErasurePoll
		if unfinished > 0 {
			wait, retry = retry, min(retry*2, ErasureRetryMax)
		} else {
			retry = ErasureRetryMin
		}
		timer := e.clk.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-e.eraseWake:
		case <-timer.C():
		}
		timer.Stop()
	}
}

// runErasureJobs takes every unfinished job as far as it goes, oldest first, and tells whoever
// waits for one how it went. It returns how many jobs are still unfinished.
func (e *Engine) runErasureJobs(ctx context.Context, atStart bool) (unfinished int) {
	log := zerolog.Ctx(ctx)
	jobs, err := e.queries().UnfinishedErasures(ctx)
	if err != nil {
		log.Error().Err(err).Msg("Failed to list unfinished erasure jobs; will retry")
		return 1
	}
	if atStart && len(jobs) > 0 {
		log.Info().Int("jobs", len(jobs)).Msg("Finishing erasures an earlier run left unfinished")
	}
	seen := make(map[string]bool, len(jobs))
	for _, job := range jobs {
		if ctx.Err() != nil {
			return unfinished + 1
		}
		seen[job.JobID] = true
		receipt, err := e.runErasureJob(ctx, job.JobID)
		e.notifyErasureWaiters(job.JobID, erasureOutcome{receipt, err})
		state := ErasurePending
		if receipt != nil {
			state = ErasureState(receipt.State)
		}
		if state != ErasureDone {
			unfinished++
		}
		if err != nil {
			log.Error().Err(err).Str("job_id", job.JobID).Msg("Erasure job failed; will retry")
		}
		if hook := e.erasureRan; hook != nil {
			hook(job.JobID, state, err)
		}
	}
	// Jobs someone waits for that were not unfinished: finished meanwhile (by another instance).
	// A job not recorded yet, or recorded after the list was read, is for the next round, which
	// its request wakes.
	for _, jobID := range e.waitingErasures() {
		if seen[jobID] {
			continue
		}
		if receipt, err := e.ErasureStatus(ctx, jobID); err == nil && receipt.State == string(ErasureDone) {
			e.notifyErasureWaiters(jobID, erasureOutcome{receipt, nil})
		}
	}
	return unfinished
}

// runErasureJob runs job jobID as it stands in the database, under eraseLock.
func (e *Engine) runErasureJob(ctx context.Context, jobID string) (*EraseReceipt, error) {
	e.eraseLock.Lock()
	defer e.eraseLock.Unlock()
	// Another request may have moved the job on since it was listed.
	job, err := e.queries().GetErasure(ctx, jobID)
	if err != nil {
		return nil, err
	} else if job == nil {
		return nil, ErrUnknownErasure
	}
	if job.State == ErasureDone {
		return ReceiptOf(job)
	}
	return e.runErasure(ctx, job)
}

// ErasureStatus returns the receipt of erasure job jobID as it stands, or [ErrUnknownErasure].
func (e *Engine) ErasureStatus(ctx context.Context, jobID string) (*EraseReceipt, error) {
	job, err := e.queries().GetErasure(ctx, jobID)
	if err != nil {
		return nil, err
	} else if job == nil {
		return nil, ErrUnknownErasure
	}
	return ReceiptOf(job)
}

// checkpointAfterErasure copies SQLite's write-ahead log into the database file and truncates
// it, so the pages an erasure zeroed (PRAGMA secure_delete, see sqliteParams) replace the old
// ones in the file and the WAL's older copies of those pages, which hold the erased rows and
// data key, are gone with it. While another connection reads an older snapshot, the WAL cannot
// be truncated (SQLite reports busy after its busy timeout), and later automatic checkpoints
// never truncate it: it reports false, and the erasure stays in cleanup until a retry succeeds.
// PostgreSQL needs nothing here: it reports true.
func (e *Engine) checkpointAfterErasure(ctx context.Context) bool {
	if e.db.Dialect != dbutil.SQLite {
		return true
	}
	var busy, logFrames, checkpointed int
	err := e.db.QueryRow(ctx, "PRAGMA wal_checkpoint(TRUNCATE)").Scan(&busy, &logFrames, &checkpointed)
	switch {
	case err != nil:
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to checkpoint the SQLite WAL after an erasure; will retry")
		return false
	case busy != 0:
		zerolog.Ctx(ctx).Warn().Int("wal_frames", logFrames).Int("checkpointed", checkpointed).
			Msg("SQLite WAL is in use by a reader and still holds the erased rows; the erasure stays in cleanup and the checkpoint is retried")
		return false
	}
	return true
}

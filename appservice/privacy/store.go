package privacy

import (
	"context"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/database"
)

// Store reads and writes the engine's own tables: erasure jobs (as_erasure), tombstones
// (as_tombstone) and the keys they use (as_privacy_key). All methods join the transaction in
// ctx, if any, and are safe for concurrent use. The tables are the core's (its migrations create
// them); the engine owns the queries.
type Store struct {
	db *dbutil.Database
}

// NewStore returns the engine's queries on db.
func NewStore(db *dbutil.Database) *Store {
	return &Store{db: db}
}

// ErasureState is the state of an erasure job (as_erasure.state).
type ErasureState string

const (
	// ErasurePending is a job that was recorded but whose data is not erased yet; the job still
	// names the user.
	ErasurePending ErasureState = "pending"
	// ErasureCleanup is a job whose data is erased; what remains is telling the user, leaving
	// their direct chats, scrubbing what was stored about them since (see [ErasureScrubber]) and,
	// on SQLite, truncating the write-ahead log, which may still hold the erased rows. The job no
	// longer names the user.
	ErasureCleanup ErasureState = "cleanup"
	// ErasureDone is a finished job.
	ErasureDone ErasureState = "done"
)

// ScopeAll is the scope of an erasure of everything about the user (as_erasure.scope).
const ScopeAll = "all"

// ErasureJob is one erasure job (a row of as_erasure).
type ErasureJob struct {
	// JobID identifies the job in logs, receipts and the admin API.
	JobID string
	// User is the user being erased; it is empty once the job has left [ErasurePending].
	User id.UserID
	// UserHash is the keyed hash of the user ID (hex) and HashKeyID names the key, as in the
	// tombstone.
	UserHash  string
	HashKeyID string
	// Trigger says who asked: "user", "admin" or "deactivation".
	Trigger string
	// Modules is the scope: nil for everything, else the modules (bridge IDs) to erase.
	Modules []string
	// State is where the job stands.
	State ErasureState
	// NotifyRoom is where the receipt goes; empty for none.
	NotifyRoom id.RoomID
	// LeaveRooms are the direct chats the bot leaves in cleanup.
	LeaveRooms []id.RoomID
	// RemoteFailed lists the bridges whose remote erasure failed.
	RemoteFailed []string
	// Counts is the JSON of the rows erased and kept, set once the data is erased.
	Counts json.RawMessage
	// CreatedAt is when the job was recorded; FinishedAt when it was done (zero before).
	CreatedAt  time.Time
	FinishedAt time.Time
}

// Tombstone records that an erasure happened, without naming the user (a row of as_tombstone).
type Tombstone struct {
	// JobID is the erasure job's ID.
	JobID string
	// UserHash is the keyed hash of the user ID (hex); HashKeyID names the key.
	UserHash  string
	HashKeyID string
	// Trigger says who asked: "user", "admin" or "deactivation".
	Trigger string
	// Modules is the scope: nil for everything.
	Modules []string
	// ErasedAt is when the erasing transaction ran.
	ErasedAt time.Time
	// Counts is the JSON of the rows erased and kept, per module and table.
	Counts json.RawMessage
	// JobState and JobFinishedAt are the state of the tombstone's erasure job and when it was
	// done (the end of its cleanup; zero before), as its row holds them. Only
	// [Store.TombstonesWithJobs] and [Store.RecentTombstonesWithJobs] fill them; JobState is
	// empty when the job's row is gone (deleted finishedErasureTTL after the job was done).
	JobState      ErasureState
	JobFinishedAt time.Time
}

const (
	erasureColumns = `job_id, user_mxid, user_hash, hash_key_id, erase_trigger, scope, state, notify_room,
		leave_rooms, remote_failed, counts, created_at, finished_at`
	insertErasureQuery = `
		INSERT INTO as_erasure (job_id, user_mxid, user_hash, hash_key_id, erase_trigger, scope, state,
			notify_room, created_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
		ON CONFLICT (job_id) DO NOTHING
	`
	getErasureQuery        = `SELECT ` + erasureColumns + ` FROM as_erasure WHERE job_id=$1`
	unfinishedErasureQuery = `SELECT ` + erasureColumns + ` FROM as_erasure WHERE state<>'done' ORDER BY created_at, job_id`
	pendingErasureOfQuery  = `SELECT COUNT(*) FROM as_erasure WHERE user_mxid=$1 AND state='pending'`
	commitErasureQuery     = `
		UPDATE as_erasure SET user_mxid=NULL, state=$2, leave_rooms=$3, remote_failed=$4, counts=$5, finished_at=$6
		WHERE job_id=$1
	`
	supersedeErasuresQuery = `
		UPDATE as_erasure SET user_mxid=NULL, state='done', notify_room=NULL, leave_rooms=NULL, finished_at=$3
		WHERE user_mxid=$1 AND job_id<>$2
	`
	finishErasureQuery = `
		UPDATE as_erasure SET user_mxid=NULL, state='done', notify_room=NULL, leave_rooms=NULL, finished_at=$2
		WHERE job_id=$1
	`
	insertTombstoneQuery = `
		INSERT INTO as_tombstone (job_id, user_hash, hash_key_id, erase_trigger, scope, erased_at, counts)
		VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (job_id) DO NOTHING
	`
	getTombstonesQuery = `
		SELECT job_id, user_hash, hash_key_id, erase_trigger, scope, erased_at, counts
		FROM as_tombstone WHERE user_hash=$1 ORDER BY erased_at, job_id
	`
	tombstoneWithJobColumns = `
		SELECT t.job_id, t.user_hash, t.hash_key_id, t.erase_trigger, t.scope, t.erased_at, t.counts,
			e.state, e.finished_at
		FROM as_tombstone t LEFT JOIN as_erasure e ON e.job_id=t.job_id
	`
	getTombstonesWithJobsQuery = tombstoneWithJobColumns + `WHERE t.user_hash=$1 ORDER BY t.erased_at, t.job_id`
	insertKeyQuery             = `
		INSERT INTO as_privacy_key (name, key_hex, created_at) VALUES ($1, $2, $3)
		ON CONFLICT (name) DO NOTHING
	`
	getKeyQuery        = `SELECT key_hex FROM as_privacy_key WHERE name=$1`
	clearCleanupQuery  = `UPDATE as_erasure SET notify_room=NULL, leave_rooms=NULL WHERE job_id=$1`
	deleteOldJobsQuery = `DELETE FROM as_erasure WHERE state='done' AND finished_at < $1`
)

func joinScope(modules []string) string {
	if len(modules) == 0 {
		return ScopeAll
	}
	return strings.Join(modules, ",")
}

func splitScope(scope string) []string {
	if scope == ScopeAll || scope == "" {
		return nil
	}
	return strings.Split(scope, ",")
}

// CreateErasure records job in state [ErasurePending] unless a job with the same ID exists. It
// reports whether it created one.
func (pq *Store) CreateErasure(ctx context.Context, job *ErasureJob) (bool, error) {
	res, err := pq.db.Exec(ctx, insertErasureQuery,
		job.JobID, dbutil.StrPtr(job.User), job.UserHash, job.HashKeyID, job.Trigger, joinScope(job.Modules),
		string(ErasurePending), dbutil.StrPtr(job.NotifyRoom), job.CreatedAt.UnixMilli())
	if err != nil {
		return false, fmt.Errorf("failed to record erasure job: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("failed to count recorded erasure jobs: %w", err)
	}
	return n > 0, nil
}

// GetErasure returns the job with the given ID, or nil (and no error) if there is none.
func (pq *Store) GetErasure(ctx context.Context, jobID string) (*ErasureJob, error) {
	job, err := scanErasure(pq.db.QueryRow(ctx, getErasureQuery, jobID))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("failed to get erasure job: %w", err)
	}
	return job, nil
}

// HasPendingErasure reports whether a full or partial erasure of user is recorded and has not
// erased their data yet.
func (pq *Store) HasPendingErasure(ctx context.Context, user id.UserID) (bool, error) {
	var n int
	if err := pq.db.QueryRow(ctx, pendingErasureOfQuery, user).Scan(&n); err != nil {
		return false, fmt.Errorf("failed to check for a pending erasure: %w", err)
	}
	return n > 0, nil
}

// UnfinishedErasures returns every job not yet done, oldest first.
func (pq *Store) UnfinishedErasures(ctx context.Context) ([]*ErasureJob, error) {
	rows, err := pq.db.Query(ctx, unfinishedErasureQuery)
	jobs, err := dbutil.NewRowIterWithError(rows, scanErasure, err).AsList()
	if err != nil {
		return nil, fmt.Errorf("failed to list unfinished erasure jobs: %w", err)
	}
	return jobs, nil
}

// CommitErasure moves job to state (cleanup or done) after its data was erased, in the same
// transaction: it stops naming the user and stores the counts, the rooms to leave and the bridges
// whose remote erasure failed.
func (pq *Store) CommitErasure(ctx context.Context, job *ErasureJob, state ErasureState, now time.Time) error {
	var leave *string
	if len(job.LeaveRooms) > 0 {
		data, err := json.Marshal(job.LeaveRooms)
		if err != nil {
			return err
		}
		leave = dbutil.StrPtr(string(data))
	}
	var finished *int64
	if state == ErasureDone {
		ms := now.UnixMilli()
		finished = &ms
	}
	_, err := pq.db.Exec(ctx, commitErasureQuery, job.JobID, string(state), leave,
		strings.Join(job.RemoteFailed, ","), string(job.Counts), finished)
	if err != nil {
		return fmt.Errorf("failed to commit erasure job: %w", err)
	}
	return nil
}

// SupersedeErasures marks every other unfinished job about user done and stops it naming the
// user: an erasure of everything covers them. It returns how many there were.
func (pq *Store) SupersedeErasures(ctx context.Context, user id.UserID, jobID string, now time.Time) (int64, error) {
	res, err := pq.db.Exec(ctx, supersedeErasuresQuery, user, jobID, now.UnixMilli())
	if err != nil {
		return 0, fmt.Errorf("failed to supersede erasure jobs: %w", err)
	}
	return res.RowsAffected()
}

// FinishErasure marks the job done.
func (pq *Store) FinishErasure(ctx context.Context, jobID string, now time.Time) error {
	if _, err := pq.db.Exec(ctx, finishErasureQuery, jobID, now.UnixMilli()); err != nil {
		return fmt.Errorf("failed to finish erasure job: %w", err)
	}
	return nil
}

// DeleteFinishedErasures deletes done jobs finished before cutoff and returns how many. The
// tombstones stay.
func (pq *Store) DeleteFinishedErasures(ctx context.Context, cutoff time.Time) (int64, error) {
	res, err := pq.db.Exec(ctx, deleteOldJobsQuery, cutoff.UnixMilli())
	if err != nil {
		return 0, fmt.Errorf("failed to delete finished erasure jobs: %w", err)
	}
	return res.RowsAffected()
}

// PutTombstone records ts; a tombstone for the same job already recorded is left as it is.
func (pq *Store) PutTombstone(ctx context.Context, ts *Tombstone) error {
	_, err := pq.db.Exec(ctx, insertTombstoneQuery, ts.JobID, ts.UserHash, ts.HashKeyID, ts.Trigger,
		joinScope(ts.Modules), ts.ErasedAt.UnixMilli(), string(ts.Counts))
	if err != nil {
		return fmt.Errorf("failed to record tombstone: %w", err)
	}
	return nil
}

// Tombstones returns the tombstones recorded under userHash, oldest first; an empty slice if
// none.
func (pq *Store) Tombstones(ctx context.Context, userHash string) ([]*Tombstone, error) {
	return pq.tombstones(ctx, getTombstonesQuery, userHash)
}

// TombstonesWithJobs returns the tombstones recorded under userHash, oldest first, each with its
// job's state and finish time (see [Tombstone.JobState]): one indexed lookup by keyed hash and
// one by job ID per tombstone, naming nobody. An empty slice if none.
func (pq *Store) TombstonesWithJobs(ctx context.Context, userHash string) ([]*Tombstone, error) {
	return pq.tombstonesWithJobs(ctx, getTombstonesWithJobsQuery, userHash)
}

// RecentTombstonesWithJobs returns the tombstones of the erasures that finished at or after
// since (their job done then, or, once the job's row is gone, erased then), newest first, at most
// limit, each with its job's state and finish time (see [Tombstone.JobState]). Erasures still
// unfinished are left out. With modules, only full erasures and those whose scope includes one
// of modules count; the limit applies after both filters. An empty slice if none.
func (pq *Store) RecentTombstonesWithJobs(ctx context.Context, since time.Time, limit int, modules ...string) ([]*Tombstone, error) {
	where := []string{`COALESCE(e.finished_at, t.erased_at)>=$1`, `(e.state IS NULL OR e.state='done')`}
	args := []any{since.UnixMilli(), limit}
	if len(modules) > 0 {
		scopes := []string{"t.scope=$3"}
		args = append(args, ScopeAll)
		for _, module := range modules {
			args = append(args, "%,"+module+",%")
			scopes = append(scopes, fmt.Sprintf("(',' || t.scope || ',') LIKE $%d", len(args)))
		}
		where = append(where, "("+strings.Join(scopes, " OR ")+")")
	}
	query := tombstoneWithJobColumns + "WHERE " + strings.Join(where, " AND ") +
		" ORDER BY COALESCE(e.finished_at, t.erased_at) DESC, t.job_id DESC LIMIT $2"
	return pq.tombstonesWithJobs(ctx, query, args...)
}

// tombstonesWithJobs runs query, one of the tombstone queries joined with the jobs, with args.
func (pq *Store) tombstonesWithJobs(ctx context.Context, query string, args ...any) ([]*Tombstone, error) {
	list, err := database.QueryList(ctx, pq.db, func(row dbutil.Scannable) (*Tombstone, error) {
		var ts Tombstone
		var scope, counts string
		var erasedAt int64
		var state sql.NullString
		var finished sql.NullInt64
		if err := row.Scan(&ts.JobID, &ts.UserHash, &ts.HashKeyID, &ts.Trigger, &scope, &erasedAt, &counts, &state, &finished); err != nil {
			return nil, err
		}
		ts.Modules = splitScope(scope)
		ts.ErasedAt = time.UnixMilli(erasedAt)
		ts.Counts = json.RawMessage(counts)
		ts.JobState = ErasureState(state.String)
		if finished.Valid {
			ts.JobFinishedAt = time.UnixMilli(finished.Int64)
		}
		return &ts, nil
	}, query, args...)
	if err != nil {
		return nil, fmt.Errorf("failed to list tombstones with their jobs: %w", err)
	}
	return list, nil
}

// tombstones runs query, one of the tombstone queries, with arg.
func (pq *Store) tombstones(ctx context.Context, query string, arg any) ([]*Tombstone, error) {
	list, err := database.QueryList(ctx, pq.db, func(row dbutil.Scannable) (*Tombstone, error) {
		var ts Tombstone
		var scope, counts string
		var erasedAt int64
		if err := row.Scan(&ts.JobID, &ts.UserHash, &ts.HashKeyID, &ts.Trigger, &scope, &erasedAt, &counts); err != nil {
			return nil, err
		}
		ts.Modules = splitScope(scope)
		ts.ErasedAt = time.UnixMilli(erasedAt)
		ts.Counts = json.RawMessage(counts)
		return &ts, nil
	}, query, arg)
	if err != nil {
		return nil, fmt.Errorf("failed to list tombstones: %w", err)
	}
	return list, nil
}

// GetOrCreateKey returns the key stored under name, storing generate()'s result first if there
// is none. Concurrent callers, also in other processes, all get the same key.
func (pq *Store) GetOrCreateKey(ctx context.Context, name string, generate func() ([]byte, error)) ([]byte, error) {
	var stored string
	err := pq.db.QueryRow(ctx, getKeyQuery, name).Scan(&stored)
	if errors.Is(err, sql.ErrNoRows) {
		key, genErr := generate()
		if genErr != nil {
			return nil, fmt.Errorf("failed to generate key: %w", genErr)
		}
		if _, err = pq.db.Exec(ctx, insertKeyQuery, name, hex.EncodeToString(key), time.Now().UnixMilli()); err != nil {
			return nil, fmt.Errorf("failed to store key: %w", err)
		}
		err = pq.db.QueryRow(ctx, getKeyQuery, name).Scan(&stored)
	}
	if err != nil {
		return nil, fmt.Errorf("failed to read key: %w", err)
	}
	key, err := hex.DecodeString(stored)
	if err != nil {
		return nil, fmt.Errorf("stored key %s is not hex: %w", name, err)
	}
	return key, nil
}

// ClearErasureCleanup records that job's receipt was sent and its direct chats left: what remains
// of its cleanup is the database's own (see ErasureCleanup).
func (pq *Store) ClearErasureCleanup(ctx context.Context, jobID string) error {
	if _, err := pq.db.Exec(ctx, clearCleanupQuery, jobID); err != nil {
		return fmt.Errorf("failed to update erasure job: %w", err)
	}
	return nil
}

func scanErasure(row dbutil.Scannable) (*ErasureJob, error) {
	var job ErasureJob
	var user, notify, leave, counts sql.NullString
	var scope, state, failed string
	var created int64
	var finished sql.NullInt64
	err := row.Scan(&job.JobID, &user, &job.UserHash, &job.HashKeyID, &job.Trigger, &scope, &state, &notify,
		&leave, &failed, &counts, &created, &finished)
	if err != nil {
		return nil, err
	}
	job.User = id.UserID(user.String)
	job.Modules = splitScope(scope)
	job.State = ErasureState(state)
	job.NotifyRoom = id.RoomID(notify.String)
	if leave.Valid && leave.String != "" {
		if err = json.Unmarshal([]byte(leave.String), &job.LeaveRooms); err != nil {
			return nil, fmt.Errorf("invalid leave_rooms in erasure job: %w", err)
		}
	}
	if failed != "" {
		job.RemoteFailed = strings.Split(failed, ",")
	}
	if counts.Valid {
		job.Counts = json.RawMessage(counts.String)
	}
	job.CreatedAt = time.UnixMilli(created)
	if finished.Valid {
		job.FinishedAt = time.UnixMilli(finished.Int64)
	}
	return &job, nil
}

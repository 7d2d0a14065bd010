package privacy

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/clock"
	"github.com/custodian-matrix/custodian/appservice/database"
)

// Host is everything the engine needs from the process that runs it. The core implements it
// over its bridges, its bot and the homeserver; tests implement it over one bridge
// (astest/fakehost). Methods may be called concurrently, and from the erasure runner's
// goroutine.
type Host interface {
	// Inventory returns every module's declared personal-data tables, keyed by module:
	// [CoreModule] and each bridge's ID. Every bridge has a key, also with no tables.
	Inventory() map[string][]UserTable
	// Retention returns the configured limit of a retention class (see
	// [UserTable.RetentionClass]); zero keeps the rows.
	Retention(class RetentionClass) time.Duration
	// KeyDeriver returns the vault's key derivation, or nil when the vault has none (no master
	// key configured).
	KeyDeriver() KeyDeriver

	// EraseRemote asks module to undo the remote side effects it caused for user (an IRC QUIT,
	// revoked webhooks); modules without any return nil. It is called before the erasing
	// transaction, and a failure does not stop the erasure.
	EraseRemote(ctx context.Context, module string, user id.UserID) error
	// PrepareFullErasure runs before the transaction of a full erasure, while the user's rows
	// still exist, and returns the rooms the bot shares with nobody but the user, which
	// clean-up leaves.
	PrepareFullErasure(ctx context.Context, user id.UserID) (leaveRooms []id.RoomID)
	// WithdrawExport redacts the message that carried export file ef and deletes its upload
	// where it can. It returns an error only for a failure worth retrying; the engine then
	// retries from ef's row (at expiry, or at once before an erasure).
	WithdrawExport(ctx context.Context, ef *database.ExportFile) error
	// InFullErasure runs inside the erasing transaction (in ctx) of a full erasure, for
	// bookkeeping that must commit with it (a backup shred request). An error aborts the
	// erasure, which the runner retries.
	InFullErasure(ctx context.Context) error
	// FullErasureCommitted runs once a full erasure of user has committed: it drops copies of
	// the user's data key held in memory and wakes the backup shredder. It reports whether
	// backups are shredded.
	FullErasureCommitted(ctx context.Context, user id.UserID) (shredding bool)
	// SendErasureReceipt posts the receipt (Markdown) of erasure jobID into roomID, with a
	// transaction ID derived from jobID, so that a retry does not post it twice. userHash is the
	// erased user's keyed hash (see [Engine.UserHash]), so that the host can make the receipt
	// readable to them in an encrypted room.
	SendErasureReceipt(ctx context.Context, roomID id.RoomID, jobID, userHash, markdown string) error
	// LeaveAfterErasure leaves roomID, one of the rooms PrepareFullErasure returned, if it still
	// holds nobody but the bot and the erased user (whose keyed hash is userHash), and ends the
	// bot's setup there. Failures are the host's to log; they are not retried.
	LeaveAfterErasure(ctx context.Context, roomID id.RoomID, userHash string)

	// EventInRoom reports whether eventID was sent in roomID, by asking the homeserver.
	EventInRoom(ctx context.Context, roomID id.RoomID, eventID id.EventID) bool
	// MayRedactOthers reports whether user's power level in roomID lets them redact others'
	// events.
	MayRedactOthers(ctx context.Context, roomID id.RoomID, user id.UserID) (bool, error)
	// RedactionPurged tells module that a redaction purged rows of its tables (table → rows).
	// Errors are logged.
	RedactionPurged(ctx context.Context, module string, roomID id.RoomID, redacted id.EventID, purged map[string]int64) error
}

// ErasureScrubber is a [Host] that can store rows about an erased user again after their
// erasure committed: in an encrypted room, sharing a room key (the receipt's) with the user's
// devices fetches and stores their devices and records the share, and the crypto machine's own
// goroutines (a late key request, olm unwedging) may write about them while the erasure runs.
type ErasureScrubber interface {
	// ScrubsAfterErasure reports whether an erasure of the scope modules (empty: a full
	// erasure) needs ScrubAfterErasure. Such a job goes through cleanup, even without a receipt.
	ScrubsAfterErasure(modules []string) bool
	// ScrubAfterErasure runs in the cleanup of a job ScrubsAfterErasure chose, after the receipt
	// was sent and the rooms were left, on every attempt (also after a restart): it deletes what
	// was stored about the user whose keyed hash is userHash since the erasure, within the job's
	// scope modules. An error leaves the job in cleanup, and the runner retries the cleanup.
	ScrubAfterErasure(ctx context.Context, jobID, userHash string, modules []string) error
}

// Options configure an [Engine].
type Options struct {
	// DB is the whole database: the core's tables, the state cache and every bridge's.
	DB *database.Database
	// Host is the engine's way to the rest of the process. Required.
	Host Host
	// Log is the engine's logger. Erasures log from it alone, never from the caller's context
	// logger, which may name the user.
	Log zerolog.Logger
	// Clock is the engine's clock: retention sweeps, the erasure runner's polls and retries,
	// job and tombstone times. Nil means the wall clock.
	Clock clock.Clock
	// AfterErasureAttempt, if set, is called after each attempt of the erasure runner at a job,
	// with the state the job reached.
	AfterErasureAttempt func(jobID string, state ErasureState, err error)
}

// Engine is the personal-data engine: inventory checks, erasure, export, redaction purge and
// retention. Create it with [New]; its methods are safe for concurrent use. Before [Engine.Start]
// (and in tests that never start it), [Engine.Erase] runs jobs itself.
type Engine struct {
	db   *database.Database
	host Host
	log  zerolog.Logger
	clk  clock.Clock

	erasureRan func(jobID string, state ErasureState, err error)

	// eraseLock serialises erasures: they are rare, and one at a time keeps the resumption of
	// jobs and the idempotency checks simple.
	eraseLock sync.Mutex

	lock      sync.Mutex
	hashKey   []byte
	hashKeyID string

	// resumed is closed once the erasure runner's first round (the jobs an earlier run left)
	// is over; nil before start.
	resumed chan struct{}
	// runnerDone is closed when the erasure runner stops; nil before start, which tells Erase
	// to run jobs itself. Guarded by lock.
	runnerDone chan struct{}
	// eraseWake wakes the erasure runner (one pending wake-up at most).
	eraseWake chan struct{}
	// eraseWaiters are the Erase calls waiting for the runner's next attempt at a job, by job
	// ID. Guarded by lock.
	eraseWaiters map[string][]chan erasureOutcome
	loops        sync.WaitGroup
}

// New returns an engine over opts.DB. It does no I/O.
func New(opts Options) *Engine {
	clk := opts.Clock
	if clk == nil {
		clk = clock.Real()
	}
	return &Engine{
		db: opts.DB, host: opts.Host, log: opts.Log, clk: clk,
		erasureRan: opts.AfterErasureAttempt,
	}
}

// CheckSchema compares the hosts' inventory with the migrated schema and the retention
// declarations with what the sweeper can enforce (see [CheckInventory]); the service refuses to
// start on any error.
func (e *Engine) CheckSchema(ctx context.Context) error {
	inv := e.host.Inventory()
	if err := CheckInventory(ctx, e.db.Database, inv); err != nil {
		return fmt.Errorf("personal-data inventory does not match the schema:\n%w", err)
	}
	if err := CheckRetention(inv); err != nil {
		return fmt.Errorf("personal-data inventory declares retention wrongly:\n%w", err)
	}
	return nil
}

// Start starts the erasure runner, which first finishes the erasures an earlier run left
// unfinished, the retention sweeper, every interval, and the expiry of export files. They run
// until ctx ends; [Engine.Wait] waits for them. Call it once, after the modules' EraseRemote works.
func (e *Engine) Start(ctx context.Context, retentionInterval time.Duration) {
	e.resumed = make(chan struct{})
	e.eraseWake = make(chan struct{}, 1)
	e.lock.Lock()
	e.runnerDone = make(chan struct{})
	e.lock.Unlock()
	e.loops.Add(3)
	go func() {
		defer e.loops.Done()
		e.erasureLoop(ctx)
	}()
	go func() {
		defer e.loops.Done()
		e.retentionLoop(ctx, retentionInterval)
	}()
	go func() {
		defer e.loops.Done()
		e.exportExpiryLoop(ctx)
	}()
}

// Resumed returns a channel closed once the erasure runner has finished (or tried) the jobs
// an earlier run left; nil before [Engine.Start].
func (e *Engine) Resumed() <-chan struct{} { return e.resumed }

// Wait waits for the loops [Engine.Start] started, which end with its context.
func (e *Engine) Wait() { e.loops.Wait() }

// queries returns the engine's queries.
func (e *Engine) queries() *Store { return NewStore(e.db.Database) }

// Store returns the engine's queries: erasure jobs, tombstones, keys.
func (e *Engine) Store() *Store { return e.queries() }

func (e *Engine) now() time.Time { return e.clk.Now() }

// tombstoneKeyName is the name of the tombstone hash key in as_privacy_key.
const tombstoneKeyName = "tombstone"

// KeyDeriver is an optional interface the credential vault can implement to give the privacy
// operations a key derived from its master key. When the vault implements it, tombstones are
// hashed under DeriveKey("custodian tombstone v1") instead of a key stored in the database, so
// that a copy of the database alone cannot tell whether a given user ID was erased.
type KeyDeriver interface {
	// DeriveKey returns a 32-byte key for purpose, the same for the same purpose and master key,
	// and an ID naming the master key it came from.
	DeriveKey(ctx context.Context, purpose string) (key []byte, keyID string, err error)
}

// userHashKey returns the key of tombstone hashes and its ID: derived from the vault's master
// key if the vault can derive keys, else a random key generated once and stored in the
// database (see docs/ARCHITECTURE.md, "Tombstones").
func (e *Engine) userHashKey(ctx context.Context) ([]byte, string, error) {
	e.lock.Lock()
	key, keyID := e.hashKey, e.hashKeyID
	e.lock.Unlock()
	if key != nil {
		return key, keyID, nil
	}
	if kd := e.host.KeyDeriver(); kd != nil {
		derived, kekID, err := kd.DeriveKey(ctx, "custodian tombstone v1")
		if err != nil {
			return nil, "", fmt.Errorf("failed to derive tombstone key from the vault: %w", err)
		}
		key, keyID = derived, "vault:"+kekID
	} else {
		stored, err := e.queries().GetOrCreateKey(ctx, tombstoneKeyName, func() ([]byte, error) {
			buf := make([]byte, 32)
			_, err := rand.Read(buf)
			return buf, err
		})
		if err != nil {
			return nil, "", err
		}
		key, keyID = stored, "db:"+tombstoneKeyName
	}
	e.lock.Lock()
	e.hashKey, e.hashKeyID = key, keyID
	e.lock.Unlock()
	return key, keyID, nil
}

// UserHash returns the keyed hash (hex HMAC-SHA256) under which tombstones record user, and the
// ID of the key. Admins use it to answer "was this user erased?" without tombstones naming
// anyone.
func (e *Engine) UserHash(ctx context.Context, user id.UserID) (hash, keyID string, err error) {
	key, keyID, err := e.userHashKey(ctx)
	if err != nil {
		return "", "", err
	}
	return keyedHash(key, "user\x00"+user.String()), keyID, nil
}

// RequestJobID returns the ID of the erasure job of an idempotent request (see
// [EraseRequest.RequestID]): a keyed hash, so that the job ID does not reveal the request (an
// event ID) to whoever reads the logs.
func (e *Engine) RequestJobID(ctx context.Context, requestID string) (string, error) {
	key, _, err := e.userHashKey(ctx)
	if err != nil {
		return "", err
	}
	return "er_" + keyedHash(key, "request\x00"+requestID)[:24], nil
}

// ScopedHash returns a keyed hash (hex HMAC-SHA256, under the tombstone key) of msg in scope:
// the same scope and msg always give the same hash, and the hash reveals neither. Callers use
// it for stable identifiers (such as transaction IDs) that must not name users in logs.
func (e *Engine) ScopedHash(ctx context.Context, scope, msg string) (string, error) {
	key, _, err := e.userHashKey(ctx)
	if err != nil {
		return "", err
	}
	return keyedHash(key, scope+"\x00"+msg), nil
}

func keyedHash(key []byte, msg string) string {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(msg))
	return hex.EncodeToString(mac.Sum(nil))
}

// WithSweepLock runs fn unless another instance holds the named lock. On PostgreSQL the lock is
// a session advisory lock, held on a dedicated connection for as long as fn runs, so that only
// one of several instances sharing the database sweeps at a time; SQLite has one process, so fn
// always runs. It reports whether fn ran.
func WithSweepLock(ctx context.Context, db *dbutil.Database, name string, fn func(ctx context.Context) error) (bool, error) {
	if db.Dialect != dbutil.Postgres {
		return true, fn(ctx)
	}
	if db.RawDB.Stats().MaxOpenConnections == 1 {
		// Holding the only connection for the lock would leave fn none: sweep unlocked.
		zerolog.Ctx(ctx).Warn().Str("lock", name).
			Msg("database.max_open_conns is 1: sweeping without the advisory lock; several instances may sweep at once")
		return true, fn(ctx)
	}
	key := SweepLockKey(name)
	conn, err := db.RawDB.Conn(ctx)
	if err != nil {
		return false, fmt.Errorf("failed to get a connection for the %s lock: %w", name, err)
	}
	defer conn.Close()
	var got bool
	if err = conn.QueryRowContext(ctx, `SELECT pg_try_advisory_lock($1)`, key).Scan(&got); err != nil {
		return false, fmt.Errorf("failed to take the %s lock: %w", name, err)
	} else if !got {
		return false, nil
	}
	defer func() {
		if _, err := conn.ExecContext(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, key); err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Str("lock", name).Msg("Failed to release advisory lock")
		}
	}()
	return true, fn(ctx)
}

// SweepLockKey is the PostgreSQL advisory lock key of the named sweep.
func SweepLockKey(name string) int64 {
	h := fnv.New64a()
	h.Write([]byte("custodian:" + name))
	return int64(h.Sum64())
}

// ErrNoUser is returned for a user ID that is not one.
var ErrNoUser = errors.New("not a valid Matrix user ID")

// CheckUserID reports whether user is a syntactically valid Matrix user ID (historical
// localparts allowed); the error wraps [ErrNoUser].
func CheckUserID(user id.UserID) error {
	if _, _, err := user.ParseAndValidateRelaxed(); err != nil {
		return fmt.Errorf("%w: %w", ErrNoUser, err)
	}
	return nil
}

// SortedModules returns the modules (keys) of an inventory or of a per-module result, sorted.
func SortedModules[V any](inv map[string]V) []string { return sortedKeys(inv) }

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

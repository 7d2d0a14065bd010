package appservice

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/database"
)

// privacyState is the service's state for the privacy operations (erasure, export, redaction
// purges, deactivation, retention, the admin API). Its zero value is ready to use, so tests that
// build a Service by hand get working privacy commands.
type privacyState struct {
	// shredDebounce and shredDone configure the backup shredder (shred.go) when set before
	// start (tests): the wait after an erasure, and a call after every shred rotation.
	shredDebounce time.Duration
	shredDone     func(shredResult, error)

	// eraseLock serialises erasures: they are rare, and one at a time keeps the resumption of
	// jobs and the idempotency checks simple.
	eraseLock sync.Mutex

	lock sync.Mutex
	// confirms holds !forget requests waiting for confirmation, by user.
	confirms map[id.UserID]pendingForget
	// deactChecks remembers when each user's deactivation was last checked, so that the burst
	// of leave events of one deactivation causes one check.
	deactChecks map[id.UserID]time.Time
	hashKey     []byte
	hashKeyID   string

	// hsAdmin is the client for Synapse's admin API, nil without admin access.
	hsAdmin *mautrix.Client

	adminServer *http.Server
	adminAddr   net.Addr

	// resumed is closed once the erasure runner's first round (the jobs an earlier run left)
	// is over; nil before start.
	resumed chan struct{}
	// runnerDone is closed when the erasure runner stops; nil before start, which tells Erase
	// to run jobs itself.
	runnerDone chan struct{}
	// eraseWake wakes the erasure runner (one pending wake-up at most).
	eraseWake chan struct{}
	// eraseWaiters are the Erase calls waiting for the runner's next attempt at a job, by job
	// ID. Guarded by lock.
	eraseWaiters map[string][]chan erasureOutcome
	// erasureRan, if set, is called after each attempt of the runner at a job (tests).
	erasureRan func(jobID string, state database.ErasureState, err error)
	// afterSweep, if set, is called after each sweep of the retention ("retention") and
	// deactivation ("deactivation") loops with what it did (tests).
	afterSweep func(kind string, n int64, err error)
	loops      sync.WaitGroup
}

// privacyDB returns the privacy queries.
func (svc *Service) privacyDB() *database.PrivacyQuery {
	return svc.db.Privacy()
}

// startPrivacy checks the retention declarations, sets up admin access to the homeserver,
// starts the admin API, the retention sweeper, the deactivation sweep, the expiry of export
// files and the erasure runner, which first finishes the erasures an earlier run left
// unfinished. It is called by start once the
// bridges have started, so that their EraseRemote works.
func (svc *Service) startPrivacy(ctx context.Context) error {
	if err := checkRetention(svc.inventory()); err != nil {
		return fmt.Errorf("personal-data inventory declares retention wrongly:\n%w", err)
	}
	if err := svc.setUpDeactivation(ctx); err != nil {
		return err
	}
	if err := svc.startAdminAPI(ctx); err != nil {
		return err
	}
	svc.privacy.resumed = make(chan struct{})
	svc.privacy.eraseWake = make(chan struct{}, 1)
	svc.privacy.lock.Lock()
	svc.privacy.runnerDone = make(chan struct{})
	svc.privacy.lock.Unlock()
	svc.privacy.loops.Add(3)
	go func() {
		defer svc.privacy.loops.Done()
		svc.erasureLoop(ctx)
	}()
	go func() {
		defer svc.privacy.loops.Done()
		svc.retentionLoop(ctx)
	}()
	go func() {
		defer svc.privacy.loops.Done()
		svc.deactivationLoop(ctx)
	}()
	svc.startExportExpiry(ctx)
	return nil
}

// stopPrivacy stops the admin API. The loops end with the service's context.
func (svc *Service) stopPrivacy(ctx context.Context) {
	if srv := svc.privacy.adminServer; srv != nil {
		_ = srv.Shutdown(ctx)
	}
}

// handlePrivacyEvent is the core's privacy handler, run for every event that is not an echo of
// our own users, before the bot and the bridges: redactions may purge configuration, and a
// user's own leave may mean their account was deactivated.
func (svc *Service) handlePrivacyEvent(ctx context.Context, evt *event.Event) error {
	switch evt.Type {
	case event.EventRedaction:
		return svc.handleRedaction(ctx, evt)
	case event.StateMember:
		if evt.StateKey != nil && *evt.StateKey == evt.Sender.String() &&
			evt.Content.AsMember().Membership == event.MembershipLeave {
			return svc.checkDeactivationAfterLeave(ctx, evt.Sender)
		}
	}
	return nil
}

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
func (svc *Service) userHashKey(ctx context.Context) ([]byte, string, error) {
	svc.privacy.lock.Lock()
	key, keyID := svc.privacy.hashKey, svc.privacy.hashKeyID
	svc.privacy.lock.Unlock()
	if key != nil {
		return key, keyID, nil
	}
	if kd, ok := any(svc.vault).(KeyDeriver); ok && svc.vault != nil {
		derived, kekID, err := kd.DeriveKey(ctx, "custodian tombstone v1")
		if err != nil {
			return nil, "", fmt.Errorf("failed to derive tombstone key from the vault: %w", err)
		}
		key, keyID = derived, "vault:"+kekID
	} else {
		stored, err := svc.privacyDB().GetOrCreateKey(ctx, tombstoneKeyName, func() ([]byte, error) {
			buf := make([]byte, 32)
			_, err := rand.Read(buf)
			return buf, err
		})
		if err != nil {
			return nil, "", err
		}
		key, keyID = stored, "db:"+tombstoneKeyName
	}
	svc.privacy.lock.Lock()
	svc.privacy.hashKey, svc.privacy.hashKeyID = key, keyID
	svc.privacy.lock.Unlock()
	return key, keyID, nil
}

// UserHash returns the keyed hash (hex HMAC-SHA256) under which tombstones record user, and the
// ID of the key. Admins use it to answer "was this user erased?" without tombstones naming
// anyone.
func (svc *Service) UserHash(ctx context.Context, user id.UserID) (hash, keyID string, err error) {
	key, keyID, err := svc.userHashKey(ctx)
	if err != nil {
		return "", "", err
	}
	return keyedHash(key, "user\x00"+user.String()), keyID, nil
}

func keyedHash(key []byte, msg string) string {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(msg))
	return hex.EncodeToString(mac.Sum(nil))
}

// withSweepLock runs fn unless another instance holds the named lock. On PostgreSQL the lock is
// a session advisory lock, held on a dedicated connection for as long as fn runs, so that only
// one of several instances sharing the database sweeps at a time; SQLite has one process, so fn
// always runs. It reports whether fn ran.
func (svc *Service) withSweepLock(ctx context.Context, name string, fn func(ctx context.Context) error) (bool, error) {
	if svc.rawDB.Dialect != dbutil.Postgres {
		return true, fn(ctx)
	}
	if svc.rawDB.RawDB.Stats().MaxOpenConnections == 1 {
		// Holding the only connection for the lock would leave fn none: sweep unlocked.
		zerolog.Ctx(ctx).Warn().Str("lock", name).
			Msg("database.max_open_conns is 1: sweeping without the advisory lock; several instances may sweep at once")
		return true, fn(ctx)
	}
	key := sweepLockKey(name)
	conn, err := svc.rawDB.RawDB.Conn(ctx)
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

// sweepLockKey is the PostgreSQL advisory lock key of the named sweep.
func sweepLockKey(name string) int64 {
	h := fnv.New64a()
	h.Write([]byte("custodian:" + name))
	return int64(h.Sum64())
}

// errNoUser is returned for a user ID that is not one.
var errNoUser = errors.New("not a valid Matrix user ID")

// checkUserID reports whether user is a syntactically valid Matrix user ID (historical
// localparts allowed).
func checkUserID(user id.UserID) error {
	if _, _, err := user.ParseAndValidateRelaxed(); err != nil {
		return fmt.Errorf("%w: %w", errNoUser, err)
	}
	return nil
}

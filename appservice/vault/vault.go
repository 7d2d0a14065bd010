package vault

import (
	"context"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/clock"
	"github.com/custodian-matrix/custodian/appservice/vault/upgrades"
)

// VersionTable is the name of the vault's schema version table.
const VersionTable = "as_vault_version"

// Defaults for [Options].
const (
	// DefaultReloadInterval is how often [Vault.Run] re-reads the key source. "custodian keys
	// rotate" and "custodian keys retire" rely on a running service having re-read its key
	// file within this interval (plus a margin) of the file changing.
	DefaultReloadInterval = time.Minute
	// DefaultUnknownKeyReloadGap is the least time between two re-reads triggered by meeting
	// data keys wrapped by the same unknown master key ID. The first encounter of an ID always
	// re-reads at once, so a key added during a rotation is picked up without delay; a key that
	// is really missing costs at most one read of the key source per gap.
	DefaultUnknownKeyReloadGap = 10 * time.Second
	// DefaultCacheSize is how many users' unwrapped data keys are kept in memory.
	DefaultCacheSize = 10000
	// DefaultCacheTTL is how long an unwrapped data key stays in memory after it was loaded.
	DefaultCacheTTL = time.Minute
)

// ChildDB returns the vault's view of the service's database: a child that shares parent's
// connection pool and transactions, with the vault's migrations and the version table
// [VersionTable]. Run its Upgrade after the core's migrations, since the vault's tables
// reference users.
func ChildDB(parent *dbutil.Database, log zerolog.Logger) *dbutil.Database {
	return parent.Child(VersionTable, upgrades.Table, dbutil.ZeroLogger(log.With().Str("db_section", "vault").Logger()))
}

// Options configures a [Vault].
type Options struct {
	// Keys is where the master keys come from. Required.
	Keys KeySource
	// ReloadInterval is how often [Vault.Run] re-reads Keys; zero means
	// [DefaultReloadInterval].
	ReloadInterval time.Duration
	// UnknownKeyReloadGap is the least time between re-reads triggered by the same unknown
	// master key ID; zero means [DefaultUnknownKeyReloadGap].
	UnknownKeyReloadGap time.Duration
	// CacheSize is how many users' unwrapped data keys are kept in memory; zero means
	// [DefaultCacheSize], negative turns the cache off.
	CacheSize int
	// CacheTTL bounds how long an unwrapped data key stays cached; zero means [DefaultCacheTTL].
	// An erasure done by another process (custodian forget) reaches this process's cache within
	// CacheTTL; an erasure in this process calls [Vault.Forget] and takes effect at once.
	CacheTTL time.Duration
	// Clock tells the time (cache expiry, reload gaps, rotation settling) and times the
	// reloads of [Vault.Run]; nil means [clock.Real]. Tests set a [clock.Fake].
	Clock clock.Clock
}

// Vault seals users' secrets with AES-256-GCM under per-user data keys (DEKs), which are stored
// in as_vault_dek wrapped by a master key (KEK) from a [KeySource]. See the package
// documentation for the design. It is safe for concurrent use, and several processes (the
// service and "custodian keys rotate") may use the same database at once.
type Vault struct {
	db   *dbutil.Database
	opts Options

	ring atomic.Pointer[keyring]

	reloadMu    sync.Mutex
	lastLoadErr string
	// unknownTried records when a re-read was last triggered by each unknown key ID.
	unknownTried map[string]time.Time

	cache *dekCache

	// inbox holds the unwrapped inbox keys (inboxkey.go).
	inbox inboxState
}

// keyring is one loaded set of master keys. It is immutable once published, except for
// masterKey.wrong.
type keyring struct {
	byID    map[string]*masterKey
	order   []*masterKey
	current *masterKey // nil when no key could be loaded
	digest  [32]byte
}

// masterKey is a loaded master key, its AES-GCM instance ready.
type masterKey struct {
	Key
	aead cipher.AEAD
	// wrong is set when the key's check value differs from the one recorded in the database.
	wrong atomic.Bool
}

// New returns a vault on db, which must be the vault's child database ([ChildDB]) with its
// migrations applied. New does no I/O and holds no keys yet: call [Vault.Reload] to load them,
// and run [Vault.Run] in a goroutine to keep them current. Until a load succeeds, Seal fails with
// [ErrNoKey] and Open with [ErrKeyUnavailable].
func New(db *dbutil.Database, opts Options) *Vault {
	if opts.ReloadInterval <= 0 {
		opts.ReloadInterval = DefaultReloadInterval
	}
	if opts.UnknownKeyReloadGap <= 0 {
		opts.UnknownKeyReloadGap = DefaultUnknownKeyReloadGap
	}
	if opts.CacheSize == 0 {
		opts.CacheSize = DefaultCacheSize
	}
	if opts.CacheTTL <= 0 {
		opts.CacheTTL = DefaultCacheTTL
	}
	if opts.Clock == nil {
		opts.Clock = clock.Real()
	}
	v := &Vault{db: db, opts: opts, cache: newDEKCache(opts.CacheSize, opts.CacheTTL), unknownTried: make(map[string]time.Time)}
	v.ring.Store(&keyring{byID: map[string]*masterKey{}})
	return v
}

func (v *Vault) now() time.Time { return v.opts.Clock.Now() }

// KeySource returns the source the vault reads its master keys from.
func (v *Vault) KeySource() KeySource { return v.opts.Keys }

// CurrentKeyID returns the ID of the current master key, or "" when none is loaded.
func (v *Vault) CurrentKeyID() string {
	if cur := v.ring.Load().current; cur != nil {
		return cur.ID()
	}
	return ""
}

// Run re-reads the key source every [Options.ReloadInterval] until ctx is done, logging changes
// and problems to zerolog.Ctx(ctx). It blocks; run it in a goroutine.
func (v *Vault) Run(ctx context.Context) {
	ticker := v.opts.Clock.NewTicker(v.opts.ReloadInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C():
			_ = v.Reload(ctx)
		}
	}
}

// Reload reads the key source now. If it cannot be read or parsed, the vault keeps the keys it
// had and Reload returns the error (logged as an Error once per distinct failure). If the keys
// changed, it checks them against the check values recorded in the database, publishes them,
// empties the data key cache and logs a summary plus an Error for every key problem: a key that
// wraps data keys but is missing from the source, or a key that is not the one recorded under
// its ID. A wrong key is not a Reload error; it shows in [Vault.Status].
//
// Reload may be called concurrently with everything else; reloads are serialised.
func (v *Vault) Reload(ctx context.Context) error {
	v.reloadMu.Lock()
	defer v.reloadMu.Unlock()
	return v.reloadLocked(ctx)
}

func (v *Vault) reloadLocked(ctx context.Context) error {
	log := zerolog.Ctx(ctx)
	keys, err := v.opts.Keys.LoadKeys()
	if err != nil {
		if msg := err.Error(); msg != v.lastLoadErr {
			v.lastLoadErr = msg
			log.Error().Err(err).
				Str("key_source", v.opts.Keys.String()).
				Int("keys_in_use", len(v.ring.Load().order)).
				Str("fix", "create the key file with 'custodian keys generate -o <path>' on a new installation, or restore it from your backup; the vault keeps using the keys it already had and retries every minute").
				Msg("Failed to load the vault's master keys; stored credentials that need them cannot be opened")
		}
		return fmt.Errorf("failed to load master keys: %w", err)
	}
	v.lastLoadErr = ""
	digest := ringDigest(keys)
	if v.ring.Load().digest == digest {
		return nil
	}
	checks, err := v.checkValues(ctx)
	if err != nil {
		return fmt.Errorf("failed to read master key check values: %w", err)
	}
	ring := &keyring{byID: make(map[string]*masterKey, len(keys)), digest: digest}
	for _, k := range keys {
		mk := &masterKey{Key: k, aead: k.aead()}
		if recorded, ok := checks[k.ID()]; ok && !hmac.Equal(recorded, k.checkValue()) {
			mk.wrong.Store(true)
		}
		ring.byID[k.ID()] = mk
		ring.order = append(ring.order, mk)
	}
	ring.current = ring.order[0]
	v.ring.Store(ring)
	v.cache.flush()
	ids := make([]string, len(ring.order))
	for i, mk := range ring.order {
		ids[i] = mk.ID()
	}
	log.Info().Str("key_source", v.opts.Keys.String()).Str("current_key_id", ring.current.ID()).
		Strs("key_ids", ids).Msg("Loaded the vault's master keys")
	v.logKeyProblems(ctx)
	return nil
}

// logKeyProblems logs an Error for every master key that is wrong, or missing while data keys
// depend on it.
func (v *Vault) logKeyProblems(ctx context.Context) {
	log := zerolog.Ctx(ctx)
	statuses, err := v.Status(ctx)
	if err != nil {
		log.Warn().Err(err).Msg("Failed to check which master keys the data keys need")
		return
	}
	for _, st := range statuses {
		switch {
		case st.Wrong:
			log.Error().Str("key_source", v.opts.Keys.String()).Str("key_id", st.ID).Int("data_keys", st.DataKeys).Int("inbox_keys", st.InboxKeys).Bool("current", st.Current).
				Str("fix", "the key under this ID is not the key the database recorded for it: the key file is damaged or from another installation; put back the right key file (from your backup)").
				Msg("Wrong master key: stored credentials under it cannot be opened")
		case !st.Loaded && st.Wraps() > 0:
			log.Error().Str("key_source", v.opts.Keys.String()).Str("key_id", st.ID).Int("data_keys", st.DataKeys).Int("inbox_keys", st.InboxKeys).
				Str("fix", "add the key with this ID back to the key file (from your backup); if it is lost, the affected users must link their accounts again").
				Msg("Missing master key: stored credentials under it cannot be opened")
		}
	}
}

// ringDigest identifies a key ring's contents, to tell whether a reload changed anything.
func ringDigest(keys []Key) [32]byte {
	h := sha256.New()
	for _, k := range keys {
		h.Write([]byte(k.id))
		h.Write([]byte{0})
		h.Write(k.material[:])
	}
	var d [32]byte
	h.Sum(d[:0])
	return d
}

// reloadForKey re-reads the key source because a data key is wrapped by kekID, which the vault
// does not know (a key added to the key file since the last read, such as during a rotation). It
// reports whether kekID is now known. Re-reads for the same kekID are at most one per
// [Options.UnknownKeyReloadGap].
func (v *Vault) reloadForKey(ctx context.Context, kekID string) bool {
	v.reloadMu.Lock()
	defer v.reloadMu.Unlock()
	if _, ok := v.ring.Load().byID[kekID]; ok {
		return true
	}
	now := v.now()
	if last, ok := v.unknownTried[kekID]; ok && now.Sub(last) < v.opts.UnknownKeyReloadGap {
		return false
	}
	if len(v.unknownTried) >= 1000 {
		// Only damaged rows could name this many keys; forgetting them costs a few re-reads.
		clear(v.unknownTried)
	}
	v.unknownTried[kekID] = now
	if err := v.reloadLocked(ctx); err != nil {
		return false
	}
	_, ok := v.ring.Load().byID[kekID]
	return ok
}

const getCheckValuesQuery = `SELECT kek_id, check_value FROM as_vault_kek`

func (v *Vault) checkValues(ctx context.Context) (map[string][]byte, error) {
	rows, err := v.db.Query(ctx, getCheckValuesQuery)
	if err != nil {
		return nil, err
	}
	checks := make(map[string][]byte)
	for rows.Next() {
		var kekID string
		var check []byte
		if err = rows.Scan(&kekID, &check); err != nil {
			_ = rows.Close()
			return nil, err
		}
		checks[kekID] = check
	}
	return checks, rows.Close()
}

const (
	recordKeyQuery = `
		INSERT INTO as_vault_kek (kek_id, check_value, created_at) VALUES ($1, $2, $3)
		ON CONFLICT (kek_id) DO NOTHING
	`
	getCheckValueQuery = `SELECT check_value FROM as_vault_kek WHERE kek_id=$1`
)

// recordKey makes sure mk's check value is recorded before mk wraps a data key, and that it
// matches the one recorded by whoever recorded it first. It joins the transaction in ctx.
func (v *Vault) recordKey(ctx context.Context, mk *masterKey) error {
	if mk.wrong.Load() {
		return fmt.Errorf("%w: master key %s does not match the check value recorded for it", ErrNoKey, mk.ID())
	}
	check := mk.checkValue()
	if _, err := v.db.Exec(ctx, recordKeyQuery, mk.ID(), check, v.now().UnixMilli()); err != nil {
		return fmt.Errorf("failed to record master key: %w", err)
	}
	var recorded []byte
	if err := v.db.QueryRow(ctx, getCheckValueQuery, mk.ID()).Scan(&recorded); err != nil {
		return fmt.Errorf("failed to read master key check value: %w", err)
	}
	if !hmac.Equal(recorded, check) {
		mk.wrong.Store(true)
		return fmt.Errorf("%w: master key %s does not match the check value recorded for it", ErrNoKey, mk.ID())
	}
	return nil
}

// dekRow is one row of as_vault_dek.
type dekRow struct {
	dekID   uint32
	kekID   string
	wrapped []byte
}

const (
	getUserDEKsQuery = `SELECT dek_id, kek_id, wrapped FROM as_vault_dek WHERE user_mxid=$1 ORDER BY dek_id`
	getDEKQuery      = `SELECT kek_id, wrapped FROM as_vault_dek WHERE user_mxid=$1 AND dek_id=$2`
	userExistsQuery  = `SELECT EXISTS(SELECT 1 FROM users WHERE mxid=$1)`
	insertDEKQuery   = `
		INSERT INTO as_vault_dek (user_mxid, dek_id, kek_id, wrapped, created_at) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (user_mxid, dek_id) DO NOTHING
	`
)

// unwrap unwraps the user's data key in row under the current key ring, re-reading the key
// source once if the row's master key is unknown. Failures wrap [ErrKeyUnavailable].
func (v *Vault) unwrap(ctx context.Context, user id.UserID, row dekRow) (cipher.AEAD, error) {
	ring := v.ring.Load()
	mk, ok := ring.byID[row.kekID]
	if !ok && v.reloadForKey(ctx, row.kekID) {
		mk, ok = v.ring.Load().byID[row.kekID]
	}
	if !ok {
		return nil, fmt.Errorf("%w: master key %s is not loaded", ErrKeyUnavailable, row.kekID)
	}
	if mk.wrong.Load() {
		return nil, fmt.Errorf("%w: master key %s is not the key recorded under its ID", ErrKeyUnavailable, row.kekID)
	}
	dek, err := unwrapDEK(mk, user, row.dekID, row.wrapped)
	if err != nil {
		return nil, fmt.Errorf("%w: data key %d does not unwrap under master key %s", ErrKeyUnavailable, row.dekID, row.kekID)
	}
	defer clear(dek)
	return newAEAD(dek), nil
}

// inTxn reports whether ctx carries a database transaction. Keys read or created inside one are
// not cached: the transaction may still roll back.
func (v *Vault) inTxn(ctx context.Context) bool {
	_, ok := v.db.Execable(ctx).(dbutil.Transaction)
	return ok
}

// Seal encrypts secret for user, bound to (bridge, name), and returns the sealed value to store:
// version (1 byte) || data key ID (4) || nonce (12) || ciphertext || tag (16). It uses the user's
// newest data key, creating one (wrapped by the current master key) if the user has none or the
// newest cannot be unwrapped. The users row must exist ([ErrNoUser] otherwise). Errors:
// [ErrNoKey] if a data key must be created and no usable current master key is loaded; database
// errors otherwise. user, bridge and name must not be empty.
//
// Seal joins the transaction in ctx, if any, so a new data key commits or rolls back with the
// caller's row. It reads the user's data key rows on every call (one indexed query), so a data
// key deleted by an erasure in another process is never used. Safe for concurrent use.
func (v *Vault) Seal(ctx context.Context, user id.UserID, bridge, name string, secret Secret) ([]byte, error) {
	if user == "" || bridge == "" || name == "" {
		return nil, errors.New("vault: user, bridge and name must not be empty")
	}
	dekID, aead, err := v.sealingKey(ctx, user)
	if err != nil {
		return nil, err
	}
	plaintext := []byte(secret.Reveal())
	defer clear(plaintext)
	out := make([]byte, headerSize+nonceSize, headerSize+nonceSize+len(plaintext)+tagSize)
	out[0] = sealedVersion
	binary.BigEndian.PutUint32(out[1:headerSize], dekID)
	if _, err = rand.Read(out[headerSize:]); err != nil {
		return nil, fmt.Errorf("failed to generate nonce: %w", err)
	}
	return aead.Seal(out, out[headerSize:], plaintext, secretAAD(out[:headerSize], user, bridge, name)), nil
}

// sealingKey returns the data key to seal the user's new values with.
func (v *Vault) sealingKey(ctx context.Context, user id.UserID) (uint32, cipher.AEAD, error) {
	// Two processes may create the user's first key at once; the loser reads the winner's.
	for range 3 {
		gen := v.cache.generation()
		rows, err := v.userDEKs(ctx, user)
		if err != nil {
			return 0, nil, err
		}
		next := uint32(1)
		if len(rows) > 0 {
			newest := rows[len(rows)-1]
			if aead, ok := v.cache.get(user, newest.dekID, v.now()); ok {
				return newest.dekID, aead, nil
			}
			aead, err := v.unwrap(ctx, user, newest)
			if err == nil {
				v.cachePut(ctx, user, newest.dekID, aead, gen)
				return newest.dekID, aead, nil
			}
			// The user's values under that key stay where they are and open again if the
			// master key comes back; new values get a new data key so the user can link again.
			zerolog.Ctx(ctx).Warn().Err(err).Str("key_id", newest.kekID).Stringer("user_id", user).
				Msg("User's data key cannot be unwrapped; creating a new data key for new secrets")
			next = newest.dekID + 1
		}
		aead, created, err := v.createDEK(ctx, user, next)
		if err != nil {
			return 0, nil, err
		}
		if created {
			v.cachePut(ctx, user, next, aead, gen)
			return next, aead, nil
		}
	}
	return 0, nil, errors.New("vault: data key creation kept conflicting with another process")
}

func (v *Vault) cachePut(ctx context.Context, user id.UserID, dekID uint32, aead cipher.AEAD, gen uint64) {
	if !v.inTxn(ctx) {
		v.cache.put(user, dekID, aead, gen, v.now())
	}
}

func (v *Vault) userDEKs(ctx context.Context, user id.UserID) ([]dekRow, error) {
	rows, err := v.db.Query(ctx, getUserDEKsQuery, user)
	if err != nil {
		return nil, fmt.Errorf("failed to read data keys: %w", err)
	}
	var out []dekRow
	for rows.Next() {
		var r dekRow
		var dekID int64
		if err = rows.Scan(&dekID, &r.kekID, &r.wrapped); err != nil {
			_ = rows.Close()
			return nil, fmt.Errorf("failed to read data keys: %w", err)
		}
		r.dekID = uint32(dekID)
		out = append(out, r)
	}
	if err = rows.Close(); err != nil {
		return nil, fmt.Errorf("failed to read data keys: %w", err)
	}
	return out, nil
}

// createDEK creates the user's data key dekID, wrapped by the current master key. created is
// false if that key ID already existed (another process created it first).
func (v *Vault) createDEK(ctx context.Context, user id.UserID, dekID uint32) (aead cipher.AEAD, created bool, err error) {
	cur := v.ring.Load().current
	if cur == nil {
		return nil, false, fmt.Errorf("%w: %s has no key loaded", ErrNoKey, v.opts.Keys.String())
	}
	dek := make([]byte, KeySize)
	defer clear(dek)
	if _, err = rand.Read(dek); err != nil {
		return nil, false, fmt.Errorf("failed to generate data key: %w", err)
	}
	wrapped, err := wrapDEK(cur, user, dekID, dek)
	if err != nil {
		return nil, false, err
	}
	err = v.db.DoTxn(ctx, nil, func(ctx context.Context) error {
		var exists bool
		if err := v.db.QueryRow(ctx, userExistsQuery, user).Scan(&exists); err != nil {
			return fmt.Errorf("failed to check users row: %w", err)
		} else if !exists {
			return ErrNoUser
		}
		if err := v.recordKey(ctx, cur); err != nil {
			return err
		}
		res, err := v.db.Exec(ctx, insertDEKQuery, user, int64(dekID), cur.ID(), wrapped, v.now().UnixMilli())
		if err != nil {
			return fmt.Errorf("failed to store data key: %w", err)
		}
		n, err := res.RowsAffected()
		created = n == 1
		return err
	})
	if err != nil || !created {
		return nil, false, err
	}
	return newAEAD(dek), true, nil
}

// Open decrypts a value [Vault.Seal] returned for the same (user, bridge, name). Errors wrap
// [ErrDecrypt] (tampered, truncated, sealed for another user, bridge or name, or its data key no
// longer exists because the user was erased) or [ErrKeyUnavailable] (the data key's master key
// is missing or wrong; the value opens again once it is back), or are database errors.
//
// Open uses the in-memory data key cache, so it usually does no I/O. Safe for concurrent use.
func (v *Vault) Open(ctx context.Context, user id.UserID, bridge, name string, sealed []byte) (Secret, error) {
	header, dekID, nonce, ciphertext, err := parseSealed(sealed)
	if err != nil {
		return Secret{}, err
	}
	aead, err := v.openingKey(ctx, user, dekID)
	if err != nil {
		return Secret{}, err
	}
	plaintext, err := aead.Open(nil, nonce, ciphertext, secretAAD(header, user, bridge, name))
	if err != nil {
		return Secret{}, fmt.Errorf("%w: authentication failed", ErrDecrypt)
	}
	secret := NewSecret(string(plaintext))
	clear(plaintext)
	return secret, nil
}

// openingKey returns the user's data key dekID, from the cache or the database.
func (v *Vault) openingKey(ctx context.Context, user id.UserID, dekID uint32) (cipher.AEAD, error) {
	if aead, ok := v.cache.get(user, dekID, v.now()); ok {
		return aead, nil
	}
	gen := v.cache.generation()
	row := dekRow{dekID: dekID}
	err := v.db.QueryRow(ctx, getDEKQuery, user, int64(dekID)).Scan(&row.kekID, &row.wrapped)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: the user has no data key %d (erased, or not theirs)", ErrDecrypt, dekID)
	} else if err != nil {
		return nil, fmt.Errorf("failed to read data key: %w", err)
	}
	aead, err := v.unwrap(ctx, user, row)
	if err != nil {
		return nil, err
	}
	v.cachePut(ctx, user, dekID, aead, gen)
	return aead, nil
}

// Forget drops the user's unwrapped data keys from memory. The erasure code calls it after the
// transaction that deleted the users row (and with it the wrapped data keys) commits; from then
// on nothing sealed for the user can be opened. Reads that were in flight during the erasure do
// not put the keys back. It does no I/O and never fails. Safe for concurrent use.
func (v *Vault) Forget(user id.UserID) {
	v.cache.forget(user)
}

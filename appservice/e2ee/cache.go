package e2ee

import (
	"context"
	"math"
	"sync"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/goolm/session"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// DefaultCacheSize is the number of entries of each kind (inbound sessions, devices, users'
// cross-signing keys, signatures) the cache of [Machine.EnableCache] holds by default.
const DefaultCacheSize = 4096

// txnFence is how long a row written inside a database transaction is not cached: the cache
// cannot see the commit, and until then a read outside the transaction returns the old row.
const txnFence = time.Minute

// cacheTTL is how long an entry is used before it is read again: the bound on how long a change
// by another process (an erasure by `custodian forget` against the running service) takes to
// reach the cache, the same as the vault's data-key cache.
const cacheTTL = time.Minute

// entry is a cached value and when it was read.
type entry[V any] struct {
	v  V
	at time.Time
}

// sessionKey names an inbound megolm session in the cache.
type sessionKey struct {
	room    id.RoomID
	session id.SessionID
}

// deviceKey names a device found by its identity key.
type deviceKey struct {
	user id.UserID
	key  id.IdentityKey
}

// sigKey names a signature check: signedKey of signedUser by signerKey of signerUser.
type sigKey struct {
	signedUser id.UserID
	signedKey  id.Ed25519
	signerUser id.UserID
	signerKey  id.Ed25519
}

// cachingStore is the crypto store with a bounded in-memory cache in front of the reads every
// decryption makes: the inbound megolm session (one SELECT and an unpickle), the sender's
// device (FindDeviceByKey) and what resolving its trust reads (the user's cross-signing keys
// and up to three signature checks). Every write goes to the database as before and drops
// what it may change from the cache. Message indexes (ValidateMessageIndex) are not cached here
// but checked by the store underneath (see [Machine.DeferMessageIndexes]), so a replayed or
// forged index is still refused after a restart.
//
// Entries are used for at most [cacheTTL]. Fills are guarded by a generation counter: a read that began before an invalidation does not
// put its (possibly outdated) result in the cache. Reads inside a transaction never fill the
// cache (the transaction may roll back), and a row written inside one is fenced (not cached)
// for [txnFence] or until [Machine.Evict].
type cachingStore struct {
	crypto.Store
	// db is the crypto store's database, to tell reads inside a transaction.
	db   *dbutil.Database
	size int
	now  func() time.Time

	mu            sync.Mutex
	gen           uint64
	sessions      map[sessionKey]entry[*crypto.InboundGroupSession]
	fencedSession map[sessionKey]time.Time
	// bySession maps a session ID to where its session was last cached, for advancing its
	// latest ratchet after a decryption (see advanceRatchet), which advance allows.
	bySession map[id.SessionID]sessionKey
	advance   bool
	devices   map[deviceKey]entry[*id.Device]
	xsKeys    map[id.UserID]entry[map[id.CrossSigningUsage]id.CrossSigningKey]
	sigs      map[sigKey]entry[bool]
	// trustFence is when trust data (devices, cross-signing keys, signatures) written inside a
	// transaction may be cached again; sessionFence the same for every inbound session, after
	// a write inside a transaction that may have changed any of them.
	trustFence   time.Time
	sessionFence time.Time
}

var _ crypto.Store = (*cachingStore)(nil)

func newCachingStore(store crypto.Store, db *dbutil.Database, size int) *cachingStore {
	if size <= 0 {
		size = DefaultCacheSize
	}
	c := &cachingStore{Store: store, db: db, size: size, now: time.Now}
	c.reset()
	return c
}

// EnableCache puts a bounded in-memory cache in front of the crypto store for the reads every
// decryption makes (see BENCHMARKS.md, "End-to-end encryption"): inbound megolm sessions,
// senders' devices and their cross-signing trust. size bounds the entries of each kind
// ([DefaultCacheSize] when size <= 0). It wraps the olm machine's store as it is, so any other
// wrapper of it must be installed first. Call it once, at start-up, before the machine handles
// any event; it is not safe to call concurrently with the machine's other methods. A second
// call does nothing.
//
// Writes through the machine keep the cache right. Whoever deletes or changes crypto rows in
// another way (SQL, or [Machine.Store]) must call [Machine.Evict] after the change committed.
// A change by another process reaches the cache within a minute (an entry's lifetime).
func (m *Machine) EnableCache(size int) {
	if _, ok := m.mach.CryptoStore.(*cachingStore); ok {
		return
	}
	c := newCachingStore(m.mach.CryptoStore, m.store.DB, size)
	// Only then is every index ValidateMessageIndex sees authenticated (see there).
	c.advance = !m.mach.RatchetKeysOnDecrypt
	m.mach.CryptoStore = c
}

// CacheEnabled reports whether [Machine.EnableCache] put the cache in front of the store.
func (m *Machine) CacheEnabled() bool {
	_, ok := m.mach.CryptoStore.(*cachingStore)
	return ok
}

// Evict empties the cache of [Machine.EnableCache], so that the next decryption reads the
// crypto store again, and forgets the message indexes loaded per session (see
// [Machine.DeferMessageIndexes]; the pending ones stay until written). It must be called after
// any deletion or change of crypto rows that does not go through the machine has committed, or
// the machine could go on decrypting with a session the database no longer holds: the core
// calls it after every erasure that covered the crypto store (the user's devices, olm and
// inbound megolm sessions, cross-signing keys and signatures) and after a retention sweep that
// deleted crypto rows; re-pickling under a new crypto key changes no session's content; the
// start-up reset of the crypto rows runs before the cache is enabled. Evict is safe for
// concurrent use; without the cache it only forgets the loaded indexes.
func (m *Machine) Evict() {
	m.locked.indexes.evictKnown()
	if c, ok := m.mach.CryptoStore.(*cachingStore); ok {
		c.evict()
	}
}

// evict empties every map and lifts the fences: the rows are committed by now.
func (c *cachingStore) evict() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reset()
}

// reset empties the cache and invalidates fills in flight. c.mu must be held (or c unshared).
func (c *cachingStore) reset() {
	c.gen++
	c.sessions = make(map[sessionKey]entry[*crypto.InboundGroupSession])
	c.fencedSession = make(map[sessionKey]time.Time)
	c.bySession = make(map[id.SessionID]sessionKey)
	c.devices = make(map[deviceKey]entry[*id.Device])
	c.xsKeys = make(map[id.UserID]entry[map[id.CrossSigningUsage]id.CrossSigningKey])
	c.sigs = make(map[sigKey]entry[bool])
	c.trustFence = time.Time{}
	c.sessionFence = time.Time{}
}

// inTxn reports whether ctx carries a transaction of the store's database.
func (c *cachingStore) inTxn(ctx context.Context) bool {
	_, ok := c.db.Execable(ctx).(dbutil.Transaction)
	return ok
}

// begin returns the generation a fill must still see to store its result, and whether ctx
// allows filling at all.
func (c *cachingStore) begin(ctx context.Context) (uint64, bool) {
	if c.inTxn(ctx) {
		return 0, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen, true
}

// get returns the value under k in m if it is younger than [cacheTTL], and drops it if older.
// c.mu must be held.
func get[K comparable, V any](c *cachingStore, m map[K]entry[V], k K) (V, bool) {
	e, ok := m[k]
	if ok && c.now().Sub(e.at) < cacheTTL {
		return e.v, true
	}
	if ok {
		delete(m, k)
	}
	var zero V
	return zero, false
}

// put caches v under k in m, read now. c.mu must be held.
func put[K comparable, V any](c *cachingStore, m map[K]entry[V], k K, v V) {
	putBounded(m, c.size, k, entry[V]{v: v, at: c.now()})
}

// putBounded stores v under k in m, first dropping an arbitrary entry when m is full.
func putBounded[K comparable, V any](m map[K]V, size int, k K, v V) {
	if _, ok := m[k]; !ok && len(m) >= size {
		for old := range m {
			delete(m, old)
			break
		}
	}
	m[k] = v
}

// invalidateTrust drops the cached trust data after a write of it. A write inside a
// transaction also fences trust data until the transaction has surely ended.
func (c *cachingStore) invalidateTrust(ctx context.Context) {
	inTxn := c.inTxn(ctx)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	clear(c.devices)
	clear(c.xsKeys)
	clear(c.sigs)
	if inTxn {
		c.trustFence = c.now().Add(txnFence)
	}
}

// trustFillable reports whether trust data read at generation gen may be cached. c.mu must be
// held.
func (c *cachingStore) trustFillable(gen uint64) bool {
	return c.gen == gen && !c.now().Before(c.trustFence)
}

// invalidateSessions drops the cached inbound sessions named by keys, or all of them when keys
// is empty, after a write of them.
func (c *cachingStore) invalidateSessions(ctx context.Context, keys ...sessionKey) {
	inTxn := c.inTxn(ctx)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	if len(keys) == 0 {
		clear(c.sessions)
		if inTxn {
			c.sessionFence = c.now().Add(txnFence)
		}
		return
	}
	for _, k := range keys {
		delete(c.sessions, k)
		if inTxn {
			putBounded(c.fencedSession, c.size, k, c.now().Add(txnFence))
		}
	}
}

// sessionFillable reports whether session k read at generation gen may be cached. c.mu must be
// held.
func (c *cachingStore) sessionFillable(gen uint64, k sessionKey) bool {
	if c.gen != gen {
		return false
	}
	now := c.now()
	if now.Before(c.sessionFence) {
		return false
	}
	if until, ok := c.fencedSession[k]; ok {
		if now.Before(until) {
			return false
		}
		delete(c.fencedSession, k)
	}
	return true
}

// copySession returns a copy of s that shares nothing mutable with it: decrypting advances the
// session's latest ratchet in place, and a cached session is used by many decryptions. ok is
// false for an olm implementation whose session cannot be copied (only goolm is built).
func copySession(s *crypto.InboundGroupSession) (*crypto.InboundGroupSession, bool) {
	internal, ok := s.Internal.(*session.MegolmInboundSession)
	if !ok {
		return nil, false
	}
	cpInternal := *internal
	cp := *s
	cp.Internal = &cpInternal
	return &cp, true
}

// GetGroupSession returns the inbound megolm session from the cache, or reads it from the
// database and caches it. Missing and withheld sessions are not cached: their keys may arrive.
func (c *cachingStore) GetGroupSession(ctx context.Context, roomID id.RoomID, sessionID id.SessionID) (*crypto.InboundGroupSession, error) {
	k := sessionKey{roomID, sessionID}
	c.mu.Lock()
	var cp *crypto.InboundGroupSession
	cached, ok := get(c, c.sessions, k)
	if ok {
		// Copied under the lock: advanceRatchet changes the cached session in place.
		cp, ok = copySession(cached)
	}
	c.mu.Unlock()
	if ok {
		return cp, nil
	}
	gen, fill := c.begin(ctx)
	sess, err := c.Store.GetGroupSession(ctx, roomID, sessionID)
	if err != nil || sess == nil || !fill {
		return sess, err
	}
	if cp, ok := copySession(sess); ok {
		c.mu.Lock()
		if c.sessionFillable(gen, k) {
			put(c, c.sessions, k, cp)
			putBounded(c.bySession, c.size, sessionID, k)
		}
		c.mu.Unlock()
	}
	return sess, nil
}

// ValidateMessageIndex implements [crypto.Store]. With RatchetKeysOnDecrypt off, as
// [NewMachine] sets it, the olm machine calls it only after a decryption succeeded (the
// message's signature and MAC checked), so index is one the session's owner used; a new one
// advances the cached session's latest ratchet (advanceRatchet). (With it on, mautrix also
// calls it with the unauthenticated index of a message that failed to decrypt, and
// [Machine.EnableCache] leaves the ratchets alone.)
func (c *cachingStore) ValidateMessageIndex(ctx context.Context, sessionID id.SessionID, eventID id.EventID, index uint, timestamp int64) (bool, error) {
	ok, err := c.Store.ValidateMessageIndex(ctx, sessionID, eventID, index, timestamp)
	if ok && err == nil && c.advance {
		c.advanceRatchet(sessionID, index)
	}
	return ok, err
}

// advanceRatchet advances the latest ratchet of the cached session sessionID to index, when it
// is behind. A megolm session decrypts message i by advancing a copy of its latest ratchet to i
// when i is at or past it, and of its initial ratchet otherwise; the database keeps the session
// as first received (keys are not ratcheted on decrypt, so a replay decrypts again), so each
// copy the cache handed out started from there and advanced once per message index before it:
// about 50 hash rounds per message of a session that lives for 100 messages. Advanced in the
// cache, the next copy starts from the last index decrypted. The initial ratchet stays as it
// is, so earlier indexes (out of order, replays) still decrypt. The ratchet is derived from the
// session's own data and lives in memory; the machine writes a cached copy back only when a
// room key for a session it holds arrives again, and then the initial ratchet is still in it.
//
// The latest ratchet stays less than 2^31 past the initial one: goolm takes an index as "at or
// past the latest" when it is less than 2^31 ahead of it (modulo 2^32), so a latest ratchet
// further on would make an earlier index look ahead, and fail. The hashing runs outside the
// cache's lock (a sender can make it take half a millisecond); when two advances race, the one
// further on stays.
//
// When two cached sessions share an ID (their sender made them so), only the last cached one
// advances, which costs the other speed, never correctness.
func (c *cachingStore) advanceRatchet(sessionID id.SessionID, index uint) {
	if index > math.MaxUint32 {
		return
	}
	target := uint32(index)
	c.mu.Lock()
	internal := c.cachedInbound(sessionID)
	if internal == nil || !ratchetBehind(internal, target) {
		c.mu.Unlock()
		return
	}
	ratchet := internal.Ratchet
	c.mu.Unlock()
	ratchet.AdvanceTo(target)
	c.mu.Lock()
	defer c.mu.Unlock()
	if current := c.cachedInbound(sessionID); current == internal && ratchetBehind(current, target) {
		current.Ratchet = ratchet
	}
}

// cachedInbound returns the goolm session cached under sessionID, or nil. c.mu must be held.
func (c *cachingStore) cachedInbound(sessionID id.SessionID) *session.MegolmInboundSession {
	k, ok := c.bySession[sessionID]
	if !ok {
		return nil
	}
	e, ok := c.sessions[k]
	if !ok {
		return nil
	}
	internal, _ := e.v.Internal.(*session.MegolmInboundSession)
	return internal
}

// ratchetBehind reports whether s's latest ratchet is behind target, and target less than 2^31
// past s's initial ratchet (see advanceRatchet).
func ratchetBehind(s *session.MegolmInboundSession, target uint32) bool {
	return target != s.Ratchet.Counter && target-s.Ratchet.Counter < 1<<31 && target-s.InitialRatchet.Counter < 1<<31
}

// PutGroupSession implements [crypto.Store].
func (c *cachingStore) PutGroupSession(ctx context.Context, sess *crypto.InboundGroupSession) error {
	err := c.Store.PutGroupSession(ctx, sess)
	c.invalidateSessions(ctx, sessionKey{sess.RoomID, sess.ID()})
	return err
}

// PutWithheldGroupSession implements [crypto.Store].
func (c *cachingStore) PutWithheldGroupSession(ctx context.Context, content event.RoomKeyWithheldEventContent) error {
	err := c.Store.PutWithheldGroupSession(ctx, content)
	c.invalidateSessions(ctx, sessionKey{content.RoomID, content.SessionID})
	return err
}

// RedactGroupSession implements [crypto.Store].
func (c *cachingStore) RedactGroupSession(ctx context.Context, roomID id.RoomID, sessionID id.SessionID, reason string) error {
	err := c.Store.RedactGroupSession(ctx, roomID, sessionID, reason)
	// The statement matches the session ID in any room.
	c.invalidateSessions(ctx)
	return err
}

// RedactGroupSessions implements [crypto.Store].
func (c *cachingStore) RedactGroupSessions(ctx context.Context, roomID id.RoomID, senderKey id.SenderKey, reason string) ([]id.SessionID, error) {
	ids, err := c.Store.RedactGroupSessions(ctx, roomID, senderKey, reason)
	c.invalidateSessions(ctx)
	return ids, err
}

// RedactExpiredGroupSessions implements [crypto.Store].
func (c *cachingStore) RedactExpiredGroupSessions(ctx context.Context) ([]id.SessionID, error) {
	ids, err := c.Store.RedactExpiredGroupSessions(ctx)
	c.invalidateSessions(ctx)
	return ids, err
}

// RedactOutdatedGroupSessions implements [crypto.Store].
func (c *cachingStore) RedactOutdatedGroupSessions(ctx context.Context) ([]id.SessionID, error) {
	ids, err := c.Store.RedactOutdatedGroupSessions(ctx)
	c.invalidateSessions(ctx)
	return ids, err
}

// FindDeviceByKey returns the device from the cache, or reads it from the database and caches
// it. An unknown device is not cached: its keys are fetched and stored next.
func (c *cachingStore) FindDeviceByKey(ctx context.Context, userID id.UserID, identityKey id.IdentityKey) (*id.Device, error) {
	k := deviceKey{userID, identityKey}
	c.mu.Lock()
	cached, ok := get(c, c.devices, k)
	c.mu.Unlock()
	if ok {
		cp := *cached
		return &cp, nil
	}
	gen, fill := c.begin(ctx)
	device, err := c.Store.FindDeviceByKey(ctx, userID, identityKey)
	if err != nil || device == nil || !fill {
		return device, err
	}
	cp := *device
	c.mu.Lock()
	if c.trustFillable(gen) {
		put(c, c.devices, k, &cp)
	}
	c.mu.Unlock()
	return device, nil
}

// GetCrossSigningKeys returns userID's cross-signing keys from the cache, or reads them from
// the database and caches them.
func (c *cachingStore) GetCrossSigningKeys(ctx context.Context, userID id.UserID) (map[id.CrossSigningUsage]id.CrossSigningKey, error) {
	c.mu.Lock()
	cached, ok := get(c, c.xsKeys, userID)
	var cp map[id.CrossSigningUsage]id.CrossSigningKey
	if ok {
		cp = make(map[id.CrossSigningUsage]id.CrossSigningKey, len(cached))
		for usage, key := range cached {
			cp[usage] = key
		}
	}
	c.mu.Unlock()
	if ok {
		return cp, nil
	}
	gen, fill := c.begin(ctx)
	keys, err := c.Store.GetCrossSigningKeys(ctx, userID)
	if err != nil || !fill {
		return keys, err
	}
	cp = make(map[id.CrossSigningUsage]id.CrossSigningKey, len(keys))
	for usage, key := range keys {
		cp[usage] = key
	}
	c.mu.Lock()
	if c.trustFillable(gen) {
		put(c, c.xsKeys, userID, cp)
	}
	c.mu.Unlock()
	return keys, nil
}

// IsKeySignedBy returns from the cache, or reads from the database and caches, whether the
// signature exists.
func (c *cachingStore) IsKeySignedBy(ctx context.Context, userID id.UserID, key id.Ed25519, signedByUser id.UserID, signedByKey id.Ed25519) (bool, error) {
	k := sigKey{userID, key, signedByUser, signedByKey}
	c.mu.Lock()
	cached, ok := get(c, c.sigs, k)
	c.mu.Unlock()
	if ok {
		return cached, nil
	}
	gen, fill := c.begin(ctx)
	signed, err := c.Store.IsKeySignedBy(ctx, userID, key, signedByUser, signedByKey)
	if err != nil || !fill {
		return signed, err
	}
	c.mu.Lock()
	if c.trustFillable(gen) {
		put(c, c.sigs, k, signed)
	}
	c.mu.Unlock()
	return signed, nil
}

// PutDevice implements [crypto.Store].
func (c *cachingStore) PutDevice(ctx context.Context, userID id.UserID, device *id.Device) error {
	err := c.Store.PutDevice(ctx, userID, device)
	c.invalidateTrust(ctx)
	return err
}

// PutDevices implements [crypto.Store].
func (c *cachingStore) PutDevices(ctx context.Context, userID id.UserID, devices map[id.DeviceID]*id.Device) error {
	err := c.Store.PutDevices(ctx, userID, devices)
	c.invalidateTrust(ctx)
	return err
}

// PutCrossSigningKey implements [crypto.Store].
func (c *cachingStore) PutCrossSigningKey(ctx context.Context, userID id.UserID, usage id.CrossSigningUsage, key id.Ed25519) error {
	err := c.Store.PutCrossSigningKey(ctx, userID, usage, key)
	c.invalidateTrust(ctx)
	return err
}

// ResetMasterKeyTOFU implements [crypto.Store].
func (c *cachingStore) ResetMasterKeyTOFU(ctx context.Context, userID id.UserID, key id.Ed25519) error {
	err := c.Store.ResetMasterKeyTOFU(ctx, userID, key)
	c.invalidateTrust(ctx)
	return err
}

// PutSignature implements [crypto.Store].
func (c *cachingStore) PutSignature(ctx context.Context, signedUser id.UserID, signedKey id.Ed25519, signerUser id.UserID, signerKey id.Ed25519, signature string) error {
	err := c.Store.PutSignature(ctx, signedUser, signedKey, signerUser, signerKey, signature)
	c.invalidateTrust(ctx)
	return err
}

// DropSignaturesByKey implements [crypto.Store].
func (c *cachingStore) DropSignaturesByKey(ctx context.Context, userID id.UserID, key id.Ed25519) (int64, error) {
	n, err := c.Store.DropSignaturesByKey(ctx, userID, key)
	c.invalidateTrust(ctx)
	return n, err
}

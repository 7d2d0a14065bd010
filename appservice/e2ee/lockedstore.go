package e2ee

import (
	"context"
	"sync"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/id"
)

// lockedStore is the crypto store as the olm machine sees it: mautrix's SQL store with a lock
// around every method that reads its olm session cache or its pickle key. Two things need the
// store to themselves, briefly, and take the lock for writing:
//
//   - after an erasure, the olm session cache is dropped (evictOlmSessions): mautrix keeps
//     every olm session it loaded in an unexported map and offers no way to remove one, and
//     InitFields, which replaces the map, must not run while a method reads it;
//   - after a shred rotation, the pickle key is replaced ([Machine.ReplacePickleKey]): no row may be
//     pickled under the old key once the rows were re-pickled under the new one.
//
// The other methods (devices, tracked users, signatures) neither pickle nor touch the cache and
// are mautrix's own, unlocked. Message indexes may be kept in memory until the inbox's done
// marks write them, and each session's known ones are checked in memory (indexes; msgindex.go,
// [Machine.DeferMessageIndexes]).
type lockedStore struct {
	*crypto.SQLCryptoStore
	mu      sync.RWMutex
	indexes *pendingIndexes
	// wedged takes over the olm machine's unwedging (unwedge.go).
	wedged wedgedSessions
}

var _ crypto.Store = (*lockedStore)(nil)

// evictOlmSessions drops every olm session held in memory; the next use reads them from the
// database, where an erasure has deleted the erased user's. It drops them all, not only the
// user's, because the cache is keyed by identity keys that the erasure has already deleted, and
// because erasures are rare while reloading a session costs one query.
func (s *lockedStore) evictOlmSessions() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.InitFields()
}

// forgetCached drops the olm sessions and the account held in memory, under the lock: the next
// use reads them from the database. Without dropping the account, the olm machine's next Load
// would return the cached one.
func (s *lockedStore) forgetCached() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.InitFields()
	s.Account = nil
}

// PutAccount implements [crypto.Store].
func (s *lockedStore) PutAccount(ctx context.Context, account *crypto.OlmAccount) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.SQLCryptoStore.PutAccount(ctx, account)
}

// GetAccount implements [crypto.Store].
func (s *lockedStore) GetAccount(ctx context.Context) (*crypto.OlmAccount, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.SQLCryptoStore.GetAccount(ctx)
}

// HasSession implements [crypto.Store]. For the device [Machine.Unwedge] sends to, it reports
// no session, so the olm machine makes a new one.
func (s *lockedStore) HasSession(ctx context.Context, key id.SenderKey) bool {
	if forced, ok := ctx.Value(newSessionFor{}).(id.SenderKey); ok && forced == key {
		return false
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.SQLCryptoStore.HasSession(ctx, key)
}

// GetSessions implements [crypto.Store].
func (s *lockedStore) GetSessions(ctx context.Context, key id.SenderKey) (crypto.OlmSessionList, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.SQLCryptoStore.GetSessions(ctx, key)
}

// GetNewestSessionCreationTS implements [crypto.Store]. Called from the olm machine's
// unwedging goroutine (its context carries unwedgeMarker), it hands key to the unwedge handler
// and answers "now", which ends the goroutine: the core unwedges instead (unwedge.go).
func (s *lockedStore) GetNewestSessionCreationTS(ctx context.Context, key id.SenderKey) (time.Time, error) {
	if ctx.Value(unwedgeMarker{}) != nil {
		s.wedged.request(key)
		return time.Now(), nil
	}
	return s.SQLCryptoStore.GetNewestSessionCreationTS(ctx, key)
}

// GetLatestSession implements [crypto.Store].
func (s *lockedStore) GetLatestSession(ctx context.Context, key id.SenderKey) (*crypto.OlmSession, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.SQLCryptoStore.GetLatestSession(ctx, key)
}

// AddSession implements [crypto.Store].
func (s *lockedStore) AddSession(ctx context.Context, key id.SenderKey, session *crypto.OlmSession) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.SQLCryptoStore.AddSession(ctx, key, session)
}

// UpdateSession implements [crypto.Store].
func (s *lockedStore) UpdateSession(ctx context.Context, key id.SenderKey, session *crypto.OlmSession) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.SQLCryptoStore.UpdateSession(ctx, key, session)
}

// PutGroupSession implements [crypto.Store].
func (s *lockedStore) PutGroupSession(ctx context.Context, session *crypto.InboundGroupSession) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.SQLCryptoStore.PutGroupSession(ctx, session)
}

// GetGroupSession implements [crypto.Store].
func (s *lockedStore) GetGroupSession(ctx context.Context, roomID id.RoomID, sessionID id.SessionID) (*crypto.InboundGroupSession, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.SQLCryptoStore.GetGroupSession(ctx, roomID, sessionID)
}

// GetGroupSessionsForRoom implements [crypto.Store]. The sessions are read (and unpickled) at
// once, under the lock.
func (s *lockedStore) GetGroupSessionsForRoom(ctx context.Context, roomID id.RoomID) dbutil.RowIter[*crypto.InboundGroupSession] {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return dbutil.NewSliceIterWithError(s.SQLCryptoStore.GetGroupSessionsForRoom(ctx, roomID).AsList())
}

// GetAllGroupSessions implements [crypto.Store]. The sessions are read (and unpickled) at once,
// under the lock.
func (s *lockedStore) GetAllGroupSessions(ctx context.Context) dbutil.RowIter[*crypto.InboundGroupSession] {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return dbutil.NewSliceIterWithError(s.SQLCryptoStore.GetAllGroupSessions(ctx).AsList())
}

// GetGroupSessionsWithoutKeyBackupVersion implements [crypto.Store]. The sessions are read (and
// unpickled) at once, under the lock.
func (s *lockedStore) GetGroupSessionsWithoutKeyBackupVersion(ctx context.Context, version id.KeyBackupVersion) dbutil.RowIter[*crypto.InboundGroupSession] {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return dbutil.NewSliceIterWithError(s.SQLCryptoStore.GetGroupSessionsWithoutKeyBackupVersion(ctx, version).AsList())
}

// AddOutboundGroupSession implements [crypto.Store].
func (s *lockedStore) AddOutboundGroupSession(ctx context.Context, session *crypto.OutboundGroupSession) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.SQLCryptoStore.AddOutboundGroupSession(ctx, session)
}

// UpdateOutboundGroupSession implements [crypto.Store].
func (s *lockedStore) UpdateOutboundGroupSession(ctx context.Context, session *crypto.OutboundGroupSession) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.SQLCryptoStore.UpdateOutboundGroupSession(ctx, session)
}

// GetOutboundGroupSession implements [crypto.Store].
func (s *lockedStore) GetOutboundGroupSession(ctx context.Context, roomID id.RoomID) (*crypto.OutboundGroupSession, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.SQLCryptoStore.GetOutboundGroupSession(ctx, roomID)
}

// PutSecret implements [crypto.Store].
func (s *lockedStore) PutSecret(ctx context.Context, name id.Secret, value string) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.SQLCryptoStore.PutSecret(ctx, name, value)
}

// GetSecret implements [crypto.Store].
func (s *lockedStore) GetSecret(ctx context.Context, name id.Secret) (string, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.SQLCryptoStore.GetSecret(ctx, name)
}

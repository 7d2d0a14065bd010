package e2ee

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"
)

// DefaultPendingIndexes bounds the message indexes [Machine.DeferMessageIndexes] holds in memory
// by default: when more are pending, the decryption that adds one writes them all at once.
const DefaultPendingIndexes = 4096

// indexChunk is the number of message indexes one INSERT writes (four parameters each).
const indexChunk = 500

// indexKey is a megolm message index: which message of which session.
type indexKey struct {
	session id.SessionID
	index   uint
}

// indexUse is the event a message index was first seen in.
type indexUse struct {
	event id.EventID
	ts    int64
}

// pendingIndexes are message indexes that decryptions accepted and that are not written to
// crypto_message_index yet. See [Machine.DeferMessageIndexes].
type pendingIndexes struct {
	on    atomic.Bool
	limit int
	// flushing is set while a flush of a full set runs, so that only one does.
	flushing atomic.Bool

	mu sync.Mutex
	m  map[indexKey]indexUse
	// removals counts the flushes that removed written indexes from m: a lookup that began
	// before one must look again, or it could miss an index that moved from m to the table.
	// lastRemoved are the indexes the last of them wrote, enough to look again in memory when
	// only one flush happened meanwhile.
	removals    uint64
	lastRemoved map[indexKey]indexUse

	// known are the sessions whose message indexes are all in memory: every index the table
	// held when the session was loaded (one query), every one accepted since, pending or
	// written. A decryption of a loaded session checks memory only. knownCount is the number
	// of indexes in known, at most knownLimit; a session with more than a quarter of that is
	// not loaded but listed in large, and checked with a lookup per decryption.
	known      map[id.SessionID]*knownSession
	knownCount int
	knownLimit int
	large      map[id.SessionID]struct{}
	// evictions counts evictKnown's calls: a load that began before one is not kept.
	evictions uint64
	now       func() time.Time
}

// DefaultKnownIndexes bounds the message indexes the machine keeps in memory per loaded session
// (see [Machine.DeferMessageIndexes]), all sessions together.
const DefaultKnownIndexes = 1 << 17

// knownSession is a loaded session's message indexes and when they were read.
type knownSession struct {
	idx    map[uint]indexUse
	loaded time.Time
}

func newPendingIndexes() *pendingIndexes {
	return &pendingIndexes{
		m:          make(map[indexKey]indexUse),
		known:      make(map[id.SessionID]*knownSession),
		knownLimit: DefaultKnownIndexes,
		large:      make(map[id.SessionID]struct{}),
		now:        time.Now,
	}
}

// knownSession returns session's loaded indexes, nil if it is not loaded or was loaded longer
// than [cacheTTL] ago (then it is dropped). p.mu must be held.
func (p *pendingIndexes) knownSession(session id.SessionID) *knownSession {
	ks := p.known[session]
	if ks != nil && p.now().Sub(ks.loaded) >= cacheTTL {
		p.dropKnown(session)
		return nil
	}
	return ks
}

// dropKnown forgets session's loaded indexes; the pending ones stay. p.mu must be held.
func (p *pendingIndexes) dropKnown(session id.SessionID) {
	if ks := p.known[session]; ks != nil {
		p.knownCount -= len(ks.idx)
		delete(p.known, session)
	}
}

// boundKnown drops loaded sessions other than keep until at most knownLimit indexes are in
// memory. p.mu must be held.
func (p *pendingIndexes) boundKnown(keep id.SessionID) {
	for session := range p.known {
		if p.knownCount <= p.knownLimit {
			return
		}
		if session != keep {
			p.dropKnown(session)
		}
	}
}

// sessionLimit is the most indexes of one session kept in memory.
func (p *pendingIndexes) sessionLimit() int {
	return max(p.knownLimit/4, 1)
}

// evictKnown forgets every loaded session's indexes (the next decryption of each loads them
// again); the pending ones stay until they are written.
func (p *pendingIndexes) evictKnown() {
	p.mu.Lock()
	defer p.mu.Unlock()
	clear(p.known)
	clear(p.large)
	p.knownCount = 0
	p.evictions++
}

// DeferMessageIndexes makes decryptions keep the message index they record (mautrix's replay
// protection, crypto_message_index) in memory instead of writing it at once in a transaction of
// its own: a decryption checks its (session, index) against the session's known indexes; a
// different event ID or timestamp is refused as a replayed or forged index, the same is
// accepted (a replay after a crash), none is added to the known and the pending ones and
// accepted.
//
// A session's known indexes are read from the table in one query by the first decryption of
// the session (and again after [cacheTTL], or after [Machine.Evict]); every index accepted
// since is added to them, so later decryptions of the session read nothing. This is right as
// long as only this machine writes crypto_message_index, which the service's single
// appservice registration ensures. At most [DefaultKnownIndexes] are kept, all sessions
// together; a session with more than a quarter of that is checked with one lookup per
// decryption instead.
//
// The caller must write the pending indexes, with [Machine.FlushMessageIndexes], in the same
// database transaction that marks a decrypted event as handled (the core does it in
// the inbox's done marks), so that no event is ever done without its index written. More than
// limit pending indexes (<= 0: [DefaultPendingIndexes]) are written at once by the decryption
// that adds one. Call it once, at start-up, before the machine decrypts; a second call
// does nothing.
func (m *Machine) DeferMessageIndexes(limit int) {
	p := m.locked.indexes
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.on.Load() {
		return
	}
	if limit <= 0 {
		limit = DefaultPendingIndexes
	}
	p.limit = limit
	p.on.Store(true)
}

// FlushMessageIndexes writes every message index pending (see [Machine.DeferMessageIndexes])
// in ctx's database transaction, or in one of its own when ctx has none. The caller must call
// committed, if not nil, once that transaction committed: only then are the written indexes
// dropped from memory. If it rolls back, they stay pending and the next flush writes them.
// Indexes of an inbound session that no longer exists (erased, or past retention) are not
// written. Safe for concurrent use.
func (m *Machine) FlushMessageIndexes(ctx context.Context) (committed func(), err error) {
	return m.locked.flushIndexes(ctx)
}

// WriteMessageIndexes writes every pending message index in a transaction of its own and drops
// them from memory; the dispatcher's shutdown calls it after the last done marks. Safe for
// concurrent use.
func (m *Machine) WriteMessageIndexes(ctx context.Context) error {
	return m.locked.writeIndexes(ctx)
}

// PendingMessageIndexes returns how many message indexes are pending.
func (m *Machine) PendingMessageIndexes() int {
	p := m.locked.indexes
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.m)
}

// ValidateMessageIndex implements [crypto.Store]. Unless [Machine.DeferMessageIndexes] was
// called it is mautrix's: the index is written at once. Otherwise it is checked against the
// session's known indexes (see [Machine.DeferMessageIndexes]) and, if new, added to them and
// to the pending ones.
func (s *lockedStore) ValidateMessageIndex(ctx context.Context, sessionID id.SessionID, eventID id.EventID, index uint, timestamp int64) (bool, error) {
	p := s.indexes
	if !p.on.Load() {
		return s.SQLCryptoStore.ValidateMessageIndex(ctx, sessionID, eventID, index, timestamp)
	}
	key, use := indexKey{sessionID, index}, indexUse{eventID, timestamp}
	// mautrix's check for an event without ID and timestamp: refused if the index is known,
	// and not recorded.
	empty := eventID == "" && timestamp == 0
	// Two rounds: the session's indexes are loaded in the first, used in the second. A third
	// is needed only when the loaded set was evicted at once (memory bound, [Machine.Evict]).
	for range 3 {
		ok, step, err := s.validateKnown(ctx, key, use, empty)
		if err != nil || step == decided {
			return ok, err
		} else if step == lookUp {
			break
		}
	}
	return s.validateLookup(ctx, key, use, empty)
}

// What validateKnown leaves to its caller.
const (
	// decided: its answer is final.
	decided = iota
	// again: the session's indexes were loaded (or another decryption loaded them); ask again.
	again
	// lookUp: the session has too many indexes to keep; validateLookup decides.
	lookUp
)

// validateKnown checks key against its session's known indexes, loading them when the session
// is not loaded; step says whether ok is the answer (decided), or the caller must ask again
// (again) or look the index up (lookUp).
func (s *lockedStore) validateKnown(ctx context.Context, key indexKey, use indexUse, empty bool) (ok bool, step int, err error) {
	p := s.indexes
	p.mu.Lock()
	if ks := p.knownSession(key.session); ks != nil {
		prev, found := ks.idx[key.index]
		if found || empty {
			p.mu.Unlock()
			return !found || prev == use, decided, nil
		}
		ks.idx[key.index] = use
		p.knownCount++
		p.m[key] = use
		if len(ks.idx) > p.sessionLimit() {
			// Too many to keep: the pending ones stay, the next decryptions look up.
			p.dropKnown(key.session)
			putBounded(p.large, p.knownLimit, key.session, struct{}{})
		}
		p.boundKnown(key.session)
		full := len(p.m) > p.limit
		p.mu.Unlock()
		s.flushIfFull(ctx, full)
		return true, decided, nil
	}
	if _, large := p.large[key.session]; large {
		p.mu.Unlock()
		return false, lookUp, nil
	}
	removals, evictions := p.removals, p.evictions
	p.mu.Unlock()
	rows, err := s.loadSession(ctx, key.session, p.sessionLimit())
	if err != nil {
		return false, decided, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.known[key.session] != nil || p.evictions != evictions {
		// Another decryption loaded it meanwhile, or an erasure may have deleted rows read.
		return false, again, nil
	}
	// What the table held when it was read, plus every index that can have reached it since
	// (moved from the pending ones by a flush) or is pending now.
	idx := make(map[uint]indexUse, len(rows))
	switch p.removals - removals {
	case 0:
	case 1:
		for k, v := range p.lastRemoved {
			if k.session == key.session {
				idx[k.index] = v
			}
		}
	default:
		// More than one flush: read again, under the lock, which keeps any other from moving.
		if rows, err = s.loadSession(ctx, key.session, p.sessionLimit()); err != nil {
			return false, decided, err
		}
	}
	for k, v := range p.m {
		if k.session == key.session {
			idx[k.index] = v
		}
	}
	// The table is what was committed: it wins over memory.
	for i, v := range rows {
		idx[i] = v
	}
	if len(idx) > p.sessionLimit() {
		putBounded(p.large, p.knownLimit, key.session, struct{}{})
		return false, lookUp, nil
	}
	p.known[key.session] = &knownSession{idx: idx, loaded: p.now()}
	p.knownCount += len(idx)
	p.boundKnown(key.session)
	return false, again, nil
}

// validateLookup checks key against the table and the pending indexes, one lookup per call: for
// a session with too many indexes to keep in memory.
func (s *lockedStore) validateLookup(ctx context.Context, key indexKey, use indexUse, empty bool) (bool, error) {
	p := s.indexes
	if empty {
		p.mu.Lock()
		_, known := p.m[key]
		p.mu.Unlock()
		if known {
			return false, nil
		}
		return s.SQLCryptoStore.ValidateMessageIndex(ctx, key.session, "", key.index, 0)
	}
	p.mu.Lock()
	prev, pending := p.m[key]
	removals := p.removals
	p.mu.Unlock()
	if pending {
		return prev == use, nil
	}
	prev, found, err := s.lookupIndex(ctx, key)
	if err != nil {
		return false, err
	} else if found {
		return prev == use, nil
	}
	p.mu.Lock()
	if prev, pending = p.m[key]; pending {
		p.mu.Unlock()
		return prev == use, nil
	}
	switch p.removals - removals {
	case 0:
	case 1:
		// One flush moved indexes from memory to the table since the lookup: they are these.
		if prev, found = p.lastRemoved[key]; found {
			p.mu.Unlock()
			return prev == use, nil
		}
	default:
		// More did: look again, under the lock, which keeps any other from moving.
		prev, found, err = s.lookupIndex(ctx, key)
		if err != nil || found {
			p.mu.Unlock()
			return err == nil && prev == use, err
		}
	}
	if ks := p.known[key.session]; ks != nil {
		// Loaded meanwhile: keep it complete.
		if _, found = ks.idx[key.index]; !found {
			ks.idx[key.index] = use
			p.knownCount++
		}
	}
	p.m[key] = use
	full := len(p.m) > p.limit
	p.mu.Unlock()
	s.flushIfFull(ctx, full)
	return true, nil
}

// flushIfFull writes the pending message indexes when full (an index was just added past the
// limit), unless ctx is inside a transaction or another write runs. A failure is logged: the
// indexes, accepted already, stay pending, and the next done marks write them.
func (s *lockedStore) flushIfFull(ctx context.Context, full bool) {
	p := s.indexes
	if !full || s.inTxn(ctx) || !p.flushing.CompareAndSwap(false, true) {
		return
	}
	defer p.flushing.Store(false)
	if err := s.writeIndexes(ctx); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to write pending message indexes")
	}
}

// loadSession returns the message indexes crypto_message_index records for session, at most
// limit+1 of them (more than limit: too many to keep).
func (s *lockedStore) loadSession(ctx context.Context, session id.SessionID, limit int) (map[uint]indexUse, error) {
	rows, err := s.DB.Query(ctx, `SELECT "index", event_id, timestamp FROM crypto_message_index WHERE session_id=$1 LIMIT $2`, session, limit+1)
	if err != nil {
		return nil, fmt.Errorf("failed to load message indexes: %w", err)
	}
	defer rows.Close()
	idx := make(map[uint]indexUse)
	for rows.Next() {
		var (
			i   int64
			use indexUse
		)
		if err = rows.Scan(&i, &use.event, &use.ts); err != nil {
			return nil, fmt.Errorf("failed to load message indexes: %w", err)
		}
		idx[uint(i)] = use
	}
	if err = rows.Err(); err != nil {
		return nil, fmt.Errorf("failed to load message indexes: %w", err)
	}
	return idx, nil
}

// lookupIndex returns the event recorded in crypto_message_index for key, if any.
func (s *lockedStore) lookupIndex(ctx context.Context, key indexKey) (use indexUse, found bool, err error) {
	err = s.DB.QueryRow(ctx, `SELECT event_id, timestamp FROM crypto_message_index WHERE session_id=$1 AND "index"=$2`,
		key.session, key.index).Scan(&use.event, &use.ts)
	if errors.Is(err, sql.ErrNoRows) {
		return indexUse{}, false, nil
	} else if err != nil {
		return indexUse{}, false, fmt.Errorf("failed to look up message index: %w", err)
	}
	return use, true, nil
}

// inTxn reports whether ctx carries a transaction of the store's database.
func (s *lockedStore) inTxn(ctx context.Context) bool {
	_, ok := s.DB.Execable(ctx).(dbutil.Transaction)
	return ok
}

// flushIndexes writes the pending indexes in ctx's transaction (or its own) and returns the
// function that drops them from memory after the commit. See [Machine.FlushMessageIndexes].
func (s *lockedStore) flushIndexes(ctx context.Context) (func(), error) {
	p := s.indexes
	p.mu.Lock()
	if len(p.m) == 0 {
		p.mu.Unlock()
		return nil, nil
	}
	written := make(map[indexKey]indexUse, len(p.m))
	for k, v := range p.m {
		written[k] = v
	}
	p.mu.Unlock()
	err := s.DB.DoTxn(ctx, nil, func(ctx context.Context) error {
		keys := make([]indexKey, 0, len(written))
		for k := range written {
			keys = append(keys, k)
		}
		for start := 0; start < len(keys); start += indexChunk {
			chunk := keys[start:min(start+indexChunk, len(keys))]
			var q strings.Builder
			// Only indexes of sessions the store still holds: an erasure or the retention
			// sweep may have deleted a session (and its indexes) since its index was accepted.
			q.WriteString(`INSERT INTO crypto_message_index (session_id, "index", event_id, timestamp) SELECT v.column1, v.column2, v.column3, v.column4 FROM (VALUES `)
			args := make([]any, 0, 1+len(chunk)*4)
			args = append(args, s.AccountID)
			for i, k := range chunk {
				if i > 0 {
					q.WriteByte(',')
				}
				n := len(args)
				fmt.Fprintf(&q, "(CAST($%d AS TEXT),CAST($%d AS INTEGER),CAST($%d AS TEXT),CAST($%d AS BIGINT))", n+1, n+2, n+3, n+4)
				use := written[k]
				args = append(args, string(k.session), int64(k.index), string(use.event), use.ts)
			}
			q.WriteString(`) AS v WHERE EXISTS (SELECT 1 FROM crypto_megolm_inbound_session s WHERE s.account_id=$1 AND s.session_id=v.column1) ON CONFLICT (session_id, "index") DO NOTHING`)
			if _, err := s.DB.Exec(ctx, q.String(), args...); err != nil {
				return fmt.Errorf("failed to write message indexes: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		for k, v := range written {
			if p.m[k] == v {
				delete(p.m, k)
			}
		}
		p.removals++
		p.lastRemoved = written
	}, nil
}

// writeIndexes flushes the pending indexes in a transaction of their own (or ctx's, in which
// case they stay in memory until a flush outside any transaction).
func (s *lockedStore) writeIndexes(ctx context.Context) error {
	inTxn := s.inTxn(ctx)
	committed, err := s.flushIndexes(ctx)
	if err == nil && committed != nil && !inTxn {
		committed()
	}
	return err
}

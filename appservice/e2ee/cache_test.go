package e2ee

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/goolm/session"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
)

// queryCounter is a database logger that counts the statements run per table of interest.
type queryCounter struct {
	dbutil.DatabaseLogger
	mu      sync.Mutex
	queries []string
}

func (qc *queryCounter) QueryTiming(_ context.Context, method, query string, _ []any, _ int, _ time.Duration, _ error) {
	if method != "Exec" && method != "Query" && method != "QueryRow" {
		return
	}
	qc.mu.Lock()
	defer qc.mu.Unlock()
	qc.queries = append(qc.queries, query)
}

// take returns the statements run since the last take.
func (qc *queryCounter) take() []string {
	qc.mu.Lock()
	defer qc.mu.Unlock()
	q := qc.queries
	qc.queries = nil
	return q
}

func countMentioning(queries []string, tables ...string) int {
	n := 0
	for _, q := range queries {
		for _, table := range tables {
			if strings.Contains(q, table) {
				n++
				break
			}
		}
	}
	return n
}

// cacheEnv is a machine with one cross-signed sender whose session is stored.
type cacheEnv struct {
	bm     *benchMachine
	sender *benchSender
	qc     *queryCounter
	ctx    context.Context
}

func newCacheEnv(t *testing.T, dialect string, cache bool) *cacheEnv {
	t.Helper()
	ctx := astest.Within(t, time.Minute)
	bm := newBenchMachine(t, ctx, dialect)
	if cache {
		bm.mach.EnableCache(0)
	}
	sender := bm.addSender(t, ctx, "@alice:example.org", "ALICEDEV", "!room:example.org")
	qc := &queryCounter{DatabaseLogger: dbutil.NoopLogger}
	// The crypto store's child database logs through its parent's logger.
	bm.db.Log = qc
	return &cacheEnv{bm: bm, sender: sender, qc: qc, ctx: ctx}
}

func (env *cacheEnv) decrypt(t *testing.T, n int) (*event.Event, error) {
	t.Helper()
	return env.bm.mach.Decrypt(env.ctx, env.sender.encryptedEvent(t, n))
}

func (env *cacheEnv) mustDecrypt(t *testing.T, n int) *event.Event {
	t.Helper()
	got, err := env.decrypt(t, n)
	if err != nil {
		t.Fatalf("Decrypt(event %d) = %v", n, err)
	}
	if body := got.Content.AsMessage().Body; body != benchBody {
		t.Fatalf("Decrypt(event %d) body = %q, want %q", n, body, benchBody)
	}
	return got
}

// readTables are the tables a decryption reads besides the message index.
var readTables = []string{"crypto_megolm_inbound_session", "crypto_device", "crypto_cross_signing_keys", "crypto_cross_signing_signatures"}

// TestCacheSkipsReads checks that with the cache a second event of a known session from a known
// device is decrypted without reading the session, the device or its trust from the database,
// and that its message index is still written.
func TestCacheSkipsReads(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		for _, tt := range []struct {
			cache     bool
			wantReads bool
		}{{cache: true, wantReads: false}, {cache: false, wantReads: true}} {
			t.Run(fmt.Sprintf("%s/cache=%s", dialect, onOff(tt.cache)), func(t *testing.T) {
				env := newCacheEnv(t, dialect, tt.cache)
				env.mustDecrypt(t, 0)
				env.qc.take()
				env.mustDecrypt(t, 1)
				queries := env.qc.take()
				if reads := countMentioning(queries, readTables...); (reads > 0) != tt.wantReads {
					t.Errorf("statements reading %v on the second decryption = %d, want reads: %v", readTables, reads, tt.wantReads)
				}
				if n := countMentioning(queries, "crypto_message_index"); n != 1 {
					t.Errorf("statements on crypto_message_index on the second decryption = %d, want 1", n)
				}
			})
		}
	}
}

// TestCacheEvict checks that after rows are deleted by SQL (as erasure and retention do) and
// Evict is called, the machine no longer decrypts with the deleted session, nor trusts the
// deleted device.
func TestCacheEvict(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newCacheEnv(t, dialect, true)
			if got := env.mustDecrypt(t, 0); got.Mautrix.TrustState != id.TrustStateCrossSignedTOFU {
				t.Fatalf("trust before erasure = %s, want %s", got.Mautrix.TrustState, id.TrustStateCrossSignedTOFU)
			}
			for _, q := range []string{
				`DELETE FROM crypto_megolm_inbound_session WHERE source_user=$1`,
				`DELETE FROM crypto_cross_signing_signatures WHERE signed_user_id=$1`,
				`DELETE FROM crypto_cross_signing_keys WHERE user_id=$1`,
				`DELETE FROM crypto_device WHERE user_id=$1`,
			} {
				if _, err := env.bm.db.Exec(env.ctx, q, env.sender.user); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			env.bm.mach.Evict()
			if _, err := env.decrypt(t, 1); !errors.Is(err, ErrNoSession) {
				t.Fatalf("Decrypt() after erasure and Evict = %v, want ErrNoSession", err)
			}
			dev, err := env.bm.mach.Olm().CryptoStore.FindDeviceByKey(env.ctx, env.sender.user, env.sender.device.IdentityKey)
			if err != nil || dev != nil {
				t.Fatalf("FindDeviceByKey() after erasure and Evict = %v, %v; want nil, nil", dev, err)
			}
		})
	}
}

// TestMessageIndex checks that a decryption records its message index so that the same event
// decrypts again (a replay) and another event with the same index does not, on both dialects,
// with the index written at once (the machine's default, without DeferMessageIndexes).
func TestMessageIndex(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newCacheEnv(t, dialect, true)
			evt := env.sender.encryptedEvent(t, 0)
			if _, err := env.bm.mach.Decrypt(env.ctx, evt); err != nil {
				t.Fatalf("Decrypt() = %v", err)
			}
			if _, err := env.bm.mach.Decrypt(env.ctx, evt); err != nil {
				t.Fatalf("Decrypt() of the same event again = %v", err)
			}
			forged := *evt
			forged.ID = "$forged"
			if _, err := env.bm.mach.Decrypt(env.ctx, &forged); !errors.Is(err, crypto.ErrDuplicateMessageIndex) {
				t.Fatalf("Decrypt() of another event with the same index = %v, want ErrDuplicateMessageIndex", err)
			}
			var n int
			if err := env.bm.db.QueryRow(env.ctx, `SELECT COUNT(*) FROM crypto_message_index WHERE event_id=$1`, evt.ID).Scan(&n); err != nil || n != 1 {
				t.Fatalf("message index rows of the event = %d, %v; want 1", n, err)
			}
		})
	}
}

// TestCacheTTL checks that an entry is read again after [cacheTTL], so that an erasure by
// another process (which cannot call Evict) reaches the cache within that time.
func TestCacheTTL(t *testing.T) {
	env := newCacheEnv(t, astest.SQLite, true)
	c := env.bm.mach.Olm().CryptoStore.(*cachingStore)
	now := time.Now()
	c.now = func() time.Time { return now }
	env.mustDecrypt(t, 0)
	if _, err := env.bm.db.Exec(env.ctx, `DELETE FROM crypto_megolm_inbound_session WHERE source_user=$1`, env.sender.user); err != nil {
		t.Fatal(err)
	}
	now = now.Add(cacheTTL)
	if _, err := env.decrypt(t, 1); !errors.Is(err, ErrNoSession) {
		t.Fatalf("Decrypt() %s after the session was deleted elsewhere = %v, want ErrNoSession", cacheTTL, err)
	}
}

// TestCacheWritesInvalidate checks that writes through the machine's store drop what they change
// from the cache.
func TestCacheWritesInvalidate(t *testing.T) {
	tests := []struct {
		name  string
		write func(ctx context.Context, store crypto.Store, s *benchSender) error
		check func(t *testing.T, got *event.Event, err error)
	}{{
		name: "redacted session",
		write: func(ctx context.Context, store crypto.Store, s *benchSender) error {
			return store.RedactGroupSession(ctx, s.room, s.out.ID(), "test")
		},
		check: func(t *testing.T, got *event.Event, err error) {
			var withheld *event.RoomKeyWithheldEventContent
			if !errors.As(err, &withheld) {
				t.Errorf("Decrypt() after RedactGroupSession = %v, %v; want a withheld error", got, err)
			}
		},
	}, {
		name: "dropped signature",
		write: func(ctx context.Context, store crypto.Store, s *benchSender) error {
			keys, err := store.GetCrossSigningKeys(ctx, s.user)
			if err != nil {
				return err
			}
			_, err = store.DropSignaturesByKey(ctx, s.user, keys[id.XSUsageSelfSigning].Key)
			return err
		},
		check: func(t *testing.T, got *event.Event, err error) {
			if err != nil || got.Mautrix.TrustState != id.TrustStateUnset {
				t.Errorf("Decrypt() after DropSignaturesByKey = trust %v, %v; want %s", got, err, id.TrustStateUnset)
			}
		},
	}, {
		name: "blacklisted device",
		write: func(ctx context.Context, store crypto.Store, s *benchSender) error {
			changed := *s.device
			changed.Trust = id.TrustStateBlacklisted
			return store.PutDevice(ctx, s.user, &changed)
		},
		check: func(t *testing.T, got *event.Event, err error) {
			if err != nil || got.Mautrix.TrustState != id.TrustStateBlacklisted {
				t.Errorf("Decrypt() after PutDevice = %v, %v; want trust %s", got, err, id.TrustStateBlacklisted)
			}
		},
	}}
	for _, dialect := range astest.Dialects(t) {
		for _, tt := range tests {
			t.Run(dialect+"/"+tt.name, func(t *testing.T) {
				env := newCacheEnv(t, dialect, true)
				env.mustDecrypt(t, 0)
				if err := tt.write(env.ctx, env.bm.mach.Olm().CryptoStore, env.sender); err != nil {
					t.Fatal(err)
				}
				got, err := env.decrypt(t, 1)
				tt.check(t, got, err)
			})
		}
	}
}

// TestCacheTransactions checks that the cache never holds what a transaction read or wrote
// before it committed: a session stored in a transaction that rolls back is unknown afterwards,
// and a session replaced in a transaction is read anew after the commit, even if it was read
// (outside the transaction) while the transaction was open.
func TestCacheTransactions(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect+"/rollback", func(t *testing.T) {
			env := newCacheEnv(t, dialect, true)
			store := env.bm.mach.Olm().CryptoStore
			other := env.bm.addSender(t, env.ctx, "@bob:example.org", "BOBDEV", "!room:example.org")
			in, err := store.GetGroupSession(env.ctx, other.room, other.out.ID())
			if err != nil || in == nil {
				t.Fatalf("GetGroupSession() = %v, %v", in, err)
			}
			if _, err = env.bm.db.Exec(env.ctx, `DELETE FROM crypto_megolm_inbound_session WHERE session_id=$1`, other.out.ID()); err != nil {
				t.Fatal(err)
			}
			env.bm.mach.Evict()
			errRollback := errors.New("roll back")
			err = env.bm.db.DoTxn(env.ctx, nil, func(ctx context.Context) error {
				if err := store.PutGroupSession(ctx, in); err != nil {
					return err
				}
				if got, err := store.GetGroupSession(ctx, other.room, other.out.ID()); err != nil || got == nil {
					return fmt.Errorf("GetGroupSession() in the transaction = %v, %v", got, err)
				}
				return errRollback
			})
			if !errors.Is(err, errRollback) {
				t.Fatalf("DoTxn() = %v, want the rollback", err)
			}
			if got, err := store.GetGroupSession(env.ctx, other.room, other.out.ID()); err != nil || got != nil {
				t.Fatalf("GetGroupSession() after the rollback = %v, %v; want nil, nil", got, err)
			}
		})
		t.Run(dialect+"/read in a rolled-back transaction", func(t *testing.T) {
			env := newCacheEnv(t, dialect, true)
			store := env.bm.mach.Olm().CryptoStore
			s := env.sender
			errRollback := errors.New("roll back")
			err := env.bm.db.DoTxn(env.ctx, nil, func(ctx context.Context) error {
				// A change by SQL, as a re-pickling would make, read back in the transaction.
				if _, err := env.bm.db.Exec(ctx, `UPDATE crypto_megolm_inbound_session SET source_user='@other:example.org' WHERE session_id=$1`, s.out.ID()); err != nil {
					return err
				}
				if got, err := store.GetGroupSession(ctx, s.room, s.out.ID()); err != nil || got == nil || got.SourceUser != "@other:example.org" {
					return fmt.Errorf("GetGroupSession() in the transaction = %v, %v; want the changed row", got, err)
				}
				return errRollback
			})
			if !errors.Is(err, errRollback) {
				t.Fatalf("DoTxn() = %v, want the rollback", err)
			}
			got, err := store.GetGroupSession(env.ctx, s.room, s.out.ID())
			if err != nil || got == nil || got.SourceUser != s.user {
				t.Fatalf("GetGroupSession() after the rollback = %v, %v; want the committed row", got, err)
			}
		})
		t.Run(dialect+"/replaced", func(t *testing.T) {
			env := newCacheEnv(t, dialect, true)
			store := env.bm.mach.Olm().CryptoStore
			s := env.sender
			in, err := store.GetGroupSession(env.ctx, s.room, s.out.ID())
			if err != nil || in == nil {
				t.Fatalf("GetGroupSession() = %v, %v", in, err)
			}
			in.SourceUser = "@forwarder:example.org"
			err = env.bm.db.DoTxn(env.ctx, nil, func(ctx context.Context) error {
				if err := store.PutGroupSession(ctx, in); err != nil {
					return err
				}
				// A decryption elsewhere reads the committed (old) row meanwhile.
				old, err := store.GetGroupSession(env.ctx, s.room, s.out.ID())
				if err != nil || old == nil || old.SourceUser != s.user {
					return fmt.Errorf("GetGroupSession() outside the open transaction = %v, %v; want the old row", old, err)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			got, err := store.GetGroupSession(env.ctx, s.room, s.out.ID())
			if err != nil || got == nil || got.SourceUser != "@forwarder:example.org" {
				t.Fatalf("GetGroupSession() after the commit = %v, %v; want the replaced row", got, err)
			}
		})
	}
}

// TestCacheBounded checks that the cache holds at most its size of each kind.
func TestCacheBounded(t *testing.T) {
	ctx := astest.Within(t, time.Minute)
	bm := newBenchMachine(t, ctx, astest.SQLite)
	bm.mach.EnableCache(2)
	c := bm.mach.Olm().CryptoStore.(*cachingStore)
	for i := range 5 {
		s := bm.addSender(t, ctx, id.UserID(fmt.Sprintf("@user%d:example.org", i)), id.DeviceID(fmt.Sprintf("DEV%d", i)), "!room:example.org")
		if _, err := bm.mach.Decrypt(ctx, s.encryptedEvent(t, 0)); err != nil {
			t.Fatalf("Decrypt() = %v", err)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, n := range map[string]int{"sessions": len(c.sessions), "devices": len(c.devices), "cross-signing keys": len(c.xsKeys), "signatures": len(c.sigs)} {
		if n == 0 || n > 2 {
			t.Errorf("cached %s = %d, want 1 or 2", name, n)
		}
	}
}

// TestCacheConcurrentDecrypt decrypts events of two sessions from several goroutines at once
// with the cache on, while others read and export the same sessions as a key request would (run
// with -race): both advance a session's ratchet in place, so a cached session must be copied,
// never shared.
func TestCacheConcurrentDecrypt(t *testing.T) {
	ctx := astest.Within(t, time.Minute)
	bm := newBenchMachine(t, ctx, astest.SQLite)
	bm.mach.EnableCache(0)
	store := bm.mach.Olm().CryptoStore
	senders := []*benchSender{
		bm.addSender(t, ctx, "@alice:example.org", "ALICEDEV", "!room:example.org"),
		bm.addSender(t, ctx, "@bob:example.org", "BOBDEV", "!room:example.org"),
	}
	events := make([]*event.Event, 64)
	for n := range events {
		events[n] = senders[n%2].encryptedEvent(t, n)
	}
	var mu sync.Mutex
	var failures []error
	runWorkers(2*len(events), 8, func(n int) {
		var err error
		if n%2 == 0 {
			var got *event.Event
			got, err = bm.mach.Decrypt(ctx, events[n/2])
			if err == nil && got.Content.AsMessage().Body != benchBody {
				err = fmt.Errorf("event %d: wrong body", n/2)
			}
		} else {
			s := senders[n%4/2]
			var sess *crypto.InboundGroupSession
			if sess, err = store.GetGroupSession(ctx, s.room, s.out.ID()); err == nil {
				_, err = sess.Internal.Export(uint32(n / 4))
			}
		}
		if err != nil {
			mu.Lock()
			failures = append(failures, err)
			mu.Unlock()
		}
	})
	if len(failures) > 0 {
		t.Fatalf("%d of %d operations failed, first: %v", len(failures), 2*len(events), failures[0])
	}
}

// TestMachineChangesEmptyTheCache decrypts once with the cache on, then re-pickles the store
// under a new key or forgets what a rolled-back transaction left in memory: the next decryption
// reads the inbound session (and the sender's trust) from the database again, not from the
// cache, and still decrypts.
func TestMachineChangesEmptyTheCache(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		for _, tt := range []struct {
			name   string
			change func(t *testing.T, env *cacheEnv)
		}{
			{"repickle", func(t *testing.T, env *cacheEnv) {
				oldKey := append([]byte(nil), env.bm.mach.locked.PickleKey...)
				newKey := make([]byte, len(oldKey))
				for i := range newKey {
					newKey[i] = oldKey[i] ^ 0x5a
				}
				_, err := env.bm.mach.ReplacePickleKey(env.ctx, func(ctx context.Context, repickle func(ctx context.Context, oldKey, newKey []byte) error) error {
					return repickle(ctx, oldKey, newKey)
				})
				if err != nil {
					t.Fatalf("ReplacePickleKey = %v", err)
				}
			}},
			{"rollback", func(t *testing.T, env *cacheEnv) {
				if err := env.bm.mach.ForgetUncommitted(env.ctx); err != nil {
					t.Fatalf("ForgetUncommitted = %v", err)
				}
			}},
			{"erasure", func(_ *testing.T, env *cacheEnv) { env.bm.mach.EvictOlmSessions() }},
		} {
			t.Run(dialect+"/"+tt.name, func(t *testing.T) {
				env := newCacheEnv(t, dialect, true)
				env.mustDecrypt(t, 0)
				tt.change(t, env)
				env.qc.take()
				env.mustDecrypt(t, 1)
				if reads := countMentioning(env.qc.take(), "crypto_megolm_inbound_session"); reads == 0 {
					t.Error("the decryption after the change read the inbound session from the cache")
				}
			})
		}
	}
}

// TestForgetUncommittedWaitsForTheStore holds the store's lock as a decryption in progress does:
// ForgetUncommitted, which replaces the olm session cache and the account, waits for it.
func TestForgetUncommittedWaitsForTheStore(t *testing.T) {
	env := newCacheEnv(t, astest.SQLite, true)
	env.bm.mach.locked.mu.RLock()
	done := make(chan error, 1)
	go func() { done <- env.bm.mach.ForgetUncommitted(env.ctx) }()
	select {
	case err := <-done:
		env.bm.mach.locked.mu.RUnlock()
		t.Fatalf("ForgetUncommitted = %v while a store call held the lock; want it to wait", err)
	case <-time.After(200 * time.Millisecond):
	}
	env.bm.mach.locked.mu.RUnlock()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("ForgetUncommitted = %v", err)
		}
	case <-env.ctx.Done():
		t.Fatal("ForgetUncommitted did not finish once the lock was free")
	}
}

// TestCacheAdvancesTheLatestRatchet decrypts a session's messages out of order with the cache
// on: each new message index advances the cached session's latest ratchet (so the next
// decryption starts there, not from the stored first index), an earlier index that was not
// seen yet still decrypts (from the initial ratchet), an index reused by another event is still
// refused, and
// after an eviction the session read again from the database decrypts as before.
func TestCacheAdvancesTheLatestRatchet(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newCacheEnv(t, dialect, true)
			events := make([]*event.Event, 10)
			for n := range events {
				events[n] = env.sender.encryptedEvent(t, n)
			}
			store := env.bm.mach.Olm().CryptoStore
			latest := func() uint32 {
				t.Helper()
				sess, err := store.GetGroupSession(env.ctx, env.sender.room, env.sender.out.ID())
				if err != nil || sess == nil {
					t.Fatalf("GetGroupSession = %v, %v", sess, err)
				}
				return sess.Internal.(*session.MegolmInboundSession).Ratchet.Counter
			}
			decrypt := func(n int) {
				t.Helper()
				got, err := env.bm.mach.Decrypt(env.ctx, events[n])
				if err != nil || got.Content.AsMessage().Body != benchBody {
					t.Fatalf("Decrypt(event %d) = %v", n, err)
				}
			}
			for _, step := range []struct{ decrypt, latest int }{{2, 2}, {6, 6}, {4, 6}, {9, 9}} {
				decrypt(step.decrypt)
				if got := latest(); got != uint32(step.latest) {
					t.Errorf("after event %d the cached latest ratchet is at %d, want %d", step.decrypt, got, step.latest)
				}
			}
			// The same event decrypts again (a replay after a crash); another event reusing its
			// message index does not.
			decrypt(6)
			forged := *events[6]
			forged.ID = "$forged"
			if _, err := env.bm.mach.Decrypt(env.ctx, &forged); err == nil {
				t.Error("another event with a message index already used decrypted")
			}
			// The database keeps the session as received.
			stored, err := env.bm.mach.Store().GetGroupSession(env.ctx, env.sender.room, env.sender.out.ID())
			if err != nil || stored == nil {
				t.Fatalf("stored session = %v, %v", stored, err)
			}
			if internal := stored.Internal.(*session.MegolmInboundSession); internal.Ratchet != internal.InitialRatchet {
				t.Errorf("the stored session's latest ratchet is at %d, want it at its first index %d", internal.Ratchet.Counter, internal.InitialRatchet.Counter)
			}
			env.bm.mach.Evict()
			decrypt(7)
			if got := latest(); got != 7 {
				t.Errorf("after an eviction and event 7 the cached latest ratchet is at %d, want 7", got)
			}
		})
	}
}

// TestCacheRatchetStaysWithinHalfTheCounter decrypts, with the cache on, a message at index
// 2^31-1 of a session first known at 0, then one 2^31+10, then one at 5: the cached latest
// ratchet does not go 2^31 or more past the first index (goolm would then take index 5 as ahead
// of it and fail), so the message at 5 still decrypts.
func TestCacheRatchetStaysWithinHalfTheCounter(t *testing.T) {
	env := newCacheEnv(t, astest.SQLite, true)
	early := env.sender.encryptedEvent(t, 5)
	out := env.sender.out.Internal.(*session.MegolmOutboundSession)
	out.Ratchet.AdvanceTo(1<<31 - 1)
	half := env.sender.encryptedEvent(t, 1<<31-1)
	out.Ratchet.AdvanceTo(1<<31 + 10)
	past := env.sender.encryptedEvent(t, 1<<31+10)
	if _, err := env.bm.mach.Decrypt(env.ctx, half); err != nil {
		t.Fatalf("Decrypt(index 2^31-1) = %v", err)
	}
	// Decrypted or not (the first index is 2^31+10 behind), it must not move the cache on.
	_, _ = env.bm.mach.Decrypt(env.ctx, past)
	sess, err := env.bm.mach.Olm().CryptoStore.GetGroupSession(env.ctx, env.sender.room, env.sender.out.ID())
	if err != nil || sess == nil {
		t.Fatalf("GetGroupSession = %v, %v", sess, err)
	}
	if got := sess.Internal.(*session.MegolmInboundSession).Ratchet.Counter; got != 1<<31-1 {
		t.Errorf("the cached latest ratchet is at %d, want %d", got, 1<<31-1)
	}
	if got, err := env.bm.mach.Decrypt(env.ctx, early); err != nil || got.Content.AsMessage().Body != benchBody {
		t.Errorf("Decrypt(index 5) after index 2^31+10 = %v", err)
	}
}

package e2ee

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"

	"github.com/custodian-matrix/custodian/appservice/astest"
)

// indexRows returns how many crypto_message_index rows name eventID.
func (env *cacheEnv) indexRows(t *testing.T, eventID string) int {
	t.Helper()
	var n int
	if err := env.bm.db.QueryRow(env.ctx, `SELECT COUNT(*) FROM crypto_message_index WHERE event_id=$1`, eventID).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// flush writes the pending indexes as the inbox's done marks do and drops them after the
// commit.
func (env *cacheEnv) flush(t *testing.T) {
	t.Helper()
	if err := env.bm.mach.WriteMessageIndexes(env.ctx); err != nil {
		t.Fatalf("WriteMessageIndexes() = %v", err)
	}
}

// TestDeferredMessageIndexes checks, on both dialects, that with DeferMessageIndexes a
// decryption writes no message index, that the same event decrypts again (a replay) and
// another event with its index does not, both while the index is pending and after it was
// flushed; that a replay after a crash (pending indexes lost) is accepted and records the index
// again; and that a flush writes no index of a session deleted meanwhile (an erasure).
func TestDeferredMessageIndexes(t *testing.T) {
	decryptAgain := func(t *testing.T, env *cacheEnv, evt *event.Event) {
		t.Helper()
		if _, err := env.bm.mach.Decrypt(env.ctx, evt); err != nil {
			t.Fatalf("Decrypt() of the same event again = %v", err)
		}
	}
	refuseForged := func(t *testing.T, env *cacheEnv, evt *event.Event, ts int64) {
		t.Helper()
		forged := *evt
		forged.ID = "$forged"
		forged.Timestamp += ts
		if _, err := env.bm.mach.Decrypt(env.ctx, &forged); !errors.Is(err, crypto.ErrDuplicateMessageIndex) {
			t.Fatalf("Decrypt() of another event with the same index = %v, want ErrDuplicateMessageIndex", err)
		}
		forged.ID = evt.ID
		forged.Timestamp = evt.Timestamp + 1
		if _, err := env.bm.mach.Decrypt(env.ctx, &forged); !errors.Is(err, crypto.ErrDuplicateMessageIndex) {
			t.Fatalf("Decrypt() of the same event ID with another timestamp = %v, want ErrDuplicateMessageIndex", err)
		}
	}
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect+"/pending-then-flushed", func(t *testing.T) {
			env := newCacheEnv(t, dialect, true)
			env.bm.mach.DeferMessageIndexes(0)
			evt := env.sender.encryptedEvent(t, 0)
			env.qc.take()
			if _, err := env.bm.mach.Decrypt(env.ctx, evt); err != nil {
				t.Fatalf("Decrypt() = %v", err)
			}
			for _, q := range env.qc.take() {
				if countMentioning([]string{q}, "INSERT", "UPDATE", "DELETE") > 0 {
					t.Errorf("a decryption wrote: %s", q)
				}
			}
			if n := env.bm.mach.PendingMessageIndexes(); n != 1 {
				t.Fatalf("PendingMessageIndexes() = %d, want 1", n)
			}
			if n := env.indexRows(t, evt.ID.String()); n != 0 {
				t.Fatalf("index rows before the flush = %d, want 0", n)
			}
			decryptAgain(t, env, evt)
			refuseForged(t, env, evt, 0)
			env.flush(t)
			if n := env.bm.mach.PendingMessageIndexes(); n != 0 {
				t.Errorf("PendingMessageIndexes() after the flush = %d, want 0", n)
			}
			if n := env.indexRows(t, evt.ID.String()); n != 1 {
				t.Fatalf("index rows after the flush = %d, want 1", n)
			}
			decryptAgain(t, env, evt)
			refuseForged(t, env, evt, 1)
			if n := env.bm.mach.PendingMessageIndexes(); n != 0 {
				t.Errorf("PendingMessageIndexes() after decrypting flushed indexes = %d, want 0", n)
			}
		})
		t.Run(dialect+"/replay-after-crash", func(t *testing.T) {
			env := newCacheEnv(t, dialect, true)
			env.bm.mach.DeferMessageIndexes(0)
			evt := env.sender.encryptedEvent(t, 0)
			if _, err := env.bm.mach.Decrypt(env.ctx, evt); err != nil {
				t.Fatalf("Decrypt() = %v", err)
			}
			// The crash: the pending index is lost, the event was never marked done.
			restarted := NewMachine(env.bm.mach.Olm().Client, env.bm.store, env.bm.mach.states, env.bm.mach.log)
			if err := restarted.Olm().Load(env.ctx); err != nil {
				t.Fatal(err)
			}
			restarted.Olm().CrossSigningKeys = env.bm.mach.Olm().CrossSigningKeys
			restarted.DeferMessageIndexes(0)
			if _, err := restarted.Decrypt(env.ctx, evt); err != nil {
				t.Fatalf("Decrypt() of the replayed event after a crash = %v", err)
			}
			if err := restarted.WriteMessageIndexes(env.ctx); err != nil {
				t.Fatal(err)
			}
			if n := env.indexRows(t, evt.ID.String()); n != 1 {
				t.Fatalf("index rows after the replay's flush = %d, want 1", n)
			}
			forged := *evt
			forged.ID = "$forged"
			if _, err := restarted.Decrypt(env.ctx, &forged); !errors.Is(err, crypto.ErrDuplicateMessageIndex) {
				t.Fatalf("Decrypt() of a forged duplicate after the replay = %v, want ErrDuplicateMessageIndex", err)
			}
		})
		t.Run(dialect+"/erased-session", func(t *testing.T) {
			env := newCacheEnv(t, dialect, true)
			env.bm.mach.DeferMessageIndexes(0)
			evt := env.sender.encryptedEvent(t, 0)
			if _, err := env.bm.mach.Decrypt(env.ctx, evt); err != nil {
				t.Fatalf("Decrypt() = %v", err)
			}
			if _, err := env.bm.db.Exec(env.ctx, `DELETE FROM crypto_megolm_inbound_session WHERE source_user=$1`, env.sender.user); err != nil {
				t.Fatal(err)
			}
			env.flush(t)
			if n := env.indexRows(t, evt.ID.String()); n != 0 {
				t.Errorf("index rows of an erased session after the flush = %d, want 0", n)
			}
			if n := env.bm.mach.PendingMessageIndexes(); n != 0 {
				t.Errorf("PendingMessageIndexes() after the flush = %d, want 0", n)
			}
		})
	}
}

// TestFlushMessageIndexesRollback checks that indexes written in a transaction that rolls back
// stay pending, and that committed drops them only when called.
func TestFlushMessageIndexesRollback(t *testing.T) {
	env := newCacheEnv(t, astest.SQLite, true)
	env.bm.mach.DeferMessageIndexes(0)
	evt := env.sender.encryptedEvent(t, 0)
	if _, err := env.bm.mach.Decrypt(env.ctx, evt); err != nil {
		t.Fatalf("Decrypt() = %v", err)
	}
	errRollback := errors.New("roll back")
	err := env.bm.db.DoTxn(env.ctx, nil, func(ctx context.Context) error {
		if _, err := env.bm.mach.FlushMessageIndexes(ctx); err != nil {
			return err
		}
		return errRollback
	})
	if !errors.Is(err, errRollback) {
		t.Fatalf("DoTxn() = %v", err)
	}
	if n := env.indexRows(t, evt.ID.String()); n != 0 {
		t.Fatalf("index rows after a rollback = %d, want 0", n)
	}
	if n := env.bm.mach.PendingMessageIndexes(); n != 1 {
		t.Fatalf("PendingMessageIndexes() after a rollback = %d, want 1", n)
	}
	committed, err := env.bm.mach.FlushMessageIndexes(env.ctx)
	if err != nil || committed == nil {
		t.Fatalf("FlushMessageIndexes() = %v, %v", committed != nil, err)
	}
	if n := env.bm.mach.PendingMessageIndexes(); n != 1 {
		t.Fatalf("PendingMessageIndexes() before committed = %d, want 1", n)
	}
	committed()
	if n := env.bm.mach.PendingMessageIndexes(); n != 0 {
		t.Fatalf("PendingMessageIndexes() after committed = %d, want 0", n)
	}
	if n := env.indexRows(t, evt.ID.String()); n != 1 {
		t.Fatalf("index rows after the commit = %d, want 1", n)
	}
}

// TestPendingMessageIndexesBounded checks that no more than the limit of indexes stay pending:
// the decryption that adds one too many writes them all.
func TestPendingMessageIndexesBounded(t *testing.T) {
	const limit, events = 3, 10
	env := newCacheEnv(t, astest.SQLite, true)
	env.bm.mach.DeferMessageIndexes(limit)
	for n := range events {
		env.mustDecrypt(t, n)
		if p := env.bm.mach.PendingMessageIndexes(); p > limit {
			t.Fatalf("after %d decryptions %d indexes pending, limit %d", n+1, p, limit)
		}
	}
	var rows int
	if err := env.bm.db.QueryRow(env.ctx, `SELECT COUNT(*) FROM crypto_message_index`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if p := env.bm.mach.PendingMessageIndexes(); rows+p != events || rows == 0 {
		t.Fatalf("%d indexes written and %d pending, want %d in all and some written", rows, p, events)
	}
}

// TestDeferredMessageIndexesConcurrent decrypts, for each of many message indexes, the genuine
// event and a forged copy at once while flushes and evictions of the loaded indexes run
// concurrently: for every index exactly one of
// the two is accepted, and after a last flush the table names the accepted one.
func TestDeferredMessageIndexesConcurrent(t *testing.T) {
	const events = 200
	env := newCacheEnv(t, astest.SQLite, true)
	env.bm.mach.DeferMessageIndexes(16)
	evts := make([]*event.Event, events)
	for n := range evts {
		evts[n] = env.sender.encryptedEvent(t, n)
	}
	accepted := make([][2]bool, events)
	stop := make(chan struct{})
	flusherDone := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				flusherDone <- nil
				return
			default:
			}
			if err := env.bm.mach.WriteMessageIndexes(env.ctx); err != nil {
				flusherDone <- err
				return
			}
			// Loaded sessions are forgotten and loaded again while flushes move indexes.
			env.bm.mach.Evict()
		}
	}()
	var wg sync.WaitGroup
	for n, evt := range evts {
		forged := *evt
		forged.ID += "-forged"
		for i, e := range []*event.Event{evt, &forged} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := env.bm.mach.Decrypt(env.ctx, e)
				if err != nil && !errors.Is(err, crypto.ErrDuplicateMessageIndex) {
					t.Errorf("Decrypt(%s) = %v", e.ID, err)
				}
				accepted[n][i] = err == nil
			}()
		}
	}
	wg.Wait()
	close(stop)
	if err := <-flusherDone; err != nil {
		t.Fatal(err)
	}
	env.flush(t)
	for n, evt := range evts {
		if accepted[n][0] == accepted[n][1] {
			t.Errorf("index %d: genuine accepted %v, forged accepted %v; want exactly one", n, accepted[n][0], accepted[n][1])
			continue
		}
		want := evt.ID.String()
		if accepted[n][1] {
			want += "-forged"
		}
		if rows := env.indexRows(t, want); rows != 1 {
			t.Errorf("index %d: rows naming the accepted event = %d, want 1", n, rows)
		}
	}
}

// indexSelects returns how many of queries read crypto_message_index.
func indexSelects(queries []string) int {
	n := 0
	for _, q := range queries {
		if strings.HasPrefix(strings.TrimSpace(q), "SELECT") && strings.Contains(q, "crypto_message_index") {
			n++
		}
	}
	return n
}

// restart returns a new machine on env's store, as after a restart of the service: nothing of
// the old one's memory is left.
func (env *cacheEnv) restart(t *testing.T) *Machine {
	t.Helper()
	m := NewMachine(env.bm.mach.Olm().Client, env.bm.store, env.bm.mach.states, env.bm.mach.log)
	if err := m.Olm().Load(env.ctx); err != nil {
		t.Fatal(err)
	}
	m.Olm().CrossSigningKeys = env.bm.mach.Olm().CrossSigningKeys
	m.DeferMessageIndexes(0)
	return m
}

// TestKnownMessageIndexes checks, on both dialects, that with DeferMessageIndexes a session's
// message indexes are read from the table once, by its first decryption, and that later
// decryptions of it read none; and that replay protection holds from memory: a forged copy of
// an earlier event (another event ID) is refused and the genuine event accepted after the
// session was loaded from the table, after a flush, after Evict (with the index written or
// still pending), after a flush that rolled back, after the loaded indexes expired, and after
// a restart.
func TestKnownMessageIndexes(t *testing.T) {
	const later = 5
	for _, dialect := range astest.Dialects(t) {
		for _, tt := range []struct {
			name string
			// between runs after the first event's decryption; it returns the machine that
			// decrypts next.
			between func(t *testing.T, env *cacheEnv) *Machine
			// loads is the number of reads of crypto_message_index the later decryptions,
			// the forged and the genuine replays make.
			loads int
		}{
			{"memory", func(t *testing.T, env *cacheEnv) *Machine { return env.bm.mach }, 0},
			{"flushed", func(t *testing.T, env *cacheEnv) *Machine {
				env.flush(t)
				return env.bm.mach
			}, 0},
			{"evicted-pending", func(t *testing.T, env *cacheEnv) *Machine {
				env.bm.mach.Evict()
				return env.bm.mach
			}, 1},
			{"evicted-flushed", func(t *testing.T, env *cacheEnv) *Machine {
				env.flush(t)
				env.bm.mach.Evict()
				return env.bm.mach
			}, 1},
			{"rolled-back", func(t *testing.T, env *cacheEnv) *Machine {
				errRollback := errors.New("roll back")
				err := env.bm.db.DoTxn(env.ctx, nil, func(ctx context.Context) error {
					if _, err := env.bm.mach.FlushMessageIndexes(ctx); err != nil {
						return err
					}
					return errRollback
				})
				if !errors.Is(err, errRollback) {
					t.Fatalf("DoTxn() = %v", err)
				}
				env.bm.mach.Evict()
				return env.bm.mach
			}, 1},
			{"expired", func(t *testing.T, env *cacheEnv) *Machine {
				env.flush(t)
				p := env.bm.mach.locked.indexes
				p.mu.Lock()
				p.now = func() time.Time { return time.Now().Add(cacheTTL) }
				p.mu.Unlock()
				return env.bm.mach
			}, 1},
			{"restarted", func(t *testing.T, env *cacheEnv) *Machine {
				env.flush(t)
				return env.restart(t)
			}, 1},
		} {
			t.Run(dialect+"/"+tt.name, func(t *testing.T) {
				env := newCacheEnv(t, dialect, true)
				env.bm.mach.DeferMessageIndexes(0)
				env.qc.take()
				first := env.sender.encryptedEvent(t, 0)
				if _, err := env.bm.mach.Decrypt(env.ctx, first); err != nil {
					t.Fatalf("Decrypt() = %v", err)
				}
				if n := indexSelects(env.qc.take()); n != 1 {
					t.Fatalf("reads of crypto_message_index by the session's first decryption = %d, want 1", n)
				}
				m := tt.between(t, env)
				env.qc.take()
				for n := 1; n <= later; n++ {
					if _, err := m.Decrypt(env.ctx, env.sender.encryptedEvent(t, n)); err != nil {
						t.Fatalf("Decrypt(event %d) = %v", n, err)
					}
				}
				forged := *first
				forged.ID = "$forged"
				if _, err := m.Decrypt(env.ctx, &forged); !errors.Is(err, crypto.ErrDuplicateMessageIndex) {
					t.Fatalf("Decrypt() of a forged copy of the first event = %v, want ErrDuplicateMessageIndex", err)
				}
				if _, err := m.Decrypt(env.ctx, first); err != nil {
					t.Fatalf("Decrypt() of the first event again = %v", err)
				}
				if n := indexSelects(env.qc.take()); n != tt.loads {
					t.Errorf("reads of crypto_message_index by %d more decryptions = %d, want %d", later+2, n, tt.loads)
				}
				if err := m.WriteMessageIndexes(env.ctx); err != nil {
					t.Fatal(err)
				}
				if n := env.indexRows(t, first.ID.String()); n != 1 {
					t.Errorf("index rows of the first event = %d, want 1", n)
				}
				if n := env.indexRows(t, "$forged"); n != 0 {
					t.Errorf("index rows of the forged event = %d, want 0", n)
				}
			})
		}
	}
}

// TestKnownMessageIndexesBounded checks that the indexes kept in memory stay within the limit:
// a session with more than a quarter of it is checked with a lookup per decryption instead,
// and replay protection holds for it too, pending and written.
func TestKnownMessageIndexesBounded(t *testing.T) {
	const limit, events = 8, 6
	env := newCacheEnv(t, astest.SQLite, true)
	env.bm.mach.DeferMessageIndexes(0)
	p := env.bm.mach.locked.indexes
	p.mu.Lock()
	p.knownLimit = limit
	p.mu.Unlock()
	evts := make([]*event.Event, events)
	for n := range evts {
		evts[n] = env.sender.encryptedEvent(t, n)
		if _, err := env.bm.mach.Decrypt(env.ctx, evts[n]); err != nil {
			t.Fatalf("Decrypt(event %d) = %v", n, err)
		}
		p.mu.Lock()
		count, largest := p.knownCount, 0
		for _, ks := range p.known {
			largest = max(largest, len(ks.idx))
		}
		p.mu.Unlock()
		if count > limit || largest > limit/4 {
			t.Fatalf("after %d decryptions %d indexes known, %d in one session; limits %d and %d", n+1, count, largest, limit, limit/4)
		}
	}
	env.qc.take()
	if _, err := env.bm.mach.Decrypt(env.ctx, env.sender.encryptedEvent(t, events)); err != nil {
		t.Fatal(err)
	}
	if n := indexSelects(env.qc.take()); n != 1 {
		t.Errorf("reads of crypto_message_index by a decryption of a large session = %d, want 1", n)
	}
	for round, flush := range []bool{false, true} {
		if flush {
			env.flush(t)
		}
		for n, evt := range evts {
			forged := *evt
			forged.ID = "$forged"
			if _, err := env.bm.mach.Decrypt(env.ctx, &forged); !errors.Is(err, crypto.ErrDuplicateMessageIndex) {
				t.Errorf("round %d: Decrypt() of a forged copy of event %d = %v, want ErrDuplicateMessageIndex", round, n, err)
			}
			if _, err := env.bm.mach.Decrypt(env.ctx, evt); err != nil {
				t.Errorf("round %d: Decrypt() of event %d again = %v", round, n, err)
			}
		}
	}
}

package vault

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/clock"
)

const (
	alice = id.UserID("@alice:example.org")
	bob   = id.UserID("@bob:example.org")
)

// testCtx returns a context whose logger writes to the test and, if buf is not nil, to buf.
func testCtx(t testing.TB, buf *syncBuffer) context.Context {
	var w zerolog.LevelWriter = zerolog.MultiLevelWriter(astest.LogWriter(t))
	if buf != nil {
		w = zerolog.MultiLevelWriter(astest.LogWriter(t), buf)
	}
	level := zerolog.DebugLevel
	if _, ok := t.(*testing.B); ok {
		level = zerolog.ErrorLevel
	}
	return zerolog.New(w).Level(level).WithContext(context.Background())
}

// syncBuffer is a bytes.Buffer safe for concurrent writes, to capture logs.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (sb *syncBuffer) Write(p []byte) (int, error) {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return sb.buf.Write(p)
}

func (sb *syncBuffer) String() string {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return sb.buf.String()
}

// vaultDB returns a fresh database of the dialect with the core's and the vault's migrations
// applied: the vault's child database.
func vaultDB(t testing.TB, dialect string) *dbutil.Database {
	t.Helper()
	core := astest.CoreDB(t, dialect)
	child := ChildDB(core.Database, zerolog.New(astest.LogWriter(t)).Level(zerolog.WarnLevel))
	if err := child.Upgrade(context.Background()); err != nil {
		t.Fatalf("failed to upgrade vault schema: %v", err)
	}
	return child
}

func ensureUser(t testing.TB, db *dbutil.Database, user id.UserID) {
	t.Helper()
	_, err := db.Exec(context.Background(), `INSERT INTO users (mxid, created_at) VALUES ($1, 0) ON CONFLICT (mxid) DO NOTHING`, user)
	if err != nil {
		t.Fatal(err)
	}
}

func mustKey(t testing.TB) Key {
	t.Helper()
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// newVault returns a vault on db with its keys loaded.
func newVault(t testing.TB, ctx context.Context, db *dbutil.Database, opts Options) *Vault {
	t.Helper()
	v := New(db, opts)
	if err := v.Reload(ctx); err != nil {
		t.Fatalf("Reload() = %v", err)
	}
	return v
}

func mustSeal(t testing.TB, ctx context.Context, v *Vault, user id.UserID, bridge, name, value string) []byte {
	t.Helper()
	sealed, err := v.Seal(ctx, user, bridge, name, NewSecret(value))
	if err != nil {
		t.Fatalf("Seal(%s, %s, %s) = %v", user, bridge, name, err)
	}
	return sealed
}

func mustOpen(t testing.TB, ctx context.Context, v *Vault, user id.UserID, bridge, name string, sealed []byte, want string) {
	t.Helper()
	got, err := v.Open(ctx, user, bridge, name, sealed)
	if err != nil {
		t.Fatalf("Open(%s, %s, %s) = %v", user, bridge, name, err)
	}
	if got.Reveal() != want {
		t.Fatalf("Open(%s, %s, %s) = %q, want %q", user, bridge, name, got.Reveal(), want)
	}
}

func TestSealOpenRoundTrip(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			ctx := testCtx(t, nil)
			db := vaultDB(t, dialect)
			ensureUser(t, db, alice)
			v := newVault(t, ctx, db, Options{Keys: StaticKeys{mustKey(t)}})
			tests := []struct {
				name   string
				bridge string
				secret string
			}{
				{name: "sasl_password/libera", bridge: "irc", secret: "hunter2"},
				{name: "empty", bridge: "irc", secret: ""},
				{name: "unicode", bridge: "webhook", secret: "pässwörd 🔑 \x00 binary"},
				{name: "long", bridge: "webhook", secret: strings.Repeat("https://example.org/hook?token=abc&", 500)},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					sealed := mustSeal(t, ctx, v, alice, tt.bridge, tt.name, tt.secret)
					if want := headerSize + nonceSize + len(tt.secret) + tagSize; len(sealed) != want {
						t.Errorf("len(sealed) = %d, want %d", len(sealed), want)
					}
					if len(tt.secret) > 3 && bytes.Contains(sealed, []byte(tt.secret)) {
						t.Error("sealed value contains the plaintext")
					}
					mustOpen(t, ctx, v, alice, tt.bridge, tt.name, sealed, tt.secret)
					// A fresh vault (cold cache, another process) opens it too.
					cold := newVault(t, ctx, db, Options{Keys: v.opts.Keys})
					mustOpen(t, ctx, cold, alice, tt.bridge, tt.name, sealed, tt.secret)
					// Two seals of the same value differ (random nonce).
					if again := mustSeal(t, ctx, v, alice, tt.bridge, tt.name, tt.secret); bytes.Equal(again, sealed) {
						t.Error("sealing twice gave the same bytes")
					}
				})
			}
		})
	}
}

func TestOpenRejects(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			ctx := testCtx(t, nil)
			db := vaultDB(t, dialect)
			ensureUser(t, db, alice)
			ensureUser(t, db, bob)
			ensureUser(t, db, "@carol:example.org")
			v := newVault(t, ctx, db, Options{Keys: StaticKeys{mustKey(t)}})
			sealed := mustSeal(t, ctx, v, alice, "ab", "c", "hunter2")
			// Bob has a data key too, so opening as bob fails on authentication, not on a
			// missing key.
			mustSeal(t, ctx, v, bob, "ab", "c", "other")
			flip := func(i int) []byte {
				out := bytes.Clone(sealed)
				out[i] ^= 0x01
				return out
			}
			tests := []struct {
				name   string
				user   id.UserID
				bridge string
				secret string
				sealed []byte
			}{
				{"wrong user", bob, "ab", "c", sealed},
				{"user without data key", "@carol:example.org", "ab", "c", sealed},
				{"wrong bridge", alice, "irc", "c", sealed},
				{"wrong name", alice, "ab", "d", sealed},
				{"field boundary moved", alice, "a", "bc", sealed},
				{"version byte", alice, "ab", "c", flip(0)},
				{"data key ID", alice, "ab", "c", flip(4)},
				{"nonce", alice, "ab", "c", flip(headerSize)},
				{"ciphertext", alice, "ab", "c", flip(headerSize + nonceSize)},
				{"tag", alice, "ab", "c", flip(len(sealed) - 1)},
				{"truncated", alice, "ab", "c", sealed[:len(sealed)-1]},
				{"too short", alice, "ab", "c", sealed[:headerSize+nonceSize+tagSize-1]},
				{"empty", alice, "ab", "c", nil},
				{"appended byte", alice, "ab", "c", append(bytes.Clone(sealed), 0)},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					got, err := v.Open(ctx, tt.user, tt.bridge, tt.secret, tt.sealed)
					if !errors.Is(err, ErrDecrypt) {
						t.Fatalf("Open() = %q, %v; want ErrDecrypt", got.Reveal(), err)
					}
					if got.Reveal() != "" {
						t.Errorf("Open() returned a value with the error")
					}
				})
			}
			mustOpen(t, ctx, v, alice, "ab", "c", sealed, "hunter2")
		})
	}
}

// TestCiphertextMovedBetweenRows stores sealed values the way a bridge does and shows that
// copying one into another row (another user's, or another name's) does not open there.
func TestCiphertextMovedBetweenRows(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			ctx := testCtx(t, nil)
			db := vaultDB(t, dialect)
			blob := "BLOB"
			if dialect == astest.Postgres {
				blob = "BYTEA"
			}
			mustExec(t, db, `CREATE TABLE test_account (user_mxid TEXT, network TEXT, password `+blob+`, PRIMARY KEY (user_mxid, network))`)
			v := newVault(t, ctx, db, Options{Keys: StaticKeys{mustKey(t)}})
			rows := []struct {
				user    id.UserID
				network string
				secret  string
			}{{alice, "libera", "alice-libera"}, {alice, "oftc", "alice-oftc"}, {bob, "libera", "bob-libera"}}
			for _, r := range rows {
				ensureUser(t, db, r.user)
				sealed := mustSeal(t, ctx, v, r.user, "irc", "sasl_password/"+r.network, r.secret)
				mustExec(t, db, `INSERT INTO test_account VALUES ($1, $2, $3)`, r.user, r.network, sealed)
			}
			read := func(user id.UserID, network string) []byte {
				var sealed []byte
				if err := db.QueryRow(ctx, `SELECT password FROM test_account WHERE user_mxid=$1 AND network=$2`, user, network).Scan(&sealed); err != nil {
					t.Fatal(err)
				}
				return sealed
			}
			// Copy alice's libera password over bob's, and over alice's oftc one.
			mustExec(t, db, `UPDATE test_account SET password=$1 WHERE user_mxid=$2 AND network='libera'`, read(alice, "libera"), bob)
			mustExec(t, db, `UPDATE test_account SET password=$1 WHERE user_mxid=$2 AND network='oftc'`, read(alice, "libera"), alice)
			for _, r := range []struct {
				user    id.UserID
				network string
			}{{bob, "libera"}, {alice, "oftc"}} {
				if got, err := v.Open(ctx, r.user, "irc", "sasl_password/"+r.network, read(r.user, r.network)); !errors.Is(err, ErrDecrypt) {
					t.Errorf("Open(moved value into %s/%s) = %q, %v; want ErrDecrypt", r.user, r.network, got.Reveal(), err)
				}
			}
			mustOpen(t, ctx, v, alice, "irc", "sasl_password/libera", read(alice, "libera"), "alice-libera")
		})
	}
}

func mustExec(t testing.TB, db *dbutil.Database, query string, args ...any) {
	t.Helper()
	if _, err := db.Exec(context.Background(), query, args...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

func TestSealNeedsUsersRow(t *testing.T) {
	ctx := testCtx(t, nil)
	db := vaultDB(t, astest.SQLite)
	v := newVault(t, ctx, db, Options{Keys: StaticKeys{mustKey(t)}})
	if _, err := v.Seal(ctx, alice, "irc", "pw", NewSecret("x")); !errors.Is(err, ErrNoUser) {
		t.Fatalf("Seal(no users row) = %v, want ErrNoUser", err)
	}
	for _, tt := range []struct{ user, bridge, name string }{{"", "irc", "pw"}, {string(alice), "", "pw"}, {string(alice), "irc", ""}} {
		if _, err := v.Seal(ctx, id.UserID(tt.user), tt.bridge, tt.name, NewSecret("x")); err == nil {
			t.Errorf("Seal(%q, %q, %q) succeeded, want an error", tt.user, tt.bridge, tt.name)
		}
	}
}

// TestSealInRolledBackTransaction checks that a data key created inside a transaction that
// rolls back is not cached: later values must be sealed under a key that exists.
func TestSealInRolledBackTransaction(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			ctx := testCtx(t, nil)
			db := vaultDB(t, dialect)
			ensureUser(t, db, alice)
			v := newVault(t, ctx, db, Options{Keys: StaticKeys{mustKey(t)}})
			errRollback := errors.New("roll back")
			err := db.DoTxn(ctx, nil, func(ctx context.Context) error {
				mustSeal(t, ctx, v, alice, "irc", "pw", "lost")
				return errRollback
			})
			if !errors.Is(err, errRollback) {
				t.Fatal(err)
			}
			if n := v.cache.len(); n != 0 {
				t.Errorf("cache holds %d users after a rolled-back transaction, want 0", n)
			}
			sealed := mustSeal(t, ctx, v, alice, "irc", "pw", "kept")
			cold := newVault(t, ctx, db, Options{Keys: v.opts.Keys})
			mustOpen(t, ctx, cold, alice, "irc", "pw", sealed, "kept")
		})
	}
}

// TestConcurrentFirstSeal has two processes create the same user's first data key at once.
func TestConcurrentFirstSeal(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			ctx := testCtx(t, nil)
			db := vaultDB(t, dialect)
			keys := StaticKeys{mustKey(t)}
			vaults := []*Vault{newVault(t, ctx, db, Options{Keys: keys}), newVault(t, ctx, db, Options{Keys: keys})}
			const users = 20
			sealed := make([][2][]byte, users)
			var wg sync.WaitGroup
			errs := make(chan error, 2*users)
			for u := range users {
				ensureUser(t, db, userN(u))
				for i, v := range vaults {
					wg.Add(1)
					go func() {
						defer wg.Done()
						s, err := v.Seal(ctx, userN(u), "irc", "pw", NewSecret(fmt.Sprint(u, i)))
						sealed[u][i] = s
						errs <- err
					}()
				}
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
			cold := newVault(t, ctx, db, Options{Keys: keys})
			for u := range users {
				for i := range vaults {
					mustOpen(t, ctx, cold, userN(u), "irc", "pw", sealed[u][i], fmt.Sprint(u, i))
				}
			}
			var n int
			if err := db.QueryRow(ctx, `SELECT COUNT(*) FROM as_vault_dek`).Scan(&n); err != nil || n != users {
				t.Errorf("data keys = %d, %v; want one per user (%d)", n, err, users)
			}
		})
	}
}

func userN(i int) id.UserID {
	return id.UserID(fmt.Sprintf("@user%06d:example.org", i))
}

func TestCacheIsBounded(t *testing.T) {
	ctx := testCtx(t, nil)
	db := vaultDB(t, astest.SQLite)
	clk := clock.NewFake(time.Unix(1_700_000_000, 0))
	v := newVault(t, ctx, db, Options{Keys: StaticKeys{mustKey(t)}, CacheSize: 3, CacheTTL: time.Minute, Clock: clk})
	sealed := make([][]byte, 10)
	for i := range sealed {
		ensureUser(t, db, userN(i))
		sealed[i] = mustSeal(t, ctx, v, userN(i), "irc", "pw", "x")
		if n := v.cache.len(); n > 3 {
			t.Fatalf("cache holds %d users, want at most 3", n)
		}
	}
	if _, ok := v.cache.get(userN(9), 1, clk.Now()); !ok {
		t.Error("most recent user not cached")
	}
	if _, ok := v.cache.get(userN(0), 1, clk.Now()); ok {
		t.Error("least recent user still cached")
	}
	clk.Advance(2 * time.Minute)
	if _, ok := v.cache.get(userN(9), 1, clk.Now()); ok {
		t.Error("user still cached after the TTL")
	}
	for i := range sealed {
		mustOpen(t, ctx, v, userN(i), "irc", "pw", sealed[i], "x")
	}
}

// TestForgetRacingLoad checks that a load that started before Forget does not put the erased
// user's key back into the cache.
func TestForgetRacingLoad(t *testing.T) {
	c := newDEKCache(10, time.Minute)
	now := time.Now()
	gen := c.generation()
	c.forget(alice)
	c.put(alice, 1, newAEAD(make([]byte, KeySize)), gen, now)
	if _, ok := c.get(alice, 1, now); ok {
		t.Error("key put by a load older than Forget is cached")
	}
	gen = c.generation()
	c.put(alice, 1, newAEAD(make([]byte, KeySize)), gen, now)
	if _, ok := c.get(alice, 1, now); !ok {
		t.Error("key put after Forget is not cached")
	}
}

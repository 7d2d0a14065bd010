package e2ee

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/crypto"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/vault"
)

// cryptoTables are the tables mautrix's crypto store creates (sql_store_upgrade, v0.31.0).
var cryptoTables = []string{
	"crypto_account", "crypto_message_index", "crypto_tracked_user", "crypto_device",
	"crypto_olm_session", "crypto_olm_message_hash", "crypto_megolm_inbound_session",
	"crypto_megolm_outbound_session", "crypto_megolm_outbound_session_shared",
	"crypto_cross_signing_keys", "crypto_cross_signing_signatures", "crypto_secrets",
}

func testLog(t testing.TB) zerolog.Logger {
	return zerolog.New(astest.LogWriter(t)).Level(zerolog.WarnLevel)
}

// migratedDB returns a fresh database with the core's, the vault's and the crypto store's
// migrations applied, as the service runs them at start.
func migratedDB(t testing.TB, ctx context.Context, dialect string) *dbutil.Database {
	t.Helper()
	db := astest.CoreDB(t, dialect).Database
	if err := vault.ChildDB(db, testLog(t)).Upgrade(ctx); err != nil {
		t.Fatalf("failed to upgrade the vault: %v", err)
	}
	if err := Upgrade(ctx, db, testLog(t)); err != nil {
		t.Fatal(err)
	}
	return db
}

func newVault(t testing.TB, ctx context.Context, db *dbutil.Database, keys ...vault.Key) *vault.Vault {
	t.Helper()
	v := vault.New(vault.ChildDB(db, testLog(t)), vault.Options{Keys: vault.StaticKeys(keys)})
	if err := v.Reload(ctx); err != nil {
		t.Fatalf("vault Reload() = %v", err)
	}
	return v
}

func mustKey(t testing.TB) vault.Key {
	t.Helper()
	k, err := vault.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func tableExists(ctx context.Context, db *dbutil.Database, table string) (bool, error) {
	return db.TableExists(ctx, table)
}

// TestStoreOpens checks that the migrations create every crypto table with crypto_version,
// run again without change, and that the store opens with the vault's crypto key, keeps an
// account across a restart, and finds its device.
func TestStoreOpens(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			ctx := astest.Within(t, 30*time.Second)
			db := migratedDB(t, ctx, dialect)
			for _, table := range append([]string{VersionTable}, cryptoTables...) {
				if ok, err := tableExists(ctx, db, table); err != nil || !ok {
					t.Errorf("table %s exists = %v, %v; want true", table, ok, err)
				}
			}
			// A second start migrates nothing.
			if err := Upgrade(ctx, db, testLog(t)); err != nil {
				t.Fatalf("second Upgrade() = %v", err)
			}
			k := mustKey(t)
			store, err := OpenStore(ctx, db, newVault(t, ctx, db, k), testLog(t))
			if err != nil {
				t.Fatalf("OpenStore() = %v", err)
			}
			if store.DeviceID != "" {
				t.Errorf("DeviceID of a new store = %q, want empty", store.DeviceID)
			}
			store.DeviceID = "CUSTODIANDEV"
			acc := crypto.NewOlmAccount()
			if err = store.PutAccount(ctx, acc); err != nil {
				t.Fatalf("PutAccount() = %v", err)
			}

			again, err := OpenStore(ctx, db, newVault(t, ctx, db, k), testLog(t))
			if err != nil {
				t.Fatalf("OpenStore() after restart = %v", err)
			}
			if again.DeviceID != "CUSTODIANDEV" {
				t.Errorf("DeviceID after restart = %q, want CUSTODIANDEV", again.DeviceID)
			}
			got, err := again.GetAccount(ctx)
			if err != nil || got == nil {
				t.Fatalf("GetAccount() after restart = %v, %v", got, err)
			}
			if got.IdentityKey() != acc.IdentityKey() {
				t.Errorf("identity key after restart = %s, want %s", got.IdentityKey(), acc.IdentityKey())
			}
		})
	}
}

// TestStoreNeedsMasterKey checks that a copy of the database without the master key yields no
// usable account: the vault does not hand out the pickle key under another master key, and the
// stored pickle does not open under any other pickle key.
func TestStoreNeedsMasterKey(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			ctx := astest.Within(t, 30*time.Second)
			db := migratedDB(t, ctx, dialect)
			store, err := OpenStore(ctx, db, newVault(t, ctx, db, mustKey(t)), testLog(t))
			if err != nil {
				t.Fatalf("OpenStore() = %v", err)
			}
			store.DeviceID = "CUSTODIANDEV"
			if err = store.PutAccount(ctx, crypto.NewOlmAccount()); err != nil {
				t.Fatalf("PutAccount() = %v", err)
			}

			if _, err = OpenStore(ctx, db, newVault(t, ctx, db, mustKey(t)), testLog(t)); !errors.Is(err, vault.ErrKeyUnavailable) {
				t.Fatalf("OpenStore() with another master key = %v, want ErrKeyUnavailable", err)
			}
			if _, err = OpenStore(ctx, db, nil, testLog(t)); !errors.Is(err, ErrNoVault) {
				t.Fatalf("OpenStore() without a vault = %v, want ErrNoVault", err)
			}
			guess := make([]byte, vault.KeySize)
			if _, err = rand.Read(guess); err != nil {
				t.Fatal(err)
			}
			thief := crypto.NewSQLCryptoStore(db, dbLogger(testLog(t)), AccountID, "CUSTODIANDEV", guess)
			if acc, err := thief.GetAccount(ctx); err == nil {
				t.Fatalf("GetAccount() with another pickle key = %v, nil; want an error", acc.IdentityKey())
			}
		})
	}
}

// TestStoreCopyNeedsMasterKey copies an SQLite database file holding an account, as a stolen
// backup would be, and checks that the copy opens with the master key and not with another one.
func TestStoreCopyNeedsMasterKey(t *testing.T) {
	ctx := astest.Within(t, 30*time.Second)
	db := migratedDB(t, ctx, astest.SQLite)
	k := mustKey(t)
	store, err := OpenStore(ctx, db, newVault(t, ctx, db, k), testLog(t))
	if err != nil {
		t.Fatalf("OpenStore() = %v", err)
	}
	store.DeviceID = "CUSTODIANDEV"
	acc := crypto.NewOlmAccount()
	if err = store.PutAccount(ctx, acc); err != nil {
		t.Fatalf("PutAccount() = %v", err)
	}
	path := filepath.Join(t.TempDir(), "copy.db")
	if _, err = db.Exec(ctx, `VACUUM INTO $1`, path); err != nil {
		t.Fatalf("VACUUM INTO = %v", err)
	}
	cp, err := dbutil.NewWithDialect("file:"+path+"?_txlock=immediate", "sqlite3-fk-wal")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Close() })
	cp.Owner = "custodian-test"

	if _, err = OpenStore(ctx, cp, newVault(t, ctx, cp, mustKey(t)), testLog(t)); !errors.Is(err, vault.ErrKeyUnavailable) {
		t.Fatalf("OpenStore() on the copy with another master key = %v, want ErrKeyUnavailable", err)
	}
	withKey, err := OpenStore(ctx, cp, newVault(t, ctx, cp, k), testLog(t))
	if err != nil {
		t.Fatalf("OpenStore() on the copy with the master key = %v", err)
	}
	if got, err := withKey.GetAccount(ctx); err != nil || got == nil || got.IdentityKey() != acc.IdentityKey() {
		t.Fatalf("GetAccount() on the copy with the master key = %v, %v; want the account", got, err)
	}
}

// TestUpgradeWithoutVault checks that the crypto tables are created on a database whose vault is
// off: the migrations do not depend on the pickle key.
func TestUpgradeWithoutVault(t *testing.T) {
	ctx := astest.Within(t, 30*time.Second)
	db := astest.CoreDB(t, astest.SQLite).Database
	if err := Upgrade(ctx, db, testLog(t)); err != nil {
		t.Fatal(err)
	}
	if ok, err := tableExists(ctx, db, "crypto_device"); err != nil || !ok {
		t.Fatalf("crypto_device exists = %v, %v", ok, err)
	}
}

// TestReplacePickleKey checks that the machine's store moves to the new pickle key only when the
// replacement succeeds: a failed replacement, or one handing it a key that is not the store's,
// leaves the store and its rows under the old key; a successful one re-pickles the rows, after
// which the store reads them with the new key and the old key opens none.
func TestReplacePickleKey(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			ctx := astest.Within(t, 30*time.Second)
			db := migratedDB(t, ctx, dialect)
			oldKey, newKey, otherKey := make([]byte, 32), make([]byte, 32), make([]byte, 32)
			for _, k := range [][]byte{oldKey, newKey, otherKey} {
				if _, err := rand.Read(k); err != nil {
					t.Fatal(err)
				}
			}
			store := crypto.NewSQLCryptoStore(db, dbLogger(testLog(t)), AccountID, "CUSTODIANDEV", bytes.Clone(oldKey))
			m := NewMachine(nil, store, nil, testLog(t))
			acc := crypto.NewOlmAccount()
			if err := m.Olm().CryptoStore.PutAccount(ctx, acc); err != nil {
				t.Fatal(err)
			}
			if err := m.Olm().CryptoStore.PutSecret(ctx, "m.test", "value"); err != nil {
				t.Fatal(err)
			}
			readsWith := func(key []byte) bool {
				s := crypto.NewSQLCryptoStore(db, dbLogger(testLog(t)), AccountID, "CUSTODIANDEV", key)
				got, err := s.GetAccount(ctx)
				secret, secretErr := s.GetSecret(ctx, "m.test")
				return err == nil && got != nil && got.IdentityKey() == acc.IdentityKey() && secretErr == nil && secret == "value"
			}

			failed := errors.New("the vault failed")
			if _, err := m.ReplacePickleKey(ctx, func(ctx context.Context, repickle func(context.Context, []byte, []byte) error) error {
				if err := db.DoTxn(ctx, nil, func(ctx context.Context) error {
					if err := repickle(ctx, oldKey, newKey); err != nil {
						return err
					}
					return failed
				}); err != nil {
					return err
				}
				return nil
			}); !errors.Is(err, failed) {
				t.Fatalf("ReplacePickleKey with a failing replacement = %v, want its error", err)
			}
			if _, err := m.ReplacePickleKey(ctx, func(ctx context.Context, repickle func(context.Context, []byte, []byte) error) error {
				return repickle(ctx, otherKey, newKey)
			}); err == nil {
				t.Fatal("ReplacePickleKey from a key that is not the store's = nil, want an error")
			}
			if !bytes.Equal(store.PickleKey, oldKey) || !readsWith(oldKey) {
				t.Fatal("after failed replacements the store or its rows left the old key")
			}

			res, err := m.ReplacePickleKey(ctx, func(ctx context.Context, repickle func(context.Context, []byte, []byte) error) error {
				return db.DoTxn(ctx, nil, func(ctx context.Context) error { return repickle(ctx, oldKey, newKey) })
			})
			if err != nil || res.Repickled != 2 || res.Unreadable != 0 {
				t.Fatalf("ReplacePickleKey = %+v, %v; want 2 rows re-pickled", res, err)
			}
			if !bytes.Equal(store.PickleKey, newKey) || !readsWith(newKey) || readsWith(oldKey) {
				t.Fatal("after the replacement the store and its rows are not under the new key alone")
			}
			if got, err := m.Olm().CryptoStore.GetSecret(ctx, "m.test"); err != nil || got != "value" {
				t.Fatalf("GetSecret through the machine after the replacement = %q, %v", got, err)
			}
		})
	}
}

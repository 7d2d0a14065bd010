package vault

import (
	"bytes"
	"errors"
	"testing"

	"github.com/custodian-matrix/custodian/appservice/astest"
)

// TestCryptoKey checks that the crypto key is created once, loads again after a restart,
// rotates with the master key (retire refuses the old key until then), and does not open with
// another master key.
func TestCryptoKey(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			ctx := testCtx(t, nil)
			db := vaultDB(t, dialect)
			kOld, kNew, kOther := mustKey(t), mustKey(t), mustKey(t)
			v := newVault(t, ctx, db, Options{Keys: StaticKeys{kOld}})
			key, st, err := v.CryptoKey(ctx)
			if err != nil || !st.Created || st.KeyID != kOld.ID() || len(key) != KeySize {
				t.Fatalf("first CryptoKey() = %d bytes, %+v, %v; want a new key under the master key", len(key), st, err)
			}
			again, st, err := newVault(t, ctx, db, Options{Keys: StaticKeys{kOld}}).CryptoKey(ctx)
			if err != nil || st.Created || !bytes.Equal(again, key) {
				t.Fatalf("CryptoKey() after restart = %+v, %v, same key %v; want the stored key", st, err, bytes.Equal(again, key))
			}

			// Another master key does not open it: the store must then stay closed rather than
			// get a new key.
			if _, _, err := newVault(t, ctx, db, Options{Keys: StaticKeys{kOther}}).CryptoKey(ctx); !errors.Is(err, ErrKeyUnavailable) {
				t.Fatalf("CryptoKey() with another master key = %v, want ErrKeyUnavailable", err)
			}

			v = newVault(t, ctx, db, Options{Keys: StaticKeys{kNew, kOld}})
			statuses, err := v.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if st := statusByID(statuses, kOld.ID()); st.CryptoKeys != 1 || st.Wraps() != 1 {
				t.Errorf("status of the old key = %+v, want the crypto key", st)
			}
			if err = v.RetireKey(ctx, kOld.ID()); !errors.Is(err, ErrKeyInUse) {
				t.Errorf("RetireKey(old key wrapping the crypto key) = %v, want ErrKeyInUse", err)
			}
			res, err := v.Rotate(ctx, RotateOptions{})
			if err != nil || res.CryptoKeys != 1 {
				t.Fatalf("Rotate() = %+v, %v; want the crypto key re-wrapped", res, err)
			}
			if err = v.RetireKey(ctx, kOld.ID()); err != nil {
				t.Fatalf("RetireKey(old key) after rotation = %v", err)
			}
			got, st, err := newVault(t, ctx, db, Options{Keys: StaticKeys{kNew}}).CryptoKey(ctx)
			if err != nil || st.Created || st.KeyID != kNew.ID() || !bytes.Equal(got, key) {
				t.Errorf("CryptoKey() with only the new master key = %+v, %v, same key %v", st, err, bytes.Equal(got, key))
			}
		})
	}
}

// TestCryptoKeyNeedsMasterKey checks that no crypto key is created without a master key.
func TestCryptoKeyNeedsMasterKey(t *testing.T) {
	ctx := testCtx(t, nil)
	v := New(vaultDB(t, astest.SQLite), Options{Keys: StaticKeys{}})
	if _, _, err := v.CryptoKey(ctx); !errors.Is(err, ErrNoKey) {
		t.Fatalf("CryptoKey() without a master key = %v, want ErrNoKey", err)
	}
}

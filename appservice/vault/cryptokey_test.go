package vault

import (
	"bytes"
	"context"
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

// TestReplaceCryptoKey checks that ReplaceCryptoKey does nothing without a crypto key, hands
// repickle the stored key and a new one, stores the new one under the current master key, and
// changes nothing when repickle fails.
func TestReplaceCryptoKey(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			ctx := testCtx(t, nil)
			db := vaultDB(t, dialect)
			kOld, kNew := mustKey(t), mustKey(t)
			v := newVault(t, ctx, db, Options{Keys: StaticKeys{kOld}})
			called := false
			noop := func(context.Context, []byte, []byte) error { called = true; return nil }
			if replaced, err := v.ReplaceCryptoKey(ctx, noop); replaced || err != nil || called {
				t.Fatalf("ReplaceCryptoKey() without a crypto key = %v, %v (repickle called: %v); want false, nil, not called", replaced, err, called)
			}
			key, _, err := v.CryptoKey(ctx)
			if err != nil {
				t.Fatal(err)
			}

			v = newVault(t, ctx, db, Options{Keys: StaticKeys{kNew, kOld}})
			failed := errors.New("repickle failed")
			if _, err = v.ReplaceCryptoKey(ctx, func(context.Context, []byte, []byte) error { return failed }); !errors.Is(err, failed) {
				t.Fatalf("ReplaceCryptoKey() with a failing repickle = %v, want it", err)
			}
			if got, st, err := v.CryptoKey(ctx); err != nil || st.KeyID != kOld.ID() || !bytes.Equal(got, key) {
				t.Fatalf("CryptoKey() after a failed replacement = %+v, %v, same key %v; want the old key unchanged", st, err, bytes.Equal(got, key))
			}

			var gotOld, gotNew []byte
			replaced, err := v.ReplaceCryptoKey(ctx, func(_ context.Context, oldKey, newKey []byte) error {
				gotOld, gotNew = bytes.Clone(oldKey), bytes.Clone(newKey)
				return nil
			})
			if err != nil || !replaced {
				t.Fatalf("ReplaceCryptoKey() = %v, %v; want true, nil", replaced, err)
			}
			if !bytes.Equal(gotOld, key) || len(gotNew) != KeySize || bytes.Equal(gotNew, key) {
				t.Fatalf("repickle got the stored key %v and a new key of %d bytes (same as old: %v)", bytes.Equal(gotOld, key), len(gotNew), bytes.Equal(gotNew, key))
			}
			got, st, err := newVault(t, ctx, db, Options{Keys: StaticKeys{kNew}}).CryptoKey(ctx)
			if err != nil || st.Created || st.KeyID != kNew.ID() || !bytes.Equal(got, gotNew) {
				t.Errorf("CryptoKey() after the replacement = %+v, %v, the new key %v; want the new key under the new master key", st, err, bytes.Equal(got, gotNew))
			}
			if _, _, err := newVault(t, ctx, db, Options{Keys: StaticKeys{kOld}}).CryptoKey(ctx); !errors.Is(err, ErrKeyUnavailable) {
				t.Errorf("CryptoKey() with only the old master key after the replacement = %v, want ErrKeyUnavailable", err)
			}
		})
	}
}

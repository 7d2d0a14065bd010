package vault

import (
	"context"
	"errors"
	"testing"

	"github.com/custodian-matrix/custodian/appservice/astest"
)

func mustLoadInbox(t testing.TB, ctx context.Context, v *Vault) InboxKeyStatus {
	t.Helper()
	st, err := v.LoadInboxKeys(ctx)
	if err != nil {
		t.Fatalf("LoadInboxKeys() = %v", err)
	}
	return st
}

func mustSealInbox(t testing.TB, v *Vault, plaintext, aad string) []byte {
	t.Helper()
	sealed, err := v.SealInbox([]byte(plaintext), []byte(aad))
	if err != nil {
		t.Fatalf("SealInbox() = %v", err)
	}
	return sealed
}

func TestInboxSealOpen(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			ctx := testCtx(t, nil)
			db := vaultDB(t, dialect)
			v := New(db, Options{Keys: StaticKeys{mustKey(t)}})
			if _, err := v.SealInbox([]byte("x"), nil); !errors.Is(err, ErrNoKey) {
				t.Fatalf("SealInbox before LoadInboxKeys = %v, want ErrNoKey", err)
			}
			if err := v.Reload(ctx); err != nil {
				t.Fatal(err)
			}
			if st := mustLoadInbox(t, ctx, v); !st.Created || st.CurrentID != 1 {
				t.Fatalf("first LoadInboxKeys = %+v, want key 1 created", st)
			}
			const body = `{"body":"!irc login libera alice hunter2"}`
			sealed := mustSealInbox(t, v, body, "$a|!room")
			if got, err := v.OpenInbox(sealed, []byte("$a|!room")); err != nil || string(got) != body {
				t.Fatalf("OpenInbox() = %q, %v; want the body", got, err)
			}
			// A second process (or a restart) loads the same key instead of creating one.
			v2 := newVault(t, ctx, db, Options{Keys: v.KeySource()})
			if st := mustLoadInbox(t, ctx, v2); st.Created || st.CurrentID != 1 {
				t.Fatalf("LoadInboxKeys after restart = %+v, want key 1 loaded", st)
			}
			if got, err := v2.OpenInbox(sealed, []byte("$a|!room")); err != nil || string(got) != body {
				t.Fatalf("OpenInbox() after restart = %q, %v", got, err)
			}

			tampered := func(i int) []byte {
				b := append([]byte(nil), sealed...)
				b[i] ^= 1
				return b
			}
			tests := []struct {
				name   string
				sealed []byte
				aad    string
				want   error
			}{
				{"moved to another row", sealed, "$b|!room", ErrDecrypt},
				{"ciphertext changed", tampered(len(sealed) - 20), "$a|!room", ErrDecrypt},
				{"tag changed", tampered(len(sealed) - 1), "$a|!room", ErrDecrypt},
				{"nonce changed", tampered(headerSize), "$a|!room", ErrDecrypt},
				{"version changed", tampered(0), "$a|!room", ErrDecrypt},
				{"key ID changed", tampered(4), "$a|!room", ErrKeyUnavailable},
				{"truncated", sealed[:20], "$a|!room", ErrDecrypt},
				{"a user secret is not an inbox value", mustSealUser(t, ctx, v), "$a|!room", ErrDecrypt},
			}
			for _, tt := range tests {
				if got, err := v.OpenInbox(tt.sealed, []byte(tt.aad)); !errors.Is(err, tt.want) {
					t.Errorf("%s: OpenInbox() = %q, %v; want %v", tt.name, got, err, tt.want)
				}
			}
		})
	}
}

func mustSealUser(t testing.TB, ctx context.Context, v *Vault) []byte {
	ensureUser(t, v.db, alice)
	return mustSeal(t, ctx, v, alice, "irc", "pw", "hunter2")
}

// TestInboxKeyRotatesWithMasterKey checks that a rotation re-wraps the inbox key, that status
// counts it and retirement refuses its master key until then, and that values sealed before
// the rotation open with only the new master key.
func TestInboxKeyRotatesWithMasterKey(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			ctx := testCtx(t, nil)
			db := vaultDB(t, dialect)
			kOld, kNew := mustKey(t), mustKey(t)
			v := newVault(t, ctx, db, Options{Keys: StaticKeys{kOld}})
			mustLoadInbox(t, ctx, v)
			sealed := mustSealInbox(t, v, "secret body", "aad")

			v = newVault(t, ctx, db, Options{Keys: StaticKeys{kNew, kOld}})
			statuses, err := v.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if st := statusByID(statuses, kOld.ID()); st.DataKeys != 0 || st.InboxKeys != 1 || st.Wraps() != 1 {
				t.Errorf("status of the old key before rotation = %+v, want the inbox key and no data key", st)
			}
			if err = v.RetireKey(ctx, kOld.ID()); !errors.Is(err, ErrKeyInUse) {
				t.Errorf("RetireKey(old key wrapping the inbox key) = %v, want ErrKeyInUse", err)
			}
			res, err := v.Rotate(ctx, RotateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if res.InboxKeys != 1 || res.Rewrapped != 0 {
				t.Errorf("Rotate() = %+v, want the inbox key re-wrapped", res)
			}
			if statuses, err = v.Status(ctx); err != nil {
				t.Fatal(err)
			}
			if old, cur := statusByID(statuses, kOld.ID()), statusByID(statuses, kNew.ID()); old.Wraps() != 0 || cur.InboxKeys != 1 {
				t.Errorf("status after rotation: old key %+v, new key %+v; want the inbox key under the new one", old, cur)
			}
			if err = v.RetireKey(ctx, kOld.ID()); err != nil {
				t.Fatalf("RetireKey(old key) after rotation = %v", err)
			}

			v = newVault(t, ctx, db, Options{Keys: StaticKeys{kNew}})
			if st := mustLoadInbox(t, ctx, v); st.Created || len(st.Unavailable) > 0 {
				t.Errorf("LoadInboxKeys with only the new master key = %+v, want the old inbox key loaded", st)
			}
			if got, err := v.OpenInbox(sealed, []byte("aad")); err != nil || string(got) != "secret body" {
				t.Errorf("OpenInbox() after rotation = %q, %v", got, err)
			}
		})
	}
}

func statusByID(statuses []KeyStatus, kekID string) KeyStatus {
	for _, st := range statuses {
		if st.ID == kekID {
			return st
		}
	}
	return KeyStatus{}
}

// TestReplaceInboxKey checks the shred step: a new inbox key, the rows re-sealed under it in the
// same transaction, the old key deleted so that values sealed under it (as in an old WAL frame
// or backup) no longer open; a failing re-seal changes nothing.
func TestReplaceInboxKey(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			ctx := testCtx(t, nil)
			db := vaultDB(t, dialect)
			k := mustKey(t)
			v := newVault(t, ctx, db, Options{Keys: StaticKeys{k}})
			mustLoadInbox(t, ctx, v)
			old := mustSealInbox(t, v, "pending body", "aad")

			if err := v.ReplaceInboxKey(ctx, func(ctx context.Context, seal InboxSealFunc) error {
				return errors.New("disk full")
			}); err == nil {
				t.Fatal("ReplaceInboxKey with a failing re-seal = nil, want the error")
			}
			if got, err := v.OpenInbox(old, []byte("aad")); err != nil || string(got) != "pending body" {
				t.Fatalf("OpenInbox() after a failed replacement = %q, %v; want it unchanged", got, err)
			}

			var resealed []byte
			err := v.ReplaceInboxKey(ctx, func(ctx context.Context, seal InboxSealFunc) error {
				plain, err := v.OpenInbox(old, []byte("aad"))
				if err != nil {
					return err
				}
				resealed, err = seal(plain, []byte("aad"))
				return err
			})
			if err != nil {
				t.Fatalf("ReplaceInboxKey() = %v", err)
			}
			if got, err := v.OpenInbox(resealed, []byte("aad")); err != nil || string(got) != "pending body" {
				t.Errorf("OpenInbox(re-sealed) = %q, %v", got, err)
			}
			if got, err := v.OpenInbox(old, []byte("aad")); !errors.Is(err, ErrKeyUnavailable) {
				t.Errorf("OpenInbox(sealed under the replaced key) = %q, %v; want ErrKeyUnavailable", got, err)
			}
			// Nor from the database with the same master key: the old inbox key row is gone.
			v2 := newVault(t, ctx, db, Options{Keys: StaticKeys{k}})
			if st := mustLoadInbox(t, ctx, v2); st.CurrentID != 2 || st.Created {
				t.Errorf("LoadInboxKeys after replacement = %+v, want key 2", st)
			}
			if got, err := v2.OpenInbox(old, []byte("aad")); !errors.Is(err, ErrKeyUnavailable) {
				t.Errorf("OpenInbox(old) in a new process = %q, %v; want ErrKeyUnavailable", got, err)
			}
			var n int
			if err = db.QueryRow(ctx, `SELECT COUNT(*) FROM as_vault_inbox_key`).Scan(&n); err != nil || n != 1 {
				t.Errorf("inbox key rows = %d, %v; want 1", n, err)
			}
		})
	}
}

// TestInboxKeyMissingMasterKey checks that an inbox key whose master key is missing is kept, a
// new one is created for new events, and the old one loads again when its master key is back.
func TestInboxKeyMissingMasterKey(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			ctx := testCtx(t, nil)
			db := vaultDB(t, dialect)
			kLost, kCur := mustKey(t), mustKey(t)
			v := newVault(t, ctx, db, Options{Keys: StaticKeys{kLost}})
			mustLoadInbox(t, ctx, v)
			old := mustSealInbox(t, v, "held body", "aad")

			v = newVault(t, ctx, db, Options{Keys: StaticKeys{kCur}})
			st := mustLoadInbox(t, ctx, v)
			if !st.Created || st.CurrentID != 2 || len(st.Unavailable) != 1 || st.Unavailable[0] != 1 {
				t.Fatalf("LoadInboxKeys without the old master key = %+v, want key 2 created, key 1 unavailable", st)
			}
			if _, err := v.OpenInbox(old, []byte("aad")); !errors.Is(err, ErrKeyUnavailable) {
				t.Fatalf("OpenInbox(under the missing key) = %v, want ErrKeyUnavailable", err)
			}
			fresh := mustSealInbox(t, v, "new body", "aad")

			// Without any master key nothing can be created; SealInbox fails, nothing is lost.
			none := newVault(t, ctx, db, Options{Keys: StaticKeys{mustKey(t)}})
			none.ring.Load().current.wrong.Store(true)
			if _, err := none.LoadInboxKeys(ctx); !errors.Is(err, ErrNoKey) {
				t.Errorf("LoadInboxKeys with no usable master key = %v, want ErrNoKey", err)
			}
			if none.HasInboxKey() {
				t.Error("HasInboxKey() = true with no usable master key")
			}

			v = newVault(t, ctx, db, Options{Keys: StaticKeys{kCur, kLost}})
			if st := mustLoadInbox(t, ctx, v); st.Created || len(st.Unavailable) != 0 || st.CurrentID != 2 {
				t.Errorf("LoadInboxKeys with the key back = %+v, want both loaded, key 2 current", st)
			}
			for _, tt := range []struct {
				sealed []byte
				want   string
			}{{old, "held body"}, {fresh, "new body"}} {
				if got, err := v.OpenInbox(tt.sealed, []byte("aad")); err != nil || string(got) != tt.want {
					t.Errorf("OpenInbox() = %q, %v; want %q", got, err, tt.want)
				}
			}
		})
	}
}

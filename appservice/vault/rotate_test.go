package vault

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
)

// sealedRecord is one value a test sealed, to open again later.
type sealedRecord struct {
	user   id.UserID
	name   string
	sealed []byte
	value  string
}

// TestRotationUnderTraffic runs a "service" vault that keeps sealing and opening (and creating
// data keys for new users) while a "CLI" vault, in the same way as custodian keys add and
// custodian keys rotate, adds a new master key to the key file and re-wraps everything under it.
// Afterwards the old key is retired and a vault that knows only the new key (a restarted
// service) opens every value ever sealed.
func TestRotationUnderTraffic(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			ctx := testCtx(t, nil)
			db := vaultDB(t, dialect)
			path := filepath.Join(t.TempDir(), "custodian.key")
			k1, k2 := mustKey(t), mustKey(t)
			if err := WriteNewKeyFile(path, k1); err != nil {
				t.Fatal(err)
			}
			svc := newVault(t, ctx, db, Options{Keys: FileKeys(path), ReloadInterval: 10 * time.Millisecond, UnknownKeyReloadGap: 5 * time.Millisecond, CacheTTL: 30 * time.Millisecond})
			runCtx, stopRun := context.WithCancel(ctx)
			defer stopRun()
			go svc.Run(runCtx)

			var mu sync.Mutex
			var records []sealedRecord
			const initialUsers = 60
			for i := range initialUsers {
				ensureUser(t, db, userN(i))
				value := fmt.Sprint("initial-", i)
				records = append(records, sealedRecord{userN(i), "pw", mustSeal(t, ctx, svc, userN(i), "irc", "pw", value), value})
			}

			trafficCtx, stopTraffic := context.WithCancel(ctx)
			trafficDone := make(chan int)
			go func() {
				ops := 0
				defer func() { trafficDone <- ops }()
				rng := rand.New(rand.NewPCG(1, 2))
				for i := 0; trafficCtx.Err() == nil; i++ {
					ops++
					user := userN(rng.IntN(initialUsers))
					if i%4 == 0 {
						// A new user, whose data key the service creates during the rotation.
						user = userN(1000 + i)
						ensureUser(t, db, user)
					}
					value := fmt.Sprint("traffic-", i)
					name := fmt.Sprint("pw/", i)
					sealed, err := svc.Seal(ctx, user, "irc", name, NewSecret(value))
					if err != nil {
						t.Errorf("service Seal during rotation = %v", err)
						return
					}
					mu.Lock()
					records = append(records, sealedRecord{user, name, sealed, value})
					rec := records[rng.IntN(len(records))]
					mu.Unlock()
					got, err := svc.Open(ctx, rec.user, "irc", rec.name, rec.sealed)
					if err != nil || got.Reveal() != rec.value {
						t.Errorf("service Open during rotation = %q, %v; want %q", got.Reveal(), err, rec.value)
						return
					}
				}
			}()

			// custodian keys add, then custodian keys rotate.
			if err := ReplaceKeyFile(path, k2, k1); err != nil {
				t.Fatal(err)
			}
			cli := newVault(t, ctx, db, Options{Keys: FileKeys(path)})
			res, err := cli.Rotate(ctx, RotateOptions{BatchSize: 7, SettleUntil: time.Now().Add(500 * time.Millisecond)})
			if err != nil {
				t.Fatalf("Rotate() = %v", err)
			}
			stopTraffic()
			ops := <-trafficDone
			t.Logf("rotation: %+v; service operations meanwhile: %d", res, ops)
			if res.Rewrapped < initialUsers || res.KeyID != k2.ID() || len(res.Unavailable) != 0 {
				t.Errorf("Rotate() = %+v, want at least %d data keys re-wrapped under %s, none unavailable", res, initialUsers, k2.ID())
			}
			if svc.CurrentKeyID() != k2.ID() {
				t.Errorf("service's current key = %s, want %s (it should have re-read the key file)", svc.CurrentKeyID(), k2.ID())
			}
			statuses, err := cli.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, st := range statuses {
				if st.ID != k2.ID() && st.DataKeys != 0 {
					t.Errorf("after rotation, key %s still wraps %d data keys", st.ID, st.DataKeys)
				}
			}

			// custodian keys retire: the old key leaves the database and the key file.
			if err = cli.RetireKey(ctx, k1.ID()); err != nil {
				t.Fatalf("RetireKey(old) = %v", err)
			}
			if err = ReplaceKeyFile(path, k2); err != nil {
				t.Fatal(err)
			}
			restarted := newVault(t, ctx, db, Options{Keys: FileKeys(path)})
			mu.Lock()
			defer mu.Unlock()
			for _, rec := range records {
				mustOpen(t, ctx, restarted, rec.user, "irc", rec.name, rec.sealed, rec.value)
			}
			t.Logf("%d values sealed before and during the rotation all open with only the new key", len(records))
		})
	}
}

func TestRotateInterruptedResumes(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			ctx := testCtx(t, nil)
			db := vaultDB(t, dialect)
			k1, k2 := mustKey(t), mustKey(t)
			before := newVault(t, ctx, db, Options{Keys: StaticKeys{k1}})
			var records []sealedRecord
			for i := range 100 {
				ensureUser(t, db, userN(i))
				records = append(records, sealedRecord{userN(i), "pw", mustSeal(t, ctx, before, userN(i), "irc", "pw", fmt.Sprint(i)), fmt.Sprint(i)})
			}
			cli := newVault(t, ctx, db, Options{Keys: StaticKeys{k2, k1}})
			rotateCtx, interrupt := context.WithCancel(ctx)
			res, err := cli.Rotate(rotateCtx, RotateOptions{BatchSize: 10, Progress: func(r RotateResult) {
				if r.Rewrapped >= 30 {
					interrupt()
				}
			}})
			if !errors.Is(err, context.Canceled) || res.Rewrapped != 30 {
				t.Fatalf("interrupted Rotate() = %+v, %v; want 30 re-wrapped and context.Canceled", res, err)
			}
			assertCounts(t, ctx, cli, map[string]int{k2.ID(): 30, k1.ID(): 70})
			// Both halves open while the rotation is half done.
			for _, rec := range records {
				mustOpen(t, ctx, cli, rec.user, "irc", rec.name, rec.sealed, rec.value)
			}
			res, err = cli.Rotate(ctx, RotateOptions{BatchSize: 10})
			if err != nil || res.Rewrapped != 70 {
				t.Fatalf("resumed Rotate() = %+v, %v; want the other 70 re-wrapped", res, err)
			}
			assertCounts(t, ctx, cli, map[string]int{k2.ID(): 100, k1.ID(): 0})
			// Running it again finds nothing to do.
			if res, err = cli.Rotate(ctx, RotateOptions{}); err != nil || res.Rewrapped != 0 {
				t.Fatalf("third Rotate() = %+v, %v; want nothing to do", res, err)
			}
			after := newVault(t, ctx, db, Options{Keys: StaticKeys{k2}})
			for _, rec := range records {
				mustOpen(t, ctx, after, rec.user, "irc", rec.name, rec.sealed, rec.value)
			}
		})
	}
}

// assertCounts checks how many data keys each master key wraps.
func assertCounts(t *testing.T, ctx context.Context, v *Vault, want map[string]int) {
	t.Helper()
	statuses, err := v.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := make(map[string]int)
	for _, st := range statuses {
		got[st.ID] = st.DataKeys
	}
	for kekID, n := range want {
		if got[kekID] != n {
			t.Errorf("data keys under %s = %d, want %d (all: %v)", kekID, got[kekID], n, got)
		}
	}
}

func TestStatus(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			ctx := testCtx(t, nil)
			db := vaultDB(t, dialect)
			kOld, kCur, kLost, kSpare := mustKey(t), mustKey(t), mustKey(t), mustKey(t)
			seal := func(keys StaticKeys, users ...int) {
				v := newVault(t, ctx, db, Options{Keys: keys})
				for _, u := range users {
					ensureUser(t, db, userN(u))
					mustSeal(t, ctx, v, userN(u), "irc", "pw", "x")
				}
			}
			seal(StaticKeys{kOld}, 0, 1, 2)
			seal(StaticKeys{kLost}, 3)
			seal(StaticKeys{kCur}, 4, 5)
			// kOld appears under its ID but with other key material: a damaged key file.
			wrongOld := Key{id: kOld.id}
			wrongOld.material[0] = 1
			tests := []struct {
				name string
				keys StaticKeys
				want []KeyStatus
			}{
				{
					name: "all present",
					keys: StaticKeys{kCur, kOld, kLost, kSpare},
					want: []KeyStatus{
						{ID: kCur.id, DataKeys: 2, Loaded: true, Current: true, Recorded: true},
						{ID: kOld.id, DataKeys: 3, Loaded: true, Recorded: true},
						{ID: kLost.id, DataKeys: 1, Loaded: true, Recorded: true},
						{ID: kSpare.id, Loaded: true},
					},
				},
				{
					name: "one missing, one wrong",
					keys: StaticKeys{kCur, wrongOld},
					want: []KeyStatus{
						{ID: kCur.id, DataKeys: 2, Loaded: true, Current: true, Recorded: true},
						{ID: kOld.id, DataKeys: 3, Loaded: true, Wrong: true, Recorded: true},
						{ID: kLost.id, DataKeys: 1, Recorded: true},
					},
				},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					v := newVault(t, ctx, db, Options{Keys: tt.keys})
					got, err := v.Status(ctx)
					if err != nil {
						t.Fatal(err)
					}
					if fmt.Sprint(got) != fmt.Sprint(tt.want) {
						t.Errorf("Status() =\n%+v\nwant\n%+v", got, tt.want)
					}
				})
			}
			v := newVault(t, ctx, db, Options{Keys: StaticKeys{kCur, kOld}})
			if err := v.RetireKey(ctx, kOld.ID()); !errors.Is(err, ErrKeyInUse) || !strings.Contains(err.Error(), "3 data keys") {
				t.Errorf("RetireKey(key in use) = %v, want ErrKeyInUse with the count", err)
			}
		})
	}
}

// TestKeyProblems covers missing and wrong master keys: a clear Error in the log naming the key,
// ErrKeyUnavailable for the affected values only, others' values still working, the affected
// user able to link again, and nothing lost once the key comes back.
func TestKeyProblems(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			ctx := testCtx(t, nil)
			db := vaultDB(t, dialect)
			k1, k2 := mustKey(t), mustKey(t)
			ensureUser(t, db, alice)
			ensureUser(t, db, bob)
			ensureUser(t, db, "@carol:example.org")
			aliceSealed := mustSeal(t, ctx, newVault(t, ctx, db, Options{Keys: StaticKeys{k1}}), alice, "irc", "pw", "alice-pw")
			bobSealed := mustSeal(t, ctx, newVault(t, ctx, db, Options{Keys: StaticKeys{k2, k1}}), bob, "irc", "pw", "bob-pw")
			wrongK1 := Key{id: k1.id}
			wrongK2 := Key{id: k2.id}
			path := filepath.Join(t.TempDir(), "custodian.key")

			tests := []struct {
				name       string
				keys       KeySource
				wantLog    []string
				aliceErr   error
				bobErr     error
				newUserErr error
			}{
				{
					name:     "old key missing",
					keys:     StaticKeys{k2},
					wantLog:  []string{`"level":"error"`, "Missing master key", `"key_id":"` + k1.id + `"`, `"data_keys":1`, "add the key with this ID back"},
					aliceErr: ErrKeyUnavailable,
				},
				{
					name:     "old key wrong",
					keys:     StaticKeys{k2, wrongK1},
					wantLog:  []string{`"level":"error"`, "Wrong master key", `"key_id":"` + k1.id + `"`},
					aliceErr: ErrKeyUnavailable,
				},
				{
					name:       "current key wrong",
					keys:       StaticKeys{wrongK2, k1},
					wantLog:    []string{"Wrong master key", `"key_id":"` + k2.id + `"`, `"current":true`},
					bobErr:     ErrKeyUnavailable,
					newUserErr: ErrNoKey,
				},
				{
					name:       "key file missing",
					keys:       FileKeys(path),
					wantLog:    []string{`"level":"error"`, "Failed to load the vault's master keys", path, "custodian keys generate"},
					aliceErr:   ErrKeyUnavailable,
					bobErr:     ErrKeyUnavailable,
					newUserErr: ErrNoKey,
				},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					var logs syncBuffer
					ctx := testCtx(t, &logs)
					v := New(db, Options{Keys: tt.keys})
					_ = v.Reload(ctx) // the service logs and goes on
					for _, want := range tt.wantLog {
						if !strings.Contains(logs.String(), want) {
							t.Errorf("log lacks %q:\n%s", want, logs.String())
						}
					}
					check := func(user id.UserID, sealed []byte, want string, wantErr error) {
						t.Helper()
						got, err := v.Open(ctx, user, "irc", "pw", sealed)
						if wantErr == nil && (err != nil || got.Reveal() != want) {
							t.Errorf("Open(%s) = %q, %v; want %q", user, got.Reveal(), err, want)
						} else if wantErr != nil && !errors.Is(err, wantErr) {
							t.Errorf("Open(%s) = %v, want %v", user, err, wantErr)
						}
					}
					check(alice, aliceSealed, "alice-pw", tt.aliceErr)
					check(bob, bobSealed, "bob-pw", tt.bobErr)
					_, err := v.Seal(ctx, "@carol:example.org", "irc", "pw", NewSecret("carol-pw"))
					if !errors.Is(err, tt.newUserErr) {
						t.Errorf("Seal(new user) = %v, want %v", err, tt.newUserErr)
					}
					for _, secret := range []string{"alice-pw", "bob-pw", "carol-pw", base64.StdEncoding.EncodeToString(k1.material[:]), base64.StdEncoding.EncodeToString(k2.material[:])} {
						if strings.Contains(logs.String(), secret) {
							t.Errorf("log contains a secret or key: %q", secret)
						}
					}
				})
			}

			// Alice links again while her old key is missing: she gets a new data key, and her old
			// value opens again once the key is back.
			missing := newVault(t, ctx, db, Options{Keys: StaticKeys{k2}})
			relinked := mustSeal(t, ctx, missing, alice, "irc", "pw", "alice-new-pw")
			mustOpen(t, ctx, missing, alice, "irc", "pw", relinked, "alice-new-pw")
			if _, err := missing.Open(ctx, alice, "irc", "pw", aliceSealed); !errors.Is(err, ErrKeyUnavailable) {
				t.Errorf("Open(old value, key missing) = %v, want ErrKeyUnavailable", err)
			}
			restored := newVault(t, ctx, db, Options{Keys: StaticKeys{k2, k1}})
			mustOpen(t, ctx, restored, alice, "irc", "pw", aliceSealed, "alice-pw")
			mustOpen(t, ctx, restored, alice, "irc", "pw", relinked, "alice-new-pw")

			// The key file turns up after start-up: the next reload picks it up.
			late := New(db, Options{Keys: FileKeys(path)})
			if err := late.Reload(ctx); err == nil {
				t.Fatal("Reload(missing key file) succeeded")
			}
			if err := WriteNewKeyFile(path, k2, k1); err != nil {
				t.Fatal(err)
			}
			if err := late.Reload(ctx); err != nil {
				t.Fatal(err)
			}
			mustOpen(t, ctx, late, alice, "irc", "pw", aliceSealed, "alice-pw")
			mustOpen(t, ctx, late, bob, "irc", "pw", bobSealed, "bob-pw")
		})
	}
}

// TestUnknownKeyTriggersReload: a service that has not re-read its key file yet meets a data key
// the CLI re-wrapped under a new key, re-reads the file and carries on.
func TestUnknownKeyTriggersReload(t *testing.T) {
	ctx := testCtx(t, nil)
	db := vaultDB(t, astest.SQLite)
	path := filepath.Join(t.TempDir(), "custodian.key")
	k1, k2 := mustKey(t), mustKey(t)
	if err := WriteNewKeyFile(path, k1); err != nil {
		t.Fatal(err)
	}
	// No Run loop: only the unknown key can make it re-read the file.
	src := &countingKeys{KeySource: FileKeys(path)}
	svc := newVault(t, ctx, db, Options{Keys: src, CacheSize: -1})
	ensureUser(t, db, alice)
	sealed := mustSeal(t, ctx, svc, alice, "irc", "pw", "alice-pw")
	// A reload just before the key file changes must not delay picking up the new key.
	if err := svc.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ReplaceKeyFile(path, k2, k1); err != nil {
		t.Fatal(err)
	}
	cli := newVault(t, ctx, db, Options{Keys: FileKeys(path)})
	if _, err := cli.Rotate(ctx, RotateOptions{}); err != nil {
		t.Fatal(err)
	}
	if svc.CurrentKeyID() != k1.ID() {
		t.Fatalf("service re-read the key file too early")
	}
	mustOpen(t, ctx, svc, alice, "irc", "pw", sealed, "alice-pw")
	if svc.CurrentKeyID() != k2.ID() {
		t.Errorf("service current key = %s, want %s after meeting it", svc.CurrentKeyID(), k2.ID())
	}

	// A key that is really missing: the first encounter re-reads the key file, later ones within
	// the gap do not.
	ensureUser(t, db, bob)
	bobSealed := mustSeal(t, ctx, newVault(t, ctx, db, Options{Keys: StaticKeys{mustKey(t)}}), bob, "irc", "pw", "bob-pw")
	loads := src.count()
	for range 5 {
		if _, err := svc.Open(ctx, bob, "irc", "pw", bobSealed); !errors.Is(err, ErrKeyUnavailable) {
			t.Fatalf("Open(value under an unknown key) = %v, want ErrKeyUnavailable", err)
		}
	}
	if got := src.count() - loads; got != 1 {
		t.Errorf("key file read %d times for 5 opens under the same unknown key, want 1", got)
	}
}

// countingKeys counts how often the key source is read.
type countingKeys struct {
	KeySource
	mu    sync.Mutex
	loads int
}

func (ck *countingKeys) LoadKeys() ([]Key, error) {
	ck.mu.Lock()
	ck.loads++
	ck.mu.Unlock()
	return ck.KeySource.LoadKeys()
}

func (ck *countingKeys) count() int {
	ck.mu.Lock()
	defer ck.mu.Unlock()
	return ck.loads
}

// TestRotateDoesNotRestoreErasedKey forces a rotation batch to interleave with an erasure and
// a re-creation of the same user: the batch reads alice's data key, alice is erased (her users
// row and, by the cascade, her data key go) and comes back with a new data key under the same
// IDs, then the batch writes. The write must not put the erased key back, or ciphertexts sealed
// before the erasure would open again.
func TestRotateDoesNotRestoreErasedKey(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			ctx := testCtx(t, nil)
			db := vaultDB(t, dialect)
			k1, k2 := mustKey(t), mustKey(t)
			const alice = id.UserID("@alice:example.org")
			svc := newVault(t, ctx, db, Options{Keys: StaticKeys{k1}})
			ensureUser(t, db, alice)
			old := mustSeal(t, ctx, svc, alice, "irc", "pw", "before-erasure")

			cli := newVault(t, ctx, db, Options{Keys: StaticKeys{k2, k1}})
			cur := cli.ring.Load().current
			if err := cli.recordKey(ctx, cur); err != nil {
				t.Fatal(err)
			}
			var afterUser id.UserID
			afterDEK := int64(-1)
			res := RotateResult{Unavailable: map[string]int{}}
			batch, count, err := cli.readRewraps(ctx, cur, &afterUser, &afterDEK, 10, &res)
			if err != nil || count != 1 || len(batch) != 1 {
				t.Fatalf("readRewraps() = %d rows, %d to write, %v; want alice's one data key", count, len(batch), err)
			}

			// The erasure and the re-creation happen between the batch's read and its write.
			if _, err = db.Exec(ctx, `DELETE FROM users WHERE mxid=$1`, alice); err != nil {
				t.Fatal(err)
			}
			svc.Forget(alice)
			ensureUser(t, db, alice)
			fresh := mustSeal(t, ctx, svc, alice, "irc", "pw", "after-recreation")

			if _, err = cli.writeRewraps(ctx, cur.ID(), batch); err != nil {
				t.Fatal(err)
			}
			after := newVault(t, ctx, db, Options{Keys: StaticKeys{k2, k1}})
			if got, err := after.Open(ctx, alice, "irc", "pw", old); err == nil {
				t.Errorf("Open(pre-erasure ciphertext) after the interleaved rotation = %q, want an error", got.Reveal())
			}
			mustOpen(t, ctx, after, alice, "irc", "pw", fresh, "after-recreation")
			// A later rotation still re-wraps the new data key.
			if res, err := cli.Rotate(ctx, RotateOptions{}); err != nil || res.Rewrapped != 1 {
				t.Fatalf("Rotate() after the interleaving = %+v, %v; want the new data key re-wrapped", res, err)
			}
			mustOpen(t, ctx, newVault(t, ctx, db, Options{Keys: StaticKeys{k2}}), alice, "irc", "pw", fresh, "after-recreation")
		})
	}
}

package vault

import (
	"context"
	"crypto/rand"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
)

// secretForBench is the size of a typical credential (an IRC password, a webhook URL).
var secretForBench = NewSecret(strings.Repeat("s", 64))

// BenchmarkSeal measures one Seal. "cached": the user's data key is unwrapped in memory (Seal
// still reads the user's data key rows, one indexed query); "uncached": the cache is off, so
// every Seal also unwraps the data key.
func BenchmarkSeal(b *testing.B) {
	for _, dialect := range astest.Dialects(b) {
		for _, cached := range []bool{true, false} {
			b.Run(fmt.Sprintf("%s/cached=%t", dialect, cached), func(b *testing.B) {
				ctx, v := benchVault(b, dialect, cached)
				for b.Loop() {
					if _, err := v.Seal(ctx, alice, "irc", "pw", secretForBench); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkOpen measures one Open. "cached": no I/O; "uncached": a database read and an unwrap
// each time.
func BenchmarkOpen(b *testing.B) {
	for _, dialect := range astest.Dialects(b) {
		for _, cached := range []bool{true, false} {
			b.Run(fmt.Sprintf("%s/cached=%t", dialect, cached), func(b *testing.B) {
				ctx, v := benchVault(b, dialect, cached)
				sealed, err := v.Seal(ctx, alice, "irc", "pw", secretForBench)
				if err != nil {
					b.Fatal(err)
				}
				for b.Loop() {
					if _, err := v.Open(ctx, alice, "irc", "pw", sealed); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func benchVault(b *testing.B, dialect string, cached bool) (context.Context, *Vault) {
	b.Helper()
	ctx := testCtx(b, nil)
	db := vaultDB(b, dialect)
	ensureUser(b, db, alice)
	opts := Options{Keys: StaticKeys{mustKey(b)}}
	if !cached {
		opts.CacheSize = -1
	}
	v := newVault(b, ctx, db, opts)
	// Create the data key outside the timed loop.
	if _, err := v.Seal(ctx, alice, "irc", "warm-up", secretForBench); err != nil {
		b.Fatal(err)
	}
	return ctx, v
}

// rotateBenchDEKs is how many data keys BenchmarkRotate re-wraps per operation.
const rotateBenchDEKs = 100_000

// BenchmarkRotate measures re-wrapping 100,000 data keys under a new master key (one operation
// is a whole rotation), in batches of DefaultRotateBatchSize.
func BenchmarkRotate(b *testing.B) {
	for _, dialect := range astest.Dialects(b) {
		b.Run(fmt.Sprintf("%s/deks=%d", dialect, rotateBenchDEKs), func(b *testing.B) {
			ctx := testCtx(b, nil)
			db := vaultDB(b, dialect)
			prev := mustKey(b)
			seedDEKs(b, ctx, db, prev, rotateBenchDEKs)
			var total time.Duration
			for b.Loop() {
				next := mustKey(b)
				v := newVault(b, ctx, db, Options{Keys: StaticKeys{next, prev}})
				start := time.Now()
				res, err := v.Rotate(ctx, RotateOptions{})
				total += time.Since(start)
				if err != nil || res.Rewrapped != rotateBenchDEKs {
					b.Fatalf("Rotate() = %+v, %v; want %d re-wrapped", res, err, rotateBenchDEKs)
				}
				prev = next
			}
			b.ReportMetric(float64(rotateBenchDEKs)*float64(b.N)/total.Seconds(), "deks/s")
		})
	}
}

// seedDEKs inserts n users with one data key each, wrapped by k, quickly (multi-row inserts).
func seedDEKs(b *testing.B, ctx context.Context, db *dbutil.Database, k Key, n int) {
	b.Helper()
	v := newVault(b, ctx, db, Options{Keys: StaticKeys{k}})
	mk := v.ring.Load().current
	if err := v.recordKey(ctx, mk); err != nil {
		b.Fatal(err)
	}
	const batch = 1000
	dek := make([]byte, KeySize)
	for start := 0; start < n; start += batch {
		var users, deks strings.Builder
		var userArgs, dekArgs []any
		for i := start; i < min(start+batch, n); i++ {
			user := id.UserID(fmt.Sprintf("@bench%07d:example.org", i))
			_, _ = rand.Read(dek)
			wrapped, err := wrapDEK(mk, user, 1, dek)
			if err != nil {
				b.Fatal(err)
			}
			if len(userArgs) > 0 {
				users.WriteString(", ")
				deks.WriteString(", ")
			}
			fmt.Fprintf(&users, "($%d, 0)", len(userArgs)+1)
			userArgs = append(userArgs, user)
			j := len(dekArgs)
			fmt.Fprintf(&deks, "($%d, 1, $%d, $%d, 0)", j+1, j+2, j+3)
			dekArgs = append(dekArgs, user, k.ID(), wrapped)
		}
		err := db.DoTxn(ctx, nil, func(ctx context.Context) error {
			if _, err := db.Exec(ctx, "INSERT INTO users (mxid, created_at) VALUES "+users.String(), userArgs...); err != nil {
				return err
			}
			_, err := db.Exec(ctx, "INSERT INTO as_vault_dek (user_mxid, dek_id, kek_id, wrapped, created_at) VALUES "+deks.String(), dekArgs...)
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSealInbox measures sealing one typical inbox event (about 300 bytes of JSON), the
// cost the ingest path adds per event with the vault on.
//
//	go test -run '^$' -bench BenchmarkSealInbox ./appservice/vault/
func BenchmarkSealInbox(b *testing.B) {
	ctx := testCtx(b, nil)
	v := newVault(b, ctx, vaultDB(b, astest.SQLite), Options{Keys: StaticKeys{mustKey(b)}})
	if _, err := v.LoadInboxKeys(ctx); err != nil {
		b.Fatal(err)
	}
	event := []byte(`{"content":{"body":"A typical chat message of a few dozen characters, nothing special.","msgtype":"m.text"},"event_id":"$bench-1234-56:example.org","origin_server_ts":1700000000000,"room_id":"!room7:example.org","sender":"@alice:example.org","type":"m.room.message","unsigned":{"age":12}}`)
	aad := []byte("1234\x00$bench-1234-56:example.org\x00!room7:example.org\x00@alice:example.org")
	b.SetBytes(int64(len(event)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.SealInbox(event, aad); err != nil {
			b.Fatal(err)
		}
	}
}

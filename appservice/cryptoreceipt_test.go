package appservice

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/privacy"
)

// TestEncryptedErasureReceiptIsReadableAndLeavesNoRows erases Alice with a receipt in her
// encrypted DM: the bot shares a fresh room key with her device, which decrypts the receipt,
// and once the cleanup is done no row of the crypto store or the state cache (nor any other)
// names her, although sharing the key fetched and stored her devices again.
func TestEncryptedErasureReceiptIsReadableAndLeavesNoRows(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newE2EEEnv(t, astest.TestDB(t, dialect), nil, nil)
			// Every log line, to check that none names alice next to the erasure's user hash.
			logs := &lockedBuffer{}
			env.svc.log = zerolog.New(zerolog.MultiLevelWriter(zerolog.NewTestWriter(t), logs)).Level(zerolog.DebugLevel)
			env.svc.engine = env.svc.newEngine()
			env.start()
			env.shareKey()
			// A first message shares a room key with Alice's devices, so the crypto store names
			// her in every kind of row before the erasure.
			env.put("h1", []map[string]any{env.encrypted(nil, "!help")}, nil)
			env.waitForBotMessage(e2eeDM, "help")
			if rows := rowsMentioning(dumpDatabase(t, env.ctx, env.svc.rawDB), e2eeAlice.String()); len(rows) == 0 {
				t.Fatal("no row names alice before the erasure; the test would prove nothing")
			}

			receipt, err := env.svc.engine.Erase(env.ctx, e2eeAlice, EraseRequest{Trigger: TriggerUser, NotifyRoom: e2eeDM})
			if err != nil {
				t.Fatalf("Erase = %v", err)
			}
			env.hs.WaitFor(t, 20*time.Second, "the erasure's cleanup", func() bool {
				status, err := env.svc.engine.ErasureStatus(env.ctx, receipt.JobID)
				return err == nil && status.State == string(privacy.ErasureDone)
			})
			// botMessages fails the test if Alice's device cannot decrypt one of the bot's messages.
			if !slices.ContainsFunc(env.botMessages(e2eeDM), func(body string) bool {
				return strings.Contains(body, "I erased everything Custodian held about you")
			}) {
				t.Errorf("alice read no erasure receipt; bot messages: %q", env.botMessages(e2eeDM))
			}
			if rows := rowsMentioning(dumpDatabase(t, env.ctx, env.svc.rawDB), e2eeAlice.String()); len(rows) > 0 {
				t.Errorf("after the erasure and its receipt %d rows name alice:\n%s", len(rows), strings.Join(rows, "\n"))
			}
			hash, _, err := env.svc.engine.UserHash(env.ctx, e2eeAlice)
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(logs.String(), "\n")
			if !slices.ContainsFunc(lines, func(line string) bool { return strings.Contains(line, hash[:16]) }) {
				t.Error("no log line carries the erasure's user hash; the check below would prove nothing")
			}
			for _, line := range lines {
				if strings.Contains(line, hash[:16]) && strings.Contains(line, e2eeAlice.String()) {
					t.Errorf("a log line names alice next to the erasure's user hash: %s", line)
				}
			}
			// The olm session that carried the receipt's key names her device's key, not her.
			readerKey := env.reader.Mach.OwnIdentity().IdentityKey
			if n := countQuery(t, env, `SELECT COUNT(*) FROM crypto_olm_session WHERE sender_key=$1`, readerKey); n != 0 {
				t.Errorf("%d olm sessions with alice's device remain", n)
			}
		})
	}
}

// countQuery runs a COUNT query on env's database.
func countQuery(t *testing.T, env *e2eeEnv, query string, args ...any) int {
	t.Helper()
	var n int
	if err := env.svc.rawDB.QueryRow(env.ctx, query, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestScrubAfterReceiptFindsTheUserAfterARestart runs the scrub of a receipt the process does
// not remember (a restart between the receipt and the scrub): it finds the erased user from the
// rows that name them, by their keyed hash, and deletes those rows, and only theirs.
func TestScrubAfterReceiptFindsTheUserAfterARestart(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newE2EEEnv(t, astest.TestDB(t, dialect), nil, nil)
			env.setupCrypto()
			bob := id.UserID("@bob:example.org")
			if err := env.svc.stateStore.SetMembership(env.ctx, e2eeDM, bob, event.MembershipJoin); err != nil {
				t.Fatal(err)
			}
			if err := env.svc.crypto.Store().PutDevice(env.ctx, bob, &id.Device{UserID: bob, DeviceID: "BOBPHONE", IdentityKey: "bobkey", SigningKey: "bobsign"}); err != nil {
				t.Fatal(err)
			}
			hash, _, err := env.svc.engine.UserHash(env.ctx, e2eeAlice)
			if err != nil {
				t.Fatal(err)
			}
			for _, scope := range []struct {
				modules []string
				want    int
			}{
				// A scope that erased neither the crypto store nor the state cache keeps them.
				{[]string{"hooks"}, 2},
				{nil, 0},
			} {
				if err = env.svc.scrubAfterReceipt(env.ctx, "er_unknown", hash, scope.modules); err != nil {
					t.Fatalf("scrubAfterReceipt(%v) = %v", scope.modules, err)
				}
				rows := rowsMentioning(dumpDatabase(t, env.ctx, env.svc.rawDB), e2eeAlice.String())
				if len(rows) != scope.want {
					t.Errorf("after the scrub of scope %v, %d rows name alice, want %d:\n%s", scope.modules, len(rows), scope.want, strings.Join(rows, "\n"))
				}
			}
			if rows := rowsMentioning(dumpDatabase(t, env.ctx, env.svc.rawDB), bob.String()); len(rows) != 2 {
				t.Errorf("after alice's scrub %d rows name bob, want his device and membership:\n%s", len(rows), strings.Join(rows, "\n"))
			}
		})
	}
}

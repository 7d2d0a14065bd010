package appservice

import (
	"maps"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/clock"
	"github.com/custodian-matrix/custodian/appservice/e2ee"
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
			// Every log line (the env's logger is the service's, mautrix's included), to check
			// that none names alice next to the erasure's user hash.
			logs := env.logs
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
				if err = env.svc.scrubAfterErasure(env.ctx, "er_unknown", hash, scope.modules); err != nil {
					t.Fatalf("scrubAfterErasure(%v) = %v", scope.modules, err)
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

// writeLateRows stores rows naming user after their erasure, as a goroutine racing it would:
// a device in the crypto store and, with member, a member row in the state cache.
func writeLateRows(env *e2eeEnv, user id.UserID, device id.DeviceID, member bool) error {
	if err := env.svc.crypto.Store().PutDevice(env.ctx, user, &id.Device{UserID: user, DeviceID: device, IdentityKey: id.Curve25519(device + "key"), SigningKey: id.Ed25519(device + "sign")}); err != nil {
		return err
	}
	if member {
		return env.svc.stateStore.SetMembership(env.ctx, e2eeDM, user, event.MembershipJoin)
	}
	return nil
}

// waitScrubbed waits for the next final scrub's outcome from ran and fails on an error.
func waitScrubbed(t *testing.T, ran <-chan error) {
	t.Helper()
	select {
	case err := <-ran:
		if err != nil {
			t.Fatalf("final scrub = %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("timed out waiting for the final scrub")
	}
}

// TestEveryCryptoErasureIsScrubbedNowAndAfterTheQuietPeriod erases Alice without a receipt,
// fully and from the crypto store alone: rows a racing goroutine writes about her after the
// erasure committed are deleted again in the job's cleanup (full erasure: written while the bot
// checks her direct chat before leaving it) and, for rows written later, by the final scrub once
// erasureQuietPeriod has passed on the service's clock, and not before.
func TestEveryCryptoErasureIsScrubbedNowAndAfterTheQuietPeriod(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		for _, tc := range []struct {
			name    string
			modules []string
			// named counts the rows in scope that name alice; empty: every row.
			named string
		}{
			{"full", nil, ""},
			{"crypto only", []string{e2ee.Module}, `SELECT COUNT(*) FROM crypto_device WHERE user_id=$1`},
		} {
			t.Run(dialect+"/"+tc.name, func(t *testing.T) {
				env := newE2EEEnv(t, astest.TestDB(t, dialect), nil, nil)
				clk := clock.NewFake(time.Now())
				env.svc.clk = clk
				ran := make(chan error, 4)
				env.svc.privacy.scrubRan = func(_ string, err error) { ran <- err }
				env.start()
				named := func() int {
					if tc.named != "" {
						return countQuery(t, env, tc.named, e2eeAlice)
					}
					return len(rowsMentioning(dumpDatabase(t, env.ctx, env.svc.rawDB), e2eeAlice.String()))
				}
				var racing atomic.Int32
				if tc.modules == nil {
					// The full erasure reads the direct chat's members before its transaction and
					// again in its cleanup, after the commit, before leaving the chat.
					env.hs.OnRequest(astest.PatternJoinedMembers, func() {
						racing.Add(1)
						if err := writeLateRows(env, e2eeAlice, "RACING", true); err != nil {
							t.Error(err)
						}
					})
				}
				receipt, err := env.svc.engine.Erase(env.ctx, e2eeAlice, EraseRequest{Trigger: TriggerAdmin, Modules: tc.modules})
				if err != nil {
					t.Fatalf("Erase = %v", err)
				}
				env.hs.OnRequest(astest.PatternJoinedMembers, nil)
				if tc.modules == nil && racing.Load() < 2 {
					t.Fatalf("the racing rows were written %d times, want before and after the commit", racing.Load())
				}
				if receipt.State != string(privacy.ErasureDone) {
					t.Fatalf("erasure state = %s, want done", receipt.State)
				}
				if n := named(); n != 0 {
					t.Errorf("after the erasure's cleanup %d rows name alice", n)
				}

				if err = writeLateRows(env, e2eeAlice, "LATE", tc.modules == nil); err != nil {
					t.Fatal(err)
				}
				clk.Advance(erasureQuietPeriod - time.Second)
				if n := named(); n == 0 {
					t.Fatal("the late rows are gone before the quiet period ended")
				}
				clk.Advance(time.Second)
				waitScrubbed(t, ran)
				if n := named(); n != 0 {
					t.Errorf("after the final scrub %d rows name alice", n)
				}
			})
		}
	}
}

// TestFinalScrubSurvivesARestartAndLooksTheUserUpOnce erases Alice, then forgets everything the
// process remembered of the erasure, as a restart does. Starting again arms the final scrub from
// the tombstone and its job's finish time for when it falls due (an erasure older than
// finalScrubWindow is not armed). The cleanup's scrubs (two attempts, each arming the final scrub
// anew a quiet period later) and the final scrub find her once from the rows that name her, not
// at each attempt, and each deletes the rows written since.
func TestFinalScrubSurvivesARestartAndLooksTheUserUpOnce(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newE2EEEnv(t, astest.TestDB(t, dialect), nil, nil)
			clk := clock.NewFake(time.Now())
			env.svc.clk = clk
			ran := make(chan error, 4)
			env.svc.privacy.scrubRan = func(_ string, err error) { ran <- err }
			env.start()
			bob := id.UserID("@bob:example.org")
			old, err := env.svc.engine.Erase(env.ctx, bob, EraseRequest{Trigger: TriggerAdmin})
			if err != nil {
				t.Fatal(err)
			}
			clk.Advance(erasureQuietPeriod)
			waitScrubbed(t, ran)
			clk.Advance(finalScrubWindow)
			receipt, err := env.svc.engine.Erase(env.ctx, e2eeAlice, EraseRequest{Trigger: TriggerAdmin, Modules: []string{e2ee.Module}})
			if err != nil {
				t.Fatal(err)
			}

			// The restart: the process forgets the erasure's user and the armed final scrub.
			env.svc.stopFinalScrubs()
			env.svc.privacy.lock.Lock()
			env.svc.privacy.scrubUsers, env.svc.privacy.scrubLookups = nil, 0
			env.svc.privacy.lock.Unlock()
			clk.Advance(2 * time.Minute)
			env.svc.startFinalScrubs(env.ctx)
			env.svc.privacy.lock.Lock()
			armed := slices.Collect(maps.Keys(env.svc.privacy.finalScrubs))
			env.svc.privacy.lock.Unlock()
			if !slices.Equal(armed, []string{receipt.JobID}) || receipt.JobID == old.JobID {
				t.Fatalf("final scrubs armed after the restart: %v, want only %s", armed, receipt.JobID)
			}

			devices := func() int {
				return countQuery(t, env, `SELECT COUNT(*) FROM crypto_device WHERE user_id=$1`, e2eeAlice)
			}
			for attempt, device := range []id.DeviceID{"CLEANUP1", "CLEANUP2"} {
				if err = writeLateRows(env, e2eeAlice, device, false); err != nil {
					t.Fatal(err)
				}
				if err = env.svc.scrubAfterErasure(env.ctx, receipt.JobID, receipt.UserHash, receipt.Modules); err != nil {
					t.Fatalf("scrub attempt %d = %v", attempt+1, err)
				}
				if n := devices(); n != 0 {
					t.Errorf("after scrub attempt %d, %d devices of alice remain", attempt+1, n)
				}
			}
			if err = writeLateRows(env, e2eeAlice, "FINAL", false); err != nil {
				t.Fatal(err)
			}
			clk.Advance(erasureQuietPeriod - time.Second)
			if n := devices(); n == 0 {
				t.Fatal("the final scrub ran before a quiet period after the cleanup's last scrub")
			}
			clk.Advance(time.Second)
			waitScrubbed(t, ran)
			if n := devices(); n != 0 {
				t.Errorf("after the final scrub %d devices of alice remain", n)
			}
			env.svc.privacy.lock.Lock()
			lookups, remembered := env.svc.privacy.scrubLookups, len(env.svc.privacy.scrubUsers)
			env.svc.privacy.lock.Unlock()
			if lookups != 1 {
				t.Errorf("the scrubs looked the user up from the rows %d times, want once", lookups)
			}
			if remembered != 0 {
				t.Errorf("after the final scrub %d jobs' users are still remembered", remembered)
			}
		})
	}
}

// TestErasureKeepsTheUserInRoomKeysOfRoomsTheyStayIn erases Alice, who shares an encrypted
// group room with the bot and Bob and stays in it. The erasure and its scrubs leave no row
// naming her, and mark the room's member list as not fetched; the bot's next message there
// reads the members from the homeserver before sharing its room key, so that her device can
// read it.
func TestErasureKeepsTheUserInRoomKeysOfRoomsTheyStayIn(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newE2EEEnv(t, astest.TestDB(t, dialect), nil, nil)
			env.start()
			group := id.RoomID("!group:example.org")
			bob := id.UserID("@bob:example.org")
			for _, user := range []id.UserID{env.svc.as.BotMXID(), e2eeAlice, bob} {
				env.hs.SetMembership(group, user, event.MembershipJoin)
				if err := env.svc.stateStore.SetMembership(env.ctx, group, user, event.MembershipJoin); err != nil {
					t.Fatal(err)
				}
			}
			env.hs.SetState(group, event.StateEncryption, "", bob, &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1})
			if err := env.svc.stateStore.SetEncryptionEvent(env.ctx, group, &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}); err != nil {
				t.Fatal(err)
			}
			if err := env.svc.stateStore.MarkMembersFetched(env.ctx, group); err != nil {
				t.Fatal(err)
			}

			receipt, err := env.svc.engine.Erase(env.ctx, e2eeAlice, EraseRequest{Trigger: TriggerAdmin})
			if err != nil {
				t.Fatal(err)
			} else if receipt.State != string(privacy.ErasureDone) {
				t.Fatalf("erasure state = %s, want done", receipt.State)
			}
			if rows := rowsMentioning(dumpDatabase(t, env.ctx, env.svc.rawDB), e2eeAlice.String()); len(rows) > 0 {
				t.Fatalf("after the erasure %d rows name alice:\n%s", len(rows), strings.Join(rows, "\n"))
			}
			if fetched, err := env.svc.stateStore.HasFetchedMembers(env.ctx, group); err != nil || fetched {
				t.Fatalf("after the erasure the group's member list counts as fetched (%v, %v)", fetched, err)
			}

			content := &event.MessageEventContent{MsgType: event.MsgNotice, Body: "after the erasure"}
			if _, err = SendMessageSensitive(env.ctx, env.svc.as.BotIntent().Client, group, event.EventMessage, content, "after-erasure"); err != nil {
				t.Fatalf("send = %v", err)
			}
			// botMessages fails the test if Alice's device cannot decrypt the message.
			if got := env.botMessages(group); !slices.Contains(got, content.Body) {
				t.Errorf("alice read %q in the group, want %q", got, content.Body)
			}
			if fetched, err := env.svc.stateStore.HasFetchedMembers(env.ctx, group); err != nil || !fetched {
				t.Errorf("after the send the group's member list is not fetched (%v, %v)", fetched, err)
			}
		})
	}
}

package appservice

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"strings"
	"sync"
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

// startBare starts env's service and waits for its to-device probe and its replay, like start,
// without storing Alice's device.
func (env *e2eeEnv) startBare() {
	env.t.Helper()
	delivered := env.hs.Delivered()
	if err := env.svc.start(env.ctx); err != nil {
		env.t.Fatal(err)
	}
	env.started = true
	if env.svc.crypto != nil {
		env.hs.WaitFor(env.t, 20*time.Second, "the to-device probe's delivery", func() bool {
			return env.hs.Delivered() > delivered || env.hs.DeliveryFailures() > 0
		})
	}
	waitDrained(env.t, env.svc.dispatcher)
}

// stop stops env's service.
func (env *e2eeEnv) stop() {
	env.svc.stopServing()
	env.started = false
}

// withoutMachine starts a service on env's database whose encryption set-up fails (the
// homeserver refuses the bot's device), with configure applied to its dispatcher first.
func (env *e2eeEnv) withoutMachine(configure func(d *dispatcher)) *e2eeEnv {
	env.t.Helper()
	env.hs.Fail(astest.PatternPutDevice, http.StatusBadRequest, "M_UNKNOWN")
	next := newE2EEEnv(env.t, env.db, env, nil)
	if configure != nil {
		configure(next.svc.dispatcher)
	}
	next.startBare()
	if next.svc.crypto != nil {
		env.t.Fatal("svc.crypto is set although the homeserver refused the bot's device")
	}
	env.hs.Unfail(astest.PatternPutDevice)
	return next
}

// fromSender returns a copy of the to-device event evt with sender as its sender.
func fromSender(evt map[string]any, sender id.UserID) map[string]any {
	out := maps.Clone(evt)
	out["sender"] = sender
	return out
}

// TestKeptToDeviceRowIsGatedByItsArrival keeps Alice's room key in a run without the olm
// machine and erases her (scenario A: the row kept first, then an erasure of the crypto store,
// which leaves the inbox row; scenario B: a full erasure first, then the row arriving in its
// quiet period). The next start, with the machine and past the quiet period, handles nothing
// of hers: no crypto table has a row naming her, and the inbox is empty.
func TestKeptToDeviceRowIsGatedByItsArrival(t *testing.T) {
	cases := []struct {
		name       string
		modules    []string
		eraseFirst bool
		// inbox is the rows left in the run without the machine.
		inbox int
	}{
		{"kept, then its crypto store erased", []string{e2ee.Module}, false, 1},
		{"arrived in the quiet period of a full erasure", nil, true, 0},
	}
	for _, dialect := range astest.Dialects(t) {
		for _, tc := range cases {
			t.Run(dialect+"/"+tc.name, func(t *testing.T) {
				db := astest.TestDB(t, dialect)
				env1 := newE2EEEnv(t, db, nil, nil)
				env1.start()
				row := env1.roomKey(env1.megolm)
				_, identity := env1.alice.Keys()
				env1.stop()

				env2 := env1.withoutMachine(nil)
				erase := func() {
					t.Helper()
					if _, err := env2.svc.engine.Erase(env2.ctx, e2eeAlice, EraseRequest{Trigger: TriggerAdmin, Modules: tc.modules}); err != nil {
						t.Fatal(err)
					}
				}
				if tc.eraseFirst {
					erase()
				}
				env2.put("g1", nil, []map[string]any{row})
				waitDrained(t, env2.svc.dispatcher)
				if !tc.eraseFirst {
					if n := env2.svc.dispatcher.keptToDevice(); n != 1 {
						t.Fatalf("keptToDevice() = %d before the erasure, want 1", n)
					}
					erase()
				}
				if n := countRows(t, db, "as_inbox"); n != tc.inbox {
					t.Errorf("%d inbox rows in the run without the machine, want %d", n, tc.inbox)
				}
				env2.stop()

				env3 := newE2EEEnv(t, db, env2, nil)
				env3.svc.clk = clock.NewFake(time.Now().Add(erasureQuietPeriod + time.Minute))
				env3.startBare()
				if env3.svc.crypto == nil {
					t.Fatal("encryption did not come on at the last start")
				}
				if rows := cryptoRowsOf(t, db, e2eeAlice, identity); len(rows) > 0 {
					t.Errorf("crypto rows naming alice after the start with the machine: %v", rows)
				}
				if n := countRows(t, db, "crypto_olm_session") + countRows(t, db, "crypto_megolm_inbound_session"); n != 0 {
					t.Errorf("%d olm and megolm sessions after the start with the machine, want 0", n)
				}
				if n := countRows(t, db, "as_inbox"); n != 0 {
					t.Errorf("%d inbox rows after the start with the machine, want 0", n)
				}
			})
		}
	}
}

// TestToDeviceRowsKeptWithoutTheMachineAreCappedAndFiltered sends a run without the olm machine
// room keys of three senders and a key request, with caps of 2 per sender and 3 in all: the key
// request is dropped (only olm-encrypted events are kept), Alice's third room key is over her
// cap and Carol's over the total; the 3 rows kept are the inbox, its depth, and the count, and
// the drop over the caps is one Warn.
func TestToDeviceRowsKeptWithoutTheMachineAreCappedAndFiltered(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			db := astest.TestDB(t, dialect)
			env1 := newE2EEEnv(t, db, nil, nil)
			env1.start()
			rows := []map[string]any{
				env1.roomKey(env1.megolm), env1.roomKey(env1.megolm), env1.roomKey(env1.megolm),
				env1.keyRequest("capped", id.SessionID(env1.megolm.ID())),
				fromSender(env1.roomKey(env1.megolm), "@bob:example.org"),
				fromSender(env1.roomKey(env1.megolm), "@carol:example.org"),
			}
			env1.stop()
			env2 := env1.withoutMachine(func(d *dispatcher) { d.keepPerSender, d.keepTotal = 2, 3 })
			env2.put("c1", nil, rows)
			waitDrained(t, env2.svc.dispatcher)
			var senders []string
			res, err := db.Query(env2.ctx, `SELECT sender FROM as_inbox ORDER BY seq`)
			if err != nil {
				t.Fatal(err)
			}
			for res.Next() {
				var s string
				if err = res.Scan(&s); err != nil {
					t.Fatal(err)
				}
				senders = append(senders, s)
			}
			if err = res.Close(); err != nil {
				t.Fatal(err)
			}
			if got, want := strings.Join(senders, ","), "@alice:example.org,@alice:example.org,@bob:example.org"; got != want {
				t.Errorf("inbox rows kept from %s, want %s", got, want)
			}
			if n := env2.svc.dispatcher.keptToDevice(); n != 3 {
				t.Errorf("keptToDevice() = %d, want 3", n)
			}
			if depth := metricValue(t, env2.svc.metrics.inboxDepth); depth != 3 {
				t.Errorf("custodian_inbox_depth = %v, want 3", depth)
			}
			if n := strings.Count(env2.logs.String(), "this run keeps no more"); n != 1 {
				t.Errorf("%d Warns about rows over the caps, want 1", n)
			}
		})
	}
}

// laneLogLines returns the lines of logs about to-device events or the erasure gate.
func laneLogLines(logs string) []string {
	var out []string
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, "to-device event") || strings.Contains(line, "erasure gate") {
			out = append(out, line)
		}
	}
	return out
}

// TestToDeviceLaneLogsNameNoUser drops Alice's room key while her erasure is pending, and leaves
// another in the inbox because its gate check fails: the lane's log lines about them name no
// user (a drop would tell the log reader who is being erased), and the event whose check
// failed is not handled: its row stays, and no room key or olm session is stored.
func TestToDeviceLaneLogsNameNoUser(t *testing.T) {
	cases := []struct {
		name    string
		prepare func(t *testing.T, env *e2eeEnv)
		message string
		inbox   int
	}{
		{"pending erasure", func(t *testing.T, env *e2eeEnv) {
			if err := env.recordPendingErasure("er_lanelog"); err != nil {
				t.Fatal(err)
			}
		}, "Dropping a to-device event: its sender's erasure is pending or recent", 0},
		{"failed gate check", func(_ *testing.T, env *e2eeEnv) {
			env.svc.erasureGate.checkFails = func(id.UserID) error { return errors.New("injected failure") }
		}, "Failed to check the sender's erasure gate", 1},
	}
	for _, dialect := range astest.Dialects(t) {
		for _, tc := range cases {
			t.Run(dialect+"/"+tc.name, func(t *testing.T) {
				env, clk := startedE2EEEnvOnFakeClock(t, dialect)
				db := env.db
				tc.prepare(t, env)
				env.put("l1", nil, []map[string]any{env.roomKey(env.megolm)})
				if tc.inbox > 0 {
					// The failing check is tried again after growing pauses, then given up.
					advanceRetries(t, clk, toDeviceAttempts-1)
				}
				waitDrained(t, env.svc.dispatcher)
				lines := laneLogLines(env.logs.String())
				found := false
				for _, line := range lines {
					found = found || strings.Contains(line, tc.message)
					if strings.Contains(line, "alice") {
						t.Errorf("a log line of the lane names the user: %s", line)
					}
				}
				if !found {
					t.Errorf("no log line %q among %q", tc.message, lines)
				}
				if n := countRows(t, db, "as_inbox"); n != tc.inbox {
					t.Errorf("%d inbox rows, want %d", n, tc.inbox)
				}
				if n := countRows(t, db, "crypto_olm_session") + countRows(t, db, "crypto_megolm_inbound_session"); n != 0 {
					t.Errorf("%d olm and megolm sessions stored, want 0", n)
				}
			})
		}
	}
}

// advanceRetries advances clk through the pauses of n retries (1 s, 2 s, …), each once a
// waiter for it is armed.
func advanceRetries(t *testing.T, clk *clock.Fake, n int) {
	t.Helper()
	for attempt := 1; attempt <= n; attempt++ {
		if err := clk.BlockUntilInterval(astest.Within(t, 20*time.Second), time.Duration(attempt)*time.Second); err != nil {
			t.Fatalf("retry %d: %v", attempt, err)
		}
		clk.Advance(time.Duration(attempt) * time.Second)
	}
}

// TestFailedGateCheckIsTriedAgain makes the gate check of Alice's room key fail twice, then
// succeed: the room key is handled in this run, after two pauses on the service's clock, and
// its row is gone; a check that never succeeds leaves the row after toDeviceAttempts tries.
func TestFailedGateCheckIsTriedAgain(t *testing.T) {
	cases := []struct {
		name     string
		failures int
		inbox    int
		sessions int
	}{
		{"fails twice", 2, 0, 1},
		{"fails every time", toDeviceAttempts, 1, 0},
	}
	for _, dialect := range astest.Dialects(t) {
		for _, tc := range cases {
			t.Run(dialect+"/"+tc.name, func(t *testing.T) {
				env, clk := startedE2EEEnvOnFakeClock(t, dialect)
				db := env.db
				var checks atomic.Int32
				env.svc.erasureGate.checkFails = func(id.UserID) error {
					if int(checks.Add(1)) <= tc.failures {
						return errors.New("injected failure")
					}
					return nil
				}
				env.put("g1", nil, []map[string]any{env.roomKey(env.megolm)})
				advanceRetries(t, clk, min(tc.failures, toDeviceAttempts-1))
				waitDrained(t, env.svc.dispatcher)
				if n, want := int(checks.Load()), min(tc.failures+1, toDeviceAttempts); n != want {
					t.Errorf("%d gate checks, want %d", n, want)
				}
				if n := countRows(t, db, "as_inbox"); n != tc.inbox {
					t.Errorf("%d inbox rows, want %d", n, tc.inbox)
				}
				if n := countRows(t, db, "crypto_megolm_inbound_session"); n != tc.sessions {
					t.Errorf("%d room keys stored, want %d", n, tc.sessions)
				}
			})
		}
	}
}

// TestKeyRequestDoesNotHoldUpTheLane holds the answer to a key request of a user on another
// gate stripe than Alice's at its key query, and sends Alice's room key after it: the room key
// is stored while the request is still waiting (key requests are answered off the lane), and
// the request is answered once released.
func TestKeyRequestDoesNotHoldUpTheLane(t *testing.T) {
	eachStartedE2EEEnv(t, false, func(t *testing.T, env *e2eeEnv) {
		db := env.db
		queried, release := make(chan struct{}, 1), make(chan struct{})
		released := false
		unblock := func() {
			if !released {
				released = true
				close(release)
			}
		}
		defer unblock()
		env.hs.OnRequest(astest.PatternKeysQuery, func() {
			select {
			case queried <- struct{}{}:
			default:
			}
			<-release
		})
		var other id.UserID
		for i := range 100 {
			if u := id.NewUserID(fmt.Sprintf("requester%d", i), "example.org"); env.svc.erasureGate.stripe(u) != env.svc.erasureGate.stripe(e2eeAlice) {
				other = u
				break
			}
		}
		if other == "" {
			t.Fatal("no user on another stripe than alice's")
		}
		env.put("h1", nil, []map[string]any{fromSender(env.keyRequest("held", id.SessionID(env.megolm.ID())), other)})
		within := astest.Within(t, 10*time.Second)
		select {
		case <-queried:
		case <-within.Done():
			t.Fatal("the key request never queried the requester's keys")
		}
		env.put("h2", nil, []map[string]any{env.roomKey(env.megolm)})
		for countRows(t, db, "crypto_megolm_inbound_session") == 0 {
			select {
			case <-env.svc.e2ee.keysChanged():
			case <-within.Done():
				t.Fatal("the room key was not stored while a key request waited for its answer")
			}
		}
		unblock()
		env.hs.OnRequest(astest.PatternKeysQuery, nil)
		waitDrained(t, env.svc.dispatcher)
		if n := len(env.hs.RequestsTo(astest.PatternKeysQuery)); n == 0 {
			t.Error("the held key request made no key query")
		}
	})
}

// TestKeyRequestWorkerChecksTheGateAgain hands a key request worker a request of Alice's
// after her erasure was recorded (as if it came while the request waited in the queue): it is
// not answered, so her devices are neither queried nor stored.
func TestKeyRequestWorkerChecksTheGateAgain(t *testing.T) {
	eachStartedE2EEEnv(t, true, func(t *testing.T, env *e2eeEnv) {
		arrived := env.svc.now()
		if err := env.recordPendingErasure("er_worker"); err != nil {
			t.Fatal(err)
		}
		queries := len(env.hs.RequestsTo(astest.PatternKeysQuery))
		content := &event.RoomKeyRequestEventContent{
			Action: event.KeyRequestActionRequest, RequestingDeviceID: e2eeAliceReader, RequestID: "queued",
			Body: event.RequestedKeyInfo{Algorithm: id.AlgorithmMegolmV1, RoomID: e2eeDM, SessionID: id.SessionID(env.megolm.ID())},
		}
		env.svc.answerKeyRequest(env.ctx, keyRequestJob{sender: e2eeAlice, arrived: arrived, content: content, log: env.svc.log})
		if n := len(env.hs.RequestsTo(astest.PatternKeysQuery)); n != queries {
			t.Errorf("%d key queries after the gated request, want %d", n, queries)
		}
		if device, err := env.svc.crypto.Store().GetDevice(env.ctx, e2eeAlice, e2eeAliceReader); err != nil || device != nil {
			t.Errorf("requesting device after the gated request = %v, %v; want none", device, err)
		}
	})
}

// TestKeyRequestsBeyondTheQueueAreDropped queues more key requests than the queue holds with no
// worker running: the one over is dropped and counted, the rest wait.
func TestKeyRequestsBeyondTheQueueAreDropped(t *testing.T) {
	db := astest.TestDB(t, astest.Dialects(t)[0])
	env := newE2EEEnv(t, db, nil, nil)
	content := &event.RoomKeyRequestEventContent{Action: event.KeyRequestActionRequest}
	for range keyRequestQueue + 1 {
		env.svc.keyRequests.enqueue(env.ctx, env.svc, keyRequestJob{sender: e2eeAlice, arrived: time.Now(), content: content})
	}
	if pending, _ := env.svc.keyRequests.state(); pending != keyRequestQueue {
		t.Errorf("%d key requests pending, want %d", pending, keyRequestQueue)
	}
	if n := metricValue(t, env.svc.metrics.eventsReceived.WithLabelValues("key_request_dropped")); n != 1 {
		t.Errorf("key requests dropped = %v, want 1", n)
	}
}

// junkOlm returns an olm-encrypted to-device event from sender for the bot's device, under a
// fresh random sender key, that nothing can decrypt.
func (env *e2eeEnv) junkOlm(sender id.UserID) map[string]any {
	env.t.Helper()
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		env.t.Fatal(err)
	}
	_, botIdentity := env.svc.crypto.Olm().GetAccount().Keys()
	return map[string]any{
		"type": event.ToDeviceEncrypted.Type, "sender": sender,
		"to_user_id": env.svc.as.BotMXID(), "to_device_id": env.botDevice(),
		"content": map[string]any{
			"algorithm": id.AlgorithmOlmV1, "sender_key": base64.RawStdEncoding.EncodeToString(key),
			"ciphertext": map[string]any{string(botIdentity): map[string]any{"type": 0, "body": "AwoganVuaw"}},
		},
	}
}

// TestSlowServerStallsTheLaneOnce holds every key query, as a remote homeserver that answers
// slowly would, and sends two junk olm events of two users of that server under fresh sender
// keys, then Alice's room key: the lane waits out the sender fetch of the first only (the
// second is skipped: the server failed a fetch less than a minute ago), so Alice's room key is
// stored within one fetch deadline, not two. A minute later on the service's clock, the fetch
// of a sender of that server runs again.
func TestSlowServerStallsTheLaneOnce(t *testing.T) {
	const timedOut = "Failed to fetch the sender's device keys in time"
	const skipped = "Skipping the sender's device fetch"
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env, clk := startedE2EEEnvOnFakeClock(t, dialect)
			db := env.db
			release := make(chan struct{})
			released := false
			unblock := func() {
				if !released {
					released = true
					close(release)
					env.hs.OnRequest(astest.PatternKeysQuery, nil)
				}
			}
			defer unblock()
			env.hs.OnRequest(astest.PatternKeysQuery, func() { <-release })
			env.put("s1", nil, []map[string]any{
				env.junkOlm("@mallory1:evil.example"), env.junkOlm("@mallory2:evil.example"), env.roomKey(env.megolm),
			})
			within := astest.Within(t, 6*senderFetchTimeout)
			for countRows(t, db, "crypto_megolm_inbound_session") == 0 {
				select {
				case <-env.svc.e2ee.keysChanged():
				case <-within.Done():
					t.Fatal("the room key was not stored")
				}
			}
			// The counts below, not the time taken, prove the lane waited for one fetch only.
			waitDrained(t, env.svc.dispatcher)
			count := func(message string) int { return strings.Count(env.logs.String(), message) }
			if n, m := count(timedOut), count(skipped); n != 1 || m != 1 {
				t.Errorf("%d sender fetches timed out and %d were skipped, want 1 and 1", n, m)
			}
			clk.Advance(failedServerPause + time.Second)
			env.put("s2", nil, []map[string]any{env.junkOlm("@mallory3:evil.example")})
			waitDrained(t, env.svc.dispatcher)
			if n, m := count(timedOut), count(skipped); n != 2 || m != 1 {
				t.Errorf("after a minute: %d sender fetches timed out and %d were skipped, want 2 and 1", n, m)
			}
		})
	}
}

// wedgedOlm returns an olm-encrypted to-device event from Alice under the identity key of her
// reader device that cannot be decrypted, of msgType: a pre-key message (0) that makes no
// session, or a normal one (1) that no session decrypts. The olm machine asks to unwedge the
// session with that device.
func (env *e2eeEnv) wedgedOlm(msgType id.OlmMsgType) map[string]any {
	env.t.Helper()
	evt := env.junkOlm(e2eeAlice)
	content := evt["content"].(map[string]any)
	content["sender_key"] = env.reader.Mach.OwnIdentity().IdentityKey
	for _, ct := range content["ciphertext"].(map[string]any) {
		ct.(map[string]any)["type"] = msgType
	}
	return evt
}

// recordPendingErasure records an erasure of Alice, as jobID, that has not run yet (the runner
// waits for the service's clock, which the tests that call it make fake).
func (env *e2eeEnv) recordPendingErasure(jobID string) error {
	hash, keyID, err := env.svc.engine.UserHash(env.ctx, e2eeAlice)
	if err != nil {
		return err
	}
	_, err = env.svc.engine.Store().CreateErasure(env.ctx, &privacy.ErasureJob{
		JobID: jobID, User: e2eeAlice, UserHash: hash, HashKeyID: keyID, Trigger: TriggerAdmin,
		State: privacy.ErasurePending, CreatedAt: env.svc.now(),
	})
	return err
}

// dummiesTo returns the olm-encrypted to-device messages the bot sent to Alice's reader device.
func (env *e2eeEnv) dummiesTo() []astest.ToDeviceMessage {
	var out []astest.ToDeviceMessage
	for _, msg := range env.hs.ToDevice(e2eeAlice) {
		if msg.DeviceID == e2eeAliceReader && msg.Type == event.ToDeviceEncrypted.Type {
			out = append(out, msg)
		}
	}
	return out
}

// TestUnwedgeSendsADummyOverANewSession sends olm messages from Alice's reader device that
// cannot be decrypted. The key-request workers unwedge the session, as the olm machine would:
// they claim a one-time key of that device and send it a pre-key message over a new session,
// which the device decrypts, also when a session with the device exists (that is the broken
// one), unless that session was made less than an hour ago on the service's clock.
func TestUnwedgeSendsADummyOverANewSession(t *testing.T) {
	const recent = "Not unwedging an olm session: one was made with the device less than an hour ago"
	for _, tc := range []struct {
		name string
		// session: the bot makes an olm session with the device first; after: then the
		// service's clock moves on by after.
		session bool
		after   time.Duration
		msgType id.OlmMsgType
		// unwedged: a new session and its dummy are wanted.
		unwedged bool
	}{
		{name: "no session", msgType: id.OlmMsgTypePreKey, unwedged: true},
		{name: "broken session", session: true, after: 2 * time.Hour, msgType: id.OlmMsgTypeMsg, unwedged: true},
		{name: "session made recently", session: true, after: 30 * time.Minute, msgType: id.OlmMsgTypeMsg},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eachStartedE2EEEnv(t, true, func(t *testing.T, env *e2eeEnv) {
				readerKey := env.reader.Mach.OwnIdentity().IdentityKey
				sessions := 0
				if tc.session {
					olm := env.svc.crypto.Olm()
					device, err := olm.GetOrFetchDeviceByKey(env.ctx, e2eeAlice, readerKey)
					if err != nil || device == nil {
						t.Fatalf("reader device = %v, %v", device, err)
					}
					if err = olm.SendEncryptedToDevice(env.ctx, device, event.ToDeviceDummy, event.Content{}); err != nil {
						t.Fatal(err)
					}
					sessions = 1
				}
				env.svc.clk.(*clock.Fake).Advance(tc.after)
				claims, dummies := len(env.hs.RequestsTo(astest.PatternKeysClaim)), len(env.dummiesTo())
				env.put("w1", nil, []map[string]any{env.wedgedOlm(tc.msgType)})
				if !tc.unwedged {
					// The skip only logs, so this polls: at most 200 times, 100 ms apart.
					for i := 0; !strings.Contains(env.logs.String(), recent); i++ {
						if i == 200 {
							t.Fatal("the unwedge was not skipped within 20 s")
						}
						time.Sleep(100 * time.Millisecond)
					}
					if n := len(env.hs.RequestsTo(astest.PatternKeysClaim)) - claims; n != 0 {
						t.Errorf("%d key claims, want none", n)
					}
					if n := countRows(t, env.db, "crypto_olm_session"); n != sessions {
						t.Errorf("%d olm sessions stored, want %d", n, sessions)
					}
					return
				}
				env.hs.WaitFor(t, 20*time.Second, "the dummy to the reader device", func() bool { return len(env.dummiesTo()) > dummies })
				if n := len(env.hs.RequestsTo(astest.PatternKeysClaim)) - claims; n != 1 {
					t.Errorf("%d key claims, want 1", n)
				}
				if n := countRows(t, env.db, "crypto_olm_session"); n != sessions+1 {
					t.Errorf("%d olm sessions stored, want %d (a new one)", n, sessions+1)
				}
				// The reader handles the messages (an m.dummy is handled, not returned): it then
				// shares the new olm session with the bot's device.
				botKey := env.svc.crypto.Olm().OwnIdentity().IdentityKey
				for _, msg := range env.dummiesTo() {
					evt := &event.Event{Sender: env.svc.as.BotMXID(), Type: event.ToDeviceEncrypted, Content: event.Content{VeryRaw: msg.Content}}
					if err := evt.Content.ParseRaw(evt.Type); err != nil {
						t.Fatal(err)
					}
					content := evt.Content.AsEncrypted()
					if ct, ok := content.OlmCiphertext[readerKey]; !ok || ct.Type != id.OlmMsgTypePreKey {
						t.Errorf("a dummy is not a pre-key message to the reader device: %v", content.OlmCiphertext)
					}
					env.reader.Mach.HandleEncryptedEvent(env.ctx, evt)
				}
				if got, err := env.reader.Mach.CryptoStore.GetSessions(env.ctx, botKey); err != nil || len(got) != sessions+1 {
					t.Errorf("the reader device holds %d olm sessions with the bot (%v), want %d", len(got), err, sessions+1)
				}
			})
		})
	}
}

// TestUnwedgeChecksTheGate records Alice's erasure right after her undecryptable olm message
// passed the lane's gate: the unwedge it asks for is checked against the gate again, so no key
// of her device is claimed and no dummy is sent to it. (The olm machine's own unwedging ran in
// a goroutine outside the gate and did both. The lane's prefetch of her device, before the
// message's transaction, ran before the erasure was recorded; the erasure deletes it.)
func TestUnwedgeChecksTheGate(t *testing.T) {
	const refused = "Not answering a room key request or unwedging: its sender's erasure is pending or recent"
	eachStartedE2EEEnv(t, true, func(t *testing.T, env *e2eeEnv) {
		var once sync.Once
		env.svc.erasureGate.held = func(user id.UserID) {
			once.Do(func() {
				if err := env.recordPendingErasure("er_unwedge"); err != nil {
					t.Error(err)
				}
			})
		}
		claims := len(env.hs.RequestsTo(astest.PatternKeysClaim))
		env.put("w1", nil, []map[string]any{env.wedgedOlm(id.OlmMsgTypePreKey)})
		// The gate check only logs, so this polls: at most 200 times, 100 ms apart.
		for i := 0; !strings.Contains(env.logs.String(), refused) && len(env.dummiesTo()) == 0; i++ {
			if i == 200 {
				t.Fatal("the unwedge was neither refused nor sent within 20 s")
			}
			time.Sleep(100 * time.Millisecond)
		}
		if n := len(env.dummiesTo()); n != 0 {
			t.Errorf("%d dummies sent to the device of a user being erased", n)
		}
		if n := len(env.hs.RequestsTo(astest.PatternKeysClaim)); n != claims {
			t.Errorf("%d key claims for a user being erased, want none", n-claims)
		}
	})
}

// TestOlmSendersForgetTheOldest notes more sender keys than an olmSenders keeps, one of them
// twice: the oldest noted are forgotten first, a key noted again counts from its newest note,
// a taken key is forgotten, and so are the notes of a user forgotten after their erasure.
func TestOlmSendersForgetTheOldest(t *testing.T) {
	var o olmSenders
	key := func(i int) id.SenderKey { return id.SenderKey(fmt.Sprintf("key%d", i)) }
	at := time.Unix(1_700_000_000, 0)
	for i := range olmSenderEntries + 2 {
		o.note(key(i), id.NewUserID(fmt.Sprintf("u%d", i), "example.org"), at)
		if i == 2 {
			o.note(key(0), "@again:example.org", at) // key0 noted again: now newer than key1 and key2
		}
	}
	for i, want := range map[int]bool{0: true, 1: false, 2: false, 3: true, olmSenderEntries + 1: true} {
		got, ok := o.take(key(i))
		if ok != want {
			t.Errorf("take(key%d) found = %v, want %v", i, ok, want)
		}
		if i == 0 && got.sender != "@again:example.org" {
			t.Errorf("key0's sender = %s, want the newest note's", got.sender)
		}
	}
	if _, ok := o.take(key(3)); ok {
		t.Error("a taken key is still noted")
	}
	o.forgetUser("@u4:example.org")
	if _, ok := o.take(key(4)); ok {
		t.Error("a forgotten user's note is still there")
	}
	if _, ok := o.take(key(5)); !ok {
		t.Error("forgetting one user dropped another's note")
	}
}

// TestErasureForgetsTheOlmSendersNotes notes olm messages of Alice and Bob as the lane does,
// then erases Alice: her note is gone from memory, Bob's stays.
func TestErasureForgetsTheOlmSendersNotes(t *testing.T) {
	eachStartedE2EEEnv(t, false, func(t *testing.T, env *e2eeEnv) {
		bob := id.UserID("@bob:example.org")
		env.svc.olmSenders.note("alicekey", e2eeAlice, time.Now())
		env.svc.olmSenders.note("bobkey", bob, time.Now())
		if _, err := env.svc.engine.Erase(env.ctx, e2eeAlice, EraseRequest{Trigger: TriggerAdmin, Modules: []string{e2ee.Module}}); err != nil {
			t.Fatal(err)
		}
		if _, ok := env.svc.olmSenders.take("alicekey"); ok {
			t.Error("the erased user's olm message note is still in memory")
		}
		if _, ok := env.svc.olmSenders.take("bobkey"); !ok {
			t.Error("another user's olm message note was dropped")
		}
	})
}

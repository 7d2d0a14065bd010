package appservice

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/clock"
	"github.com/custodian-matrix/custodian/appservice/privacy"
)

const (
	e2eeAlice       = id.UserID("@alice:example.org")
	e2eeAliceDevice = id.DeviceID("ALICEPHONE")
	// e2eeAliceReader is Alice's second device, a real olm machine on the fake homeserver, which
	// reads what the bot sends her encrypted.
	e2eeAliceReader = id.DeviceID("ALICELAPTOP")
	e2eeDM          = id.RoomID("!dm:example.org")
)

// e2eeEnv is a service with encryption on, on the fake homeserver, which delivers to-device
// messages for the bot back to the service in transactions (MSC2409), and Alice's device: an
// olm account of her own and a megolm session she encrypts with. The bot's device is the one
// start-up creates through the fake's device endpoints.
type e2eeEnv struct {
	t       *testing.T
	ctx     context.Context
	db      *dbutil.Database
	svc     *Service
	hs      *astest.FakeHomeserver
	base    string
	started bool
	// logs has everything the service logged.
	logs *lockedBuffer

	alice *crypto.OlmAccount
	// megolm is Alice's outbound megolm session in the DM.
	megolm *crypto.OutboundGroupSession
	seq    int
	// reader is Alice's device that decrypts the bot's messages; decrypted what it decrypted
	// (an event decrypts once: a second time is a replayed message index).
	reader    *astest.TestDevice
	decrypted map[id.EventID]*event.Event
}

// newE2EEEnv builds the service on db with the vault and encryption on, its rooms known, and
// does not start it: start (or setupCrypto, for a test that drives the service by hand) sets
// encryption up as start-up does. An earlier env on the same db (a restart) is passed as prev:
// the same homeserver, vault key, Alice's device and session.
func newE2EEEnv(t *testing.T, db *dbutil.Database, prev *e2eeEnv, configure func(cfg *Config), bridges ...Bridge) *e2eeEnv {
	t.Helper()
	var hs *astest.FakeHomeserver
	keyFile := ""
	if prev != nil {
		hs = prev.hs
		keyFile = *prev.svc.cfg.Vault.KeyFile
	} else {
		hs = astest.NewFakeHomeserver(t, testDomain, testASToken)
		keyFile, _ = newKeyFile(t)
	}
	cfg := testConfig(hs.URL())
	cfg.Vault = VaultConfig{KeyFile: &keyFile}
	cfg.Encryption = EncryptionConfig{Enabled: true, MSC4190: true, DefaultEncrypted: true, KeyWait: 10 * time.Second}
	// A free port, fixed before the start, so the homeserver knows where to deliver from the
	// first to-device message on (the probe is sent while start runs).
	cfg.AppService.Port = freePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", cfg.AppService.Port)
	if configure != nil {
		configure(cfg)
	}
	reg := testRegistration()
	reg.EphemeralEvents, reg.MSC3202, reg.MSC4190 = true, true, true
	logs := &lockedBuffer{}
	log := zerolog.New(zerolog.MultiLevelWriter(astest.LogWriter(t), logs)).Level(zerolog.DebugLevel)
	svc, err := newService(cfg, reg, bridges, log, db)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(log.WithContext(context.Background()))
	env := &e2eeEnv{t: t, ctx: ctx, db: db, svc: svc, hs: hs, base: base, logs: logs, decrypted: make(map[id.EventID]*event.Event)}
	t.Cleanup(func() {
		cancel()
		if env.started {
			svc.stopServing()
		} else {
			svc.bg.Wait()
		}
	})
	deliverToDevice(hs, svc, func() string { return base })
	if err = svc.upgradeDatabases(ctx); err != nil {
		t.Fatal(err)
	}
	if err = svc.as.BotIntent().EnsureRegistered(ctx); err != nil {
		t.Fatal(err)
	}
	if prev != nil {
		env.alice, env.megolm, env.reader, env.decrypted = prev.alice, prev.megolm, prev.reader, prev.decrypted
		env.seq = prev.seq + 100
	} else {
		env.reader = astest.NewTestDevice(t, hs, e2eeAlice, e2eeAliceReader)
		env.alice = crypto.NewOlmAccount()
		env.megolm, err = crypto.NewOutboundGroupSession(e2eeDM, &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}, nil)
		if err != nil {
			t.Fatal(err)
		}
		env.megolm.Shared = true
		// The room key is taken (and kept) at index 0, before anything is encrypted.
		env.megolm.ShareContent()
	}
	// The DM: the bot and Alice, encrypted, as the homeserver and the state cache know it.
	bot := svc.as.BotMXID()
	for _, user := range []id.UserID{bot, e2eeAlice} {
		hs.SetMembership(e2eeDM, user, event.MembershipJoin)
		if err = svc.stateStore.SetMembership(ctx, e2eeDM, user, event.MembershipJoin); err != nil {
			t.Fatal(err)
		}
	}
	hs.SetState(e2eeDM, event.StateEncryption, "", e2eeAlice, &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1})
	if err = svc.stateStore.SetEncryptionEvent(ctx, e2eeDM, &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}); err != nil {
		t.Fatal(err)
	}
	return env
}

// eachStartedE2EEEnv runs test, on each dialect, on an e2eeEnv of its own that is started, on a
// fake clock set to now when fakeClock is true (the erasure runner then waits for the test).
func eachStartedE2EEEnv(t *testing.T, fakeClock bool, test func(t *testing.T, env *e2eeEnv)) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newE2EEEnv(t, astest.TestDB(t, dialect), nil, nil)
			if fakeClock {
				env.svc.clk = clock.NewFake(time.Now())
			}
			env.start()
			test(t, env)
		})
	}
}

// startedE2EEEnvOnFakeClock returns a started e2eeEnv on a fresh database of dialect, whose
// service runs on the returned fake clock, set to now.
func startedE2EEEnvOnFakeClock(t *testing.T, dialect string) (*e2eeEnv, *clock.Fake) {
	t.Helper()
	env := newE2EEEnv(t, astest.TestDB(t, dialect), nil, nil)
	clk := clock.NewFake(time.Now())
	env.svc.clk = clk
	env.start()
	return env, clk
}

// deliverToDevice makes hs push every to-device message for svc's bot to svc's listener at
// base() in a transaction, as Synapse does with MSC2409.
func deliverToDevice(hs *astest.FakeHomeserver, svc *Service, base func() string) {
	bot := svc.as.BotMXID()
	hs.DeliverToDevice(astest.ToDeviceDelivery{
		URL: base, HSToken: svc.reg.ServerToken,
		Ours: func(userID id.UserID) bool { return userID == bot },
	})
}

// knowAlice stores Alice's device in the bot's crypto store, as a key query would.
func (env *e2eeEnv) knowAlice() {
	env.t.Helper()
	if env.svc.crypto == nil {
		env.t.Fatal("encryption did not come on at start-up")
	}
	signing, identity := env.alice.Keys()
	if err := env.svc.crypto.Store().PutDevice(env.ctx, e2eeAlice, &id.Device{
		UserID: e2eeAlice, DeviceID: e2eeAliceDevice, IdentityKey: identity, SigningKey: signing,
	}); err != nil {
		env.t.Fatal(err)
	}
}

// setupCrypto sets the vault and encryption up as start-up does, without starting the service.
func (env *e2eeEnv) setupCrypto() {
	env.t.Helper()
	env.svc.setupVault(env.ctx)
	env.svc.setupCrypto(env.ctx)
	env.knowAlice()
}

// start starts the service and waits for its to-device probe to come back through a
// transaction.
func (env *e2eeEnv) start() {
	env.t.Helper()
	delivered := env.hs.Delivered()
	if err := env.svc.start(env.ctx); err != nil {
		env.t.Fatal(err)
	}
	env.started = true
	env.knowAlice()
	env.hs.WaitFor(env.t, 20*time.Second, "the to-device probe's delivery", func() bool {
		return env.hs.Delivered() > delivered || env.hs.DeliveryFailures() > 0
	})
	if n := env.hs.DeliveryFailures(); n > 0 {
		env.t.Fatalf("%d to-device transactions were refused", n)
	}
	// The probe's to-device row handled: the tests start from an empty inbox.
	waitDrained(env.t, env.svc.dispatcher)
}

// botDevice returns the device start-up created for the bot.
func (env *e2eeEnv) botDevice() id.DeviceID {
	return env.svc.crypto.Store().DeviceID
}

// shareKey stores Alice's megolm session in the bot's crypto store, as if its room key had come.
func (env *e2eeEnv) shareKey() {
	env.t.Helper()
	signing, identity := env.alice.Keys()
	key := env.megolm.ShareContent().Parsed.(*event.RoomKeyEventContent).SessionKey
	igs, err := crypto.NewInboundGroupSession(identity, signing, e2eeDM, key, 0, 0, nil, false)
	if err != nil {
		env.t.Fatal(err)
	}
	if err = env.svc.crypto.Store().PutGroupSession(env.ctx, igs); err != nil {
		env.t.Fatal(err)
	}
}

// encrypted returns an m.room.encrypted event from Alice in the DM, body encrypted with the
// megolm session ogs (Alice's usual one when nil).
func (env *e2eeEnv) encrypted(ogs *crypto.OutboundGroupSession, body string) map[string]any {
	env.t.Helper()
	if ogs == nil {
		ogs = env.megolm
	}
	env.seq++
	plaintext, err := json.Marshal(map[string]any{
		"room_id": e2eeDM, "type": event.EventMessage.Type,
		"content": map[string]any{"msgtype": event.MsgText, "body": body},
	})
	if err != nil {
		env.t.Fatal(err)
	}
	ciphertext, err := ogs.Encrypt(plaintext)
	if err != nil {
		env.t.Fatal(err)
	}
	_, identity := env.alice.Keys()
	return map[string]any{
		"event_id": fmt.Sprintf("$enc%d", env.seq), "room_id": e2eeDM, "sender": e2eeAlice,
		"type": event.EventEncrypted.Type, "origin_server_ts": 1700000000000 + env.seq,
		"content": map[string]any{
			"algorithm": id.AlgorithmMegolmV1, "sender_key": identity, "device_id": e2eeAliceDevice,
			"session_id": ogs.ID(), "ciphertext": string(ciphertext),
		},
	}
}

// roomKey returns the to-device event that shares ogs's room key with the bot's device: an
// m.room_key olm-encrypted by Alice's device on a new olm session with one of the bot's
// one-time keys, addressed as MSC2409 addresses it.
func (env *e2eeEnv) roomKey(ogs *crypto.OutboundGroupSession) map[string]any {
	env.t.Helper()
	botAccount := env.svc.crypto.Olm().GetAccount()
	if err := botAccount.Internal.GenOneTimeKeys(1); err != nil {
		env.t.Fatal(err)
	}
	otks, err := botAccount.Internal.OneTimeKeys()
	if err != nil {
		env.t.Fatal(err)
	}
	botAccount.Internal.MarkKeysAsPublished()
	if err = env.svc.crypto.Store().PutAccount(env.ctx, botAccount); err != nil {
		env.t.Fatal(err)
	}
	var otk id.Curve25519
	for _, key := range otks {
		otk = key
	}
	botSigning, botIdentity := botAccount.Keys()
	session, err := env.alice.Internal.NewOutboundSession(botIdentity, otk)
	if err != nil {
		env.t.Fatal(err)
	}
	signing, identity := env.alice.Keys()
	payload, err := json.Marshal(map[string]any{
		"sender": e2eeAlice, "sender_device": e2eeAliceDevice, "keys": map[string]any{"ed25519": signing},
		"recipient": env.svc.as.BotMXID(), "recipient_keys": map[string]any{"ed25519": botSigning},
		"type": event.ToDeviceRoomKey.Type, "content": ogs.ShareContent().Parsed,
	})
	if err != nil {
		env.t.Fatal(err)
	}
	msgType, ciphertext, err := session.Encrypt(payload)
	if err != nil {
		env.t.Fatal(err)
	}
	return map[string]any{
		"type": event.ToDeviceEncrypted.Type, "sender": e2eeAlice,
		"to_user_id": env.svc.as.BotMXID(), "to_device_id": env.botDevice(),
		"content": map[string]any{
			"algorithm": id.AlgorithmOlmV1, "sender_key": identity,
			"ciphertext": map[string]any{string(botIdentity): map[string]any{"type": msgType, "body": string(ciphertext)}},
		},
	}
}

// put sends a transaction with events and to-device events to the service.
func (env *e2eeEnv) put(txnID string, events []map[string]any, toDevice []map[string]any) {
	env.t.Helper()
	body := map[string]any{"events": events}
	if toDevice != nil {
		body["de.sorunome.msc2409.to_device"] = toDevice
	}
	data, err := json.Marshal(body)
	if err != nil {
		env.t.Fatal(err)
	}
	if status, merr := do(env.t, env.base, testRequest{http.MethodPut, "/_matrix/app/v1/transactions/" + txnID, testHSToken, string(data)}); status != http.StatusOK {
		env.t.Fatalf("transaction %s = %d %v, want 200", txnID, status, merr)
	}
}

// botMessages returns the bodies of the messages the bot sent to roomID.
func (env *e2eeEnv) botMessages(roomID id.RoomID) []string {
	var out []string
	env.reader.Receive(env.ctx)
	for _, evt := range env.hs.Events(roomID) {
		if evt.Sender != env.svc.as.BotMXID() {
			continue
		}
		var content event.MessageEventContent
		switch evt.Type {
		case event.EventMessage:
			if err := evt.Decode(&content); err != nil {
				env.t.Fatal(err)
			}
		case event.EventEncrypted:
			plain, ok := env.decrypted[evt.EventID]
			if !ok {
				var err error
				if plain, err = env.reader.Decrypt(env.ctx, evt); err != nil {
					env.t.Fatalf("Alice cannot decrypt the bot's message %s: %v", evt.EventID, err)
				}
				env.decrypted[evt.EventID] = plain
			}
			if plain.Type != event.EventMessage {
				continue
			}
			content = *plain.Content.AsMessage()
		default:
			continue
		}
		out = append(out, content.Body)
	}
	return out
}

// waitForBotMessage waits until the bot sent a message to roomID whose body contains substr.
func (env *e2eeEnv) waitForBotMessage(roomID id.RoomID, substr string) {
	env.t.Helper()
	env.hs.WaitFor(env.t, 20*time.Second, "a bot message containing "+substr, func() bool {
		return slices.ContainsFunc(env.botMessages(roomID), func(body string) bool { return strings.Contains(body, substr) })
	})
}

func TestParseTransactionReadsEncryptionData(t *testing.T) {
	bot := deviceTarget{user: "@custodian:x", device: "BOT"}
	toDevice := func(toUser, toDevice string) string {
		return fmt.Sprintf(`{"type":"m.room.encrypted","sender":"@a:x","to_user_id":%q,"to_device_id":%q,"content":{}}`, toUser, toDevice)
	}
	tests := []struct {
		name         string
		target       deviceTarget
		body         string
		wantToDevice int
		wantOther    int
		wantSkipped  int
		wantChanged  []id.UserID
		wantOTK      int // -1: no counts
		wantFallback []id.KeyAlgorithm
	}{
		{"stable to-device for the bot", bot, `{"to_device":[` + toDevice("@custodian:x", "BOT") + `]}`, 1, 0, 0, nil, -1, nil},
		{"unstable to-device for the bot", bot, `{"de.sorunome.msc2409.to_device":[` + toDevice("@custodian:x", "BOT") + `]}`, 1, 0, 0, nil, -1, nil},
		{"stable wins over unstable", bot, `{"to_device":[],"de.sorunome.msc2409.to_device":[` + toDevice("@custodian:x", "BOT") + `]}`, 0, 0, 0, nil, -1, nil},
		{"another device", bot, `{"to_device":[` + toDevice("@custodian:x", "OTHER") + `]}`, 0, 1, 0, nil, -1, nil},
		{"another user", bot, `{"to_device":[` + toDevice("@ghost:x", "BOT") + `]}`, 0, 1, 0, nil, -1, nil},
		{"no address", bot, `{"to_device":[{"type":"m.dummy","sender":"@a:x","content":{}}]}`, 0, 1, 0, nil, -1, nil},
		{"malformed", bot, `{"to_device":[1,{"type":"m.dummy"}]}`, 0, 0, 2, nil, -1, nil},
		{"encryption off", deviceTarget{}, `{"to_device":[` + toDevice("@custodian:x", "BOT") + `],"device_lists":{"changed":["@b:x"]},"device_one_time_keys_count":{"@custodian:x":{"BOT":{"signed_curve25519":3}}}}`, 0, 1, 0, nil, -1, nil},
		{"stable device lists", bot, `{"device_lists":{"changed":["@b:x"],"left":[]}}`, 0, 0, 0, []id.UserID{"@b:x"}, -1, nil},
		{"unstable device lists", bot, `{"org.matrix.msc3202.device_lists":{"changed":["@c:x"]}}`, 0, 0, 0, []id.UserID{"@c:x"}, -1, nil},
		{"stable otk counts", bot, `{"device_one_time_keys_count":{"@custodian:x":{"BOT":{"signed_curve25519":7}}}}`, 0, 0, 0, nil, 7, nil},
		{"unstable otk counts", bot, `{"org.matrix.msc3202.device_one_time_keys_count":{"@custodian:x":{"BOT":{"signed_curve25519":9}}}}`, 0, 0, 0, nil, 9, nil},
		{"otk counts of another device", bot, `{"device_one_time_keys_count":{"@custodian:x":{"OTHER":{"signed_curve25519":9}}}}`, 0, 0, 0, nil, -1, nil},
		{"stable fallback keys", bot, `{"device_unused_fallback_key_types":{"@custodian:x":{"BOT":["signed_curve25519"]}}}`, 0, 0, 0, nil, -1, []id.KeyAlgorithm{id.KeyAlgorithmSignedCurve25519}},
		{"unstable fallback keys", bot, `{"org.matrix.msc3202.device_unused_fallback_key_types":{"@custodian:x":{"BOT":["signed_curve25519"]}}}`, 0, 0, 0, nil, -1, []id.KeyAlgorithm{id.KeyAlgorithmSignedCurve25519}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pt, err := parseTransactionFor("t", []byte(tt.body), tt.target)
			if err != nil {
				t.Fatal(err)
			}
			if pt.toDevice != tt.wantToDevice || pt.otherDevice != tt.wantOther || pt.skipped != tt.wantSkipped {
				t.Errorf("to-device kept/dropped/skipped = %d/%d/%d, want %d/%d/%d", pt.toDevice, pt.otherDevice, pt.skipped, tt.wantToDevice, tt.wantOther, tt.wantSkipped)
			}
			kept := 0
			for _, evt := range pt.events {
				if evt.ToDevice {
					kept++
					if evt.Sender != "@a:x" || evt.RoomID != "" || evt.EventID != "" {
						t.Errorf("to-device inbox event = sender %s, room %q, event %q; want @a:x and no room or event ID", evt.Sender, evt.RoomID, evt.EventID)
					}
				}
			}
			if kept != tt.wantToDevice {
				t.Errorf("to-device inbox events = %d, want %d", kept, tt.wantToDevice)
			}
			if !slices.Equal(pt.changedDevices, tt.wantChanged) {
				t.Errorf("changed devices = %v, want %v", pt.changedDevices, tt.wantChanged)
			}
			gotOTK := -1
			if pt.otkCounts != nil {
				gotOTK = pt.otkCounts.SignedCurve25519
				if pt.otkCounts.UserID != bot.user || pt.otkCounts.DeviceID != bot.device {
					t.Errorf("otk counts addressed to %s/%s, want %s/%s", pt.otkCounts.UserID, pt.otkCounts.DeviceID, bot.user, bot.device)
				}
			}
			if gotOTK != tt.wantOTK {
				t.Errorf("otk count = %d, want %d", gotOTK, tt.wantOTK)
			}
			if !slices.Equal(pt.fallbackKeys, tt.wantFallback) || pt.hasFallback != (tt.wantFallback != nil) {
				t.Errorf("fallback keys = %v (%v), want %v", pt.fallbackKeys, pt.hasFallback, tt.wantFallback)
			}
		})
	}
}

// TestIngestStoresToDeviceEventsSealedWithTheirSender ingests a transaction carrying a room
// event, a to-device event for the bot's device, one for another device and a device list
// change, with the dispatcher stopped so the rows stay: the to-device event for the bot is in
// the inbox, sealed, marked to_device, with its sender; the other is not; the changed user is
// marked outdated by the same commit.
func TestIngestStoresToDeviceEventsSealedWithTheirSender(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newE2EEEnv(t, astest.TestDB(t, dialect), nil, nil)
			ctx := env.ctx
			env.setupCrypto()
			env.svc.dispatcher.stop(ctx) // nothing is handled: the rows stay for the test to read
			// The key fetch after the commit fails: the mark of the commit stays to be read.
			env.hs.Fail(astest.PatternKeysQuery, http.StatusBadGateway, "M_UNKNOWN")
			srv := httptest.NewServer(env.svc.router())
			t.Cleanup(srv.Close)
			env.base = srv.URL
			bob := id.UserID("@bob:example.org")
			if err := env.svc.crypto.Store().PutDevices(ctx, bob, map[id.DeviceID]*id.Device{}); err != nil {
				t.Fatal(err)
			}
			other := env.roomKey(env.megolm)
			other["to_device_id"] = "SOMEONEELSE"
			body, _ := json.Marshal(map[string]any{
				"events":                          []map[string]any{messageEvent("$plain", string(e2eeDM), string(e2eeAlice), "hello")},
				"de.sorunome.msc2409.to_device":   []map[string]any{env.roomKey(env.megolm), other},
				"org.matrix.msc3202.device_lists": map[string]any{"changed": []id.UserID{bob}},
			})
			if status, _ := do(t, env.base, testRequest{http.MethodPut, "/_matrix/app/v1/transactions/td1", testHSToken, string(body)}); status != http.StatusOK {
				t.Fatalf("transaction = %d, want 200", status)
			}
			rows, err := env.db.Query(ctx, `SELECT room_id, sender, to_device, event_json, event_sealed IS NOT NULL FROM as_inbox ORDER BY seq`)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for rows.Next() {
				var room, sender, plain string
				var toDevice, sealed bool
				if err = rows.Scan(&room, &sender, &toDevice, &plain, &sealed); err != nil {
					t.Fatal(err)
				}
				got = append(got, fmt.Sprintf("%q %s to_device=%v plaintext=%v sealed=%v", room, sender, toDevice, plain != "", sealed))
			}
			_ = rows.Close()
			want := []string{
				fmt.Sprintf("%q %s to_device=false plaintext=false sealed=true", e2eeDM, e2eeAlice),
				fmt.Sprintf("%q %s to_device=true plaintext=false sealed=true", "", e2eeAlice),
			}
			if !slices.Equal(got, want) {
				t.Errorf("inbox rows:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			outdated, err := env.svc.crypto.Store().GetOutdatedTrackedUsers(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(outdated, bob) {
				t.Errorf("outdated tracked users = %v, want %s among them", outdated, bob)
			}
			// The sender's inbox rows are theirs: read back, both open, the to-device one too.
			pending, err := env.svc.db.Inbox.Pending(ctx, 0, 10)
			if err != nil {
				t.Fatal(err)
			}
			for _, ie := range pending {
				if ie.OpenErr != nil {
					t.Errorf("inbox row %d does not open: %v", ie.Seq, ie.OpenErr)
				}
			}
		})
	}
}

// TestEncryptedCommandIsDecryptedAndAnswered ingests an encrypted !help in the DM: the bot
// answers. The inbox row holds the event as it came (the ciphertext), sealed.
func TestEncryptedCommandIsDecryptedAndAnswered(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newE2EEEnv(t, astest.TestDB(t, dialect), nil, nil)
			env.start()
			env.shareKey()
			env.put("h1", []map[string]any{env.encrypted(nil, "!help")}, nil)
			env.waitForBotMessage(e2eeDM, "help")
		})
	}
}

// TestEncryptedEventReplayAfterCrashDecryptsAgain handles an encrypted !help in a first run that
// dies before marking it done; the next run replays it from the inbox, decrypts it again and
// answers with the same transaction ID.
func TestEncryptedEventReplayAfterCrashDecryptsAgain(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			db := astest.TestDB(t, dialect)
			env1 := newE2EEEnv(t, db, nil, nil)
			env1.setupCrypto()
			env1.shareKey()
			env1.svc.bot.init(env1.ctx)
			acceptDirect(t, env1.svc, "c1", env1.encrypted(nil, "!help"))
			pending, err := env1.svc.db.Inbox.Pending(env1.ctx, 0, 10)
			if err != nil || len(pending) != 1 {
				t.Fatalf("pending = %d events, %v; want 1", len(pending), err)
			}
			// Handled, never marked done: the process dies here.
			env1.svc.handleInboxEvent(env1.ctx, pending[0])
			first := env1.hs.RequestsTo(astest.PatternSend)
			if msgs := env1.botMessages(e2eeDM); len(first) != 1 || len(msgs) != 1 || !strings.Contains(msgs[0], "help") {
				t.Fatalf("first run sent %d messages (%q), want the help", len(first), msgs)
			}

			env2 := newE2EEEnv(t, db, env1, nil)
			env2.start()
			env2.waitForBotMessage(e2eeDM, "help")
			// The same homeserver: its first send was the first run's.
			second := env2.hs.RequestsTo(astest.PatternSend)[len(first):]
			if got, want := second[0].PathValues["txnID"], first[0].PathValues["txnID"]; got != want {
				t.Errorf("replayed answer's transaction ID = %q, want the first run's %q", got, want)
			}
			env2.svc.dispatcher.stop(env2.ctx)
			if n := countRows(t, db, "as_inbox"); n != 0 {
				t.Errorf("inbox rows after the replay = %d, want 0", n)
			}
		})
	}
}

// TestRoomKeyArrivingLaterUnblocksTheEvent ingests an encrypted !help whose room key has not
// come. With one worker, another room's event is handled meanwhile (the waiting room gave its
// slot back). Then a transaction brings the room key, olm-encrypted by Alice's device to the
// bot's: the to-device lane stores it, and the waiting event is decrypted and answered.
func TestRoomKeyArrivingLaterUnblocksTheEvent(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			br := newRecordingBridge("rec")
			env := newE2EEEnv(t, astest.TestDB(t, dialect), nil, func(cfg *Config) {
				cfg.AppService.Workers = 1
				cfg.Encryption.KeyWait = 30 * time.Second
			}, br)
			env.start()
			other := id.RoomID("!other:example.org")
			if err := br.host.ClaimRoom(env.ctx, other, Provenance{}); err != nil {
				t.Fatal(err)
			}
			env.put("k1", []map[string]any{env.encrypted(nil, "!help")}, nil)
			env.put("k2", []map[string]any{messageEvent("$other", string(other), string(e2eeAlice), "meanwhile")}, nil)
			if got := br.next(t).ID; got != "$other" {
				t.Fatalf("bridge handled %s, want $other", got)
			}
			if msgs := env.botMessages(e2eeDM); len(msgs) != 0 {
				t.Fatalf("bot answered %q before the room key came", msgs)
			}
			env.put("k3", nil, []map[string]any{env.roomKey(env.megolm)})
			env.waitForBotMessage(e2eeDM, "help")
			env.svc.dispatcher.stop(env.ctx)
			if n := countRows(t, env.db, "as_inbox"); n != 0 {
				t.Errorf("inbox rows after the key came = %d, want 0 (the to-device row done with its key)", n)
			}
		})
	}
}

// TestMissingRoomKeyIsToldOnceWithoutContent ingests two encrypted messages of a session whose
// key never comes: the bot asks Alice's devices for it, then tells her once, in the DM, with
// none of the content.
func TestMissingRoomKeyIsToldOnceWithoutContent(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newE2EEEnv(t, astest.TestDB(t, dialect), nil, func(cfg *Config) {
				cfg.Encryption.KeyWait = 300 * time.Millisecond
			})
			env.start()
			unknown, err := crypto.NewOutboundGroupSession(e2eeDM, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			unknown.Shared = true
			env.put("u1", []map[string]any{env.encrypted(unknown, "marker-one"), env.encrypted(unknown, "marker-two")}, nil)
			env.waitForBotMessage(e2eeDM, "couldn't read")
			waitDrained(t, env.svc.dispatcher)
			env.svc.dispatcher.stop(env.ctx)
			if n := countRows(t, env.db, "as_inbox"); n != 0 {
				t.Errorf("inbox rows = %d, want 0: undecryptable events are done once told", n)
			}
			msgs := env.botMessages(e2eeDM)
			if len(msgs) != 1 {
				t.Fatalf("bot messages = %q, want exactly one notice", msgs)
			}
			if strings.Contains(msgs[0], "marker") {
				t.Errorf("notice %q carries the message's content", msgs[0])
			}
			requested := slices.ContainsFunc(env.hs.Requests(), func(r astest.Request) bool {
				return strings.Contains(r.Path, "/sendToDevice/"+event.ToDeviceRoomKeyRequest.Type+"/")
			})
			if !requested {
				t.Error("the bot never asked Alice's devices for the missing room key")
			}
		})
	}
}

// TestEncryptedSecretIsRedactedAndLeavesNoPlaintext ingests an encrypted !irc login: the bot
// redacts the encrypted event, and the password is nowhere in the SQLite files.
func TestEncryptedSecretIsRedactedAndLeavesNoPlaintext(t *testing.T) {
	br := secretBridge{newRecordingBridge("irc")}
	db := astest.TestDB(t, astest.SQLite)
	env := newE2EEEnv(t, db, nil, nil, br)
	env.start()
	env.shareKey()
	marker := "e2ee-password-" + strings.Repeat("z", 8)
	evt := env.encrypted(nil, "!irc login "+marker)
	evtID := evt["event_id"].(string)
	env.put("s1", []map[string]any{evt}, nil)
	env.hs.WaitFor(t, 20*time.Second, "the redaction of the encrypted command", func() bool {
		return slices.ContainsFunc(env.hs.RequestsTo(astest.PatternRedact), func(r astest.Request) bool {
			return r.PathValues["eventID"] == evtID
		})
	})
	env.svc.dispatcher.stop(env.ctx)
	data, path := sqliteFiles(t, db)
	if bytes.Contains(data, []byte(marker)) {
		t.Errorf("the password is in %s, -wal or -shm", path)
	}
	for _, r := range env.hs.Requests() {
		if bytes.Contains(r.Body, []byte(marker)) {
			t.Errorf("the password was sent to the homeserver in %s %s", r.Method, r.Path)
		}
	}
	br.assertNoEvent(t, 100*time.Millisecond)
}

// waitDrained waits until the dispatcher has no event queued or being handled, and no room key
// request the lane queued is waiting for its answer.
func waitDrained(t *testing.T, d *dispatcher) {
	t.Helper()
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	for {
		d.lock.Lock()
		backlog, ch := d.backlog, d.drained
		d.lock.Unlock()
		if backlog == 0 {
			break
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("the dispatcher still has %d events after 30s", backlog)
		}
	}
	for {
		pending, idle := d.svc.keyRequests.state()
		if pending == 0 {
			return
		}
		select {
		case <-idle:
		case <-deadline.C:
			t.Fatalf("%d room key requests still unanswered after 30s", pending)
		}
	}
}

// TestToDeviceEventCommitsWithItsRowOrNotAtAll makes the deletion of a to-device inbox row fail
// (an SQLite trigger): the room key, the new olm session and the spent one-time key roll back
// with it, and the row stays. Once deleting works again, the retry (on the service's clock)
// decrypts the same olm message again and commits all of it with the row's end.
func TestToDeviceEventCommitsWithItsRowOrNotAtAll(t *testing.T) {
	db := astest.TestDB(t, astest.SQLite)
	env := newE2EEEnv(t, db, nil, nil)
	clk := clock.NewFake(time.Now())
	env.svc.clk = clk
	env.start()
	if _, err := db.Exec(env.ctx, `CREATE TRIGGER inbox_no_delete BEFORE DELETE ON as_inbox
		BEGIN SELECT RAISE(ABORT, 'injected failure'); END`); err != nil {
		t.Fatal(err)
	}
	env.put("f1", nil, []map[string]any{env.roomKey(env.megolm)})
	if err := clk.BlockUntilInterval(astest.Within(t, 20*time.Second), time.Second); err != nil {
		t.Fatal(err)
	}
	counts := func() string {
		return fmt.Sprintf("inbound sessions %d, olm sessions %d, inbox rows %d",
			countRows(t, db, "crypto_megolm_inbound_session"), countRows(t, db, "crypto_olm_session"), countRows(t, db, "as_inbox"))
	}
	if got, want := counts(), "inbound sessions 0, olm sessions 0, inbox rows 1"; got != want {
		t.Fatalf("after a failed commit: %s; want %s", got, want)
	}
	if _, err := db.Exec(env.ctx, `DROP TRIGGER inbox_no_delete`); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Second)
	waitDrained(t, env.svc.dispatcher)
	if got, want := counts(), "inbound sessions 1, olm sessions 1, inbox rows 0"; got != want {
		t.Fatalf("after the retry: %s; want %s", got, want)
	}
}

// TestMemberChangeInEncryptedRoomDropsTheOutboundSession ingests a join to the encrypted DM:
// the bot's outbound megolm session there is dropped, so the newcomer gets the next room key;
// in a room not known as encrypted, a join changes nothing.
func TestMemberChangeInEncryptedRoomDropsTheOutboundSession(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newE2EEEnv(t, astest.TestDB(t, dialect), nil, nil)
			env.start()
			plainRoom := id.RoomID("!plain:example.org")
			store := env.svc.crypto.Store()
			for _, room := range []id.RoomID{e2eeDM, plainRoom} {
				ogs, err := crypto.NewOutboundGroupSession(room, nil, nil)
				if err != nil {
					t.Fatal(err)
				}
				if err = store.AddOutboundGroupSession(env.ctx, ogs); err != nil {
					t.Fatal(err)
				}
			}
			join := func(evtID string, room id.RoomID) map[string]any {
				return map[string]any{
					"event_id": evtID, "room_id": room, "sender": "@bob:example.org", "state_key": "@bob:example.org",
					"type": event.StateMember.Type, "origin_server_ts": 1700000000000, "content": map[string]any{"membership": "join"},
				}
			}
			env.put("m1", []map[string]any{join("$j1", e2eeDM), join("$j2", plainRoom)}, nil)
			waitDrained(t, env.svc.dispatcher)
			for _, tt := range []struct {
				room id.RoomID
				kept bool
			}{{e2eeDM, false}, {plainRoom, true}} {
				sess, err := store.GetOutboundGroupSession(env.ctx, tt.room)
				if err != nil {
					t.Fatal(err)
				}
				if (sess != nil) != tt.kept {
					t.Errorf("outbound session of %s kept = %v, want %v", tt.room, sess != nil, tt.kept)
				}
			}
		})
	}
}

// TestToDeviceTransactionPassesAFullBacklog fills the backlog with room events a bridge holds
// on to: a transaction carrying a to-device event is still admitted at once, and its room key
// is stored while the room events wait.
func TestToDeviceTransactionPassesAFullBacklog(t *testing.T) {
	br := &gatedBridge{recordingBridge: newRecordingBridge("rec"), release: make(chan struct{})}
	env := newE2EEEnv(t, astest.TestDB(t, astest.SQLite), nil, func(cfg *Config) {
		cfg.AppService.MaxBacklog = 2
	}, br)
	env.start()
	t.Cleanup(func() { close(br.release) })
	room := id.RoomID("!portal:example.org")
	if err := br.host.ClaimRoom(env.ctx, room, Provenance{}); err != nil {
		t.Fatal(err)
	}
	env.put("b1", []map[string]any{
		messageEvent("$b1", string(room), string(e2eeAlice), "one"),
		messageEvent("$b2", string(room), string(e2eeAlice), "two"),
	}, nil)
	stored := env.svc.e2ee.keysChanged()
	body, err := json.Marshal(map[string]any{"de.sorunome.msc2409.to_device": []map[string]any{env.roomKey(env.megolm)}})
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPut, env.base+"/_matrix/app/v1/transactions/b2", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testHSToken)
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("a transaction with a to-device event was held behind a full backlog: %v", err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("transaction = %d, want 200", resp.StatusCode)
	}
	select {
	case <-stored:
	case <-time.After(10 * time.Second):
		t.Fatal("the to-device event was not handled while the room events waited")
	}
	if !env.svc.hasRoomKey(env.ctx, sessionRef{room: e2eeDM, session: env.megolm.ID()}) {
		t.Error("the room key is not stored")
	}
}

// TestKeyCountsAndDeviceListsActAfterTheCommit ingests a transaction saying the bot's device has
// no one-time keys left and a tracked user's devices changed: after the acknowledgement the bot
// uploads new one-time keys and queries the user's device keys.
func TestKeyCountsAndDeviceListsActAfterTheCommit(t *testing.T) {
	env := newE2EEEnv(t, astest.TestDB(t, astest.SQLite), nil, nil)
	env.start()
	bob := id.UserID("@bob:example.org")
	if err := env.svc.crypto.Store().PutDevices(env.ctx, bob, map[id.DeviceID]*id.Device{}); err != nil {
		t.Fatal(err)
	}
	bot := env.svc.as.BotMXID()
	// Start-up uploaded the new device's keys and queried its own: only requests after the
	// transaction count.
	before := map[string]int{}
	for _, pattern := range []string{astest.PatternKeysUpload, astest.PatternKeysQuery} {
		before[pattern] = len(env.hs.RequestsTo(pattern))
	}
	body, err := json.Marshal(map[string]any{
		"events":                          []map[string]any{},
		"org.matrix.msc3202.device_lists": map[string]any{"changed": []id.UserID{bob}},
		"org.matrix.msc3202.device_one_time_keys_count": map[id.UserID]any{
			bot: map[id.DeviceID]any{env.botDevice(): map[string]int{"signed_curve25519": 0}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if status, _ := do(t, env.base, testRequest{http.MethodPut, "/_matrix/app/v1/transactions/o1", testHSToken, string(body)}); status != http.StatusOK {
		t.Fatalf("transaction = %d, want 200", status)
	}
	for _, pattern := range []string{astest.PatternKeysUpload, astest.PatternKeysQuery} {
		env.hs.WaitFor(t, 20*time.Second, "a request "+pattern, func() bool {
			return len(env.hs.RequestsTo(pattern)) > before[pattern]
		})
	}
}

// TestStateStoreFindsSharedEncryptedRooms asks the state store, as the olm machine does when a
// user's devices change (to rotate the room keys they had), for the encrypted rooms the bot
// shares with Alice: the DM, found in Custodian's own state tables.
func TestStateStoreFindsSharedEncryptedRooms(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newE2EEEnv(t, astest.TestDB(t, dialect), nil, nil)
			rooms, err := env.svc.stateStore.FindSharedRooms(env.ctx, e2eeAlice)
			if err != nil {
				t.Fatalf("FindSharedRooms = %v", err)
			}
			if !slices.Equal(rooms, []id.RoomID{e2eeDM}) {
				t.Errorf("FindSharedRooms = %v, want [%s]", rooms, e2eeDM)
			}
		})
	}
}

// TestToDeviceEventOfSenderBeingErasedIsDropped records an erasure of Alice that has not run yet
// (the runner waits on the fake clock), then delivers her room key: the row is dropped without
// reaching the olm machine, so neither her olm session nor her room key is stored, and the
// device lists she changed are not fetched.
func TestToDeviceEventOfSenderBeingErasedIsDropped(t *testing.T) {
	eachStartedE2EEEnv(t, true, func(t *testing.T, env *e2eeEnv) {
		db := env.db
		if err := env.recordPendingErasure("er_todevice"); err != nil {
			t.Fatal(err)
		}
		queries := len(env.hs.RequestsTo(astest.PatternKeysQuery))
		env.put("e1", nil, []map[string]any{env.roomKey(env.megolm)})
		waitDrained(t, env.svc.dispatcher)
		got := fmt.Sprintf("inbound sessions %d, olm sessions %d, inbox rows %d",
			countRows(t, db, "crypto_megolm_inbound_session"), countRows(t, db, "crypto_olm_session"), countRows(t, db, "as_inbox"))
		if want := "inbound sessions 0, olm sessions 0, inbox rows 0"; got != want {
			t.Fatalf("after a to-device event of a sender being erased: %s; want %s", got, want)
		}
		if n := len(env.hs.RequestsTo(astest.PatternKeysQuery)); n != queries {
			t.Errorf("%d key queries after the event, want %d", n, queries)
		}
		// Her device list change: the users left after the filter are none.
		if users := env.svc.usersNotBeingErased(env.ctx, []id.UserID{e2eeAlice, "@bob:example.org"}); !slices.Equal(users, []id.UserID{"@bob:example.org"}) {
			t.Errorf("users whose keys are fetched = %v, want only bob", users)
		}
	})
}

// TestToDeviceEventWithEncryptionOffIsDropped stores a to-device row in a run with encryption
// on, then handles it in a run with encryption off in the config (no olm machine): the row is
// deleted, since nothing could read it and kept it would stay in the inbox forever; and ingest
// stores no to-device event in that run.
func TestToDeviceEventWithEncryptionOffIsDropped(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			db := astest.TestDB(t, dialect)
			env1 := newE2EEEnv(t, db, nil, nil)
			env1.start()
			env1.svc.dispatcher.stop(env1.ctx) // the row is stored, and this run never handles it
			env1.put("o1", nil, []map[string]any{env1.roomKey(env1.megolm)})
			if n := countRows(t, db, "as_inbox"); n != 1 {
				t.Fatalf("%d inbox rows stored, want 1", n)
			}
			late := env1.roomKey(env1.megolm)
			env2 := newE2EEEnv(t, db, env1, func(cfg *Config) { cfg.Encryption.Enabled = false })
			if err := env2.svc.start(env2.ctx); err != nil {
				t.Fatal(err)
			}
			env2.started = true
			if env2.svc.crypto != nil {
				t.Fatal("svc.crypto is set with encryption off")
			}
			// The replay holds the ingest lock until it queued every unfinished row.
			env2.svc.ingestLock.Lock()
			queued := env2.svc.dispatcher.backlogNow()
			env2.svc.ingestLock.Unlock()
			if queued > 1 {
				t.Fatalf("%d events queued by the replay, want at most the one row", queued)
			}
			waitDrained(t, env2.svc.dispatcher)
			if n := countRows(t, db, "as_inbox"); n != 0 {
				t.Fatalf("%d inbox rows after handling with encryption off, want 0", n)
			}
			// Ingest does not store what the lane would drop: a room key for the bot's device (still
			// recorded in the crypto store) arriving with encryption off.
			env2.put("o2", nil, []map[string]any{late})
			stored := metricValue(t, env2.svc.metrics.eventsReceived.WithLabelValues("to_device"))
			dropped := metricValue(t, env2.svc.metrics.eventsReceived.WithLabelValues("to_device_dropped"))
			if stored != 0 || dropped != 1 {
				t.Errorf("to-device events stored by ingest with encryption off = %v, dropped = %v; want 0 and 1", stored, dropped)
			}
			if n := countRows(t, db, "crypto_megolm_inbound_session"); n != 0 {
				t.Fatalf("%d room keys stored with encryption off, want 0", n)
			}
		})
	}
}

// TestToDeviceEventWaitsForAStartWithTheMachine restarts the service with encryption enabled
// but its set-up failing (the homeserver refuses the bot's device), then once more with it
// working. The to-device rows of the run without the olm machine, a room key replayed from the
// inbox and one arriving in that run, are neither handled nor dropped: they stay in the inbox,
// counted in the inbox depth, while room events go on being handled; the next start with the
// machine stores both room keys. When Alice is erased in the run without the machine (a real
// erasure), her kept rows no longer count and the next start handles none of them: no crypto
// row names her.
func TestToDeviceEventWaitsForAStartWithTheMachine(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		for _, erased := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/erased=%v", dialect, erased), func(t *testing.T) {
				db := astest.TestDB(t, dialect)
				env1 := newE2EEEnv(t, db, nil, nil)
				env1.start()
				env1.svc.dispatcher.stop(env1.ctx) // the row is stored, and this run never handles it
				env1.put("w1", nil, []map[string]any{env1.roomKey(env1.megolm)})
				second, err := crypto.NewOutboundGroupSession(e2eeDM, &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}, nil)
				if err != nil {
					t.Fatal(err)
				}
				second.Shared = true
				late := env1.roomKey(second)

				env1.hs.Fail(astest.PatternPutDevice, http.StatusBadRequest, "M_UNKNOWN")
				env2 := newE2EEEnv(t, db, env1, nil)
				if err = env2.svc.start(env2.ctx); err != nil {
					t.Fatal(err)
				}
				env2.started = true
				if env2.svc.crypto != nil {
					t.Fatal("svc.crypto is set although the homeserver refused the bot's device")
				}
				waitDrained(t, env2.svc.dispatcher)
				message := map[string]any{
					"event_id": "$plain1", "room_id": "!other:example.org", "sender": e2eeAlice,
					"type": event.EventMessage.Type, "origin_server_ts": 1700000000000,
					"content": map[string]any{"msgtype": event.MsgText, "body": "hello"},
				}
				env2.put("w2", []map[string]any{message}, []map[string]any{late})
				waitDrained(t, env2.svc.dispatcher)
				waitDone(t, env2, "$plain1")
				if n := countRows(t, db, "as_inbox"); n != 2 {
					t.Errorf("%d inbox rows in the run without the olm machine, want the 2 to-device rows (the room event handled)", n)
				}
				if n := env2.svc.dispatcher.keptToDevice(); n != 2 {
					t.Errorf("keptToDevice() = %d, want 2", n)
				}
				if depth := metricValue(t, env2.svc.metrics.inboxDepth); depth != 2 {
					t.Errorf("custodian_inbox_depth = %v, want 2 (the kept to-device rows)", depth)
				}
				if n := countRows(t, db, "crypto_megolm_inbound_session"); n != 0 {
					t.Fatalf("%d room keys stored without the olm machine, want 0", n)
				}
				wantKeys := 2
				if erased {
					// Alice's erasure deletes her rows: they no longer count.
					if _, err = env2.svc.engine.Erase(env2.ctx, e2eeAlice, EraseRequest{Trigger: TriggerAdmin}); err != nil {
						t.Fatal(err)
					}
					if depth := metricValue(t, env2.svc.metrics.inboxDepth); depth != 0 {
						t.Errorf("custodian_inbox_depth = %v after the sender's erasure, want 0", depth)
					}
					wantKeys = 0
				}
				env2.svc.stopServing()
				env2.started = false

				env1.hs.Unfail(astest.PatternPutDevice)
				env3 := newE2EEEnv(t, db, env2, nil)
				env3.startBare()
				if n := countRows(t, db, "as_inbox"); n != 0 {
					t.Errorf("%d inbox rows after a start with the olm machine, want 0", n)
				}
				if n := countRows(t, db, "crypto_megolm_inbound_session"); n != wantKeys {
					t.Errorf("%d room keys stored after a start with the olm machine, want %d", n, wantKeys)
				}
				if _, identity := env1.alice.Keys(); erased {
					if rows := cryptoRowsOf(t, db, e2eeAlice, identity); len(rows) > 0 {
						t.Errorf("crypto rows naming alice after the start that followed her erasure: %v", rows)
					}
				}
			})
		}
	}
}

// metricValue returns the value of one of the service's gauges or counters.
func metricValue(t testing.TB, c prometheus.Metric) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	if m.Gauge != nil {
		return m.GetGauge().GetValue()
	}
	return m.GetCounter().GetValue()
}

// TestToDeviceEventIsKeptWhileTheProbeFailed handles a room key while the start-up probe has
// not seen the homeserver deliver to-device events (encryptionActive false, the olm machine
// present): the machine keeps up, so the key is stored and usable once a later probe comes back.
func TestToDeviceEventIsKeptWhileTheProbeFailed(t *testing.T) {
	db := astest.TestDB(t, astest.SQLite)
	env := newE2EEEnv(t, db, nil, nil)
	env.start()
	env.svc.dispatcher.stop(env.ctx)
	env.svc.cryptoState.broken.Store(true)
	env.put("o1", nil, []map[string]any{env.roomKey(env.megolm)})
	rows, err := env.svc.db.Inbox.Pending(env.ctx, 0, 10)
	if err != nil || len(rows) != 1 || !rows[0].ToDevice {
		t.Fatalf("pending inbox rows = %d (%v), want the one to-device row", len(rows), err)
	}
	env.svc.handleToDeviceRow(env.ctx, rows[0])
	if n := countRows(t, db, "as_inbox"); n != 0 {
		t.Fatalf("%d inbox rows after handling, want 0", n)
	}
	if n := countRows(t, db, "crypto_megolm_inbound_session"); n != 1 {
		t.Fatalf("%d room keys stored while the probe had failed, want 1", n)
	}
}

// TestFailedCryptoWriteKeepsTheToDeviceRow makes storing the room key fail (a trigger) while the
// rest of the to-device transaction works: the olm machine only logs the failure, yet the
// transaction must roll back, so the row stays and no olm session is kept without its room
// key. On SQLite a failed statement does not abort the transaction by itself. Once the writes
// work again, the retry stores both.
func TestFailedCryptoWriteKeepsTheToDeviceRow(t *testing.T) {
	inject := map[string][2]string{
		astest.SQLite: {`CREATE TRIGGER megolm_no_insert BEFORE INSERT ON crypto_megolm_inbound_session
			BEGIN SELECT RAISE(ABORT, 'injected failure'); END`, `DROP TRIGGER megolm_no_insert`},
		astest.Postgres: {`CREATE FUNCTION megolm_fail() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$ LANGUAGE plpgsql;
			CREATE TRIGGER megolm_no_insert BEFORE INSERT ON crypto_megolm_inbound_session FOR EACH ROW EXECUTE FUNCTION megolm_fail()`,
			`DROP TRIGGER megolm_no_insert ON crypto_megolm_inbound_session`},
	}
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env, clk := startedE2EEEnvOnFakeClock(t, dialect)
			db := env.db
			if _, err := db.Exec(env.ctx, inject[dialect][0]); err != nil {
				t.Fatal(err)
			}
			env.put("w1", nil, []map[string]any{env.roomKey(env.megolm)})
			if err := clk.BlockUntilInterval(astest.Within(t, 20*time.Second), time.Second); err != nil {
				t.Fatal(err)
			}
			counts := func() string {
				return fmt.Sprintf("inbound sessions %d, olm sessions %d, inbox rows %d",
					countRows(t, db, "crypto_megolm_inbound_session"), countRows(t, db, "crypto_olm_session"), countRows(t, db, "as_inbox"))
			}
			if got, want := counts(), "inbound sessions 0, olm sessions 0, inbox rows 1"; got != want {
				t.Fatalf("after a failed room key write: %s; want %s", got, want)
			}
			if _, err := db.Exec(env.ctx, inject[dialect][1]); err != nil {
				t.Fatal(err)
			}
			clk.Advance(time.Second)
			waitDrained(t, env.svc.dispatcher)
			if got, want := counts(), "inbound sessions 1, olm sessions 1, inbox rows 0"; got != want {
				t.Fatalf("after the retry: %s; want %s", got, want)
			}
		})
	}
}

// keyRequest returns an m.room_key_request from Alice's reader device for a megolm session of
// the DM, addressed to the bot's device.
func (env *e2eeEnv) keyRequest(requestID string, session id.SessionID) map[string]any {
	_, identity := env.alice.Keys()
	return map[string]any{
		"type": event.ToDeviceRoomKeyRequest.Type, "sender": e2eeAlice,
		"to_user_id": env.svc.as.BotMXID(), "to_device_id": env.botDevice(),
		"content": map[string]any{
			"action": event.KeyRequestActionRequest, "requesting_device_id": e2eeAliceReader, "request_id": requestID,
			"body": map[string]any{"algorithm": id.AlgorithmMegolmV1, "room_id": e2eeDM, "sender_key": identity, "session_id": session},
		},
	}
}

// cryptoRowsOf returns, per crypto table, the rows that name user by user ID or by one of
// keys (their devices' identity keys); tables without any are left out.
func cryptoRowsOf(t *testing.T, db *dbutil.Database, user id.UserID, keys ...id.IdentityKey) map[string]int {
	t.Helper()
	queries := map[string]string{
		"crypto_device":                         `SELECT COUNT(*) FROM crypto_device WHERE user_id=$1`,
		"crypto_tracked_user":                   `SELECT COUNT(*) FROM crypto_tracked_user WHERE user_id=$1`,
		"crypto_megolm_outbound_session_shared": `SELECT COUNT(*) FROM crypto_megolm_outbound_session_shared WHERE user_id=$1`,
		"crypto_cross_signing_keys":             `SELECT COUNT(*) FROM crypto_cross_signing_keys WHERE user_id=$1`,
		"crypto_cross_signing_signatures":       `SELECT COUNT(*) FROM crypto_cross_signing_signatures WHERE signed_user_id=$1`,
		"crypto_megolm_inbound_session":         `SELECT COUNT(*) FROM crypto_megolm_inbound_session WHERE source_user=$1`,
	}
	out := map[string]int{}
	count := func(table, query string, arg any) {
		var n int
		if err := db.QueryRow(context.Background(), query, arg).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			out[table] += n
		}
	}
	for table, query := range queries {
		count(table, query, user)
	}
	for _, key := range keys {
		count("crypto_olm_session", `SELECT COUNT(*) FROM crypto_olm_session WHERE sender_key=$1`, key)
		count("crypto_megolm_inbound_session", `SELECT COUNT(*) FROM crypto_megolm_inbound_session WHERE sender_key=$1`, key)
	}
	return out
}

// TestToDeviceEventAfterAnErasureIsDroppedForTheQuietPeriod erases Alice, then sends the bot
// her to-device events (a room key in an olm message, a key request): within
// erasureQuietPeriod of the erasure they are dropped and leave no crypto row naming her, and no
// key query is made; after the period the same kind of event is handled.
func TestToDeviceEventAfterAnErasureIsDroppedForTheQuietPeriod(t *testing.T) {
	cases := []struct {
		name string
		evt  func(env *e2eeEnv, n int) map[string]any
		// known: Alice's device is stored again before the event after the period, as a key
		// query would (her olm account is not on the fake homeserver).
		known bool
		// handled reports what handling the event after the period left.
		handled func(t *testing.T, env *e2eeEnv) bool
	}{
		{"room key", func(env *e2eeEnv, _ int) map[string]any { return env.roomKey(env.megolm) }, true,
			func(t *testing.T, env *e2eeEnv) bool {
				return countRows(t, env.db, "crypto_megolm_inbound_session") == 1 && countRows(t, env.db, "crypto_olm_session") == 1
			}},
		{"key request", func(env *e2eeEnv, n int) map[string]any {
			return env.keyRequest(fmt.Sprintf("req%d", n), id.SessionID(env.megolm.ID()))
		}, false, func(t *testing.T, env *e2eeEnv) bool {
			// Answering fetched and stored the requesting device.
			return cryptoRowsOf(t, env.db, e2eeAlice)["crypto_device"] > 0
		}},
	}
	for _, dialect := range astest.Dialects(t) {
		for _, tc := range cases {
			t.Run(dialect+"/"+tc.name, func(t *testing.T) {
				env, clk := startedE2EEEnvOnFakeClock(t, dialect)
				db := env.db
				// The final scrub, due when the period ends, deletes rows naming her: the event
				// after the period is sent once it ran.
				scrubbed := make(chan error, 1)
				env.svc.privacy.scrubRan = func(_ string, err error) { scrubbed <- err }
				if _, err := env.svc.engine.Erase(env.ctx, e2eeAlice, EraseRequest{Trigger: TriggerAdmin}); err != nil {
					t.Fatal(err)
				}
				_, identity := env.alice.Keys()
				if rows := cryptoRowsOf(t, db, e2eeAlice, identity); len(rows) > 0 {
					t.Fatalf("crypto rows naming alice right after her erasure: %v", rows)
				}
				queries := len(env.hs.RequestsTo(astest.PatternKeysQuery))
				clk.Advance(erasureQuietPeriod - time.Second)
				env.put("q1", nil, []map[string]any{tc.evt(env, 1)})
				waitDrained(t, env.svc.dispatcher)
				if rows := cryptoRowsOf(t, db, e2eeAlice, identity); len(rows) > 0 {
					t.Errorf("crypto rows naming alice after her to-device event within the quiet period: %v", rows)
				}
				if n := countRows(t, db, "as_inbox"); n != 0 {
					t.Errorf("%d inbox rows after the dropped event, want 0", n)
				}
				if n := len(env.hs.RequestsTo(astest.PatternKeysQuery)); n != queries {
					t.Errorf("%d key queries after the dropped event, want %d", n, queries)
				}

				clk.Advance(2 * time.Second)
				select {
				case err := <-scrubbed:
					if err != nil {
						t.Fatal(err)
					}
				case <-astest.Within(t, 20*time.Second).Done():
					t.Fatal("the final scrub did not run when the quiet period ended")
				}
				if tc.known {
					env.knowAlice()
				}
				env.put("q2", nil, []map[string]any{tc.evt(env, 2)})
				waitDrained(t, env.svc.dispatcher)
				if !tc.handled(t, env) {
					t.Errorf("the event after the quiet period was not handled: crypto rows naming alice %v", cryptoRowsOf(t, db, e2eeAlice, identity))
				}
			})
		}
	}
}

// TestErasureWaitsForAToDeviceEventPastItsGate holds the handling of Alice's room key between
// its gate check and its commit, and erases her meanwhile: the erasure comes to the gate and
// does not take it while the lane holds it, so the rows the event commits are deleted with the
// rest, and none naming her is left.
func TestErasureWaitsForAToDeviceEventPastItsGate(t *testing.T) {
	eachStartedE2EEEnv(t, false, func(t *testing.T, env *e2eeEnv) {
		db := env.db
		passed, release := make(chan struct{}), make(chan struct{})
		var once sync.Once
		env.svc.erasureGate.held = func(user id.UserID) {
			if user == e2eeAlice {
				once.Do(func() {
					close(passed)
					<-release
				})
			}
		}
		erasing, acquired := make(chan struct{}, 1), make(chan struct{}, 1)
		env.svc.erasureGate.waiting = func(user id.UserID) {
			if user == e2eeAlice {
				erasing <- struct{}{}
			}
		}
		env.svc.erasureGate.acquired = func(user id.UserID) {
			if user == e2eeAlice {
				acquired <- struct{}{}
			}
		}
		env.put("r1", nil, []map[string]any{env.roomKey(env.megolm)})
		within := astest.Within(t, 20*time.Second)
		select {
		case <-passed:
		case <-within.Done():
			t.Fatal("the room key never passed the gate")
		}
		erased := make(chan error, 1)
		go func() {
			_, err := env.svc.engine.Erase(env.ctx, e2eeAlice, EraseRequest{Trigger: TriggerAdmin})
			erased <- err
		}()
		select {
		case <-erasing:
		case err := <-erased:
			close(release)
			t.Fatalf("the erasure finished (%v) while a to-device event of the user was past its gate", err)
		case <-within.Done():
			t.Fatal("the erasure never came to the gate")
		}
		// The erasure is at the gate; it must not get past it while the lane holds it.
		held := time.NewTimer(500 * time.Millisecond)
		select {
		case <-acquired:
			held.Stop()
			close(release)
			t.Fatal("the erasure took the gate while the lane held it")
		case <-held.C:
		}
		close(release)
		select {
		case <-acquired:
		case <-within.Done():
			t.Fatal("the erasure never took the gate after the lane released it")
		}
		select {
		case err := <-erased:
			if err != nil {
				t.Fatal(err)
			}
		case <-within.Done():
			t.Fatal("the erasure did not finish after the event committed")
		}
		waitDrained(t, env.svc.dispatcher)
		_, identity := env.alice.Keys()
		if rows := cryptoRowsOf(t, db, e2eeAlice, identity); len(rows) > 0 {
			t.Errorf("crypto rows naming alice after her erasure: %v", rows)
		}
		if n := countRows(t, db, "crypto_megolm_inbound_session") + countRows(t, db, "crypto_olm_session"); n != 0 {
			t.Errorf("%d olm and megolm sessions after the erasure, want 0", n)
		}
	})
}

// TestKeyShareIsRefusedToAGatedUser asks the bot's key-share policy about a session the bot
// sent to Alice's device: granted normally, refused (without an answer) while her erasure is
// pending or within the quiet period after it.
func TestKeyShareIsRefusedToAGatedUser(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env, clk := startedE2EEEnvOnFakeClock(t, dialect)
			signing, identity := env.alice.Keys()
			device := &id.Device{UserID: e2eeAlice, DeviceID: e2eeAliceDevice, IdentityKey: identity, SigningKey: signing}
			const session = id.SessionID("sent-to-alice")
			if err := env.svc.crypto.Store().MarkOutboundGroupSessionShared(env.ctx, e2eeAlice, identity, session); err != nil {
				t.Fatal(err)
			}
			info := event.RequestedKeyInfo{Algorithm: id.AlgorithmMegolmV1, RoomID: e2eeDM, SessionID: session}
			allow := func() *crypto.KeyShareRejection {
				return env.svc.crypto.Olm().AllowKeyShare(env.ctx, device, info)
			}
			if r := allow(); r != nil {
				t.Fatalf("before any erasure: rejected %+v, want the share allowed", *r)
			}
			other := info
			other.SessionID = "never-sent"
			if r := env.svc.crypto.Olm().AllowKeyShare(env.ctx, device, other); r == nil {
				t.Fatal("a session never sent to her: allowed, want refused")
			}
			hash, keyID, err := env.svc.engine.UserHash(env.ctx, e2eeAlice)
			if err != nil {
				t.Fatal(err)
			}
			if _, err = env.svc.engine.Store().CreateErasure(env.ctx, &privacy.ErasureJob{
				JobID: "er_keyshare", User: e2eeAlice, UserHash: hash, HashKeyID: keyID, Trigger: TriggerAdmin,
				State: privacy.ErasurePending, CreatedAt: env.svc.now(),
			}); err != nil {
				t.Fatal(err)
			}
			if r := allow(); r == nil || *r != crypto.KeyShareRejectNoResponse {
				t.Errorf("while her erasure is pending: %v, want refused without an answer", r)
			}
			if err = env.svc.engine.Store().FinishErasure(env.ctx, "er_keyshare", env.svc.now()); err != nil {
				t.Fatal(err)
			}
			if err = env.svc.engine.Store().PutTombstone(env.ctx, &privacy.Tombstone{
				JobID: "er_keyshare", UserHash: hash, HashKeyID: keyID, Trigger: TriggerAdmin, ErasedAt: env.svc.now(), Counts: []byte("{}"),
			}); err != nil {
				t.Fatal(err)
			}
			clk.Advance(erasureQuietPeriod - time.Second)
			if r := allow(); r == nil || *r != crypto.KeyShareRejectNoResponse {
				t.Errorf("within the quiet period after her erasure: %v, want refused without an answer", r)
			}
			clk.Advance(2 * time.Second)
			if r := allow(); r != nil {
				t.Errorf("after the quiet period: rejected %+v, want the share allowed", *r)
			}
		})
	}
}

// TestKeyRequestIsHandledOutsideTheCallersTransaction answers a key request with a context
// that carries a database transaction, already committed, and a write-error record, as the
// to-device lane's would: the answer works on its own, so it stores the requesting device it
// fetched, and records nothing against the caller.
func TestKeyRequestIsHandledOutsideTheCallersTransaction(t *testing.T) {
	eachStartedE2EEEnv(t, false, func(t *testing.T, env *e2eeEnv) {
		var txnCtx context.Context
		if err := env.svc.rawDB.DoTxn(env.ctx, nil, func(ctx context.Context) error {
			txnCtx = ctx
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		ctx, failed := withWriteErrors(txnCtx)
		evt := env.keyRequest("detached", id.SessionID(env.megolm.ID()))
		content := &event.RoomKeyRequestEventContent{}
		data, err := json.Marshal(evt["content"])
		if err != nil {
			t.Fatal(err)
		}
		if err = json.Unmarshal(data, content); err != nil {
			t.Fatal(err)
		}
		env.svc.handleKeyRequest(ctx, e2eeAlice, content)
		if err := failed.first(); err != nil {
			t.Errorf("the key request recorded a failed write against its caller: %v", err)
		}
		device, err := env.svc.crypto.Store().GetDevice(env.ctx, e2eeAlice, e2eeAliceReader)
		if err != nil || device == nil {
			t.Errorf("requesting device after the key request = %v, %v; want it stored", device, err)
		}
	})
}

// TestFailedWriteWithReturningIsRecorded runs an INSERT … RETURNING through the crypto store's
// database, as a Query, inside a to-device transaction's context, and makes it fail (a
// trigger): the failure is recorded, so the transaction rolls back rather than committing
// without the write.
func TestFailedWriteWithReturningIsRecorded(t *testing.T) {
	inject := map[string]string{
		astest.SQLite: `CREATE TRIGGER tracked_no_insert BEFORE INSERT ON crypto_tracked_user
			BEGIN SELECT RAISE(ABORT, 'injected failure'); END`,
		astest.Postgres: `CREATE FUNCTION tracked_fail() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$ LANGUAGE plpgsql;
			CREATE TRIGGER tracked_no_insert BEFORE INSERT ON crypto_tracked_user FOR EACH ROW EXECUTE FUNCTION tracked_fail()`,
	}
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			db := astest.TestDB(t, dialect)
			env := newE2EEEnv(t, db, nil, nil)
			env.setupCrypto()
			if _, err := db.Exec(env.ctx, inject[dialect]); err != nil {
				t.Fatal(err)
			}
			store := env.svc.crypto.Store()
			err := env.svc.rawDB.DoTxn(env.ctx, nil, func(ctx context.Context) error {
				ctx, failed := withWriteErrors(ctx)
				// As the olm machine does: the error is logged and dropped.
				rows, qerr := store.DB.Query(ctx, `INSERT INTO crypto_tracked_user (user_id, devices_outdated) VALUES ($1, true) RETURNING user_id`, e2eeAlice)
				if qerr == nil {
					for rows.Next() {
					}
					_ = rows.Close()
				}
				return failed.first()
			})
			if err == nil {
				t.Fatal("the failed INSERT … RETURNING was not recorded: the transaction committed")
			}
		})
	}
}

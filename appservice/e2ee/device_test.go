package e2ee

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix"
	mxas "maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
	"maunium.net/go/mautrix/sqlstatestore"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/vault"
)

const (
	deviceTestDomain  = "device.test"
	deviceTestASToken = "device-test-as-token"
)

// deviceEnv is one database and fake homeserver on which the service "starts" several times.
type deviceEnv struct {
	t      *testing.T
	ctx    context.Context
	db     *dbutil.Database
	hs     *astest.FakeHomeserver
	vault  *vault.Vault
	states *sqlstatestore.SQLStateStore
	bot    id.UserID
}

func newDeviceEnv(t *testing.T, dialect string) *deviceEnv {
	t.Helper()
	ctx := astest.Within(t, time.Minute)
	db := migratedDB(t, ctx, dialect)
	states := sqlstatestore.NewSQLStateStore(db, dbutil.ZeroLogger(testLog(t)), false)
	if err := states.Upgrade(ctx); err != nil {
		t.Fatal(err)
	}
	return &deviceEnv{
		t: t, ctx: ctx, db: db, states: states,
		hs:    astest.NewFakeHomeserver(t, deviceTestDomain, deviceTestASToken),
		vault: newVault(t, ctx, db, mustKey(t)),
		bot:   id.NewUserID("custodian", deviceTestDomain),
	}
}

// start is one start of the service's crypto: a fresh appservice (fresh clients), the store
// reopened, the device set up, the account loaded and the device cross-signed.
type startResult struct {
	client  *mautrix.Client
	bot     *mautrix.Client
	store   *crypto.SQLCryptoStore
	mach    *Machine
	isNew   bool
	outcome CrossSignOutcome
}

func (env *deviceEnv) start(msc4190 bool) startResult {
	env.t.Helper()
	as := mxas.Create()
	as.HomeserverDomain = deviceTestDomain
	as.Registration = &mxas.Registration{ID: "custodian", SenderLocalpart: "custodian", AppToken: deviceTestASToken}
	as.StateStore = env.states
	as.Log = testLog(env.t)
	if err := as.SetHomeserverURL(env.hs.URL()); err != nil {
		env.t.Fatal(err)
	}
	store, err := OpenStore(env.ctx, env.db, env.vault, testLog(env.t))
	if err != nil {
		env.t.Fatal(err)
	}
	bot := as.BotClient()
	client, isNew, err := SetupDevice(env.ctx, bot, store, DeviceOptions{
		MSC4190:   msc4190,
		NewClient: func() *mautrix.Client { return as.NewMautrixClient(as.BotMXID()) },
	})
	if err != nil {
		env.t.Fatalf("SetupDevice() = %v", err)
	}
	mach := NewMachine(client, store, env.states, testLog(env.t))
	if err = mach.Start(env.ctx); err != nil {
		env.t.Fatalf("Start() = %v", err)
	}
	outcome, err := mach.CrossSign(env.ctx)
	if err != nil {
		env.t.Fatalf("CrossSign() = %v", err)
	}
	return startResult{client: client, bot: bot, store: store, mach: mach, isNew: isNew, outcome: outcome}
}

// storedDeviceID is the device ID in crypto_account, "" without an account.
func (env *deviceEnv) storedDeviceID() id.DeviceID {
	env.t.Helper()
	var dev id.DeviceID
	err := env.db.QueryRow(env.ctx, "SELECT device_id FROM crypto_account WHERE account_id=$1", AccountID).Scan(&dev)
	if err != nil {
		env.t.Fatalf("failed to read crypto_account: %v", err)
	}
	return dev
}

// signedBySelfSigningKey reports whether the homeserver holds a signature of device by the
// bot's current self-signing key.
func (env *deviceEnv) signedBySelfSigningKey(device id.DeviceID) bool {
	ssk := env.hs.CrossSigningKey(env.bot, "self_signing")
	return ssk != "" && env.hs.DeviceSignedBy(env.bot, device, env.bot, "ed25519:"+ssk)
}

// TestDeviceLifecycleMSC4190 follows the bot's device over restarts with MSC4190: created and
// cross-signed on the first start, kept on the next, replaced (and signed with the kept
// recovery key) when the homeserver lost it, and the cross-signing keys replaced when the
// recovery key is gone.
func TestDeviceLifecycleMSC4190(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newDeviceEnv(t, dialect)

			// First start: a new device, created as the appservice and masqueraded as.
			first := env.start(true)
			dev := first.client.DeviceID
			if !first.isNew || dev == "" || first.client != first.bot || !first.bot.SetAppServiceDeviceID {
				t.Fatalf("first start: new=%t device=%q same client=%t device_id param=%t; want a new MSC4190 device on the bot's client",
					first.isNew, dev, first.client == first.bot, first.bot.SetAppServiceDeviceID)
			}
			if puts := env.hs.RequestsTo(astest.PatternPutDevice); len(puts) != 1 || puts[0].PathValues["deviceID"] != dev.String() || puts[0].UserID != env.bot {
				t.Errorf("device creation requests = %+v, want one PUT /devices/%s as the bot", puts, dev)
			}
			uploads := env.hs.RequestsTo(astest.PatternKeysUpload)
			if len(uploads) == 0 || uploads[0].Query.Get("device_id") != dev.String() || !env.hs.HasDeviceKeys(env.bot, dev) {
				t.Fatalf("key uploads = %d, first as device %q; want the device's keys on the homeserver", len(uploads), uploads[0].Query.Get("device_id"))
			}
			if got := env.storedDeviceID(); got != dev {
				t.Errorf("crypto_account device = %q, want %q", got, dev)
			}
			if first.outcome != CrossSignGenerated || !env.signedBySelfSigningKey(dev) {
				t.Errorf("first start cross-signing = %q, device signed = %t; want generated keys signing the device", first.outcome, env.signedBySelfSigningKey(dev))
			}
			recovery, err := first.store.GetSecret(env.ctx, RecoverySecret)
			if err != nil || recovery == "" {
				t.Fatalf("kept recovery key = %q, %v; want one", recovery, err)
			}
			var raw []byte
			if err = env.db.QueryRow(env.ctx, "SELECT secret FROM crypto_secrets WHERE account_id=$1 AND name=$2", AccountID, RecoverySecret).Scan(&raw); err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(raw), recovery) {
				t.Error("the recovery key is stored in the clear")
			}
			master := env.hs.CrossSigningKey(env.bot, "master")

			// Second start: the same device, no new keys, nothing to sign.
			nUploads := len(env.hs.RequestsTo(astest.PatternKeysUpload))
			second := env.start(true)
			if second.isNew || second.client.DeviceID != dev || !second.bot.SetAppServiceDeviceID {
				t.Errorf("second start: new=%t device=%q; want the existing %q", second.isNew, second.client.DeviceID, dev)
			}
			if got := len(env.hs.RequestsTo(astest.PatternKeysUpload)); got != nUploads {
				t.Errorf("second start uploaded keys %d times, want none", got-nUploads)
			}
			if second.outcome != CrossSignAlready || env.hs.CrossSigningKey(env.bot, "master") != master {
				t.Errorf("second start cross-signing = %q; want the device already signed, same keys", second.outcome)
			}

			// The homeserver lost the device: a new one, signed with the kept recovery key.
			env.hs.DeleteDevice(env.bot, dev)
			third := env.start(true)
			newDev := third.client.DeviceID
			if !third.isNew || newDev == dev || !env.hs.HasDeviceKeys(env.bot, newDev) || env.storedDeviceID() != newDev {
				t.Fatalf("after the device was deleted: new=%t device=%q (old %q), keys=%t, stored=%q; want a new device with keys",
					third.isNew, newDev, dev, env.hs.HasDeviceKeys(env.bot, newDev), env.storedDeviceID())
			}
			if third.outcome != CrossSignVerified || env.hs.CrossSigningKey(env.bot, "master") != master || !env.signedBySelfSigningKey(newDev) {
				t.Errorf("after the device was replaced: cross-signing = %q, same master = %t, signed = %t; want the existing keys to sign it",
					third.outcome, env.hs.CrossSigningKey(env.bot, "master") == master, env.signedBySelfSigningKey(newDev))
			}

			// Keys on the homeserver but no recovery key held: replaced.
			if err = third.store.DeleteSecret(env.ctx, RecoverySecret); err != nil {
				t.Fatal(err)
			}
			env.hs.DeleteDevice(env.bot, newDev)
			fourth := env.start(true)
			if fourth.outcome != CrossSignRegenerated || env.hs.CrossSigningKey(env.bot, "master") == master || !env.signedBySelfSigningKey(fourth.client.DeviceID) {
				t.Errorf("without the recovery key: cross-signing = %q, master replaced = %t, signed = %t; want new keys signing the device",
					fourth.outcome, env.hs.CrossSigningKey(env.bot, "master") != master, env.signedBySelfSigningKey(fourth.client.DeviceID))
			}
			if recovery, err = fourth.store.GetSecret(env.ctx, RecoverySecret); err != nil || recovery == "" {
				t.Errorf("recovery key after regeneration = %q, %v; want the new one kept", recovery, err)
			}
		})
	}
}

// TestDeviceLogin checks the device of an appservice login (encryption.msc4190: false): a
// client of its own with the login's token, and the same device after a restart.
func TestDeviceLogin(t *testing.T) {
	env := newDeviceEnv(t, astest.SQLite)
	first := env.start(false)
	dev := first.client.DeviceID
	if !first.isNew || dev == "" || first.client == first.bot || first.client.AccessToken == deviceTestASToken || first.bot.SetAppServiceDeviceID {
		t.Fatalf("login start: new=%t device=%q own client=%t; want a new device on a logged-in client, the bot's client untouched",
			first.isNew, dev, first.client != first.bot)
	}
	if len(env.hs.RequestsTo(astest.PatternPutDevice)) != 0 || !env.hs.HasDeviceKeys(env.bot, dev) {
		t.Errorf("PUT /devices requests = %d, keys uploaded = %t; want a login, not MSC4190, and the keys", len(env.hs.RequestsTo(astest.PatternPutDevice)), env.hs.HasDeviceKeys(env.bot, dev))
	}
	second := env.start(false)
	logins := env.hs.RequestsTo(astest.PatternLogin)
	var body struct {
		DeviceID id.DeviceID `json:"device_id"`
	}
	if len(logins) != 2 || logins[1].DecodeBody(&body) != nil || body.DeviceID != dev {
		t.Errorf("second login asked for device %q, want %q", body.DeviceID, dev)
	}
	if second.isNew || second.client.DeviceID != dev {
		t.Errorf("second start: new=%t device=%q; want the existing %q", second.isNew, second.client.DeviceID, dev)
	}
}

// TestDeviceSetupFailures checks that a homeserver refusing the device is an error that says
// what to fix.
func TestDeviceSetupFailures(t *testing.T) {
	cases := []struct {
		name    string
		msc4190 bool
		fail    string
		want    string
	}{
		{"msc4190 refused", true, astest.PatternPutDevice, "io.element.msc4190"},
		{"login refused", false, astest.PatternLogin, "m.login.application_service"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := newDeviceEnv(t, astest.SQLite)
			env.hs.Fail(tc.fail, http.StatusBadRequest, "M_UNRECOGNIZED")
			as := mxas.Create()
			as.HomeserverDomain = deviceTestDomain
			as.Registration = &mxas.Registration{ID: "custodian", SenderLocalpart: "custodian", AppToken: deviceTestASToken}
			if err := as.SetHomeserverURL(env.hs.URL()); err != nil {
				t.Fatal(err)
			}
			store, err := OpenStore(env.ctx, env.db, env.vault, testLog(t))
			if err != nil {
				t.Fatal(err)
			}
			_, _, err = SetupDevice(env.ctx, as.BotClient(), store, DeviceOptions{
				MSC4190: tc.msc4190, NewClient: func() *mautrix.Client { return as.NewMautrixClient(as.BotMXID()) },
			})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("SetupDevice() = %v, want an error naming %s", err, tc.want)
			}
			if store.DeviceID != "" {
				t.Errorf("store device = %q after a failure, want none", store.DeviceID)
			}
		})
	}
}

// TestProbe checks that the machine recognises its own probe when the homeserver hands it
// back, and nothing else: a probe with another nonce, or one sent by another user.
func TestProbe(t *testing.T) {
	env := newDeviceEnv(t, astest.SQLite)
	res := env.start(true)
	toEvent := func(msg astest.ToDeviceMessage, sender id.UserID) *event.Event {
		evt := &event.Event{Sender: sender, Type: event.Type{Type: msg.Type, Class: event.ToDeviceEventType}}
		if err := json.Unmarshal(msg.Content, &evt.Content); err != nil {
			t.Fatal(err)
		}
		return evt
	}
	run := res.mach.NewProbeRun()
	defer run.Stop()
	if err := run.Send(env.ctx); err != nil {
		t.Fatal(err)
	}
	received := run.Received()
	msgs := env.hs.ToDeviceMessages()
	if len(msgs) != 1 || msgs[0].Type != ProbeEventType.Type || msgs[0].UserID != env.bot || msgs[0].DeviceID != res.client.DeviceID || msgs[0].SenderDevice != res.client.DeviceID {
		t.Fatalf("to-device messages = %+v, want one probe from the bot's device to itself", msgs)
	}
	isReceived := func() bool {
		select {
		case <-received:
			return true
		default:
			return false
		}
	}
	other := toEvent(msgs[0], id.NewUserID("mallory", deviceTestDomain))
	res.mach.HandleToDevice(env.ctx, other)
	wrongNonce := toEvent(msgs[0], env.bot)
	wrongNonce.Content.Raw[probeNonceField] = "not-the-nonce"
	res.mach.HandleToDevice(env.ctx, wrongNonce)
	if isReceived() {
		t.Fatal("the probe counts as received after another user's or another nonce's event")
	}
	res.mach.HandleToDevice(env.ctx, toEvent(msgs[0], env.bot))
	if !isReceived() {
		t.Error("the probe handed back does not count as received")
	}
	if slices.ContainsFunc(env.hs.Requests(), func(r astest.Request) bool { return r.Pattern == "" }) {
		t.Errorf("requests to endpoints the fake homeserver does not know: %+v", env.hs.Requests())
	}
}

// TestProbeRunWaitsForItsLastProbes checks which of a run's probes count when they come back
// late: any of the last MaxOutstandingProbes, none older, and none after the run stopped.
func TestProbeRunWaitsForItsLastProbes(t *testing.T) {
	env := newDeviceEnv(t, astest.SQLite)
	res := env.start(true)
	probeEvent := func(msg astest.ToDeviceMessage) *event.Event {
		evt := &event.Event{Sender: env.bot, Type: event.Type{Type: msg.Type, Class: event.ToDeviceEventType}}
		if err := json.Unmarshal(msg.Content, &evt.Content); err != nil {
			t.Fatal(err)
		}
		return evt
	}
	isClosed := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	tests := []struct {
		name string
		// sent is how many probes the run sends; back is the index of the one handed back.
		sent, back int
		stop       bool
		want       bool
	}{
		{name: "the first of several", sent: 5, back: 0, want: true},
		{name: "the oldest still waited for", sent: MaxOutstandingProbes + 1, back: 1, want: true},
		{name: "one older than the last MaxOutstandingProbes", sent: MaxOutstandingProbes + 1, back: 0, want: false},
		{name: "after the run stopped", sent: 2, back: 0, stop: true, want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(env.hs.ToDeviceMessages())
			run := res.mach.NewProbeRun()
			defer run.Stop()
			for range tt.sent {
				if err := run.Send(env.ctx); err != nil {
					t.Fatal(err)
				}
			}
			msgs := env.hs.ToDeviceMessages()[before:]
			if len(msgs) != tt.sent {
				t.Fatalf("%d probes on the homeserver, want %d", len(msgs), tt.sent)
			}
			if tt.stop {
				run.Stop()
			}
			res.mach.HandleToDevice(env.ctx, probeEvent(msgs[tt.back]))
			if got := isClosed(run.Received()); got != tt.want {
				t.Errorf("probe %d of %d handed back: received = %t, want %t", tt.back, tt.sent, got, tt.want)
			}
			// Every probe of a finished run is forgotten: none is left waiting.
			run.Stop()
			res.mach.probes.lock.Lock()
			left := len(res.mach.probes.waiting)
			res.mach.probes.lock.Unlock()
			if left != 0 {
				t.Errorf("%d probes still waited for after the run ended", left)
			}
		})
	}
}

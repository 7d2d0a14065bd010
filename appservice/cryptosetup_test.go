package appservice

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/clock"
	"github.com/custodian-matrix/custodian/appservice/e2ee"
)

// cryptoEnv is a service with encryption configured, on a fake homeserver and a fake clock.
type cryptoEnv struct {
	svc  *Service
	hs   *astest.FakeHomeserver
	clk  *clock.Fake
	logs *watchedLog
	br   *recordingBridge
	ctx  context.Context
}

// cryptoSetup configures one start of a cryptoEnv.
type cryptoSetup struct {
	dialect string
	// vault turns the vault on (a fresh key file).
	vault bool
	// configure changes the config before the start.
	configure func(cfg *Config)
	// registration changes the registration before the start.
	registration func(reg *testRegistrationFlags)
	// before runs on the fake homeserver and the service before the start.
	before func(hs *astest.FakeHomeserver, svc *Service)
	// logger makes the service's logger writing to w; nil for a plain JSON logger at debug.
	logger func(t *testing.T, w io.Writer) zerolog.Logger
}

// testRegistrationFlags are the encryption flags of the test registration.
type testRegistrationFlags struct{ ephemeral, msc3202, msc4190 bool }

func startCryptoService(t *testing.T, setup cryptoSetup) *cryptoEnv {
	t.Helper()
	if setup.dialect == "" {
		setup.dialect = astest.SQLite
	}
	hs := astest.NewFakeHomeserver(t, testDomain, testASToken)
	cfg := testConfig(hs.URL())
	cfg.Encryption = EncryptionConfig{Enabled: true, MSC4190: true, DefaultEncrypted: true}
	cfg.AppService.Port = freePort(t)
	if setup.vault {
		keyFile := filepath.Join(t.TempDir(), "master.key")
		writeKeys(t, keyFile, mustGenerateKey(t))
		cfg.Vault = VaultConfig{KeyFile: &keyFile}
	}
	if setup.configure != nil {
		setup.configure(cfg)
	}
	reg := testRegistration()
	flags := testRegistrationFlags{ephemeral: true, msc3202: true, msc4190: true}
	if setup.registration != nil {
		setup.registration(&flags)
	}
	reg.EphemeralEvents, reg.MSC3202, reg.MSC4190 = flags.ephemeral, flags.msc3202, flags.msc4190
	logs := newWatchedLog()
	log := zerolog.New(logs).Level(zerolog.DebugLevel)
	if setup.logger != nil {
		log = setup.logger(t, logs)
	}
	br := newRecordingBridge("irc")
	svc, err := newService(cfg, reg, []Bridge{br}, log, astest.TestDB(t, setup.dialect))
	if err != nil {
		t.Fatal(err)
	}
	clk := clock.NewFake(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	svc.clk = clk
	if setup.before != nil {
		setup.before(hs, svc)
	}
	ctx, cancel := context.WithCancel(log.WithContext(context.Background()))
	if err = svc.start(ctx); err != nil {
		cancel()
		t.Fatalf("start() = %v; encryption problems must not stop the service", err)
	}
	t.Cleanup(func() {
		cancel()
		svc.stopServing()
	})
	return &cryptoEnv{svc: svc, hs: hs, clk: clk, logs: logs, br: br, ctx: ctx}
}

// echoToDevice makes the fake homeserver deliver every to-device message for the service's bot
// back to the service in a transaction, as Synapse does with MSC2409: through ingest, the
// inbox and the to-device lane to the machine.
func echoToDevice(hs *astest.FakeHomeserver, svc *Service) {
	base := fmt.Sprintf("http://%s:%d", svc.cfg.AppService.Hostname, svc.cfg.AppService.Port)
	deliverToDevice(hs, svc, func() string { return base })
}

// freePort returns a TCP port free on 127.0.0.1 now, for a listener whose address must be known
// before it starts.
func freePort(t *testing.T) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

// TestSetupCryptoTurnsEncryptionOn starts the service with encryption on, on both dialects,
// and checks the bot's device on the homeserver (keys uploaded, cross-signed by the bot), the
// machine on the bot's client and a bridge's ghost, and the probe coming back.
func TestSetupCryptoTurnsEncryptionOn(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := startCryptoService(t, cryptoSetup{dialect: dialect, vault: true, before: echoToDevice})
			svc, bot := env.svc, env.svc.as.BotMXID()
			if svc.crypto == nil {
				t.Fatalf("svc.crypto is nil; the log says:\n%s", env.logs.String())
			}
			env.logs.waitFor(t, "The homeserver delivers to-device events to the appservice")
			if !svc.encryptionActive() {
				t.Error("encryptionActive() = false after the probe came back")
			}
			dev := svc.crypto.Store().DeviceID
			if devices := env.hs.Devices(bot); len(devices) != 1 || devices[0] != dev || !env.hs.HasDeviceKeys(bot, dev) {
				t.Errorf("bot devices on the homeserver = %v (keys %t), want %q with keys", devices, env.hs.HasDeviceKeys(bot, dev), dev)
			}
			ssk := env.hs.CrossSigningKey(bot, "self_signing")
			if ssk == "" || !env.hs.DeviceSignedBy(bot, dev, bot, "ed25519:"+ssk) {
				t.Error("the bot's device is not signed by the bot's self-signing key")
			}
			if !svc.crypto.CacheEnabled() {
				t.Error("the machine decrypts without its cache (EnableCache was not called)")
			}
			if svc.as.BotClient().Crypto != svc.crypto || !svc.as.BotClient().SetAppServiceDeviceID {
				t.Error("the bot's client does not encrypt with the machine, or does not send its device ID")
			}
			ghost, err := env.br.host.Intent("irc_alice")
			if err != nil {
				t.Fatal(err)
			}
			if ghost.Client.Crypto != svc.crypto {
				t.Error("a ghost's client from Host.Intent does not encrypt with the machine")
			}
		})
	}
}

// TestIntentAttachesCryptoConcurrently gets the same and different ghosts' intents from many
// goroutines (run with -race): each has the machine as Crypto when it is returned.
func TestIntentAttachesCryptoConcurrently(t *testing.T) {
	env := startCryptoService(t, cryptoSetup{vault: true, before: echoToDevice})
	if env.svc.crypto == nil {
		t.Fatalf("svc.crypto is nil; the log says:\n%s", env.logs.String())
	}
	var wg sync.WaitGroup
	missing := make(chan id.UserID, 64)
	for i := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			localpart := []string{"irc_a", "irc_b", "irc_c", "irc_d"}[i%4]
			intent, err := env.br.host.Intent(localpart)
			if err != nil {
				t.Error(err)
				return
			}
			if intent.Client.Crypto != env.svc.crypto {
				missing <- intent.UserID
			}
		}()
	}
	wg.Wait()
	close(missing)
	for userID := range missing {
		t.Errorf("the intent of %s came back without the machine", userID)
	}
}

// TestSetupCryptoProblemsLeaveEncryptionOff checks that every problem of the start-up leaves
// the service running with encryption off and a Warn that says so and what to fix.
func TestSetupCryptoProblemsLeaveEncryptionOff(t *testing.T) {
	cases := []struct {
		name  string
		setup cryptoSetup
		want  []string
	}{
		{
			name:  "encryption disabled",
			setup: cryptoSetup{vault: true, configure: func(cfg *Config) { cfg.Encryption.Enabled = false }},
			want:  []string{`"level":"info","message":"Encryption is off (encryption.enabled is false)`},
		},
		{
			name:  "no vault",
			setup: cryptoSetup{},
			want:  []string{`"level":"warn"`, "configure the vault's master key", "Encryption is off: the crypto store cannot be opened"},
		},
		{
			name: "homeserver refuses the device",
			setup: cryptoSetup{vault: true, before: func(hs *astest.FakeHomeserver, _ *Service) {
				hs.Fail(astest.PatternPutDevice, http.StatusBadRequest, "M_UNRECOGNIZED")
			}},
			want: []string{"io.element.msc4190", "Encryption is off: the bot's device could not be set up"},
		},
		{
			name: "keys cannot be uploaded",
			setup: cryptoSetup{vault: true, before: func(hs *astest.FakeHomeserver, _ *Service) {
				hs.Fail(astest.PatternKeysUpload, http.StatusBadRequest, "M_UNKNOWN")
			}},
			want: []string{"Encryption is off: the bot's device keys could not be loaded or uploaded"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := startCryptoService(t, tc.setup)
			logs := env.logs.String()
			for _, want := range tc.want {
				if !strings.Contains(logs, want) {
					t.Errorf("the log lacks %q:\n%s", want, logs)
				}
			}
			if env.svc.crypto != nil || env.svc.encryptionActive() || env.svc.as.BotClient().Crypto != nil {
				t.Error("encryption is active after a failed set-up")
			}
			if strings.Contains(logs, `"message":"Encryption is on"`) {
				t.Error("the log says encryption is on")
			}
		})
	}
}

// TestSetupCryptoCrossSigningFailureKeepsEncryption checks that a homeserver refusing the
// cross-signing keys costs only the device's verified status.
func TestSetupCryptoCrossSigningFailureKeepsEncryption(t *testing.T) {
	env := startCryptoService(t, cryptoSetup{vault: true, before: func(hs *astest.FakeHomeserver, svc *Service) {
		hs.Fail(astest.PatternDeviceSigning, http.StatusForbidden, "M_FORBIDDEN")
		echoToDevice(hs, svc)
	}})
	if env.svc.crypto == nil {
		t.Fatalf("svc.crypto is nil; the log says:\n%s", env.logs.String())
	}
	if !strings.Contains(env.logs.String(), "The bot's device is not cross-signed") {
		t.Errorf("the log does not say the device is not cross-signed:\n%s", env.logs.String())
	}
}

// TestProbeWithoutToDeviceDelivery checks the degraded mode: the homeserver never hands the
// probe back, so after ten seconds on the service's clock the service Warns naming the
// homeserver's and the registration's flags, and encryption is no longer active.
func TestProbeWithoutToDeviceDelivery(t *testing.T) {
	env := startCryptoService(t, cryptoSetup{vault: true})
	if env.svc.crypto == nil {
		t.Fatalf("svc.crypto is nil; the log says:\n%s", env.logs.String())
	}
	if env.clk.BlockUntilInterval(astest.Within(t, 10*time.Second), probeTimeout) != nil {
		t.Fatal("the service does not wait for the probe on its clock")
	}
	if msgs := env.hs.ToDeviceMessages(); len(msgs) != 1 || msgs[0].Type != e2ee.ProbeEventType.Type {
		t.Fatalf("to-device messages = %+v, want the probe", msgs)
	}
	if !env.svc.encryptionActive() {
		t.Error("encryption is inactive before the probe's time ran out")
	}
	env.clk.Advance(probeTimeout)
	line := env.logs.waitForLine(t, "did not deliver the bot's to-device probe", 1)
	for _, want := range []string{`"level":"warn"`, "msc2409_to_device_messages_enabled", "msc3202_transaction_extensions", "org.matrix.msc3202", "receive_ephemeral"} {
		if !strings.Contains(line, want) {
			t.Errorf("the probe's Warn lacks %q: %s", want, line)
		}
	}
	if env.svc.encryptionActive() {
		t.Error("encryptionActive() = true after the probe never came back")
	}
}

// TestSetupCryptoWarnsAboutRegistrationFlags checks that a registration without the flags
// encryption needs is a Warn per flag at start, not a failure.
func TestSetupCryptoWarnsAboutRegistrationFlags(t *testing.T) {
	env := startCryptoService(t, cryptoSetup{vault: true, registration: func(f *testRegistrationFlags) {
		f.msc3202 = false
		f.ephemeral = false
	}, before: echoToDevice})
	logs := env.logs.String()
	for _, want := range []string{"org.matrix.msc3202 is not true", "receive_ephemeral is not true"} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log lacks %q:\n%s", want, logs)
		}
	}
	if strings.Contains(logs, "io.element.msc4190 is not true") {
		t.Error("the log warns about io.element.msc4190, which the registration has")
	}
}

// TestSetupCryptoHoldsTheCryptoKeyLock checks, from inside the homeserver's answer to the
// device's creation (after the store was opened with the vault's crypto key, before the machine
// is set), that start-up holds cryptoKeyLock: a shred rotation resuming meanwhile waits rather
// than re-pickle the rows under a new key while the store being set up pickles under the old.
func TestSetupCryptoHoldsTheCryptoKeyLock(t *testing.T) {
	held := make(chan bool, 1)
	env := startCryptoService(t, cryptoSetup{vault: true, before: func(hs *astest.FakeHomeserver, svc *Service) {
		echoToDevice(hs, svc)
		hs.OnRequest(astest.PatternPutDevice, func() {
			free := svc.cryptoKeyLock.TryLock()
			if free {
				svc.cryptoKeyLock.Unlock()
			}
			select {
			case held <- !free:
			default:
			}
		})
	}})
	if env.svc.crypto == nil {
		t.Fatalf("svc.crypto is nil; the log says:\n%s", env.logs.String())
	}
	select {
	case ok := <-held:
		if !ok {
			t.Error("cryptoKeyLock was free while start-up set the bot's device up")
		}
	default:
		t.Fatal("start-up never created the bot's device")
	}
}

// TestProbeIsSentAgainUntilOneComesBack loses the first probe (the homeserver does not deliver
// to-device messages yet, as right after a restart): the service sends it again every
// probeResend on its clock, and the one delivered then keeps encryption active past the
// probe's deadline.
func TestProbeIsSentAgainUntilOneComesBack(t *testing.T) {
	env := startCryptoService(t, cryptoSetup{vault: true})
	if env.svc.crypto == nil {
		t.Fatalf("svc.crypto is nil; the log says:\n%s", env.logs.String())
	}
	probes := func() int {
		n := 0
		for _, msg := range env.hs.ToDeviceMessages() {
			if msg.Type == e2ee.ProbeEventType.Type {
				n++
			}
		}
		return n
	}
	if env.clk.BlockUntilInterval(astest.Within(t, 10*time.Second), probeResend) != nil {
		t.Fatal("the service does not wait to send the probe again")
	}
	if n := probes(); n != 1 {
		t.Fatalf("%d probes sent at first, want 1", n)
	}
	// The homeserver delivers from now on; the first probe is lost.
	echoToDevice(env.hs, env.svc)
	env.clk.Advance(probeResend)
	env.logs.waitForLine(t, "The homeserver delivers to-device events to the appservice", 1)
	if n := probes(); n != 2 {
		t.Errorf("%d probes sent, want 2", n)
	}
	env.clk.Advance(probeTimeout)
	if !env.svc.encryptionActive() {
		t.Error("encryptionActive() = false after a probe sent again came back")
	}
}

// TestProbeAfterTheDeadlineTurnsEncryptionOn checks that a homeserver that starts delivering
// to-device events only after the probe's deadline (one that still counted the appservice as
// down after a restart) is noticed without a restart: the service keeps probing every
// probeRetryBroken, and encryption becomes active when a probe comes back, whether it is the
// latest one or one sent several probes earlier (Synapse's recoverer backs off for longer than
// probeRetryBroken, then delivers what it held).
func TestProbeAfterTheDeadlineTurnsEncryptionOn(t *testing.T) {
	tests := []struct {
		name string
		// laterProbes is how many probes are sent after the deadline before one comes back.
		laterProbes int
		// first delivers the run's first probe, late; else the homeserver delivers every
		// probe from the deadline on.
		first bool
	}{
		{name: "a later probe comes back", laterProbes: 1},
		{name: "the first probe comes back after several later ones", laterProbes: 4, first: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := startCryptoService(t, cryptoSetup{vault: true})
			if env.svc.crypto == nil {
				t.Fatalf("svc.crypto is nil; the log says:\n%s", env.logs.String())
			}
			probes := func() []astest.ToDeviceMessage {
				var out []astest.ToDeviceMessage
				for _, msg := range env.hs.ToDeviceMessages() {
					if msg.Type == e2ee.ProbeEventType.Type {
						out = append(out, msg)
					}
				}
				return out
			}
			if env.clk.BlockUntilInterval(astest.Within(t, 10*time.Second), probeTimeout) != nil {
				t.Fatal("the service does not wait for the probe on its clock")
			}
			env.clk.Advance(probeTimeout)
			env.logs.waitForLine(t, "did not deliver the bot's to-device probe", 1)
			if env.svc.encryptionActive() {
				t.Fatal("encryptionActive() = true after the probe's deadline passed")
			}
			first := probes()[0]
			if !tt.first {
				echoToDevice(env.hs, env.svc)
			}
			for i := range tt.laterProbes {
				if env.clk.BlockUntilInterval(astest.Within(t, 10*time.Second), probeRetryBroken) != nil {
					t.Fatal("the service stopped probing after the deadline")
				}
				sent := len(probes())
				env.clk.Advance(probeRetryBroken)
				env.hs.WaitFor(t, 10*time.Second, "the next probe", func() bool { return len(probes()) > sent })
				if tt.first && env.svc.encryptionActive() {
					t.Fatalf("encryptionActive() = true after probe %d past the deadline, none delivered", i+1)
				}
			}
			if tt.first {
				base := fmt.Sprintf("http://%s:%d", env.svc.cfg.AppService.Hostname, env.svc.cfg.AppService.Port)
				if err := env.hs.PushToDevice(astest.ToDeviceDelivery{
					URL: func() string { return base }, HSToken: env.svc.reg.ServerToken,
				}, first); err != nil {
					t.Fatalf("delivering the first probe late: %v", err)
				}
			}
			env.logs.waitForLine(t, "The homeserver delivers to-device events to the appservice", 1)
			if !env.svc.encryptionActive() {
				t.Error("encryptionActive() = false after a probe came back past the deadline")
			}
		})
	}
}

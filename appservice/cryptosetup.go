package appservice

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	mxas "maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/e2ee"
	"github.com/custodian-matrix/custodian/appservice/vault"
)

// cryptoSetupTimeout bounds the start-up's requests for the bot's device and cross-signing.
const cryptoSetupTimeout = 2 * time.Minute

// probeTimeout is how long the start-up's to-device probe may take to come back in a
// transaction before encryption is declared unusable.
const probeTimeout = 10 * time.Second

// probeResend is how often the probe is sent again while none came back.
const probeResend = 2 * time.Second

// probeRetryBroken is how often the probe is sent after probeTimeout passed without one coming
// back, until one does.
const probeRetryBroken = 30 * time.Second

// Names of what the homeserver and the registration need for encryption, for the Warns.
const (
	synapseE2EEFlags      = "experimental_features: {msc2409_to_device_messages_enabled: true, msc3202_transaction_extensions: true}"
	registrationE2EEFlags = "receive_ephemeral: true, org.matrix.msc3202: true, io.element.msc4190: true (custodian -g writes them)"
)

// cryptoState is the core's state of end-to-end encryption beyond Service.crypto.
type cryptoState struct {
	// broken is set when the start-up probe showed that the homeserver does not deliver
	// to-device events to the appservice: the bot cannot receive room keys.
	broken atomic.Bool
	// attachLock serialises setting Client.Crypto on intents' clients (see Service.intent).
	attachLock sync.Mutex
	// waitingDevice is the bot's device recorded in the crypto store when encryption is
	// enabled but its set-up failed in this run (no olm machine): ingest keeps the to-device
	// events sent to it for a later start. Set by setupCrypto before the listeners start,
	// never changed after; empty otherwise.
	waitingDevice id.DeviceID
}

// setupCrypto sets up end-to-end encryption when encryption.enabled: it opens the crypto store
// with the vault's crypto key, makes sure the bot's device exists on the homeserver with its
// keys (creating it with MSC4190 or an appservice login), loads the olm account, uploads its
// keys on a new device, cross-signs the device, then sets svc.crypto and attaches it to every
// client that sends. It runs after setupVault and before the bot and the listeners start. Any
// failure is a Warn that says what to fix and leaves encryption off; the service starts anyway.
func (svc *Service) setupCrypto(ctx context.Context) {
	if !svc.cfg.Encryption.Enabled {
		zerolog.Ctx(ctx).Info().Msg("Encryption is off (encryption.enabled is false): the bot warns in encrypted rooms that it cannot read them")
		return
	}
	log := zerolog.Ctx(ctx).With().Str("component", "crypto").Logger()
	for _, warning := range RegistrationWarnings(svc.cfg, svc.reg) {
		log.Warn().Str("problem", warning).Str("fix", "generate the registration again with custodian -g, give it to the homeserver and restart the homeserver").
			Msg("The registration lacks a flag encryption needs")
	}
	ctx, cancel := context.WithTimeout(log.WithContext(ctx), cryptoSetupTimeout)
	defer cancel()
	// From opening the store with the vault's crypto key until svc.crypto is set, a shred
	// rotation resuming meanwhile must wait: it would re-pickle the rows under a new key while
	// this store goes on pickling under the old one (replaceCryptoKey takes the same lock).
	svc.cryptoKeyLock.Lock()
	defer svc.cryptoKeyLock.Unlock()
	defer func() {
		if svc.crypto == nil {
			svc.keepToDeviceWithoutMachine(ctx)
		}
	}()
	v, _ := svc.vault.(*vault.Vault)
	store, err := e2ee.OpenStore(ctx, svc.rawDB, v, svc.log)
	if err != nil {
		fix := "make the vault's master key available (vault.key_file or vault.key_env; see the vault's errors above)"
		if errors.Is(err, e2ee.ErrNoVault) {
			fix = "configure the vault's master key (vault.key_file): the crypto store's keys are sealed with it"
		}
		log.Warn().Err(err).Str("fix", fix).Msg("Encryption is off: the crypto store cannot be opened, so the bot warns in encrypted rooms that it cannot read them")
		return
	}
	botMXID := svc.as.BotMXID()
	client, isNew, err := e2ee.SetupDevice(ctx, svc.as.BotClient(), store, e2ee.DeviceOptions{
		MSC4190:   svc.cfg.Encryption.MSC4190,
		NewClient: func() *mautrix.Client { return svc.as.NewMautrixClient(botMXID) },
	})
	if err != nil {
		log.Warn().Err(err).Bool("msc4190", svc.cfg.Encryption.MSC4190).
			Str("fix", "check that the homeserver is reachable and the registration has "+registrationE2EEFlags+"; with encryption.msc4190: false the homeserver must offer m.login.application_service").
			Msg("Encryption is off: the bot's device could not be set up, so the bot warns in encrypted rooms that it cannot read them")
		return
	}
	mach := e2ee.NewMachine(client, store, svc.stateStore, svc.log)
	// Key requests from a user whose erasure is pending or recent are refused (cryptoprivacy.go).
	mach.SetKeyShareGate(svc.senderGatedNow)
	mach.SetUnwedgeHandler(svc.requestUnwedge)
	// The decryption cache (BENCHMARKS.md): every path that changes crypto rows outside the
	// machine empties it (erasure, retention, re-pickle, a rolled-back to-device commit). The
	// reset of the account above ran before the machine, and so the cache, existed.
	mach.EnableCache(0)
	if err = mach.Start(ctx); err != nil {
		log.Warn().Err(err).Stringer("device_id", store.DeviceID).
			Str("fix", "check that the homeserver is reachable and accepts the device's keys, then restart").
			Msg("Encryption is off: the bot's device keys could not be loaded or uploaded, so the bot warns in encrypted rooms that it cannot read them")
		return
	}
	outcome, err := mach.CrossSign(ctx)
	if err != nil {
		// Encryption works without it; clients only show the device as unverified.
		log.Warn().Err(err).Stringer("device_id", store.DeviceID).
			Msg("The bot's device is not cross-signed: clients show its messages as sent from an unverified device")
	} else {
		log.Info().Str("cross_signing", string(outcome)).Msg("The bot's device is cross-signed")
	}
	svc.crypto = mach
	svc.attachCrypto()
	log.Info().Stringer("device_id", store.DeviceID).Bool("new_device", isNew).Bool("msc4190", svc.cfg.Encryption.MSC4190).
		Msg("Encryption is on")
}

// keepToDeviceWithoutMachine records, after setupCrypto failed with encryption enabled, the
// bot's device from the crypto store (read without the pickle key), so that ingest keeps the
// to-device events sent to it: they may carry room keys, which the next start with the olm
// machine can still use. Without a recorded device (none was ever created, or the set-up
// reset it) nothing can have been sent to it.
func (svc *Service) keepToDeviceWithoutMachine(ctx context.Context) {
	deviceID, err := e2ee.StoredDeviceID(ctx, svc.rawDB, svc.log)
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to read the bot's device: to-device events sent to it while encryption is off are lost")
		return
	}
	svc.cryptoState.waitingDevice = deviceID
}

// attachCrypto sets the bot's machine as Crypto on the bot's client and on every ghost client
// mautrix created so far; later ghosts get it in [Service.intent]. With Crypto set, mautrix
// encrypts what a client sends into rooms the state store knows as encrypted.
func (svc *Service) attachCrypto() {
	if svc.crypto == nil {
		return
	}
	svc.cryptoState.attachLock.Lock()
	defer svc.cryptoState.attachLock.Unlock()
	svc.as.BotClient().Crypto = svc.crypto
}

// intent returns the intent of userID (the bot or a bridge's ghost), its client set up to
// encrypt in encrypted rooms while encryption is on. Every intent the core and the bridges use
// comes from here or from the bot's intent, never from svc.as.Intent directly: mautrix makes
// ghosts' intents lazily, and this sets their Crypto, under a lock, before the intent is first
// returned.
func (svc *Service) intent(userID id.UserID) *mxas.IntentAPI {
	intent := svc.as.Intent(userID)
	if svc.crypto == nil {
		return intent
	}
	svc.cryptoState.attachLock.Lock()
	defer svc.cryptoState.attachLock.Unlock()
	if intent.Client.Crypto == nil {
		intent.Client.Crypto = svc.crypto
	}
	return intent
}

// probeToDevice checks, once the listeners are up, that the homeserver delivers to-device
// events to the appservice (MSC2409): it sends a probe from mach (svc.crypto) to the bot's own
// device, sends another every probeResend, and waits up to probeTimeout, on the service's
// clock, for a transaction to bring any of them back. The probe is sent again because Synapse
// keeps no to-device message of a transaction the appservice did not take (only room events
// are retried), and right after a restart it may still count the appservice as down: one
// probe is easily lost. If none comes back, the bot cannot receive room keys: it Warns naming
// the homeserver's and the registration's flags, and encryption is marked broken
// (encryptionActive false), so the bot warns in encrypted rooms as it does with encryption off.
// It then keeps sending a probe every probeRetryBroken until the service stops: when one comes
// back (the homeserver was only slow to take transactions again), encryption becomes active
// without a restart, and the olm machine, which kept up with to-device events meanwhile (see
// cryptoPresent), has every room key that arrived.
//
// All the probes of a start belong to one [e2ee.ProbeRun], so any of its last
// [e2ee.MaxOutstandingProbes] counts when it comes back, however long after it was sent:
// Synapse's appservice recoverer backs off for minutes after failed transactions, and a probe
// it delivers late is as good a proof as a new one.
func (svc *Service) probeToDevice(ctx context.Context, mach *e2ee.Machine) {
	log := zerolog.Ctx(ctx).With().Str("component", "crypto").Logger()
	run := mach.NewProbeRun()
	defer run.Stop()
	if err := run.Send(ctx); err != nil {
		if ctx.Err() != nil {
			return
		}
		svc.cryptoState.broken.Store(true)
		log.Warn().Err(err).Str("homeserver_flags", synapseE2EEFlags).Str("registration_flags", registrationE2EEFlags).
			Msg("Encryption is off: the to-device probe could not be sent, so the bot cannot tell whether it would receive room keys; it warns in encrypted rooms that it cannot read them")
		return
	}
	timer := svc.clock().NewTimer(probeTimeout)
	defer timer.Stop()
	resend := svc.clock().NewTimer(probeResend)
	defer resend.Stop()
	for sent := 1; ; {
		select {
		case <-run.Received():
			svc.cryptoState.broken.Store(false)
			log.Info().Int("probes_sent", sent).Msg("The homeserver delivers to-device events to the appservice: encryption is active")
			return
		case <-resend.C():
			interval := probeResend
			if svc.cryptoState.broken.Load() {
				interval = probeRetryBroken
			}
			if err := run.Send(ctx); err != nil {
				log.Debug().Err(err).Msg("Failed to send the to-device probe again")
			} else {
				sent++
			}
			resend.Reset(interval)
		case <-timer.C():
			svc.cryptoState.broken.Store(true)
			log.Warn().Dur("waited", probeTimeout).Int("probes_sent", sent).Str("homeserver_flags", synapseE2EEFlags).Str("registration_flags", registrationE2EEFlags).
				Dur("probe_interval", probeRetryBroken).
				Msg("Encryption is off: the homeserver did not deliver the bot's to-device probe in a transaction, so the bot cannot receive room keys; enable the homeserver's experimental features and the registration's flags, then restart. Until then the bot warns in encrypted rooms that it cannot read them; it keeps probing and turns encryption on if a probe comes back")
			resend.Reset(probeRetryBroken)
		case <-ctx.Done():
			return
		}
	}
}

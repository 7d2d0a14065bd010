package e2ee

import (
	"context"
	"errors"
	"fmt"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/id"
)

// DeviceDisplayName is the display name of the bot's device, as clients list it.
const DeviceDisplayName = "Custodian"

// RecoverySecret names the crypto store's secret (crypto_secrets, pickled with the vault's
// crypto key like every other row of the store) that holds the recovery key of the bot's
// cross-signing keys.
const RecoverySecret id.Secret = "custodian.recovery_key"

// DeviceOptions says how [SetupDevice] gets the bot's device.
type DeviceOptions struct {
	// MSC4190 creates the device with PUT /devices as the appservice (MSC4190): the bot's
	// client then sends device_id= on every request. Otherwise the device comes from an
	// m.login.application_service login on a client of its own.
	MSC4190 bool
	// NewClient returns a new client for the bot user with the appservice's token, for the
	// login. Required without MSC4190.
	NewClient func() *mautrix.Client
}

// SetupDevice makes sure the bot's device exists on the homeserver with its keys, and returns
// the client the olm machine must use and whether the device is new (its keys still to be
// uploaded). The store's device (store.DeviceID, read by [OpenStore]) is kept if the homeserver
// still holds its keys; if it does not (the device was deleted, or its keys never uploaded),
// the store's account rows are reset ([ResetAccount]) and a new device is created. bot is the
// bot's client: with MSC4190 it gets the device itself; otherwise the returned client is a new
// one, logged in as the device.
func SetupDevice(ctx context.Context, bot *mautrix.Client, store *crypto.SQLCryptoStore, opts DeviceOptions) (client *mautrix.Client, isNew bool, err error) {
	log := zerolog.Ctx(ctx)
	if store.DeviceID != "" {
		client, err = obtainDevice(ctx, bot, store.DeviceID, opts)
		if err != nil {
			return nil, false, err
		}
		ok, err := deviceHasKeys(ctx, client)
		if err != nil {
			return nil, false, err
		}
		if ok {
			return client, false, nil
		}
		log.Warn().Stringer("device_id", store.DeviceID).
			Msg("The homeserver no longer has the bot's device keys: resetting its encryption account and creating a new device")
		if err = ResetAccount(ctx, store); err != nil {
			return nil, false, err
		}
	}
	client, err = obtainDevice(ctx, bot, "", opts)
	if err != nil {
		return nil, false, err
	}
	store.DeviceID = client.DeviceID
	log.Info().Stringer("device_id", client.DeviceID).Bool("msc4190", opts.MSC4190).Msg("Created the bot's encryption device")
	return client, true, nil
}

// obtainDevice creates (deviceID empty) or re-obtains the bot's device deviceID.
func obtainDevice(ctx context.Context, bot *mautrix.Client, deviceID id.DeviceID, opts DeviceOptions) (*mautrix.Client, error) {
	if opts.MSC4190 {
		// PUT /devices/{id} as the appservice creates the device, or renames an existing one.
		if err := bot.CreateDeviceMSC4190(ctx, deviceID, DeviceDisplayName); err != nil {
			return nil, fmt.Errorf("failed to create the bot's device with MSC4190 (does the registration have io.element.msc4190: true?): %w", err)
		}
		return bot, nil
	}
	if opts.NewClient == nil {
		return nil, errors.New("no client for the appservice login")
	}
	client := opts.NewClient()
	flows, err := client.GetLoginFlows(ctx)
	if err != nil {
		return nil, fmt.Errorf("failed to get the homeserver's login flows: %w", err)
	}
	if !flows.HasFlow(mautrix.AuthTypeAppservice) {
		return nil, errors.New("the homeserver does not offer m.login.application_service login: set encryption.msc4190: true")
	}
	_, err = client.Login(ctx, &mautrix.ReqLogin{
		Type:                     mautrix.AuthTypeAppservice,
		Identifier:               mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: client.UserID.String()},
		DeviceID:                 deviceID,
		InitialDeviceDisplayName: DeviceDisplayName,
		StoreCredentials:         true,
	})
	if err != nil {
		return nil, fmt.Errorf("failed to log in as the bot with m.login.application_service: %w", err)
	}
	return client, nil
}

// deviceHasKeys asks the homeserver whether client's device has its identity keys uploaded.
func deviceHasKeys(ctx context.Context, client *mautrix.Client) (bool, error) {
	resp, err := client.QueryKeys(ctx, &mautrix.ReqQueryKeys{
		DeviceKeys: mautrix.DeviceKeysRequest{client.UserID: {client.DeviceID}},
	})
	if err != nil {
		return false, fmt.Errorf("failed to query the bot's own device keys: %w", err)
	}
	keys, ok := resp.DeviceKeys[client.UserID][client.DeviceID]
	return ok && len(keys.Keys) > 0, nil
}

// ResetAccount deletes the bot's olm account and what belongs to its device alone (olm
// sessions, seen olm message hashes, outbound megolm sessions and whom they were shared with),
// in one transaction, and clears store.DeviceID and the store's cached account. Inbound megolm
// sessions, tracked devices, cross-signing keys and secrets (the recovery key) stay: they do not
// depend on the device.
func ResetAccount(ctx context.Context, store *crypto.SQLCryptoStore) error {
	err := store.DB.DoTxn(ctx, nil, func(ctx context.Context) error {
		for _, q := range []string{
			"DELETE FROM crypto_account WHERE account_id=$1",
			"DELETE FROM crypto_olm_session WHERE account_id=$1",
			"DELETE FROM crypto_olm_message_hash WHERE account_id=$1",
			"DELETE FROM crypto_megolm_outbound_session_shared WHERE session_id IN (SELECT session_id FROM crypto_megolm_outbound_session WHERE account_id=$1)",
			"DELETE FROM crypto_megolm_outbound_session WHERE account_id=$1",
		} {
			if _, err := store.DB.Exec(ctx, q, store.AccountID); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("failed to reset the crypto account: %w", err)
	}
	store.DeviceID = ""
	store.Account = nil
	return nil
}

// Start loads the device's olm account (creating it on a new device) and uploads the device's
// identity keys and one-time keys when they were never uploaded. Call it once, after
// [SetupDevice], before the machine handles or sends anything.
func (m *Machine) Start(ctx context.Context) error {
	if err := m.mach.Load(ctx); err != nil {
		return fmt.Errorf("failed to load the olm account: %w", err)
	}
	if m.mach.GetAccount().Shared {
		return nil
	}
	if err := m.mach.ShareKeys(ctx, -1); err != nil {
		return fmt.Errorf("failed to upload the device's keys: %w", err)
	}
	return nil
}

// CrossSignOutcome says what [Machine.CrossSign] did.
type CrossSignOutcome string

// The outcomes of [Machine.CrossSign].
const (
	// CrossSignAlready: the device was already signed by the bot's self-signing key.
	CrossSignAlready CrossSignOutcome = "already"
	// CrossSignGenerated: the bot had no cross-signing keys; new ones were made and uploaded,
	// the device signed, and the recovery key kept.
	CrossSignGenerated CrossSignOutcome = "generated"
	// CrossSignVerified: the device was signed with the existing keys, opened with the kept
	// recovery key.
	CrossSignVerified CrossSignOutcome = "verified"
	// CrossSignRegenerated: the homeserver had cross-signing keys but Custodian did not hold
	// their recovery key, so it replaced them.
	CrossSignRegenerated CrossSignOutcome = "regenerated"
)

// CrossSign makes sure the bot's device is signed by the bot's own cross-signing keys, so
// clients do not flag it as unverified. Without keys on the homeserver it generates them (with
// a secret-storage recovery key, kept as the store's [RecoverySecret]); with keys but an
// unsigned device it opens them with the kept recovery key and signs the device; with keys but
// no recovery key held it replaces them, with a Warn. Call it after [Machine.Start].
func (m *Machine) CrossSign(ctx context.Context) (CrossSignOutcome, error) {
	log := zerolog.Ctx(ctx)
	hasKeys, verified, err := m.mach.GetOwnVerificationStatus(ctx)
	if err != nil {
		return "", fmt.Errorf("failed to check the bot's cross-signing status: %w", err)
	}
	recoveryKey, err := m.store.GetSecret(ctx, RecoverySecret)
	if err != nil {
		return "", fmt.Errorf("failed to read the kept recovery key: %w", err)
	}
	switch {
	case hasKeys && verified:
		return CrossSignAlready, nil
	case hasKeys && recoveryKey != "":
		if err = m.mach.VerifyWithRecoveryKey(ctx, recoveryKey); err != nil {
			return "", fmt.Errorf("failed to sign the device with the kept recovery key: %w", err)
		}
		return CrossSignVerified, nil
	case hasKeys:
		log.Warn().Msg("The bot has cross-signing keys on the homeserver but Custodian does not hold their recovery key: replacing them")
		if err = m.generateCrossSigning(ctx); err != nil {
			return "", err
		}
		return CrossSignRegenerated, nil
	default:
		if err = m.generateCrossSigning(ctx); err != nil {
			return "", err
		}
		return CrossSignGenerated, nil
	}
}

func (m *Machine) generateCrossSigning(ctx context.Context) error {
	recoveryKey, err := m.mach.GenerateAndVerifyWithRecoveryKey(ctx)
	if recoveryKey != "" {
		// Kept even when signing failed: the keys are on the homeserver already.
		if perr := m.store.PutSecret(ctx, RecoverySecret, recoveryKey); perr != nil {
			return fmt.Errorf("failed to keep the recovery key: %w", perr)
		}
	}
	if err != nil {
		return fmt.Errorf("failed to generate cross-signing keys and sign the device: %w", err)
	}
	return nil
}

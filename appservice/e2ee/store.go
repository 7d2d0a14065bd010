// Package e2ee holds Custodian's end-to-end encryption state: mautrix's SQL crypto store (the
// bot's olm account, the olm and megolm sessions, tracked users' devices, cross-signing keys)
// in the service's own database, as a child database with the version table crypto_version.
// Its migrations run at every start, with encryption on or off, so the personal-data inventory
// can declare its tables. The store's pickle key is the vault's crypto key
// ([vault.Vault.CryptoKey]), wrapped by the master key: a copy of the database without the
// master key yields no usable olm or megolm key.
//
// The store is personal data (invariant 11): [Inventory] declares its tables, so the privacy
// engine exports, erases and expires them; after an erasure [Machine.EvictOlmSessions] drops
// the olm sessions mautrix keeps in memory, and after a shred rotation
// [Machine.ReplacePickleKey] with [Repickle] moves every pickled row to a new pickle key.
package e2ee

import (
	"context"
	"errors"
	"fmt"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/sql_store_upgrade"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/vault"
)

// VersionTable is the version table of the crypto store's child database.
const VersionTable = sql_store_upgrade.VersionTableName

// AccountID is the crypto store's account ID: the row of crypto_account and the key of every
// account-scoped row. The service has one device, the bot's.
const AccountID = "custodian"

// ErrNoVault is returned by [OpenStore] without a vault: the pickle key needs a master key.
var ErrNoVault = errors.New("e2ee: the credential vault is off, so there is no pickle key")

func dbLogger(log zerolog.Logger) dbutil.DatabaseLogger {
	return dbutil.ZeroLogger(log.With().Str("db_section", "crypto").Logger())
}

// ChildDB returns the crypto store's view of the service's database: a child of parent with
// the version table crypto_version and mautrix's crypto migrations.
func ChildDB(parent *dbutil.Database, log zerolog.Logger) *dbutil.Database {
	return parent.Child(VersionTable, sql_store_upgrade.Table, dbLogger(log))
}

// Upgrade runs the crypto store's migrations on parent. The service runs it at every start
// after the core's and the vault's migrations and before the bridges', with encryption on or
// off.
func Upgrade(ctx context.Context, parent *dbutil.Database, log zerolog.Logger) error {
	if err := ChildDB(parent, log).Upgrade(ctx); err != nil {
		return fmt.Errorf("failed to upgrade the crypto store: %w", err)
	}
	return nil
}

// StoredDeviceID returns the bot's device recorded in the crypto store on parent (migrated by
// [Upgrade]), empty if none, without the pickle key: the service reads it when encryption is
// enabled but [OpenStore] or the device's set-up failed, to keep the to-device events sent to
// that device for a later start.
func StoredDeviceID(ctx context.Context, parent *dbutil.Database, log zerolog.Logger) (id.DeviceID, error) {
	deviceID, err := crypto.NewSQLCryptoStore(parent, dbLogger(log), AccountID, "", nil).FindDeviceID(ctx)
	if err != nil {
		return "", fmt.Errorf("failed to read the crypto store's device: %w", err)
	}
	return deviceID, nil
}

// OpenStore opens the crypto store on parent (migrated by [Upgrade]) with the vault's crypto key
// as pickle key, creating that key on first use. The store's DeviceID is the device recorded in
// crypto_account, empty before the first device is created. It fails with [ErrNoVault] without
// a vault, and with an error wrapping [vault.ErrKeyUnavailable] or [vault.ErrNoKey] when the
// crypto key cannot be unwrapped or created: encryption must then stay off, since a new pickle
// key would not open the stored account and sessions.
func OpenStore(ctx context.Context, parent *dbutil.Database, v *vault.Vault, log zerolog.Logger) (*crypto.SQLCryptoStore, error) {
	if v == nil {
		return nil, ErrNoVault
	}
	key, _, err := v.CryptoKey(ctx)
	if err != nil {
		return nil, fmt.Errorf("failed to get the crypto store's pickle key: %w", err)
	}
	store := crypto.NewSQLCryptoStore(parent, dbLogger(log), AccountID, "", key)
	deviceID, err := store.FindDeviceID(ctx)
	if err != nil {
		return nil, fmt.Errorf("failed to read the crypto store's device: %w", err)
	}
	store.DeviceID = deviceID
	return store, nil
}

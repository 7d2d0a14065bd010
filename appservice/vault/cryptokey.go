package vault

import (
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
)

// The crypto key is the pickle key of the end-to-end encryption store (appservice/e2ee): the
// olm account, olm and megolm sessions and cross-signing secrets in the crypto_* tables are
// encrypted with it. It is one random 256-bit key stored in as_vault_crypto_key, wrapped by the
// master key exactly like an inbox key, under a label of its own: a rotation re-wraps it, "keys
// status" counts it and "keys retire" refuses a master key that still wraps it. A copy of the
// database without the master key therefore yields no usable olm or megolm key.

// cryptoKeyID is the key ID of the one crypto key.
const cryptoKeyID = 1

const (
	getCryptoKeyQuery    = `SELECT kek_id, wrapped FROM as_vault_crypto_key WHERE key_id=$1`
	insertCryptoKeyQuery = `
		INSERT INTO as_vault_crypto_key (key_id, kek_id, wrapped, created_at) VALUES ($1, $2, $3, $4)
		ON CONFLICT (key_id) DO NOTHING
	`
	rotateCryptoKeyQuery = `SELECT key_id, kek_id, wrapped FROM as_vault_crypto_key WHERE kek_id <> $1`
	updateCryptoKeyQuery = `
		UPDATE as_vault_crypto_key SET kek_id=$1, wrapped=$2, rewrapped_at=$3
		WHERE key_id=$4 AND kek_id=$5 AND wrapped=$6
	`
)

// cryptoWrapAAD binds a wrapped crypto key to its master key ID and key ID. Its label differs
// from a data key's and an inbox key's, so a wrapped key copied between tables does not unwrap.
func cryptoWrapAAD(kekID string, keyID uint32) []byte {
	b := make([]byte, 0, 32+len(kekID))
	b = append(b, "custodian-crypto-key v1\x00"...)
	b = appendField(b, kekID)
	return append(b, byte(keyID>>24), byte(keyID>>16), byte(keyID>>8), byte(keyID))
}

func unwrapCrypto(mk *masterKey, keyID uint32, wrapped []byte) ([]byte, error) {
	if len(wrapped) != wrappedSize {
		return nil, fmt.Errorf("wrapped crypto key has %d bytes, want %d", len(wrapped), wrappedSize)
	}
	return mk.aead.Open(nil, wrapped[:nonceSize], wrapped[nonceSize:], cryptoWrapAAD(mk.ID(), keyID))
}

func wrapCrypto(mk *masterKey, keyID uint32, key []byte) ([]byte, error) {
	out := make([]byte, nonceSize, wrappedSize)
	if _, err := rand.Read(out); err != nil {
		return nil, fmt.Errorf("failed to generate nonce: %w", err)
	}
	return mk.aead.Seal(out, out[:nonceSize], key, cryptoWrapAAD(mk.ID(), keyID)), nil
}

// CryptoKeyStatus reports what [Vault.CryptoKey] did.
type CryptoKeyStatus struct {
	// Created is true when CryptoKey created the key (there was none).
	Created bool
	// KeyID is the master key that wraps it.
	KeyID string
}

// CryptoKey returns the pickle key of the end-to-end encryption store (32 bytes; the caller
// clears it when done), creating and storing it under the current master key if there is none.
// It fails with [ErrKeyUnavailable] when the stored key's master key is missing or wrong (the
// crypto store must then stay closed: a new key would not open the existing rows) and with
// [ErrNoKey] when it must create one without a usable current master key. It joins the
// transaction in ctx, if any.
func (v *Vault) CryptoKey(ctx context.Context) ([]byte, CryptoKeyStatus, error) {
	var st CryptoKeyStatus
	var kekID string
	var wrapped []byte
	err := v.db.QueryRow(ctx, getCryptoKeyQuery, cryptoKeyID).Scan(&kekID, &wrapped)
	switch {
	case err == nil:
		mk, ok := v.ring.Load().byID[kekID]
		if !ok && v.reloadForKey(ctx, kekID) {
			mk, ok = v.ring.Load().byID[kekID]
		}
		if !ok || mk.wrong.Load() {
			return nil, st, fmt.Errorf("%w: master key %s of the crypto key is missing or wrong", ErrKeyUnavailable, kekID)
		}
		key, err := unwrapCrypto(mk, cryptoKeyID, wrapped)
		if err != nil {
			return nil, st, fmt.Errorf("%w: the crypto key does not unwrap under master key %s", ErrKeyUnavailable, kekID)
		}
		st.KeyID = kekID
		return key, st, nil
	case !errors.Is(err, sql.ErrNoRows):
		return nil, st, fmt.Errorf("failed to read the crypto key: %w", err)
	}
	cur := v.ring.Load().current
	if cur == nil {
		return nil, st, fmt.Errorf("%w: %s has no key loaded", ErrNoKey, v.opts.Keys.String())
	}
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, st, fmt.Errorf("failed to generate the crypto key: %w", err)
	}
	err = v.db.DoTxn(ctx, nil, func(ctx context.Context) error {
		if err := v.recordKey(ctx, cur); err != nil {
			return err
		}
		wrapped, err := wrapCrypto(cur, cryptoKeyID, key)
		if err != nil {
			return err
		}
		res, err := v.db.Exec(ctx, insertCryptoKeyQuery, cryptoKeyID, cur.ID(), wrapped, v.now().UnixMilli())
		if err != nil {
			return fmt.Errorf("failed to store the crypto key: %w", err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n != 1 {
			return errors.New("vault: another process created the crypto key at the same time")
		}
		return nil
	})
	if err != nil {
		clear(key)
		return nil, st, err
	}
	st.Created, st.KeyID = true, cur.ID()
	return key, st, nil
}

// rotateCryptoKey re-wraps the crypto key under cur if another master key wraps it, by
// compare-and-swap, and returns how many keys it re-wrapped (0 or 1). A key whose master key is
// missing or wrong is counted in res.Unavailable.
func (v *Vault) rotateCryptoKey(ctx context.Context, cur *masterKey, res *RotateResult) (int, error) {
	n, err := v.rewrapKeys(ctx, cur, res, wrappedKeyTable{
		noun: "crypto key", selectQuery: rotateCryptoKeyQuery, updateQuery: updateCryptoKeyQuery,
		unwrap: unwrapCrypto, wrap: wrapCrypto,
	})
	if err == nil {
		res.CryptoKeys += n
	}
	return n, err
}

const replaceCryptoKeyQuery = `
	UPDATE as_vault_crypto_key SET kek_id=$1, wrapped=$2, rewrapped_at=$3
	WHERE key_id=$4 AND kek_id=$5 AND wrapped=$6
`

// ReplaceCryptoKey replaces the crypto key after an erasure (vault.shred_backups): in one
// transaction (joining the one in ctx, if any) it generates a new crypto key, calls repickle
// with the old and the new key (repickle must re-encrypt, in the same transaction, every row
// pickled under the old key), and stores the new key wrapped by the current master key in place
// of the old one. Once the master key that wrapped the old key is retired, rows pickled under it
// (in WAL frames, dead tuples or backups) open with no key Custodian holds.
//
// The caller must keep anything from pickling under the old key concurrently, and switch to the
// new key (repickle may keep a copy; both slices are cleared when ReplaceCryptoKey returns). It
// returns false, and does nothing, when there is no crypto key yet. It fails with [ErrNoKey]
// without a usable current master key and with [ErrKeyUnavailable] when the old key does not
// unwrap; on any error nothing changed.
func (v *Vault) ReplaceCryptoKey(ctx context.Context, repickle func(ctx context.Context, oldKey, newKey []byte) error) (bool, error) {
	cur := v.ring.Load().current
	if cur == nil {
		return false, fmt.Errorf("%w: %s has no key loaded", ErrNoKey, v.opts.Keys.String())
	}
	replaced := false
	err := v.db.DoTxn(ctx, nil, func(ctx context.Context) error {
		var kekID string
		var wrapped []byte
		err := v.db.QueryRow(ctx, getCryptoKeyQuery, cryptoKeyID).Scan(&kekID, &wrapped)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		} else if err != nil {
			return fmt.Errorf("failed to read the crypto key: %w", err)
		}
		mk, ok := v.ring.Load().byID[kekID]
		if !ok || mk.wrong.Load() {
			return fmt.Errorf("%w: master key %s of the crypto key is missing or wrong", ErrKeyUnavailable, kekID)
		}
		oldKey, err := unwrapCrypto(mk, cryptoKeyID, wrapped)
		if err != nil {
			return fmt.Errorf("%w: the crypto key does not unwrap under master key %s", ErrKeyUnavailable, kekID)
		}
		defer clear(oldKey)
		newKey := make([]byte, KeySize)
		defer clear(newKey)
		if _, err = rand.Read(newKey); err != nil {
			return fmt.Errorf("failed to generate the crypto key: %w", err)
		}
		if err = v.recordKey(ctx, cur); err != nil {
			return err
		}
		newWrapped, err := wrapCrypto(cur, cryptoKeyID, newKey)
		if err != nil {
			return err
		}
		if err = repickle(ctx, oldKey, newKey); err != nil {
			return fmt.Errorf("failed to re-pickle the crypto store: %w", err)
		}
		res, err := v.db.Exec(ctx, replaceCryptoKeyQuery, cur.ID(), newWrapped, v.now().UnixMilli(), cryptoKeyID, kekID, wrapped)
		if err != nil {
			return fmt.Errorf("failed to store the new crypto key: %w", err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n != 1 {
			return errors.New("vault: the crypto key changed while it was being replaced")
		}
		replaced = true
		return nil
	})
	if err != nil {
		return false, err
	}
	return replaced, nil
}

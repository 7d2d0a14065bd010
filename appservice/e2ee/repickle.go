package e2ee

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/crypto/goolm/libolmpickle"
)

// pickledColumn is a column of the crypto store encrypted with the pickle key, and the columns
// that identify its rows.
type pickledColumn struct {
	table, column string
	keys          []string
}

// pickledColumns are every column mautrix's crypto store (v0.31.0) encrypts with the pickle
// key: the bot's olm account, the olm sessions, the inbound and outbound megolm sessions and the
// secrets (cross-signing and recovery keys). goolm pickles them all the same way
// (libolmpickle), so they are re-encrypted without being parsed.
var pickledColumns = []pickledColumn{
	{table: "crypto_account", column: "account", keys: []string{"account_id"}},
	{table: "crypto_olm_session", column: "session", keys: []string{"account_id", "session_id"}},
	{table: "crypto_megolm_inbound_session", column: "session", keys: []string{"account_id", "session_id"}},
	{table: "crypto_megolm_outbound_session", column: "session", keys: []string{"account_id", "room_id"}},
	{table: "crypto_secrets", column: "secret", keys: []string{"account_id", "name"}},
}

// RepickleResult counts what [Repickle] did.
type RepickleResult struct {
	// Repickled counts the rows now encrypted with the new key.
	Repickled int
	// Unreadable counts the rows that did not open with the old key, which stay as they were:
	// no key Custodian holds opens them.
	Unreadable int
}

// Repickle re-encrypts every pickled row of the crypto store on db (see pickledColumns) from
// oldKey to newKey. It joins the transaction in ctx, if any: run it in the transaction that
// replaces the key ([vault.Vault.ReplaceCryptoKey]), with nothing pickling meanwhile
// ([Machine.ReplacePickleKey] sees to that for a running machine).
func Repickle(ctx context.Context, db *dbutil.Database, oldKey, newKey []byte) (RepickleResult, error) {
	var res RepickleResult
	for _, pc := range pickledColumns {
		type row struct {
			keys []any
			data []byte
		}
		var todo []row
		rows, err := db.Query(ctx, fmt.Sprintf(`SELECT %s, %s FROM %s WHERE %s IS NOT NULL`,
			strings.Join(pc.keys, ", "), pc.column, pc.table, pc.column))
		if err != nil {
			return res, fmt.Errorf("failed to read %s: %w", pc.table, err)
		}
		for rows.Next() {
			keys := make([]string, len(pc.keys))
			var r row
			ptrs := make([]any, 0, len(keys)+1)
			for i := range keys {
				ptrs = append(ptrs, &keys[i])
			}
			if err = rows.Scan(append(ptrs, &r.data)...); err != nil {
				_ = rows.Close()
				return res, fmt.Errorf("failed to read %s: %w", pc.table, err)
			}
			for _, k := range keys {
				r.keys = append(r.keys, k)
			}
			todo = append(todo, r)
		}
		if err = rows.Close(); err != nil {
			return res, fmt.Errorf("failed to read %s: %w", pc.table, err)
		}
		where := make([]string, len(pc.keys))
		for i, k := range pc.keys {
			where[i] = fmt.Sprintf("%s=$%d", k, i+2)
		}
		update := fmt.Sprintf(`UPDATE %s SET %s=$1 WHERE %s`, pc.table, pc.column, strings.Join(where, " AND "))
		for _, r := range todo {
			plain, err := libolmpickle.Unpickle(oldKey, r.data)
			if err != nil {
				res.Unreadable++
				continue
			}
			data, err := libolmpickle.Pickle(newKey, plain)
			clear(plain)
			if err != nil {
				return res, fmt.Errorf("failed to pickle a row of %s: %w", pc.table, err)
			}
			if _, err = db.Exec(ctx, update, append([]any{data}, r.keys...)...); err != nil {
				return res, fmt.Errorf("failed to update a row of %s: %w", pc.table, err)
			}
			res.Repickled++
		}
	}
	return res, nil
}

// replaceKeyTimeout bounds how long [Machine.ReplacePickleKey] holds the store for itself. A
// transaction that already wrote to the crypto store (a to-device event being handled) and
// waits for the store meanwhile would otherwise wait for ever, with the replacement waiting for
// its rows; the replacement fails instead, and its caller retries later.
const replaceKeyTimeout = 30 * time.Second

// ReplacePickleKey replaces the store's pickle key while nothing else uses the store. It takes
// the store for itself (every pickling method waits), calls replace with a function that
// re-pickles the store's rows from the old key to the new ([Repickle]) and remembers the new
// key, and, if replace returns nil, switches the store to the new key. replace is normally
// [vault.Vault.ReplaceCryptoKey], which calls the function in its transaction. ReplacePickleKey
// gives replace at most 30 seconds; on an error nothing changed and the store keeps its key.
// On success the decryption cache ([Machine.Evict]) is emptied.
func (m *Machine) ReplacePickleKey(ctx context.Context, replace func(ctx context.Context, repickle func(ctx context.Context, oldKey, newKey []byte) error) error) (RepickleResult, error) {
	m.locked.mu.Lock()
	defer m.locked.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, replaceKeyTimeout)
	defer cancel()
	var res RepickleResult
	var next []byte
	err := replace(ctx, func(ctx context.Context, oldKey, newKey []byte) error {
		if !bytes.Equal(oldKey, m.locked.PickleKey) {
			return fmt.Errorf("the store's pickle key is not the vault's crypto key")
		}
		var err error
		res, err = Repickle(ctx, m.locked.DB, oldKey, newKey)
		next = bytes.Clone(newKey)
		return err
	})
	if err != nil {
		return RepickleResult{}, err
	}
	if next != nil {
		m.locked.PickleKey = next
	}
	// Nothing cached may outlive the rows it was read from under the old key.
	m.Evict()
	return res, nil
}

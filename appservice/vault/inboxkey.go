package vault

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// The inbox keys seal the content of events in the service's durable inbox (as_inbox), so that
// no event body, command or credential typed in a chat is ever written to the database, its WAL
// or its backups in plaintext. They are random 256-bit keys stored in as_vault_inbox_key,
// wrapped by the master key exactly like data keys: a rotation re-wraps them, "keys status"
// counts them and "keys retire" refuses a master key that still wraps one. The service holds
// the unwrapped keys in memory (one AES-GCM instance each), so sealing costs no database access.

// inboxSealedVersion is the first byte of a sealed inbox event; the layout after it is
// key_id (uint32, big endian) || nonce (12 bytes) || ciphertext and GCM tag (16 bytes).
const inboxSealedVersion = 1

// inboxRing is one published set of unwrapped inbox keys. It is immutable once published.
type inboxRing struct {
	// current seals new events; nil when no inbox key could be unwrapped or created.
	current   cipher.AEAD
	currentID uint32
	byID      map[uint32]cipher.AEAD
}

// inboxState is the vault's inbox key state, created on first use.
type inboxState struct {
	// mu serialises loading and replacing, so a load that read the table before a replacement
	// cannot publish keys the replacement deleted.
	mu   sync.Mutex
	ring atomic.Pointer[inboxRing]
}

// InboxKeyStatus reports the inbox keys after [Vault.LoadInboxKeys].
type InboxKeyStatus struct {
	// CurrentID is the key new events are sealed with; zero when there is none (no usable
	// master key to create one with).
	CurrentID uint32
	// Created is true when LoadInboxKeys created the current key.
	Created bool
	// Unavailable lists the inbox keys whose master key is missing or wrong. Events sealed
	// under them stay in the inbox and open once the master key is back.
	Unavailable []uint32
}

const (
	getInboxKeysQuery   = `SELECT key_id, kek_id, wrapped FROM as_vault_inbox_key ORDER BY key_id`
	maxInboxKeyQuery    = `SELECT COALESCE(MAX(key_id), 0) FROM as_vault_inbox_key`
	insertInboxKeyQuery = `
		INSERT INTO as_vault_inbox_key (key_id, kek_id, wrapped, created_at) VALUES ($1, $2, $3, $4)
		ON CONFLICT (key_id) DO NOTHING
	`
	deleteInboxKeyQuery = `DELETE FROM as_vault_inbox_key WHERE key_id=$1`
)

// inboxKeyRow is one row of as_vault_inbox_key.
type inboxKeyRow struct {
	keyID   uint32
	kekID   string
	wrapped []byte
}

// inboxWrapAAD binds a wrapped inbox key to its master key ID and key ID. Its label differs from
// a data key's, so a wrapped data key copied into the inbox key table does not unwrap.
func inboxWrapAAD(kekID string, keyID uint32) []byte {
	b := make([]byte, 0, 32+len(kekID))
	b = append(b, "custodian-inbox-key v1\x00"...)
	b = appendField(b, kekID)
	return binary.BigEndian.AppendUint32(b, keyID)
}

// inboxAAD is the associated data of a sealed inbox event: a domain label, the header (version
// and key ID) and the caller's associated data (the row's routing envelope).
func inboxAAD(header, aad []byte) []byte {
	b := make([]byte, 0, 24+len(header)+len(aad))
	b = append(b, "custodian-inbox v1\x00"...)
	b = append(b, header...)
	return append(b, aad...)
}

func (v *Vault) inboxRing() *inboxRing {
	if r := v.inbox.ring.Load(); r != nil {
		return r
	}
	return &inboxRing{}
}

func (v *Vault) inboxKeyRows(ctx context.Context) ([]inboxKeyRow, error) {
	rows, err := v.db.Query(ctx, getInboxKeysQuery)
	if err != nil {
		return nil, fmt.Errorf("failed to read inbox keys: %w", err)
	}
	var out []inboxKeyRow
	for rows.Next() {
		var r inboxKeyRow
		var keyID int64
		if err = rows.Scan(&keyID, &r.kekID, &r.wrapped); err != nil {
			_ = rows.Close()
			return nil, fmt.Errorf("failed to read inbox keys: %w", err)
		}
		r.keyID = uint32(keyID)
		out = append(out, r)
	}
	if err = rows.Close(); err != nil {
		return nil, fmt.Errorf("failed to read inbox keys: %w", err)
	}
	return out, nil
}

// unwrapInboxKey unwraps an inbox key row under the loaded master keys, re-reading the key
// source once if its master key is unknown. Failures wrap [ErrKeyUnavailable].
func (v *Vault) unwrapInboxKey(ctx context.Context, row inboxKeyRow) (cipher.AEAD, error) {
	mk, ok := v.ring.Load().byID[row.kekID]
	if !ok && v.reloadForKey(ctx, row.kekID) {
		mk, ok = v.ring.Load().byID[row.kekID]
	}
	if !ok || mk.wrong.Load() {
		return nil, fmt.Errorf("%w: master key %s of inbox key %d is missing or wrong", ErrKeyUnavailable, row.kekID, row.keyID)
	}
	key, err := unwrapInbox(mk, row.keyID, row.wrapped)
	if err != nil {
		return nil, fmt.Errorf("%w: inbox key %d does not unwrap under master key %s", ErrKeyUnavailable, row.keyID, row.kekID)
	}
	defer clear(key)
	return newAEAD(key), nil
}

func unwrapInbox(mk *masterKey, keyID uint32, wrapped []byte) ([]byte, error) {
	if len(wrapped) != wrappedSize {
		return nil, fmt.Errorf("wrapped inbox key has %d bytes, want %d", len(wrapped), wrappedSize)
	}
	return mk.aead.Open(nil, wrapped[:nonceSize], wrapped[nonceSize:], inboxWrapAAD(mk.ID(), keyID))
}

func wrapInbox(mk *masterKey, keyID uint32, key []byte) ([]byte, error) {
	out := make([]byte, nonceSize, wrappedSize)
	if _, err := rand.Read(out); err != nil {
		return nil, fmt.Errorf("failed to generate nonce: %w", err)
	}
	return mk.aead.Seal(out, out[:nonceSize], key, inboxWrapAAD(mk.ID(), keyID)), nil
}

// createInboxKey stores a new inbox key, wrapped by the current master key, under the next free
// key ID. It joins the transaction in ctx, if any.
func (v *Vault) createInboxKey(ctx context.Context) (uint32, cipher.AEAD, error) {
	cur := v.ring.Load().current
	if cur == nil {
		return 0, nil, fmt.Errorf("%w: %s has no key loaded", ErrNoKey, v.opts.Keys.String())
	}
	key := make([]byte, KeySize)
	defer clear(key)
	if _, err := rand.Read(key); err != nil {
		return 0, nil, fmt.Errorf("failed to generate inbox key: %w", err)
	}
	var keyID uint32
	err := v.db.DoTxn(ctx, nil, func(ctx context.Context) error {
		if err := v.recordKey(ctx, cur); err != nil {
			return err
		}
		var maxID int64
		if err := v.db.QueryRow(ctx, maxInboxKeyQuery).Scan(&maxID); err != nil {
			return fmt.Errorf("failed to read inbox keys: %w", err)
		}
		keyID = uint32(maxID) + 1
		wrapped, err := wrapInbox(cur, keyID, key)
		if err != nil {
			return err
		}
		res, err := v.db.Exec(ctx, insertInboxKeyQuery, int64(keyID), cur.ID(), wrapped, v.now().UnixMilli())
		if err != nil {
			return fmt.Errorf("failed to store inbox key: %w", err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n != 1 {
			return errors.New("vault: another process created an inbox key at the same time")
		}
		return nil
	})
	if err != nil {
		return 0, nil, err
	}
	return keyID, newAEAD(key), nil
}

// LoadInboxKeys reads the inbox keys, unwraps every one it can and publishes them for
// [Vault.SealInbox] and [Vault.OpenInbox]. New events are sealed with the newest inbox key; if
// it cannot be unwrapped (its master key is missing or wrong) or there is none, LoadInboxKeys
// creates a new one under the current master key, keeping the old ones: events sealed under
// them open again once their master key is back and LoadInboxKeys runs again. Without a usable
// current master key it fails with [ErrNoKey] (after publishing what it could unwrap), and
// SealInbox fails until a later call succeeds.
//
// The service calls it at start and again while some inbox rows cannot be opened or no key
// seals. It does one query (plus one transaction when it creates a key); keys already unwrapped
// are not unwrapped again. Safe for concurrent use.
func (v *Vault) LoadInboxKeys(ctx context.Context) (InboxKeyStatus, error) {
	v.inbox.mu.Lock()
	defer v.inbox.mu.Unlock()
	var st InboxKeyStatus
	rows, err := v.inboxKeyRows(ctx)
	if err != nil {
		return st, err
	}
	old := v.inboxRing()
	ring := &inboxRing{byID: make(map[uint32]cipher.AEAD, len(rows)+1)}
	for _, row := range rows {
		aead, ok := old.byID[row.keyID]
		if !ok {
			if aead, err = v.unwrapInboxKey(ctx, row); err != nil {
				st.Unavailable = append(st.Unavailable, row.keyID)
				continue
			}
		}
		ring.byID[row.keyID] = aead
	}
	if n := len(rows); n > 0 {
		if aead, ok := ring.byID[rows[n-1].keyID]; ok {
			ring.current, ring.currentID = aead, rows[n-1].keyID
		}
	}
	if ring.current == nil {
		keyID, aead, err := v.createInboxKey(ctx)
		if err != nil {
			v.inbox.ring.Store(ring)
			return st, err
		}
		ring.byID[keyID] = aead
		ring.current, ring.currentID = aead, keyID
		st.Created = true
	}
	st.CurrentID = ring.currentID
	v.inbox.ring.Store(ring)
	return st, nil
}

// SealInbox encrypts an inbox event's content under the current inbox key, bound to aad (the
// row's routing envelope: the same bytes must be given to [Vault.OpenInbox]). The result is
// version (1 byte) || inbox key ID (4) || nonce (12) || ciphertext || tag (16). It fails with
// [ErrNoKey] when no inbox key is loaded ([Vault.LoadInboxKeys] has not succeeded). It does no
// I/O; safe for concurrent use.
func (v *Vault) SealInbox(plaintext, aad []byte) ([]byte, error) {
	ring := v.inboxRing()
	if ring.current == nil {
		return nil, fmt.Errorf("%w: no inbox key is loaded", ErrNoKey)
	}
	return sealInbox(ring.current, ring.currentID, plaintext, aad)
}

func sealInbox(aead cipher.AEAD, keyID uint32, plaintext, aad []byte) ([]byte, error) {
	out := make([]byte, headerSize+nonceSize, headerSize+nonceSize+len(plaintext)+tagSize)
	out[0] = inboxSealedVersion
	binary.BigEndian.PutUint32(out[1:headerSize], keyID)
	if _, err := rand.Read(out[headerSize:]); err != nil {
		return nil, fmt.Errorf("failed to generate nonce: %w", err)
	}
	return aead.Seal(out, out[headerSize:headerSize+nonceSize], plaintext, inboxAAD(out[:headerSize], aad)), nil
}

// OpenInbox decrypts what [Vault.SealInbox] returned for the same aad. Errors wrap
// [ErrKeyUnavailable] (its inbox key is not loaded: the master key that wraps it is missing or
// wrong, or it was retired by a shred and the value is from before; retry after
// [Vault.LoadInboxKeys]) or [ErrDecrypt] (tampered, truncated, or moved to another row). It does
// no I/O; safe for concurrent use.
func (v *Vault) OpenInbox(sealed, aad []byte) ([]byte, error) {
	keyID, err := InboxKeyID(sealed)
	if err != nil {
		return nil, err
	}
	aead, ok := v.inboxRing().byID[keyID]
	if !ok {
		return nil, fmt.Errorf("%w: inbox key %d is not loaded", ErrKeyUnavailable, keyID)
	}
	plaintext, err := aead.Open(nil, sealed[headerSize:headerSize+nonceSize], sealed[headerSize+nonceSize:], inboxAAD(sealed[:headerSize], aad))
	if err != nil {
		return nil, fmt.Errorf("%w: inbox event authentication failed", ErrDecrypt)
	}
	return plaintext, nil
}

// InboxKeyID returns the ID of the inbox key a value from [Vault.SealInbox] was sealed with, or
// an error wrapping [ErrDecrypt] if it is not such a value.
func InboxKeyID(sealed []byte) (uint32, error) {
	if len(sealed) < headerSize+nonceSize+tagSize {
		return 0, fmt.Errorf("%w: sealed inbox event too short", ErrDecrypt)
	}
	if sealed[0] != inboxSealedVersion {
		return 0, fmt.Errorf("%w: unknown inbox format version %d", ErrDecrypt, sealed[0])
	}
	return binary.BigEndian.Uint32(sealed[1:headerSize]), nil
}

// InboxSealFunc seals an inbox event's content under a given inbox key; see [Vault.SealInbox].
type InboxSealFunc func(plaintext, aad []byte) ([]byte, error)

// ReplaceInboxKey retires the inbox keys: in one transaction (joining the one in ctx, if any) it
// creates a new inbox key under the current master key, calls reseal with a function that seals
// under it (reseal must re-seal every inbox row it can open with [Vault.OpenInbox], in the same
// transaction), and deletes every inbox key this process had unwrapped. Keys that could not be
// unwrapped stay, with the rows sealed under them. Once it returns nil, only the new key is
// loaded, and values sealed under the deleted keys (in WAL frames, dead tuples or backups) open
// only with a master key that had wrapped them, which the caller then retires.
//
// The caller must keep anything from sealing concurrently (the service holds its ingest lock),
// since a value sealed under an old key after reseal read the rows would be lost. It fails with
// [ErrNoKey] without a usable current master key; on any error nothing changed.
func (v *Vault) ReplaceInboxKey(ctx context.Context, reseal func(ctx context.Context, seal InboxSealFunc) error) error {
	v.inbox.mu.Lock()
	defer v.inbox.mu.Unlock()
	old := v.inboxRing()
	var next *inboxRing
	err := v.db.DoTxn(ctx, nil, func(ctx context.Context) error {
		keyID, aead, err := v.createInboxKey(ctx)
		if err != nil {
			return err
		}
		seal := func(plaintext, aad []byte) ([]byte, error) { return sealInbox(aead, keyID, plaintext, aad) }
		if err = reseal(ctx, seal); err != nil {
			return fmt.Errorf("failed to re-seal inbox events: %w", err)
		}
		for oldID := range old.byID {
			if _, err = v.db.Exec(ctx, deleteInboxKeyQuery, int64(oldID)); err != nil {
				return fmt.Errorf("failed to delete inbox key: %w", err)
			}
		}
		next = &inboxRing{current: aead, currentID: keyID, byID: map[uint32]cipher.AEAD{keyID: aead}}
		return nil
	})
	if err != nil {
		return err
	}
	v.inbox.ring.Store(next)
	return nil
}

const (
	rotateInboxKeysQuery = `SELECT key_id, kek_id, wrapped FROM as_vault_inbox_key WHERE kek_id <> $1 ORDER BY key_id`
	// The compare-and-swap on the wrapped bytes, not only the master key ID, keeps a rotation
	// from writing back a key that was deleted and re-created meanwhile.
	updateInboxKeyQuery = `
		UPDATE as_vault_inbox_key SET kek_id=$1, wrapped=$2, rewrapped_at=$3
		WHERE key_id=$4 AND kek_id=$5 AND wrapped=$6
	`
)

// rotateInboxKeys re-wraps every inbox key not wrapped by cur under it, each row by
// compare-and-swap, and returns how many it re-wrapped. Keys whose master key is missing or
// wrong are counted in res.Unavailable.
func (v *Vault) rotateInboxKeys(ctx context.Context, cur *masterKey, res *RotateResult) (int, error) {
	n, err := v.rewrapKeys(ctx, cur, res, wrappedKeyTable{
		noun: "inbox keys", selectQuery: rotateInboxKeysQuery, updateQuery: updateInboxKeyQuery,
		unwrap: unwrapInbox, wrap: wrapInbox,
	})
	if err == nil {
		res.InboxKeys += n
	}
	return n, err
}

// wrappedKeyTable is a table of keys wrapped by master keys (the inbox keys, the crypto key),
// for [Vault.rewrapKeys].
type wrappedKeyTable struct {
	// noun names the keys in errors.
	noun string
	// selectQuery lists (key_id, kek_id, wrapped) of the keys not wrapped by $1.
	selectQuery string
	// updateQuery sets kek_id=$1, wrapped=$2, rewrapped_at=$3 where key_id=$4, kek_id=$5 and
	// wrapped=$6 (a compare-and-swap on the wrapped bytes, so a key deleted and re-created
	// meanwhile is not overwritten).
	updateQuery  string
	unwrap, wrap func(mk *masterKey, keyID uint32, key []byte) ([]byte, error)
}

// rewrapKeys re-wraps every key of t not wrapped by cur under it, each row by compare-and-swap,
// and returns how many it re-wrapped. Keys whose master key is missing or wrong are counted in
// res.Unavailable.
func (v *Vault) rewrapKeys(ctx context.Context, cur *masterKey, res *RotateResult, t wrappedKeyTable) (int, error) {
	rows, err := v.db.Query(ctx, t.selectQuery, cur.ID())
	if err != nil {
		return 0, fmt.Errorf("failed to read %s: %w", t.noun, err)
	}
	var todo []inboxKeyRow
	for rows.Next() {
		var r inboxKeyRow
		var keyID int64
		if err = rows.Scan(&keyID, &r.kekID, &r.wrapped); err != nil {
			_ = rows.Close()
			return 0, fmt.Errorf("failed to read %s: %w", t.noun, err)
		}
		r.keyID = uint32(keyID)
		todo = append(todo, r)
	}
	if err = rows.Close(); err != nil {
		return 0, fmt.Errorf("failed to read %s: %w", t.noun, err)
	}
	var n int
	for _, row := range todo {
		mk, ok := v.ring.Load().byID[row.kekID]
		if !ok && v.reloadForKey(ctx, row.kekID) {
			mk, ok = v.ring.Load().byID[row.kekID]
		}
		if !ok || mk.wrong.Load() {
			res.Unavailable[row.kekID]++
			continue
		}
		key, err := t.unwrap(mk, row.keyID, row.wrapped)
		if err != nil {
			res.Unavailable[row.kekID]++
			continue
		}
		wrapped, err := t.wrap(cur, row.keyID, key)
		clear(key)
		if err != nil {
			return n, err
		}
		r, err := v.db.Exec(ctx, t.updateQuery, cur.ID(), wrapped, v.now().UnixMilli(), int64(row.keyID), row.kekID, row.wrapped)
		if err != nil {
			return n, fmt.Errorf("failed to store re-wrapped %s: %w", t.noun, err)
		}
		if changed, err := r.RowsAffected(); err != nil {
			return n, err
		} else if changed == 1 {
			n++
		}
	}
	return n, nil
}

// HasInboxKey reports whether an inbox key is loaded to seal new events with. It does no I/O.
func (v *Vault) HasInboxKey() bool {
	return v.inboxRing().current != nil
}

package vault

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/clock"
)

// DefaultRotateBatchSize is how many data keys [Vault.Rotate] re-wraps per transaction.
const DefaultRotateBatchSize = 500

// RotateOptions configures [Vault.Rotate].
type RotateOptions struct {
	// BatchSize is how many data keys are re-wrapped per transaction; zero means
	// [DefaultRotateBatchSize].
	BatchSize int
	// SettleUntil, if in the future, makes Rotate keep going until then and finish with one more
	// pass, so that data keys created meanwhile by a service that had not yet re-read its key
	// file (and wrapped them with the previous key) are re-wrapped too. "custodian keys rotate"
	// sets it to the key file's modification time plus the service's reload interval and a
	// margin.
	SettleUntil time.Time
	// Progress, if set, is called after every batch with the totals so far.
	Progress func(RotateResult)
}

// RotateResult reports what [Vault.Rotate] did.
type RotateResult struct {
	// KeyID is the current master key, which every data key is re-wrapped under.
	KeyID string
	// Rewrapped counts the users' data keys re-wrapped.
	Rewrapped int
	// InboxKeys counts the inbox keys re-wrapped.
	InboxKeys int
	// CryptoKeys counts the crypto keys (the end-to-end encryption pickle key) re-wrapped.
	CryptoKeys int
	// Unavailable counts, per master key ID, the data keys the last pass could not re-wrap
	// because that key is missing or wrong. They stay as they are.
	Unavailable map[string]int
	// Passes counts the passes over the table.
	Passes int
}

const rotateBatchQuery = `
	SELECT user_mxid, dek_id, kek_id, wrapped FROM as_vault_dek
	WHERE kek_id <> $1 AND (user_mxid, dek_id) > ($2, $3)
	ORDER BY user_mxid, dek_id
	LIMIT $4
`

// rewrap is one re-wrapped data key, waiting to be written.
type rewrap struct {
	user     id.UserID
	dekID    uint32
	oldKEKID string
	// oldWrapped is the wrapped key as read: the write compares it, so that a row an erasure
	// deleted and a re-creation of the user brought back under the same IDs is left alone.
	oldWrapped []byte
	wrapped    []byte
}

// Rotate re-wraps every data key that is not wrapped by the current master key under it, in
// batches of [RotateOptions.BatchSize], each its own transaction, while the service keeps
// running: a data key's value does not change, only its wrapping, so values sealed before,
// during and after the rotation all keep opening, and cached keys stay valid. Each row is
// updated only if it is still wrapped by the key it was read with, so Rotate never undoes a
// concurrent change, never brings back a row an erasure deleted, and several rotations may run at
// once. It is safe to interrupt (cancel ctx) and run again: it continues where the table stands.
//
// Rotate makes passes over the table until a pass finds nothing to re-wrap (and, with
// SettleUntil, until that time has passed). Data keys whose master key is missing or wrong
// cannot be re-wrapped; they are counted in [RotateResult.Unavailable] and left alone. It fails
// with [ErrNoKey] if the current master key is missing or wrong. On an error the result holds
// what was done until then.
func (v *Vault) Rotate(ctx context.Context, opts RotateOptions) (RotateResult, error) {
	if opts.BatchSize <= 0 {
		opts.BatchSize = DefaultRotateBatchSize
	}
	cur := v.ring.Load().current
	if cur == nil {
		return RotateResult{}, fmt.Errorf("%w: %s has no key loaded", ErrNoKey, v.opts.Keys.String())
	}
	res := RotateResult{KeyID: cur.ID()}
	if err := v.recordKey(ctx, cur); err != nil {
		return res, err
	}
	for {
		res.Passes++
		res.Unavailable = map[string]int{}
		n, err := v.rotatePass(ctx, cur, opts, &res)
		if err != nil {
			return res, err
		}
		// The inbox keys are wrapped like data keys and rotate with them (inboxkey.go).
		m, err := v.rotateInboxKeys(ctx, cur, &res)
		if err != nil {
			return res, err
		}
		c, err := v.rotateCryptoKey(ctx, cur, &res)
		if err != nil {
			return res, err
		}
		if n+m+c > 0 {
			continue
		}
		wait := opts.SettleUntil.Sub(v.now())
		if wait <= 0 {
			return res, nil
		}
		if err := clock.Sleep(ctx, v.opts.Clock, min(wait, time.Second)); err != nil {
			return res, err
		}
	}
}

// rotatePass makes one pass over the data keys not wrapped by cur and returns how many it
// re-wrapped.
func (v *Vault) rotatePass(ctx context.Context, cur *masterKey, opts RotateOptions, res *RotateResult) (int, error) {
	var total int
	var afterUser id.UserID
	afterDEK := int64(-1)
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		batch, count, err := v.readRewraps(ctx, cur, &afterUser, &afterDEK, opts.BatchSize, res)
		if err != nil {
			return total, err
		}
		if count == 0 {
			return total, nil
		}
		n, err := v.writeRewraps(ctx, cur.ID(), batch)
		if err != nil {
			return total, err
		}
		total += n
		res.Rewrapped += n
		if opts.Progress != nil {
			opts.Progress(*res)
		}
	}
}

// readRewraps reads up to limit data keys not wrapped by cur after (*afterUser, *afterDEK) in
// primary key order, moves that position past them, and re-wraps each under cur. It returns the
// re-wrapped keys and how many rows it read; rows whose master key is unavailable are counted in
// res.Unavailable and left out of the batch.
func (v *Vault) readRewraps(ctx context.Context, cur *masterKey, afterUser *id.UserID, afterDEK *int64, limit int, res *RotateResult) ([]rewrap, int, error) {
	rows, err := v.db.Query(ctx, rotateBatchQuery, cur.ID(), *afterUser, *afterDEK, limit)
	if err != nil {
		return nil, 0, fmt.Errorf("failed to read data keys: %w", err)
	}
	var batch []rewrap
	var count int
	for rows.Next() {
		var row dekRow
		var user id.UserID
		var dekID int64
		if err = rows.Scan(&user, &dekID, &row.kekID, &row.wrapped); err != nil {
			_ = rows.Close()
			return nil, count, fmt.Errorf("failed to read data keys: %w", err)
		}
		count++
		row.dekID = uint32(dekID)
		*afterUser, *afterDEK = user, dekID
		wrapped, err := v.rewrapRow(ctx, cur, user, row)
		if errors.Is(err, ErrKeyUnavailable) {
			res.Unavailable[row.kekID]++
			continue
		} else if err != nil {
			_ = rows.Close()
			return nil, count, err
		}
		batch = append(batch, rewrap{user: user, dekID: row.dekID, oldKEKID: row.kekID, oldWrapped: row.wrapped, wrapped: wrapped})
	}
	if err = rows.Close(); err != nil {
		return nil, count, fmt.Errorf("failed to read data keys: %w", err)
	}
	return batch, count, nil
}

// rewrapRow unwraps row's data key and wraps it again under cur.
func (v *Vault) rewrapRow(ctx context.Context, cur *masterKey, user id.UserID, row dekRow) ([]byte, error) {
	ring := v.ring.Load()
	mk, ok := ring.byID[row.kekID]
	if !ok && v.reloadForKey(ctx, row.kekID) {
		mk, ok = v.ring.Load().byID[row.kekID]
	}
	if !ok || mk.wrong.Load() {
		return nil, ErrKeyUnavailable
	}
	dek, err := unwrapDEK(mk, user, row.dekID, row.wrapped)
	if err != nil {
		return nil, ErrKeyUnavailable
	}
	defer clear(dek)
	return wrapDEK(cur, user, row.dekID, dek)
}

// writeRewraps stores a batch of re-wrapped data keys in one statement (so one transaction),
// each only if its row still holds the wrapped bytes it was read with under the same master key.
// Comparing the bytes, not only the IDs, matters: an erasure deletes the row, and a re-creation
// of the user inserts a new data key under the same user, data-key ID and master-key ID; writing
// the batch's re-wrap over it would bring the erased key back. It returns how many rows changed.
func (v *Vault) writeRewraps(ctx context.Context, kekID string, batch []rewrap) (int, error) {
	if len(batch) == 0 {
		return 0, nil
	}
	// PostgreSQL cannot infer the types of parameters inside VALUES; SQLite must not cast a
	// BLOB (an unknown type name there means NUMERIC affinity).
	intCast, blobCast := "", ""
	if v.db.Dialect == dbutil.Postgres {
		intCast, blobCast = "::INTEGER", "::BYTEA"
	}
	var sb strings.Builder
	sb.WriteString(`UPDATE as_vault_dek SET kek_id=$1, wrapped=v.column4, rewrapped_at=$2 FROM (VALUES `)
	args := make([]any, 0, 2+4*len(batch))
	args = append(args, kekID, v.now().UnixMilli())
	for i, rw := range batch {
		if i > 0 {
			sb.WriteString(", ")
		}
		n := len(args)
		fmt.Fprintf(&sb, "($%d, $%d%s, $%d, $%d%s, $%d%s)", n+1, n+2, intCast, n+3, n+4, blobCast, n+5, blobCast)
		args = append(args, rw.user, int64(rw.dekID), rw.oldKEKID, rw.wrapped, rw.oldWrapped)
	}
	// The batch was read in primary key order: bounding user_mxid by its first and last rows
	// lets PostgreSQL find them by index instead of scanning the whole table for each batch.
	fmt.Fprintf(&sb, `) AS v WHERE as_vault_dek.user_mxid=v.column1 AND as_vault_dek.dek_id=v.column2 AND as_vault_dek.kek_id=v.column3
		AND as_vault_dek.wrapped=v.column5 AND as_vault_dek.user_mxid >= $%d AND as_vault_dek.user_mxid <= $%d`, len(args)+1, len(args)+2)
	args = append(args, batch[0].user, batch[len(batch)-1].user)
	res, err := v.db.Exec(ctx, sb.String(), args...)
	if err != nil {
		return 0, fmt.Errorf("failed to store re-wrapped data keys: %w", err)
	}
	n, err := res.RowsAffected()
	return int(n), err
}

// KeyStatus describes one master key: one the key source holds, or one that data keys or
// check values in the database refer to.
// It marshals to JSON with snake_case names, for the admin API.
type KeyStatus struct {
	// ID is the key's ID.
	ID string `json:"id"`
	// DataKeys counts the users' data keys it wraps.
	DataKeys int `json:"data_keys"`
	// InboxKeys counts the inbox keys it wraps (normally 0 or 1).
	InboxKeys int `json:"inbox_keys"`
	// CryptoKeys counts the crypto keys (the end-to-end encryption pickle key) it wraps (0 or 1).
	CryptoKeys int `json:"crypto_keys"`
	// Loaded is true when the key source holds the key.
	Loaded bool `json:"loaded"`
	// Current is true for the key new data keys are wrapped by (the key source's first).
	Current bool `json:"current"`
	// Wrong is true when the key source holds a key under this ID that does not match the check
	// value recorded in the database.
	Wrong bool `json:"wrong"`
	// Recorded is true when the database holds the key's check value (it has wrapped a data key).
	Recorded bool `json:"recorded"`
}

// Available reports whether data keys wrapped by the key can be unwrapped.
func (ks KeyStatus) Available() bool { return ks.Loaded && !ks.Wrong }

// Wraps counts the keys the master key wraps, data keys, inbox keys and the crypto key: it is
// needed while Wraps() > 0.
func (ks KeyStatus) Wraps() int { return ks.DataKeys + ks.InboxKeys + ks.CryptoKeys }

const (
	countDEKsQuery = `
		SELECT kek_id, SUM(dek), SUM(inbox), SUM(crypto) FROM (
			SELECT kek_id, 1 AS dek, 0 AS inbox, 0 AS crypto FROM as_vault_dek
			UNION ALL SELECT kek_id, 0, 1, 0 FROM as_vault_inbox_key
			UNION ALL SELECT kek_id, 0, 0, 1 FROM as_vault_crypto_key
		) AS k GROUP BY kek_id
	`
	recordedKeysQuery = `SELECT kek_id FROM as_vault_kek`
	deleteKeyQuery    = `
		DELETE FROM as_vault_kek WHERE kek_id=$1
			AND NOT EXISTS (SELECT 1 FROM as_vault_dek WHERE kek_id=$1)
			AND NOT EXISTS (SELECT 1 FROM as_vault_inbox_key WHERE kek_id=$1)
			AND NOT EXISTS (SELECT 1 FROM as_vault_crypto_key WHERE kek_id=$1)
	`
	countKeyDEKsQuery = `
		SELECT (SELECT COUNT(*) FROM as_vault_dek WHERE kek_id=$1),
			(SELECT COUNT(*) FROM as_vault_inbox_key WHERE kek_id=$1),
			(SELECT COUNT(*) FROM as_vault_crypto_key WHERE kek_id=$1)
	`
)

// Status lists every master key the key source holds or the database refers to, with how many
// data keys each wraps: the current key first, then the other loaded keys in key-source order,
// then keys the key source lacks, by ID. It reads the database (one grouped count over the data
// keys) and reflects the keys as last loaded.
func (v *Vault) Status(ctx context.Context) ([]KeyStatus, error) {
	ring := v.ring.Load()
	byID := make(map[string]*KeyStatus)
	get := func(kekID string) *KeyStatus {
		if st, ok := byID[kekID]; ok {
			return st
		}
		st := &KeyStatus{ID: kekID}
		byID[kekID] = st
		return st
	}
	for _, mk := range ring.order {
		st := get(mk.ID())
		st.Loaded = true
		st.Current = mk == ring.current
		st.Wrong = mk.wrong.Load()
	}
	rows, err := v.db.Query(ctx, countDEKsQuery)
	if err != nil {
		return nil, fmt.Errorf("failed to count data keys: %w", err)
	}
	for rows.Next() {
		var kekID string
		var deks, inbox, crypto int
		if err = rows.Scan(&kekID, &deks, &inbox, &crypto); err != nil {
			_ = rows.Close()
			return nil, fmt.Errorf("failed to count data keys: %w", err)
		}
		st := get(kekID)
		st.DataKeys, st.InboxKeys, st.CryptoKeys = deks, inbox, crypto
	}
	if err = rows.Close(); err != nil {
		return nil, fmt.Errorf("failed to count data keys: %w", err)
	}
	rows, err = v.db.Query(ctx, recordedKeysQuery)
	if err != nil {
		return nil, fmt.Errorf("failed to read master key check values: %w", err)
	}
	for rows.Next() {
		var kekID string
		if err = rows.Scan(&kekID); err != nil {
			_ = rows.Close()
			return nil, fmt.Errorf("failed to read master key check values: %w", err)
		}
		get(kekID).Recorded = true
	}
	if err = rows.Close(); err != nil {
		return nil, fmt.Errorf("failed to read master key check values: %w", err)
	}
	out := make([]KeyStatus, 0, len(byID))
	for _, mk := range ring.order {
		out = append(out, *byID[mk.ID()])
		delete(byID, mk.ID())
	}
	rest := make([]KeyStatus, 0, len(byID))
	for _, st := range byID {
		rest = append(rest, *st)
	}
	slices.SortFunc(rest, func(a, b KeyStatus) int { return strings.Compare(a.ID, b.ID) })
	return append(out, rest...), nil
}

// ErrKeyInUse is returned by [Vault.RetireKey] when data keys (or inbox keys) are still wrapped
// by the key.
// Run [Vault.Rotate] ("custodian keys rotate") first.
var ErrKeyInUse = errors.New("vault: master key still wraps data keys")

// RetireKey forgets the check value of the master key kekID, provided no data key, inbox key or
// crypto key is wrapped by it ([ErrKeyInUse] otherwise, with the count). "custodian keys retire" calls it before removing
// the key from the key file. It does not touch the key source.
func (v *Vault) RetireKey(ctx context.Context, kekID string) error {
	return v.db.DoTxn(ctx, nil, func(ctx context.Context) error {
		var n, inbox, crypto int
		if err := v.db.QueryRow(ctx, countKeyDEKsQuery, kekID).Scan(&n, &inbox, &crypto); err != nil {
			return fmt.Errorf("failed to count data keys: %w", err)
		}
		if crypto > 0 {
			return fmt.Errorf("%w: %d data keys, %d inbox keys and the crypto key", ErrKeyInUse, n, inbox)
		} else if inbox > 0 {
			return fmt.Errorf("%w: %d data keys and %d inbox keys", ErrKeyInUse, n, inbox)
		} else if n > 0 {
			return fmt.Errorf("%w: %d data keys", ErrKeyInUse, n)
		}
		if _, err := v.db.Exec(ctx, deleteKeyQuery, kekID); err != nil {
			return fmt.Errorf("failed to forget master key: %w", err)
		}
		return nil
	})
}

package database

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"
)

// InboxQuery is the durable inbox: acknowledged transactions and the events they carried that
// have not been handled yet.
//
// With a sealer set ([InboxQuery.SetSealer]), each event's JSON is stored sealed (event_sealed),
// bound to the row's routing envelope (transaction ID, index, event ID, room, sender, ephemeral
// flag), which stays in clear: it holds IDs only, and the dispatcher and erasure need it. Without
// one, or when the sealer has no key, the JSON is stored as it came (event_json).
type InboxQuery struct {
	db     *dbutil.Database
	sealer InboxSealer
	// beforeDone is the hook [InboxQuery.MarkDone] runs in its transaction (SetBeforeDone).
	beforeDone atomic.Pointer[BeforeDone]
}

// BeforeDone is run by [InboxQuery.MarkDone] inside its transaction (ctx carries it) before the
// events are marked done. An error rolls the transaction back: nothing is marked done. If it
// returns committed, MarkDone calls it once the transaction has committed; not when MarkDone ran
// inside a transaction of the caller's, whose commit it cannot see.
type BeforeDone func(ctx context.Context) (committed func(), err error)

// SetBeforeDone makes every later [InboxQuery.MarkDone] run fn in its transaction; nil removes
// it. The core sets it while encryption is on, to write the message indexes of decrypted events
// with their done marks.
func (iq *InboxQuery) SetBeforeDone(fn BeforeDone) {
	if fn == nil {
		iq.beforeDone.Store(nil)
		return
	}
	iq.beforeDone.Store(&fn)
}

// InboxSealer seals and opens the content of inbox events. The vault implements it with its
// inbox keys (vault.Vault.SealInbox and OpenInbox). Both methods must be safe for concurrent use
// and do no I/O: Seal runs on the ingest path for every event.
type InboxSealer interface {
	// SealInbox encrypts plaintext bound to aad; it fails if no key is loaded.
	SealInbox(plaintext, aad []byte) ([]byte, error)
	// OpenInbox decrypts what SealInbox returned for the same aad.
	OpenInbox(sealed, aad []byte) ([]byte, error)
}

// ErrInboxSealed is set as [InboxEvent.OpenErr] on a sealed row read back without a sealer (the
// vault was turned off after it was sealed). The row stays in the inbox.
var ErrInboxSealed = errors.New("database: inbox event is sealed and the vault is off")

// SetSealer makes the inbox seal the content of events it accepts from now on, and open sealed
// rows it reads back. Call it before the inbox is used (at start); it is not safe to call
// concurrently with the other methods.
func (iq *InboxQuery) SetSealer(s InboxSealer) {
	iq.sealer = s
}

// InboxEvent is one event in the inbox.
type InboxEvent struct {
	// Seq orders events across transactions; it is assigned by the database and only set on
	// events read back with [InboxQuery.Pending].
	Seq int64
	// TxnID and Index locate the event: the transaction that carried it and its position.
	TxnID string
	Index int
	// EventID is empty for ephemeral events.
	EventID   id.EventID
	RoomID    id.RoomID
	Sender    id.UserID
	Ephemeral bool
	// ToDevice marks a to-device event for the bot's device (end-to-end encryption): RoomID and
	// EventID are empty, Sender is the user who sent it.
	ToDevice bool
	// JSON is the event exactly as the homeserver sent it, in memory only. It is nil on an event
	// read back by [InboxQuery.Pending] or [InboxQuery.PendingBySeq] whose sealed content could
	// not be opened; OpenErr then says why.
	JSON []byte
	// OpenErr is set when the stored content could not be opened: its inbox key is not loaded
	// (wrapping vault.ErrKeyUnavailable: the row stays and opens once the master key is back),
	// the vault is off ([ErrInboxSealed]), or it was tampered with (vault.ErrDecrypt).
	OpenErr error
	// Sealed reports whether the row is stored sealed; set on events read back.
	Sealed bool
	// ReceivedAt is when the transaction that carried the event was accepted (millisecond
	// precision): set by [InboxQuery.Accept] on the events it adds, and on events read back.
	ReceivedAt time.Time

	// sealed is JSON sealed for storage, computed by Accept before its transaction.
	sealed []byte
}

// aad returns the associated data that binds a sealed event to its row: every column of the
// routing envelope, length-prefixed so that fields cannot run into each other. Moving a sealed
// value to another row, or changing the row's envelope, makes it fail to open.
func (evt *InboxEvent) aad() []byte {
	b := make([]byte, 0, 32+len(evt.TxnID)+len(evt.EventID)+len(evt.RoomID)+len(evt.Sender))
	for _, f := range []string{evt.TxnID, string(evt.EventID), string(evt.RoomID), string(evt.Sender)} {
		b = binary.BigEndian.AppendUint32(b, uint32(len(f)))
		b = append(b, f...)
	}
	b = binary.BigEndian.AppendUint64(b, uint64(evt.Index))
	switch {
	case evt.ToDevice:
		return append(b, 2)
	case evt.Ephemeral:
		return append(b, 1)
	default:
		return append(b, 0)
	}
}

// Done identifies a handled inbox event.
type Done struct {
	TxnID   string
	Index   int
	EventID id.EventID
}

const (
	insertTxnQuery = `
		INSERT INTO as_txn (txn_id, received_at, event_count) VALUES ($1, $2, $3)
		ON CONFLICT (txn_id) DO NOTHING
	`
	insertInboxPrefix = `
		INSERT INTO as_inbox (txn_id, idx, event_id, room_id, sender, ephemeral, event_json, event_sealed, received_at, to_device)
		VALUES
	`
	inboxColumns      = `seq, txn_id, idx, event_id, room_id, sender, ephemeral, event_json, event_sealed, to_device, received_at`
	pendingQuery      = `SELECT ` + inboxColumns + ` FROM as_inbox WHERE seq > $1 ORDER BY seq LIMIT $2`
	plaintextQuery    = `SELECT ` + inboxColumns + ` FROM as_inbox WHERE event_sealed IS NULL ORDER BY seq`
	allRowsQuery      = `SELECT ` + inboxColumns + ` FROM as_inbox ORDER BY seq`
	updateSealedQuery = `UPDATE as_inbox SET event_json='', event_sealed=$1 WHERE seq=$2`
	countPendingQuery = `SELECT COUNT(*) FROM as_inbox`
	// The newest transaction is never pruned: after an outage longer than the TTL it is the one
	// the homeserver may still resend.
	pruneTxnQuery = `
		DELETE FROM as_txn WHERE received_at < $1
			AND txn_id <> (SELECT txn_id FROM as_txn ORDER BY received_at DESC, txn_id DESC LIMIT 1)
	`
	pruneEventDoneQuery = `DELETE FROM as_event_done WHERE done_at < $1`
)

// insertChunk bounds the rows of one multi-row INSERT (10 parameters each), well under SQLite's
// and PostgreSQL's parameter limits.
const insertChunk = 250

// Accept durably records transaction txnID and appends the events that are new to the inbox, in
// one database transaction. Events already handled or already pending (the homeserver sent them
// before in another transaction) are left out. It returns dup=true and changes nothing if txnID
// was recorded before. On success, the returned slice holds the events that were appended, in
// order; when Accept returns, they are committed.
//
// With a sealer, each event's content is sealed before the transaction starts; an event the
// sealer refuses (it has no key) is stored unsealed rather than refused, since the homeserver
// would only retry it.
func (iq *InboxQuery) Accept(ctx context.Context, txnID string, events []*InboxEvent, now time.Time) (added []*InboxEvent, dup bool, err error) {
	return iq.AcceptWith(ctx, txnID, events, now, nil)
}

// AcceptWith is [InboxQuery.Accept] that also runs inTxn, if not nil, inside the same database
// transaction after the events are appended (not for a repeated transaction): what it writes
// commits with the events, or not at all. The service marks the users whose devices changed
// there (end-to-end encryption), so a crash cannot lose the change the homeserver reported once.
func (iq *InboxQuery) AcceptWith(ctx context.Context, txnID string, events []*InboxEvent, now time.Time, inTxn func(ctx context.Context) error) (added []*InboxEvent, dup bool, err error) {
	if iq.sealer != nil {
		for _, evt := range events {
			// A failed seal leaves evt.sealed nil: the event is stored unsealed. The sealer
			// fails only without a key, which the service reports where it loads the keys.
			evt.sealed, _ = iq.sealer.SealInbox(evt.JSON, evt.aad())
		}
	}
	err = iq.db.DoTxn(ctx, nil, func(ctx context.Context) error {
		res, err := iq.db.Exec(ctx, insertTxnQuery, txnID, now.UnixMilli(), len(events))
		if err != nil {
			return fmt.Errorf("failed to record transaction: %w", err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			dup = true
			return nil
		}
		added, err = iq.filterKnown(ctx, events)
		if err != nil {
			return err
		}
		for start := 0; start < len(added); start += insertChunk {
			if err = iq.insert(ctx, added[start:min(start+insertChunk, len(added))], now); err != nil {
				return err
			}
		}
		if inTxn != nil {
			return inTxn(ctx)
		}
		return nil
	})
	for _, evt := range events {
		// The dispatcher keeps the events in memory until handled; the ciphertext is not needed.
		evt.sealed = nil
	}
	if err != nil || dup {
		return nil, dup, err
	}
	return added, false, nil
}

// filterKnown drops events whose IDs are already pending or handled, and duplicates within the
// same batch.
func (iq *InboxQuery) filterKnown(ctx context.Context, events []*InboxEvent) ([]*InboxEvent, error) {
	ids := make([]any, 0, len(events))
	for _, evt := range events {
		if evt.EventID != "" {
			ids = append(ids, evt.EventID)
		}
	}
	known := make(map[id.EventID]struct{})
	for start := 0; start < len(ids); start += insertChunk {
		chunk := ids[start:min(start+insertChunk, len(ids))]
		placeholders := makePlaceholders(len(chunk), 1)
		query := fmt.Sprintf(`SELECT event_id FROM as_event_done WHERE event_id IN (%[1]s)
			UNION ALL SELECT event_id FROM as_inbox WHERE event_id IN (%[1]s)`, placeholders)
		rows, err := iq.db.Query(ctx, query, chunk...)
		if err != nil {
			return nil, fmt.Errorf("failed to check for known events: %w", err)
		}
		for rows.Next() {
			var evtID id.EventID
			if err = rows.Scan(&evtID); err != nil {
				_ = rows.Close()
				return nil, err
			}
			known[evtID] = struct{}{}
		}
		if err = rows.Close(); err != nil {
			return nil, err
		}
	}
	out := events[:0:0]
	for _, evt := range events {
		if evt.EventID != "" {
			if _, ok := known[evt.EventID]; ok {
				continue
			}
			known[evt.EventID] = struct{}{}
		}
		out = append(out, evt)
	}
	return out, nil
}

func (iq *InboxQuery) insert(ctx context.Context, events []*InboxEvent, now time.Time) error {
	const cols = 10
	var query strings.Builder
	query.WriteString(insertInboxPrefix)
	args := make([]any, 0, len(events)*cols)
	for i, evt := range events {
		if i > 0 {
			query.WriteByte(',')
		}
		base := i * cols
		fmt.Fprintf(&query, "($%d,$%d,$%d,$%d,$%d,$%d,$%d,$%d,$%d,$%d)", base+1, base+2, base+3, base+4, base+5, base+6, base+7, base+8, base+9, base+10)
		evt.ReceivedAt = time.UnixMilli(now.UnixMilli())
		plain, sealed := string(evt.JSON), evt.sealed
		if sealed != nil {
			plain = ""
		}
		args = append(args, evt.TxnID, evt.Index, dbutil.StrPtr(evt.EventID), evt.RoomID, evt.Sender, evt.Ephemeral, plain, sealed, now.UnixMilli(), evt.ToDevice)
	}
	if _, err := iq.db.Exec(ctx, query.String(), args...); err != nil {
		return fmt.Errorf("failed to append events to inbox: %w", err)
	}
	return nil
}

func makePlaceholders(n, first int) string {
	var sb strings.Builder
	for i := 0; i < n; i++ {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, "$%d", first+i)
	}
	return sb.String()
}

// Pending returns up to limit unfinished events with a sequence number above after, oldest first,
// with their content opened. An event whose content cannot be opened is returned with JSON nil
// and OpenErr set; it stays in the inbox.
func (iq *InboxQuery) Pending(ctx context.Context, after int64, limit int) ([]*InboxEvent, error) {
	return iq.scan(ctx, pendingQuery, after, limit)
}

// PendingBySeq returns the unfinished events among seqs (those not handled or erased since),
// oldest first, opened like [InboxQuery.Pending]'s.
func (iq *InboxQuery) PendingBySeq(ctx context.Context, seqs []int64) ([]*InboxEvent, error) {
	var out []*InboxEvent
	for start := 0; start < len(seqs); start += insertChunk {
		chunk := seqs[start:min(start+insertChunk, len(seqs))]
		args := make([]any, len(chunk))
		for i, seq := range chunk {
			args[i] = seq
		}
		page, err := iq.scan(ctx, `SELECT `+inboxColumns+` FROM as_inbox WHERE seq IN (`+makePlaceholders(len(chunk), 1)+`) ORDER BY seq`, args...)
		if err != nil {
			return nil, err
		}
		out = append(out, page...)
	}
	return out, nil
}

// scan runs an inbox query selecting inboxColumns and opens each row's content.
func (iq *InboxQuery) scan(ctx context.Context, query string, args ...any) ([]*InboxEvent, error) {
	rows, err := iq.db.Query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	var out []*InboxEvent
	for rows.Next() {
		var evt InboxEvent
		var eventID *string
		var raw string
		var sealed []byte
		var receivedAt int64
		if err = rows.Scan(&evt.Seq, &evt.TxnID, &evt.Index, &eventID, &evt.RoomID, &evt.Sender, &evt.Ephemeral, &raw, &sealed, &evt.ToDevice, &receivedAt); err != nil {
			_ = rows.Close()
			return nil, err
		}
		evt.ReceivedAt = time.UnixMilli(receivedAt)
		if eventID != nil {
			evt.EventID = id.EventID(*eventID)
		}
		switch {
		case sealed == nil:
			evt.JSON = []byte(raw)
		case iq.sealer == nil:
			evt.Sealed, evt.sealed, evt.OpenErr = true, sealed, ErrInboxSealed
		default:
			evt.Sealed, evt.sealed = true, sealed
			evt.JSON, evt.OpenErr = iq.sealer.OpenInbox(sealed, evt.aad())
		}
		out = append(out, &evt)
	}
	return out, rows.Close()
}

// SealPlaintext seals every row stored unsealed (by a version before sealing, with the vault off,
// or while no key was loaded) with the sealer, in one transaction, and returns how many it
// sealed. It does nothing without a sealer, and fails (changing nothing) if the sealer cannot
// seal. The service calls it at start, before replaying the inbox.
func (iq *InboxQuery) SealPlaintext(ctx context.Context) (n int, err error) {
	if iq.sealer == nil {
		return 0, nil
	}
	seal := iq.sealer.SealInbox
	err = iq.db.DoTxn(ctx, nil, func(ctx context.Context) error {
		n, _, err = iq.reseal(ctx, plaintextQuery, seal)
		return err
	})
	return n, err
}

// Reseal seals the content of every row it can open (plaintext rows and rows sealed under a
// loaded inbox key) again with seal, and returns how many it re-sealed and how many it left as
// they were because their content cannot be opened now (their inbox key is not loaded). It runs
// in the transaction in ctx if there is one (vault.Vault.ReplaceInboxKey's), else in its own.
func (iq *InboxQuery) Reseal(ctx context.Context, seal func(plaintext, aad []byte) ([]byte, error)) (resealed, kept int, err error) {
	err = iq.db.DoTxn(ctx, nil, func(ctx context.Context) error {
		resealed, kept, err = iq.reseal(ctx, allRowsQuery, seal)
		return err
	})
	return resealed, kept, err
}

func (iq *InboxQuery) reseal(ctx context.Context, query string, seal func(plaintext, aad []byte) ([]byte, error)) (resealed, kept int, err error) {
	events, err := iq.scan(ctx, query)
	if err != nil {
		return 0, 0, fmt.Errorf("failed to read inbox: %w", err)
	}
	for _, evt := range events {
		if evt.OpenErr != nil {
			kept++
			continue
		}
		sealed, err := seal(evt.JSON, evt.aad())
		if err != nil {
			return resealed, kept, fmt.Errorf("failed to seal inbox event: %w", err)
		}
		if _, err = iq.db.Exec(ctx, updateSealedQuery, sealed, evt.Seq); err != nil {
			return resealed, kept, fmt.Errorf("failed to store sealed inbox event: %w", err)
		}
		resealed++
	}
	return resealed, kept, nil
}

// CountPending returns how many events are in the inbox.
func (iq *InboxQuery) CountPending(ctx context.Context) (n int, err error) {
	err = iq.db.QueryRow(ctx, countPendingQuery).Scan(&n)
	return
}

// MarkDone removes handled events from the inbox and remembers their event IDs, in one
// transaction with a few multi-row statements, however many events there are. It runs in the
// transaction in ctx if there is one (the to-device lane's, which commits the event's effects
// with its deletion). The hook set with [InboxQuery.SetBeforeDone] runs first, in the same
// transaction.
func (iq *InboxQuery) MarkDone(ctx context.Context, done []Done, now time.Time) error {
	if len(done) == 0 {
		return nil
	}
	_, callerTxn := iq.db.Execable(ctx).(dbutil.Transaction)
	var committed func()
	err := iq.db.DoTxn(ctx, nil, func(ctx context.Context) error {
		if hook := iq.beforeDone.Load(); hook != nil {
			var err error
			if committed, err = (*hook)(ctx); err != nil {
				return fmt.Errorf("failed to run the hook before marking events done: %w", err)
			}
		}
		for start := 0; start < len(done); start += insertChunk {
			chunk := done[start:min(start+insertChunk, len(done))]
			var del, ins strings.Builder
			del.WriteString(`DELETE FROM as_inbox WHERE (txn_id, idx) IN (`)
			ins.WriteString(`INSERT INTO as_event_done (event_id, done_at) VALUES `)
			delArgs := make([]any, 0, len(chunk)*2)
			insArgs := []any{now.UnixMilli()}
			for i, d := range chunk {
				if i > 0 {
					del.WriteByte(',')
				}
				fmt.Fprintf(&del, "($%d,$%d)", len(delArgs)+1, len(delArgs)+2)
				delArgs = append(delArgs, d.TxnID, d.Index)
				if d.EventID != "" {
					if len(insArgs) > 1 {
						ins.WriteByte(',')
					}
					fmt.Fprintf(&ins, "($%d,$1)", len(insArgs)+1)
					insArgs = append(insArgs, d.EventID)
				}
			}
			del.WriteByte(')')
			ins.WriteString(` ON CONFLICT (event_id) DO NOTHING`)
			if _, err := iq.db.Exec(ctx, del.String(), delArgs...); err != nil {
				return fmt.Errorf("failed to delete inbox rows: %w", err)
			}
			if len(insArgs) > 1 {
				if _, err := iq.db.Exec(ctx, ins.String(), insArgs...); err != nil {
					return fmt.Errorf("failed to record handled events: %w", err)
				}
			}
		}
		return nil
	})
	if err == nil && committed != nil && !callerTxn {
		committed()
	}
	return err
}

// Prune forgets transaction and event IDs recorded before cutoff, except the newest transaction
// ID. After that, a transaction or event with the same ID would be treated as new; the homeserver
// never resends that late (only its oldest unacknowledged transaction, which is newer than any
// acknowledged one).
func (iq *InboxQuery) Prune(ctx context.Context, cutoff time.Time) (txns, events int64, err error) {
	res, err := iq.db.Exec(ctx, pruneTxnQuery, cutoff.UnixMilli())
	if err != nil {
		return 0, 0, err
	}
	txns, _ = res.RowsAffected()
	res, err = iq.db.Exec(ctx, pruneEventDoneQuery, cutoff.UnixMilli())
	if err != nil {
		return txns, 0, err
	}
	events, _ = res.RowsAffected()
	return txns, events, nil
}

package database

import (
	"context"
	"fmt"
	"strings"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"
)

// InboxQuery is the durable inbox: acknowledged transactions and the events they carried that
// have not been handled yet.
type InboxQuery struct {
	db *dbutil.Database
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
	// JSON is the event exactly as the homeserver sent it.
	JSON []byte
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
		INSERT INTO as_inbox (txn_id, idx, event_id, room_id, sender, ephemeral, event_json, received_at)
		VALUES
	`
	pendingQuery = `
		SELECT seq, txn_id, idx, event_id, room_id, sender, ephemeral, event_json
		FROM as_inbox WHERE seq > $1 ORDER BY seq LIMIT $2
	`
	countPendingQuery = `SELECT COUNT(*) FROM as_inbox`
	// The newest transaction is never pruned: after an outage longer than the TTL it is the one
	// the homeserver may still resend.
	pruneTxnQuery = `
		DELETE FROM as_txn WHERE received_at < $1
			AND txn_id <> (SELECT txn_id FROM as_txn ORDER BY received_at DESC, txn_id DESC LIMIT 1)
	`
	pruneEventDoneQuery = `DELETE FROM as_event_done WHERE done_at < $1`
)

// insertChunk bounds the rows of one multi-row INSERT (8 parameters each), well under SQLite's
// and PostgreSQL's parameter limits.
const insertChunk = 250

// Accept durably records transaction txnID and appends the events that are new to the inbox, in
// one database transaction. Events already handled or already pending (the homeserver sent them
// before in another transaction) are left out. It returns dup=true and changes nothing if txnID
// was recorded before. On success, the returned slice holds the events that were appended, in
// order; when Accept returns, they are committed.
func (iq *InboxQuery) Accept(ctx context.Context, txnID string, events []*InboxEvent, now time.Time) (added []*InboxEvent, dup bool, err error) {
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
		return nil
	})
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
	const cols = 8
	var query strings.Builder
	query.WriteString(insertInboxPrefix)
	args := make([]any, 0, len(events)*cols)
	for i, evt := range events {
		if i > 0 {
			query.WriteByte(',')
		}
		base := i * cols
		fmt.Fprintf(&query, "($%d,$%d,$%d,$%d,$%d,$%d,$%d,$%d)", base+1, base+2, base+3, base+4, base+5, base+6, base+7, base+8)
		args = append(args, evt.TxnID, evt.Index, dbutil.StrPtr(evt.EventID), evt.RoomID, evt.Sender, evt.Ephemeral, string(evt.JSON), now.UnixMilli())
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

// Pending returns up to limit unfinished events with a sequence number above after, oldest first.
func (iq *InboxQuery) Pending(ctx context.Context, after int64, limit int) ([]*InboxEvent, error) {
	rows, err := iq.db.Query(ctx, pendingQuery, after, limit)
	if err != nil {
		return nil, err
	}
	var out []*InboxEvent
	for rows.Next() {
		var evt InboxEvent
		var eventID *string
		var raw string
		if err = rows.Scan(&evt.Seq, &evt.TxnID, &evt.Index, &eventID, &evt.RoomID, &evt.Sender, &evt.Ephemeral, &raw); err != nil {
			_ = rows.Close()
			return nil, err
		}
		if eventID != nil {
			evt.EventID = id.EventID(*eventID)
		}
		evt.JSON = []byte(raw)
		out = append(out, &evt)
	}
	return out, rows.Close()
}

// CountPending returns how many events are in the inbox.
func (iq *InboxQuery) CountPending(ctx context.Context) (n int, err error) {
	err = iq.db.QueryRow(ctx, countPendingQuery).Scan(&n)
	return
}

// MarkDone removes handled events from the inbox and remembers their event IDs, in one
// transaction with a few multi-row statements, however many events there are.
func (iq *InboxQuery) MarkDone(ctx context.Context, done []Done, now time.Time) error {
	if len(done) == 0 {
		return nil
	}
	return iq.db.DoTxn(ctx, nil, func(ctx context.Context) error {
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

package ircdb

import (
	"context"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"
)

// Outbox is a Matrix message queued for IRC and not sent yet.
type Outbox struct {
	EventID  id.EventID
	RoomID   id.RoomID
	Network  string
	Sender   id.UserID
	QueuedAt time.Time
}

// Scan reads one irc_outbox row.
func (o *Outbox) Scan(row dbutil.Scannable) (*Outbox, error) {
	var queuedAt int64
	if err := row.Scan(&o.EventID, &o.RoomID, &o.Network, &o.Sender, &queuedAt); err != nil {
		return nil, err
	}
	o.QueuedAt = time.Unix(0, queuedAt)
	return o, nil
}

// OutboxQuery reads and writes irc_outbox.
type OutboxQuery struct {
	*dbutil.QueryHelper[*Outbox]
}

const (
	outboxColumns         = `event_id, room_id, network, user_mxid, queued_at`
	putOutboxQuery        = `INSERT INTO irc_outbox (` + outboxColumns + `) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING`
	getAllOutboxQuery     = `SELECT ` + outboxColumns + ` FROM irc_outbox ORDER BY queued_at, event_id`
	deleteOutboxQuery     = `DELETE FROM irc_outbox WHERE event_id=$1`
	deleteUserOutboxQuery = `DELETE FROM irc_outbox WHERE user_mxid=$1 AND network=$2`
)

// Put records o unless its event is recorded already. The sender must have a users row.
func (oq *OutboxQuery) Put(ctx context.Context, o *Outbox) error {
	return oq.Exec(ctx, putOutboxQuery, o.EventID, o.RoomID, o.Network, o.Sender, o.QueuedAt.UnixNano())
}

// GetAll returns every queued message, oldest first.
func (oq *OutboxQuery) GetAll(ctx context.Context) ([]*Outbox, error) {
	return oq.QueryMany(ctx, getAllOutboxQuery)
}

// Delete drops eventID's row, if any.
func (oq *OutboxQuery) Delete(ctx context.Context, eventID id.EventID) error {
	return oq.Exec(ctx, deleteOutboxQuery, eventID)
}

// DeleteUser drops every row of userID on network.
func (oq *OutboxQuery) DeleteUser(ctx context.Context, userID id.UserID, network string) error {
	return oq.Exec(ctx, deleteUserOutboxQuery, userID, network)
}

package ircdb

import (
	"context"
	"database/sql"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"
)

// Message maps one IRC line of a bridged message to its Matrix event.
type Message struct {
	EventID id.EventID
	// Part is the line's index among the lines the message became (0 for the first).
	Part    int
	RoomID  id.RoomID
	Network string
	// Target is the channel or nick (folded) the message went to or came from.
	Target string
	// MsgID is the IRC msgid tag, or "" where the server gave none (yet).
	MsgID string
	// Sender is the Matrix user who sent the message, or "" for a message from IRC.
	Sender    id.UserID
	CreatedAt time.Time
	// Original is the event an edit edits, or "" for a message that is not an edit.
	Original id.EventID
}

// Scan reads one irc_message row.
func (m *Message) Scan(row dbutil.Scannable) (*Message, error) {
	var msgID, sender, original sql.NullString
	var createdAt int64
	err := row.Scan(&m.EventID, &m.Part, &m.RoomID, &m.Network, &m.Target, &msgID, &sender, &createdAt, &original)
	if err != nil {
		return nil, err
	}
	m.MsgID, m.Sender, m.Original = msgID.String, id.UserID(sender.String), id.EventID(original.String)
	m.CreatedAt = time.UnixMilli(createdAt)
	return m, nil
}

// MessageQuery reads and writes irc_message.
type MessageQuery struct {
	*dbutil.QueryHelper[*Message]
}

const (
	messageColumns         = `event_id, part, room_id, network, target, msgid, user_mxid, created_at, original_event_id`
	getMessageQuery        = `SELECT ` + messageColumns + ` FROM irc_message WHERE event_id=$1 ORDER BY part`
	getMessageAndEditQuery = `
		SELECT ` + messageColumns + ` FROM irc_message WHERE event_id=$1 OR original_event_id=$1
		ORDER BY created_at, event_id, part
	`
	getMessageByMsgID = `SELECT ` + messageColumns + ` FROM irc_message WHERE network=$1 AND msgid=$2`
	putMessageQuery   = `
		INSERT INTO irc_message (` + messageColumns + `) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
		ON CONFLICT (event_id, part) DO UPDATE SET msgid=COALESCE(excluded.msgid, irc_message.msgid),
			original_event_id=COALESCE(excluded.original_event_id, irc_message.original_event_id)
	`
	deleteMessageQuery = `DELETE FROM irc_message WHERE event_id=$1 OR original_event_id=$1`
	pruneMessagesQuery = `DELETE FROM irc_message WHERE created_at < $1`
)

// Get returns the rows of eventID, one per IRC line, in order; none if it is not mapped.
func (mq *MessageQuery) Get(ctx context.Context, eventID id.EventID) ([]*Message, error) {
	return mq.QueryMany(ctx, getMessageQuery, eventID)
}

// GetWithEdits returns the rows of eventID and of every edit of it, in the order they were
// recorded.
func (mq *MessageQuery) GetWithEdits(ctx context.Context, eventID id.EventID) ([]*Message, error) {
	return mq.QueryMany(ctx, getMessageAndEditQuery, eventID)
}

// GetByMsgID returns the row of an IRC message ID on network, or nil.
func (mq *MessageQuery) GetByMsgID(ctx context.Context, network, msgID string) (*Message, error) {
	if msgID == "" {
		return nil, nil
	}
	return mq.QueryOne(ctx, getMessageByMsgID, network, msgID)
}

// Put records m. If the line is already recorded, a message ID and an original event m has fill
// in missing ones; nothing else changes. A sender must have a users row.
func (mq *MessageQuery) Put(ctx context.Context, m *Message) error {
	return mq.Exec(ctx, putMessageQuery, m.EventID, m.Part, m.RoomID, m.Network, m.Target,
		nullString(m.MsgID), nullString(string(m.Sender)), ms(m.CreatedAt), nullString(string(m.Original)))
}

// Delete drops every row of eventID and of the edits of eventID.
func (mq *MessageQuery) Delete(ctx context.Context, eventID id.EventID) error {
	return mq.Exec(ctx, deleteMessageQuery, eventID)
}

// Prune deletes rows created before cutoff and returns how many.
func (mq *MessageQuery) Prune(ctx context.Context, cutoff time.Time) (int64, error) {
	res, err := mq.GetDB().Exec(ctx, pruneMessagesQuery, ms(cutoff))
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

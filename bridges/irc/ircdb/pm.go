package ircdb

import (
	"context"
	"database/sql"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"
)

// PM is a direct chat between a Matrix user and an IRC user's ghost.
type PM struct {
	UserID  id.UserID
	Network string
	// Nick is the IRC user's nick, folded under the network's casemapping.
	Nick      string
	RoomID    id.RoomID
	CreatedAt time.Time
}

// Scan reads one irc_pm row.
func (pm *PM) Scan(row dbutil.Scannable) (*PM, error) {
	var createdAt int64
	err := row.Scan(&pm.UserID, &pm.Network, &pm.Nick, &pm.RoomID, &createdAt)
	if err != nil {
		return nil, err
	}
	pm.CreatedAt = time.UnixMilli(createdAt)
	return pm, nil
}

// PMQuery reads and writes irc_pm.
type PMQuery struct {
	*dbutil.QueryHelper[*PM]
}

const (
	pmColumns        = `user_mxid, network, nick, room_id, created_at`
	getPMQuery       = `SELECT ` + pmColumns + ` FROM irc_pm WHERE user_mxid=$1 AND network=$2 AND nick=$3`
	getPMByRoomQuery = `SELECT ` + pmColumns + ` FROM irc_pm WHERE room_id=$1`
	getPMsByUser     = `SELECT ` + pmColumns + ` FROM irc_pm WHERE user_mxid=$1`
	putPMQuery       = `
		INSERT INTO irc_pm (` + pmColumns + `) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (user_mxid, network, nick) DO UPDATE SET room_id=excluded.room_id, created_at=excluded.created_at
	`
	deletePMQuery = `DELETE FROM irc_pm WHERE room_id=$1`
)

// Get returns userID's direct chat with nick (folded) on network, or nil.
func (pq *PMQuery) Get(ctx context.Context, userID id.UserID, network, nick string) (*PM, error) {
	return pq.QueryOne(ctx, getPMQuery, userID, network, nick)
}

// GetByRoom returns the direct chat in roomID, or nil.
func (pq *PMQuery) GetByRoom(ctx context.Context, roomID id.RoomID) (*PM, error) {
	return pq.QueryOne(ctx, getPMByRoomQuery, roomID)
}

// GetByUser returns userID's direct chats with ghosts.
func (pq *PMQuery) GetByUser(ctx context.Context, userID id.UserID) ([]*PM, error) {
	return pq.QueryMany(ctx, getPMsByUser, userID)
}

// Put records pm, replacing an earlier room for the same user and nick. The users row must exist.
func (pq *PMQuery) Put(ctx context.Context, pm *PM) error {
	return pq.Exec(ctx, putPMQuery, pm.UserID, pm.Network, pm.Nick, pm.RoomID, ms(pm.CreatedAt))
}

// Delete forgets the direct chat in roomID.
func (pq *PMQuery) Delete(ctx context.Context, roomID id.RoomID) error {
	return pq.Exec(ctx, deletePMQuery, roomID)
}

// Message maps a bridged message's Matrix event to its IRC message ID.
type Message struct {
	EventID id.EventID
	RoomID  id.RoomID
	Network string
	// Target is the channel or nick (folded) the message went to or came from.
	Target string
	// MsgID is the IRC msgid tag, or "" where the server gave none.
	MsgID string
	// Sender is the Matrix user who sent the message, or "" for a message from IRC.
	Sender    id.UserID
	CreatedAt time.Time
}

// Scan reads one irc_message row.
func (m *Message) Scan(row dbutil.Scannable) (*Message, error) {
	var msgID, sender sql.NullString
	var createdAt int64
	err := row.Scan(&m.EventID, &m.RoomID, &m.Network, &m.Target, &msgID, &sender, &createdAt)
	if err != nil {
		return nil, err
	}
	m.MsgID, m.Sender = msgID.String, id.UserID(sender.String)
	m.CreatedAt = time.UnixMilli(createdAt)
	return m, nil
}

// MessageQuery reads and writes irc_message.
type MessageQuery struct {
	*dbutil.QueryHelper[*Message]
}

const (
	messageColumns     = `event_id, room_id, network, target, msgid, user_mxid, created_at`
	getMessageQuery    = `SELECT ` + messageColumns + ` FROM irc_message WHERE event_id=$1`
	getMessageByMsgID  = `SELECT ` + messageColumns + ` FROM irc_message WHERE network=$1 AND msgid=$2`
	putMessageQuery    = `INSERT INTO irc_message (` + messageColumns + `) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (event_id) DO NOTHING`
	deleteMessageQuery = `DELETE FROM irc_message WHERE event_id=$1`
	pruneMessagesQuery = `DELETE FROM irc_message WHERE created_at < $1`
)

// Get returns the mapping of eventID, or nil.
func (mq *MessageQuery) Get(ctx context.Context, eventID id.EventID) (*Message, error) {
	return mq.QueryOne(ctx, getMessageQuery, eventID)
}

// GetByMsgID returns the mapping of an IRC message ID on network, or nil.
func (mq *MessageQuery) GetByMsgID(ctx context.Context, network, msgID string) (*Message, error) {
	if msgID == "" {
		return nil, nil
	}
	return mq.QueryOne(ctx, getMessageByMsgID, network, msgID)
}

// Put records m unless its event is already mapped. A sender must have a users row.
func (mq *MessageQuery) Put(ctx context.Context, m *Message) error {
	return mq.Exec(ctx, putMessageQuery, m.EventID, m.RoomID, m.Network, m.Target,
		nullString(m.MsgID), nullString(string(m.Sender)), ms(m.CreatedAt))
}

// Delete drops the mapping of eventID.
func (mq *MessageQuery) Delete(ctx context.Context, eventID id.EventID) error {
	return mq.Exec(ctx, deleteMessageQuery, eventID)
}

// Prune deletes mappings created before cutoff and returns how many.
func (mq *MessageQuery) Prune(ctx context.Context, cutoff time.Time) (int64, error) {
	res, err := mq.GetDB().Exec(ctx, pruneMessagesQuery, ms(cutoff))
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

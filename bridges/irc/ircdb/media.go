package ircdb

import (
	"context"
	"database/sql"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"
)

// Media is a link to a Matrix user's media, or to the full text of their long message, that the
// bridge serves to IRC users.
type Media struct {
	// TokenHash is the SHA-256 (hex) of the link's secret token.
	TokenHash string
	EventID   id.EventID
	RoomID    id.RoomID
	// MXC is the media's URI; "" for a link to a long message's full text (EventID's body).
	MXC       id.ContentURIString
	Sender    id.UserID
	CreatedAt time.Time
	// Original is the event EventID edits, if the media was sent in an edit; else "".
	Original id.EventID
}

// Scan reads one irc_media row.
func (m *Media) Scan(row dbutil.Scannable) (*Media, error) {
	var createdAt int64
	var original sql.NullString
	err := row.Scan(&m.TokenHash, &m.EventID, &m.RoomID, &m.MXC, &m.Sender, &createdAt, &original)
	if err != nil {
		return nil, err
	}
	m.Original = id.EventID(original.String)
	m.CreatedAt = time.UnixMilli(createdAt)
	return m, nil
}

// MediaQuery reads and writes irc_media.
type MediaQuery struct {
	*dbutil.QueryHelper[*Media]
}

const (
	mediaColumns     = `token_hash, event_id, room_id, mxc, user_mxid, created_at, original_event_id`
	getMediaQuery    = `SELECT ` + mediaColumns + ` FROM irc_media WHERE token_hash=$1`
	putMediaQuery    = `INSERT INTO irc_media (` + mediaColumns + `) VALUES ($1, $2, $3, $4, $5, $6, $7)`
	deleteMediaQuery = `DELETE FROM irc_media WHERE event_id=$1 OR original_event_id=$1`
	pruneMediaQuery  = `DELETE FROM irc_media WHERE created_at < $1`
)

// Get returns the link whose token hashes to tokenHash, or nil.
func (mq *MediaQuery) Get(ctx context.Context, tokenHash string) (*Media, error) {
	return mq.QueryOne(ctx, getMediaQuery, tokenHash)
}

// Put records a link. The sender must have a users row.
func (mq *MediaQuery) Put(ctx context.Context, m *Media) error {
	return mq.Exec(ctx, putMediaQuery, m.TokenHash, m.EventID, m.RoomID, m.MXC, m.Sender, ms(m.CreatedAt),
		nullString(string(m.Original)))
}

// DeleteByEvent removes the links made for eventID and for the edits of eventID.
func (mq *MediaQuery) DeleteByEvent(ctx context.Context, eventID id.EventID) error {
	return mq.Exec(ctx, deleteMediaQuery, eventID)
}

// Prune deletes links created before cutoff and returns how many.
func (mq *MediaQuery) Prune(ctx context.Context, cutoff time.Time) (int64, error) {
	res, err := mq.GetDB().Exec(ctx, pruneMediaQuery, ms(cutoff))
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

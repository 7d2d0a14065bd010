package ircdb

import (
	"context"
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

package webhookdb

import (
	"context"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"
)

// DM is the direct chat in which the bot sends one user their webhooks' secrets.
type DM struct {
	UserID    id.UserID
	RoomID    id.RoomID
	CreatedAt time.Time
}

func newDM(_ *dbutil.QueryHelper[*DM]) *DM { return &DM{} }

// Scan reads one webhook_dm row.
func (dm *DM) Scan(row dbutil.Scannable) (*DM, error) {
	var createdAt int64
	err := row.Scan(&dm.UserID, &dm.RoomID, &createdAt)
	if err != nil {
		return nil, err
	}
	dm.CreatedAt = time.UnixMilli(createdAt)
	return dm, nil
}

// DMQuery reads and writes webhook_dm.
type DMQuery struct {
	*dbutil.QueryHelper[*DM]
}

const (
	getDMQuery = `SELECT user_mxid, room_id, created_at FROM webhook_dm WHERE user_mxid=$1`
	putDMQuery = `
		INSERT INTO webhook_dm (user_mxid, room_id, created_at) VALUES ($1, $2, $3)
		ON CONFLICT (user_mxid) DO UPDATE SET room_id=excluded.room_id, created_at=excluded.created_at
	`
	deleteDMQuery = `DELETE FROM webhook_dm WHERE user_mxid=$1`
)

// Get returns userID's direct chat, or nil if none is recorded.
func (dq *DMQuery) Get(ctx context.Context, userID id.UserID) (*DM, error) {
	return dq.QueryOne(ctx, getDMQuery, userID)
}

// Put records dm, replacing the user's previous one. The users row must exist.
func (dq *DMQuery) Put(ctx context.Context, dm *DM) error {
	return dq.Exec(ctx, putDMQuery, dm.UserID, dm.RoomID, dm.CreatedAt.UnixMilli())
}

// Delete forgets userID's direct chat.
func (dq *DMQuery) Delete(ctx context.Context, userID id.UserID) error {
	return dq.Exec(ctx, deleteDMQuery, userID)
}

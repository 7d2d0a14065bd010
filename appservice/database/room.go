package database

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"
)

// RoomQuery records which bridge owns which room.
type RoomQuery struct {
	db *dbutil.Database
}

const (
	claimRoomQuery = `
		INSERT INTO as_room (room_id, bridge_id, actor_mxid, event_id, created_at)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (room_id) DO UPDATE
			SET bridge_id=excluded.bridge_id, actor_mxid=excluded.actor_mxid,
			    event_id=excluded.event_id, created_at=excluded.created_at
	`
	getRoomBridgeQuery = `SELECT bridge_id FROM as_room WHERE room_id=$1`
	deleteRoomQuery    = `DELETE FROM as_room WHERE room_id=$1`
)

// Claim records that bridgeID owns roomID. actor may be empty (the room was claimed by the
// bridge itself); otherwise its users row must exist.
func (rq *RoomQuery) Claim(ctx context.Context, roomID id.RoomID, bridgeID string, actor id.UserID, eventID id.EventID, at time.Time) error {
	_, err := rq.db.Exec(ctx, claimRoomQuery, roomID, bridgeID, dbutil.StrPtr(actor), dbutil.StrPtr(eventID), at.UnixMilli())
	return err
}

// GetBridge returns the ID of the bridge that owns roomID, or "" if none does.
func (rq *RoomQuery) GetBridge(ctx context.Context, roomID id.RoomID) (string, error) {
	var bridgeID string
	err := rq.db.QueryRow(ctx, getRoomBridgeQuery, roomID).Scan(&bridgeID)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return bridgeID, err
}

// Delete forgets roomID's owner.
func (rq *RoomQuery) Delete(ctx context.Context, roomID id.RoomID) error {
	_, err := rq.db.Exec(ctx, deleteRoomQuery, roomID)
	return err
}

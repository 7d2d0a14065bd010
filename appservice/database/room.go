package database

import (
	"context"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"
)

// RoomQuery records which bridges have claimed which rooms.
type RoomQuery struct {
	db *dbutil.Database
}

const (
	claimRoomQuery = `
		INSERT INTO as_room (room_id, bridge_id, actor_mxid, event_id, created_at)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (room_id, bridge_id) DO UPDATE
			SET actor_mxid=excluded.actor_mxid, event_id=excluded.event_id, created_at=excluded.created_at
	`
	getRoomBridgesQuery = `SELECT bridge_id FROM as_room WHERE room_id=$1 ORDER BY bridge_id`
	releaseRoomQuery    = `DELETE FROM as_room WHERE room_id=$1 AND bridge_id=$2`
	deleteRoomQuery     = `DELETE FROM as_room WHERE room_id=$1`
)

// Claim records that bridgeID has claimed roomID. actor may be empty (the bridge claimed the
// room by itself); otherwise its users row must exist.
func (rq *RoomQuery) Claim(ctx context.Context, roomID id.RoomID, bridgeID string, actor id.UserID, eventID id.EventID, at time.Time) error {
	_, err := rq.db.Exec(ctx, claimRoomQuery, roomID, bridgeID, dbutil.StrPtr(actor), dbutil.StrPtr(eventID), at.UnixMilli())
	return err
}

// GetBridges returns the IDs of the bridges that claimed roomID, sorted; nil if none did.
func (rq *RoomQuery) GetBridges(ctx context.Context, roomID id.RoomID) ([]string, error) {
	rows, err := rq.db.Query(ctx, getRoomBridgesQuery, roomID)
	if err != nil {
		return nil, err
	}
	var out []string
	for rows.Next() {
		var bridgeID string
		if err = rows.Scan(&bridgeID); err != nil {
			_ = rows.Close()
			return nil, err
		}
		out = append(out, bridgeID)
	}
	return out, rows.Close()
}

// Release forgets bridgeID's claim on roomID.
func (rq *RoomQuery) Release(ctx context.Context, roomID id.RoomID, bridgeID string) error {
	_, err := rq.db.Exec(ctx, releaseRoomQuery, roomID, bridgeID)
	return err
}

// Delete forgets every claim on roomID.
func (rq *RoomQuery) Delete(ctx context.Context, roomID id.RoomID) error {
	_, err := rq.db.Exec(ctx, deleteRoomQuery, roomID)
	return err
}

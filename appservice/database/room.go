package database

import (
	"context"
	"database/sql"
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
	getRoomClaimsQuery = `SELECT bridge_id, actor_mxid, event_id, created_at FROM as_room WHERE room_id=$1 ORDER BY bridge_id`
	releaseRoomQuery   = `DELETE FROM as_room WHERE room_id=$1 AND bridge_id=$2`
	deleteRoomQuery    = `DELETE FROM as_room WHERE room_id=$1`
)

// Claim records that bridgeID has claimed roomID. actor may be empty (the bridge claimed the
// room by itself); otherwise its users row must exist.
func (rq *RoomQuery) Claim(ctx context.Context, roomID id.RoomID, bridgeID string, actor id.UserID, eventID id.EventID, at time.Time) error {
	_, err := rq.db.Exec(ctx, claimRoomQuery, roomID, bridgeID, dbutil.StrPtr(actor), dbutil.StrPtr(eventID), at.UnixMilli())
	return err
}

// RoomClaim is one bridge's claim on a room, with its provenance.
type RoomClaim struct {
	BridgeID string
	// Actor is who asked for the claim; empty if the bridge claimed the room by itself.
	Actor id.UserID
	// EventID is the command event that made the claim; empty if none.
	EventID id.EventID
	// CreatedAt is when the claim was made or last renewed.
	CreatedAt time.Time
}

// GetClaims returns the claims on roomID, sorted by bridge ID; nil if there are none.
func (rq *RoomQuery) GetClaims(ctx context.Context, roomID id.RoomID) ([]RoomClaim, error) {
	rows, err := rq.db.Query(ctx, getRoomClaimsQuery, roomID)
	if err != nil {
		return nil, err
	}
	var out []RoomClaim
	for rows.Next() {
		var c RoomClaim
		var actor, eventID sql.NullString
		var createdAt int64
		if err = rows.Scan(&c.BridgeID, &actor, &eventID, &createdAt); err != nil {
			_ = rows.Close()
			return nil, err
		}
		c.Actor, c.EventID, c.CreatedAt = id.UserID(actor.String), id.EventID(eventID.String), time.UnixMilli(createdAt)
		out = append(out, c)
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

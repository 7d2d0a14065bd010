package ircdb

import (
	"context"
	"database/sql"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"
)

// Portal is a Matrix room linked to an IRC channel.
type Portal struct {
	Network string
	// Channel is the channel's name folded under the network's casemapping; ChannelName is how
	// it was first written.
	Channel     string
	ChannelName string
	RoomID      id.RoomID
	// Actor and SourceEventID are who linked the room with !irc link, and with which command;
	// both are empty for a portal created through its alias.
	Actor         id.UserID
	SourceEventID id.EventID
	CreatedAt     time.Time
}

// Scan reads one irc_portal row.
func (p *Portal) Scan(row dbutil.Scannable) (*Portal, error) {
	var actor, source sql.NullString
	var createdAt int64
	err := row.Scan(&p.Network, &p.Channel, &p.ChannelName, &p.RoomID, &actor, &source, &createdAt)
	if err != nil {
		return nil, err
	}
	p.Actor, p.SourceEventID = id.UserID(actor.String), id.EventID(source.String)
	p.CreatedAt = time.UnixMilli(createdAt)
	return p, nil
}

// PortalQuery reads and writes irc_portal.
type PortalQuery struct {
	*dbutil.QueryHelper[*Portal]
}

const (
	portalColumns        = `network, channel, channel_name, room_id, actor_mxid, source_event_id, created_at`
	getPortalQuery       = `SELECT ` + portalColumns + ` FROM irc_portal WHERE network=$1 AND channel=$2`
	getPortalByRoomQuery = `SELECT ` + portalColumns + ` FROM irc_portal WHERE room_id=$1`
	getPortalsQuery      = `SELECT ` + portalColumns + ` FROM irc_portal WHERE network=$1`
	getPortalsByActor    = `SELECT ` + portalColumns + ` FROM irc_portal WHERE actor_mxid=$1`
	insertPortalQuery    = `
		INSERT INTO irc_portal (` + portalColumns + `) VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (network, channel) DO NOTHING
	`
	deletePortalQuery  = `DELETE FROM irc_portal WHERE room_id=$1`
	disownPortalsQuery = `UPDATE irc_portal SET actor_mxid=NULL, source_event_id=NULL WHERE actor_mxid=$1`
	getAllPortalsQuery = `SELECT ` + portalColumns + ` FROM irc_portal ORDER BY network, channel`
	movePortalQuery    = `UPDATE irc_portal SET room_id=$3 WHERE network=$1 AND channel=$2`
)

// Get returns the portal of channel (folded) on network, or nil.
func (pq *PortalQuery) Get(ctx context.Context, network, channel string) (*Portal, error) {
	return pq.QueryOne(ctx, getPortalQuery, network, channel)
}

// GetByRoom returns the portal in roomID, or nil.
func (pq *PortalQuery) GetByRoom(ctx context.Context, roomID id.RoomID) (*Portal, error) {
	return pq.QueryOne(ctx, getPortalByRoomQuery, roomID)
}

// GetAll returns every portal on network.
func (pq *PortalQuery) GetAll(ctx context.Context, network string) ([]*Portal, error) {
	return pq.QueryMany(ctx, getPortalsQuery, network)
}

// GetByActor returns the portals userID linked with !irc link.
func (pq *PortalQuery) GetByActor(ctx context.Context, userID id.UserID) ([]*Portal, error) {
	return pq.QueryMany(ctx, getPortalsByActor, userID)
}

// Insert records p unless its channel already has a portal; it reports whether p was stored.
// An actor must have a users row.
func (pq *PortalQuery) Insert(ctx context.Context, p *Portal) (bool, error) {
	res, err := pq.GetDB().Exec(ctx, insertPortalQuery, p.Network, p.Channel, p.ChannelName, p.RoomID,
		nullString(string(p.Actor)), nullString(string(p.SourceEventID)), ms(p.CreatedAt))
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n > 0, err
}

// MoveRoom points the portal of channel (folded) on network at roomID, in place: the rows that
// hang off the portal (its channel key) and its provenance stay. It reports whether a portal
// was changed.
func (pq *PortalQuery) MoveRoom(ctx context.Context, network, channel string, roomID id.RoomID) (bool, error) {
	res, err := pq.GetDB().Exec(ctx, movePortalQuery, network, channel, roomID)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n > 0, err
}

// Delete removes the portal in roomID, if any.
func (pq *PortalQuery) Delete(ctx context.Context, roomID id.RoomID) error {
	return pq.Exec(ctx, deletePortalQuery, roomID)
}

// Disown removes userID from the provenance of the portals they linked (actor and command), so
// that the portals outlive the user's erasure without naming them. It returns how many portals
// it changed.
func (pq *PortalQuery) Disown(ctx context.Context, userID id.UserID) (int64, error) {
	res, err := pq.GetDB().Exec(ctx, disownPortalsQuery, userID)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// List returns every portal of every network, ordered by network and channel.
func (pq *PortalQuery) List(ctx context.Context) ([]*Portal, error) {
	return pq.QueryMany(ctx, getAllPortalsQuery)
}

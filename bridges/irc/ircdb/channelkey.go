package ircdb

import (
	"context"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"
)

// ChannelKey is the key (+k) of a portal's channel. Key is sealed by the credential vault under
// Actor's key; only the vault can open it.
type ChannelKey struct {
	Network string
	// Channel is the portal's channel, folded.
	Channel       string
	Key           []byte
	Actor         id.UserID
	RoomID        id.RoomID
	SourceEventID id.EventID
	CreatedAt     time.Time
}

// Scan reads one irc_channel_key row.
func (k *ChannelKey) Scan(row dbutil.Scannable) (*ChannelKey, error) {
	var createdAt int64
	err := row.Scan(&k.Network, &k.Channel, &k.Key, &k.Actor, &k.RoomID, &k.SourceEventID, &createdAt)
	if err != nil {
		return nil, err
	}
	k.CreatedAt = time.UnixMilli(createdAt)
	return k, nil
}

// ChannelKeyQuery reads and writes irc_channel_key.
type ChannelKeyQuery struct {
	*dbutil.QueryHelper[*ChannelKey]
}

const (
	channelKeyColumns  = `network, channel, channel_key, actor_mxid, room_id, source_event_id, created_at`
	getChannelKeyQuery = `SELECT ` + channelKeyColumns + ` FROM irc_channel_key WHERE network=$1 AND channel=$2`
	getChannelKeys     = `SELECT ` + channelKeyColumns + ` FROM irc_channel_key WHERE network=$1`
	putChannelKeyQuery = `
		INSERT INTO irc_channel_key (` + channelKeyColumns + `) VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (network, channel) DO UPDATE SET channel_key=excluded.channel_key,
			actor_mxid=excluded.actor_mxid, room_id=excluded.room_id,
			source_event_id=excluded.source_event_id, created_at=excluded.created_at
	`
	deleteChannelKeyQuery = `DELETE FROM irc_channel_key WHERE network=$1 AND channel=$2`
)

// Get returns the key of channel (folded) on network, or nil.
func (kq *ChannelKeyQuery) Get(ctx context.Context, network, channel string) (*ChannelKey, error) {
	return kq.QueryOne(ctx, getChannelKeyQuery, network, channel)
}

// GetAll returns the keys of every keyed portal channel on network.
func (kq *ChannelKeyQuery) GetAll(ctx context.Context, network string) ([]*ChannelKey, error) {
	return kq.QueryMany(ctx, getChannelKeys, network)
}

// Put stores k, replacing the channel's earlier key. The portal and the actor's users row must
// exist.
func (kq *ChannelKeyQuery) Put(ctx context.Context, k *ChannelKey) error {
	return kq.Exec(ctx, putChannelKeyQuery, k.Network, k.Channel, k.Key, k.Actor, k.RoomID, k.SourceEventID, ms(k.CreatedAt))
}

// Delete removes the key of channel (folded) on network, if any.
func (kq *ChannelKeyQuery) Delete(ctx context.Context, network, channel string) error {
	return kq.Exec(ctx, deleteChannelKeyQuery, network, channel)
}

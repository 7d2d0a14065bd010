package ircdb

import (
	"context"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"
)

// Account is a user's linked account on one network. Password is the SASL password sealed by
// the credential vault; only the vault can open it.
type Account struct {
	UserID        id.UserID
	Network       string
	Account       string
	Password      []byte
	RoomID        id.RoomID
	SourceEventID id.EventID
	CreatedAt     time.Time
}

// Scan reads one irc_account row.
func (a *Account) Scan(row dbutil.Scannable) (*Account, error) {
	var createdAt int64
	err := row.Scan(&a.UserID, &a.Network, &a.Account, &a.Password, &a.RoomID, &a.SourceEventID, &createdAt)
	if err != nil {
		return nil, err
	}
	a.CreatedAt = time.UnixMilli(createdAt)
	return a, nil
}

// AccountQuery reads and writes irc_account.
type AccountQuery struct {
	*dbutil.QueryHelper[*Account]
}

const (
	accountColumns  = `user_mxid, network, account, sasl_password, room_id, source_event_id, created_at`
	getAccountQuery = `SELECT ` + accountColumns + ` FROM irc_account WHERE user_mxid=$1 AND network=$2`
	putAccountQuery = `
		INSERT INTO irc_account (` + accountColumns + `) VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (user_mxid, network) DO UPDATE SET account=excluded.account,
			sasl_password=excluded.sasl_password, room_id=excluded.room_id,
			source_event_id=excluded.source_event_id, created_at=excluded.created_at
	`
	deleteAccountQuery = `DELETE FROM irc_account WHERE user_mxid=$1 AND network=$2`
)

// Get returns userID's account on network, or nil.
func (aq *AccountQuery) Get(ctx context.Context, userID id.UserID, network string) (*Account, error) {
	return aq.QueryOne(ctx, getAccountQuery, userID, network)
}

// Put stores a, replacing the user's earlier account on the network. The users row must exist.
func (aq *AccountQuery) Put(ctx context.Context, a *Account) error {
	return aq.Exec(ctx, putAccountQuery, a.UserID, a.Network, a.Account, a.Password, a.RoomID, a.SourceEventID, ms(a.CreatedAt))
}

// Delete removes userID's account on network; it reports whether there was one.
func (aq *AccountQuery) Delete(ctx context.Context, userID id.UserID, network string) (bool, error) {
	res, err := aq.GetDB().Exec(ctx, deleteAccountQuery, userID, network)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n > 0, err
}

// Nick is the nick a user chose for their puppet on one network.
type Nick struct {
	UserID        id.UserID
	Network       string
	Nick          string
	RoomID        id.RoomID
	SourceEventID id.EventID
	UpdatedAt     time.Time
}

// Scan reads one irc_nick row.
func (n *Nick) Scan(row dbutil.Scannable) (*Nick, error) {
	var updatedAt int64
	err := row.Scan(&n.UserID, &n.Network, &n.Nick, &n.RoomID, &n.SourceEventID, &updatedAt)
	if err != nil {
		return nil, err
	}
	n.UpdatedAt = time.UnixMilli(updatedAt)
	return n, nil
}

// NickQuery reads and writes irc_nick.
type NickQuery struct {
	*dbutil.QueryHelper[*Nick]
}

const (
	nickColumns  = `user_mxid, network, nick, room_id, source_event_id, updated_at`
	getNickQuery = `SELECT ` + nickColumns + ` FROM irc_nick WHERE user_mxid=$1 AND network=$2`
	putNickQuery = `
		INSERT INTO irc_nick (` + nickColumns + `) VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (user_mxid, network) DO UPDATE SET nick=excluded.nick, room_id=excluded.room_id,
			source_event_id=excluded.source_event_id, updated_at=excluded.updated_at
	`
	deleteNickQuery     = `DELETE FROM irc_nick WHERE user_mxid=$1 AND network=$2`
	getNetworkNickQuery = `SELECT ` + nickColumns + ` FROM irc_nick WHERE network=$1 AND user_mxid<>$2`
)

// GetOthers returns the nicks users other than userID chose on network, for checking that a nick
// is not taken by another user's puppet (nicks compare under the network's casemapping, which
// the database does not know).
func (nq *NickQuery) GetOthers(ctx context.Context, network string, userID id.UserID) ([]*Nick, error) {
	return nq.QueryMany(ctx, getNetworkNickQuery, network, userID)
}

// Get returns userID's chosen nick on network, or nil.
func (nq *NickQuery) Get(ctx context.Context, userID id.UserID, network string) (*Nick, error) {
	return nq.QueryOne(ctx, getNickQuery, userID, network)
}

// Put stores n, replacing the user's earlier choice. The users row must exist.
func (nq *NickQuery) Put(ctx context.Context, n *Nick) error {
	return nq.Exec(ctx, putNickQuery, n.UserID, n.Network, n.Nick, n.RoomID, n.SourceEventID, ms(n.UpdatedAt))
}

// Delete removes userID's chosen nick on network.
func (nq *NickQuery) Delete(ctx context.Context, userID id.UserID, network string) error {
	return nq.Exec(ctx, deleteNickQuery, userID, network)
}

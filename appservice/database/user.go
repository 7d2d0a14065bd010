package database

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"
)

// UserQuery reads and writes the users root table.
type UserQuery struct {
	db *dbutil.Database
}

const ensureUserQuery = `
	INSERT INTO users (mxid, created_at) VALUES ($1, $2)
	ON CONFLICT (mxid) DO NOTHING
`

// Ensure creates the users row for userID if it does not exist yet. It joins the transaction in
// ctx, if any.
func (uq *UserQuery) Ensure(ctx context.Context, userID id.UserID) error {
	_, err := uq.db.Exec(ctx, ensureUserQuery, userID, time.Now().UnixMilli())
	return err
}

// Exists reports whether the users row for userID exists.
func (uq *UserQuery) Exists(ctx context.Context, userID id.UserID) (exists bool, err error) {
	err = uq.db.QueryRow(ctx, `SELECT EXISTS(SELECT 1 FROM users WHERE mxid=$1)`, userID).Scan(&exists)
	return
}

// IsPaused reports whether userID has paused Custodian. A user without a users row is not paused.
func (uq *UserQuery) IsPaused(ctx context.Context, userID id.UserID) (paused bool, err error) {
	err = uq.db.QueryRow(ctx, `SELECT EXISTS(SELECT 1 FROM users WHERE mxid=$1 AND paused)`, userID).Scan(&paused)
	return
}

// SetPaused sets or clears userID's paused flag, creating the users row if needed.
func (uq *UserQuery) SetPaused(ctx context.Context, userID id.UserID, paused bool) error {
	return uq.db.DoTxn(ctx, nil, func(ctx context.Context) error {
		if err := uq.Ensure(ctx, userID); err != nil {
			return err
		}
		_, err := uq.db.Exec(ctx, `UPDATE users SET paused=$2 WHERE mxid=$1`, userID, paused)
		return err
	})
}

// ManagementRoomOf returns userID's management room ("" if none is recorded) and whether the
// user has a users row.
func (uq *UserQuery) ManagementRoomOf(ctx context.Context, userID id.UserID) (id.RoomID, bool, error) {
	var room sql.NullString
	err := uq.db.QueryRow(ctx, `SELECT management_room FROM users WHERE mxid=$1`, userID).Scan(&room)
	if errors.Is(err, sql.ErrNoRows) {
		return "", false, nil
	} else if err != nil {
		return "", false, err
	}
	return id.RoomID(room.String), true, nil
}

// ManagementRoom returns userID's management room (see Host.NotifyUser), "" if none is recorded
// or the user has no users row.
func (uq *UserQuery) ManagementRoom(ctx context.Context, userID id.UserID) (id.RoomID, error) {
	var room sql.NullString
	err := uq.db.QueryRow(ctx, `SELECT management_room FROM users WHERE mxid=$1`, userID).Scan(&room)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return id.RoomID(room.String), err
}

// SetManagementRoom records roomID as userID's management room, creating the users row if
// needed. It joins the transaction in ctx, if any.
func (uq *UserQuery) SetManagementRoom(ctx context.Context, userID id.UserID, roomID id.RoomID) error {
	return uq.db.DoTxn(ctx, nil, func(ctx context.Context) error {
		if err := uq.Ensure(ctx, userID); err != nil {
			return err
		}
		_, err := uq.db.Exec(ctx, `UPDATE users SET management_room=$2 WHERE mxid=$1`, userID, roomID)
		return err
	})
}

// UpdateManagementRoom records roomID as userID's management room if the users row exists, and
// reports whether it did. It never creates the row: a user who only talked to the bot has no
// data with Custodian.
func (uq *UserQuery) UpdateManagementRoom(ctx context.Context, userID id.UserID, roomID id.RoomID) (bool, error) {
	res, err := uq.db.Exec(ctx, `UPDATE users SET management_room=$2 WHERE mxid=$1`, userID, roomID)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n > 0, err
}

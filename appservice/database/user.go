package database

import (
	"context"
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

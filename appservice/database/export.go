package database

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"
)

// ExportQuery reads and writes as_export, the export files the bot sent to users. All methods
// join the transaction in ctx, if any, and are safe for concurrent use.
type ExportQuery struct {
	db *dbutil.Database
}

// Export returns the queries on as_export.
func (db *Database) Export() *ExportQuery {
	return &ExportQuery{db: db.Database}
}

// ExportFile is one export file the bot sent (a row of as_export).
type ExportFile struct {
	// MXC is the encrypted upload's content URI.
	MXC id.ContentURIString
	// User is the user the export is about; it was sent in RoomID. It is empty once the user
	// was erased while the file was still to be withdrawn.
	User   id.UserID
	RoomID id.RoomID
	// EventID is the message carrying the file and its key; empty until it is sent.
	EventID id.EventID
	// CreatedAt is when the file was uploaded; after ExpiresAt it is withdrawn.
	CreatedAt time.Time
	ExpiresAt time.Time
}

const (
	putExportQuery = `
		INSERT INTO as_export (mxc_uri, user_mxid, room_id, event_id, created_at, expires_at)
		VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (mxc_uri) DO NOTHING`
	setExportEventQuery = `UPDATE as_export SET room_id=$2, event_id=$3 WHERE mxc_uri=$1`
	deleteExportQuery   = `DELETE FROM as_export WHERE mxc_uri=$1`
	expireExportQuery   = `UPDATE as_export SET expires_at=$2 WHERE mxc_uri=$1 AND expires_at>$2`
	selectExportColumns = `SELECT mxc_uri, user_mxid, room_id, event_id, created_at, expires_at FROM as_export`
	exportsOfUserQuery  = selectExportColumns + ` WHERE user_mxid=$1 ORDER BY created_at, mxc_uri`
	expiredExportsQuery = selectExportColumns + ` WHERE expires_at<=$1 ORDER BY expires_at, mxc_uri LIMIT $2`
)

// Put records an uploaded export file. The users row of ef.User must exist. Recording the same
// MXC again changes nothing.
func (eq *ExportQuery) Put(ctx context.Context, ef *ExportFile) error {
	var eventID sql.NullString
	if ef.EventID != "" {
		eventID = sql.NullString{String: ef.EventID.String(), Valid: true}
	}
	_, err := eq.db.Exec(ctx, putExportQuery, ef.MXC, ef.User, ef.RoomID, eventID, ef.CreatedAt.UnixMilli(), ef.ExpiresAt.UnixMilli())
	if err != nil {
		return fmt.Errorf("failed to record export file: %w", err)
	}
	return nil
}

// SetEventID records the message that carries the export file mxc, and the room it was sent in.
func (eq *ExportQuery) SetEventID(ctx context.Context, mxc id.ContentURIString, roomID id.RoomID, eventID id.EventID) error {
	if _, err := eq.db.Exec(ctx, setExportEventQuery, mxc, roomID, eventID); err != nil {
		return fmt.Errorf("failed to record export message: %w", err)
	}
	return nil
}

// Delete forgets the export file mxc, once it is withdrawn. Deleting an unknown one is not an
// error.
func (eq *ExportQuery) Delete(ctx context.Context, mxc id.ContentURIString) error {
	if _, err := eq.db.Exec(ctx, deleteExportQuery, mxc); err != nil {
		return fmt.Errorf("failed to delete export record: %w", err)
	}
	return nil
}

// ExpireNow moves the expiry of the export file mxc to now (if it is later), so the expiry loop
// retries its withdrawal at its next pass.
func (eq *ExportQuery) ExpireNow(ctx context.Context, mxc id.ContentURIString, now time.Time) error {
	if _, err := eq.db.Exec(ctx, expireExportQuery, mxc, now.UnixMilli()); err != nil {
		return fmt.Errorf("failed to expire export record: %w", err)
	}
	return nil
}

// OfUser returns user's export files, oldest first; none is an empty slice and no error.
func (eq *ExportQuery) OfUser(ctx context.Context, user id.UserID) ([]*ExportFile, error) {
	return eq.list(ctx, exportsOfUserQuery, user)
}

// Expired returns at most limit export files whose expiry is at or before now, soonest first.
func (eq *ExportQuery) Expired(ctx context.Context, now time.Time, limit int) ([]*ExportFile, error) {
	return eq.list(ctx, expiredExportsQuery, now.UnixMilli(), limit)
}

func (eq *ExportQuery) list(ctx context.Context, query string, args ...any) ([]*ExportFile, error) {
	rows, err := eq.db.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("failed to list export files: %w", err)
	}
	defer rows.Close()
	var out []*ExportFile
	for rows.Next() {
		var ef ExportFile
		var eventID, user sql.NullString
		var created, expires int64
		if err = rows.Scan(&ef.MXC, &user, &ef.RoomID, &eventID, &created, &expires); err != nil {
			return nil, fmt.Errorf("failed to read export file: %w", err)
		}
		ef.EventID, ef.User = id.EventID(eventID.String), id.UserID(user.String)
		ef.CreatedAt, ef.ExpiresAt = time.UnixMilli(created), time.UnixMilli(expires)
		out = append(out, &ef)
	}
	if err = rows.Err(); err != nil {
		return nil, fmt.Errorf("failed to list export files: %w", err)
	}
	return out, nil
}

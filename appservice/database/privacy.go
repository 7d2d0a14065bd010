package database

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"
)

// PrivacyQuery reads and writes the tables of the privacy operations the core runs itself:
// activity records, deactivation suspects and backup shred requests. (Erasure jobs, tombstones
// and their keys are the engine's: privacy.Store.) All methods join the transaction in ctx, if
// any, and are safe for concurrent use.
type PrivacyQuery struct {
	db *dbutil.Database
}

// Privacy returns the privacy operations' queries on db.
func (db *Database) Privacy() *PrivacyQuery {
	return &PrivacyQuery{db: db.Database}
}

const (
	insertActivityQuery = `
		INSERT INTO as_activity (event_id, user_mxid, room_id, action, at) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (event_id) DO NOTHING
	`
	upsertSuspectQuery = `
		INSERT INTO as_deactivation_suspect (user_mxid, reason, first_seen, last_seen, leaves) VALUES ($1, $2, $3, $3, 1)
		ON CONFLICT (user_mxid) DO UPDATE SET reason=excluded.reason, last_seen=excluded.last_seen,
			leaves=as_deactivation_suspect.leaves + 1
		RETURNING leaves
	`
	deleteSuspectQuery = `DELETE FROM as_deactivation_suspect WHERE user_mxid=$1`
	listSuspectsQuery  = `SELECT user_mxid, reason, first_seen, last_seen, leaves FROM as_deactivation_suspect ORDER BY first_seen, user_mxid`
	requestShredQuery  = `
		INSERT INTO as_shred_request (id, since_at, latest_at) VALUES (1, $1, $1)
		ON CONFLICT (id) DO UPDATE SET latest_at=excluded.latest_at
	`
	pendingShredQuery = `SELECT since_at FROM as_shred_request WHERE id=1`
	clearShredQuery   = `DELETE FROM as_shred_request WHERE id=1 AND latest_at < $1`
	localUsersQuery   = `SELECT mxid FROM users WHERE mxid > $1 AND mxid LIKE $2 ESCAPE '\' ORDER BY mxid LIMIT $3`
)

// RecordActivity records that user ran a command (action is the command's name, never its
// arguments) through event eventID in roomID at at. It creates the users row if needed. Recording
// the same event again changes nothing.
func (pq *PrivacyQuery) RecordActivity(ctx context.Context, eventID id.EventID, user id.UserID, roomID id.RoomID, action string, at time.Time) error {
	return pq.db.DoTxn(ctx, nil, func(ctx context.Context) error {
		if _, err := pq.db.Exec(ctx, ensureUserQuery, user, at.UnixMilli()); err != nil {
			return fmt.Errorf("failed to ensure users row: %w", err)
		}
		if _, err := pq.db.Exec(ctx, insertActivityQuery, eventID, user, roomID, action, at.UnixMilli()); err != nil {
			return fmt.Errorf("failed to record activity: %w", err)
		}
		return nil
	})
}

// LocalUsers returns up to limit user IDs of the users table on server, sorted, starting after
// after (pass "" to start at the beginning).
func (pq *PrivacyQuery) LocalUsers(ctx context.Context, server string, after id.UserID, limit int) ([]id.UserID, error) {
	pattern := "%:" + EscapeLike(server)
	rows, err := pq.db.Query(ctx, localUsersQuery, after, pattern, limit)
	users, err := dbutil.NewRowIterWithError(rows, func(row dbutil.Scannable) (id.UserID, error) {
		var user id.UserID
		return user, row.Scan(&user)
	}, err).AsList()
	if err != nil {
		return nil, fmt.Errorf("failed to list local users: %w", err)
	}
	return users, nil
}

// DeactivationSuspect is a user whose account looked deactivated, without admin access to the
// homeserver to confirm it (a row of as_deactivation_suspect).
type DeactivationSuspect struct {
	// User is the suspected user.
	User id.UserID `json:"user_id"`
	// Reason says what was seen, e.g. "profile_not_found".
	Reason string `json:"reason"`
	// FirstSeen and LastSeen are when the first and the latest leave that raised the suspicion
	// were handled.
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
	// Leaves counts the leaves that raised it.
	Leaves int `json:"leaves"`
}

// RecordSuspect records that user's account looked deactivated at at, for reason. The users row
// must exist. It reports whether this is a new suspicion (the first for the user).
func (pq *PrivacyQuery) RecordSuspect(ctx context.Context, user id.UserID, reason string, at time.Time) (bool, error) {
	var leaves int
	if err := pq.db.QueryRow(ctx, upsertSuspectQuery, user, reason, at.UnixMilli()).Scan(&leaves); err != nil {
		return false, fmt.Errorf("failed to record deactivation suspect: %w", err)
	}
	return leaves == 1, nil
}

// ClearSuspect removes the suspicion about user, if any.
func (pq *PrivacyQuery) ClearSuspect(ctx context.Context, user id.UserID) error {
	if _, err := pq.db.Exec(ctx, deleteSuspectQuery, user); err != nil {
		return fmt.Errorf("failed to clear deactivation suspect: %w", err)
	}
	return nil
}

// Suspects lists every deactivation suspect, oldest suspicion first; an empty slice if none.
func (pq *PrivacyQuery) Suspects(ctx context.Context) ([]*DeactivationSuspect, error) {
	list, err := QueryList(ctx, pq.db, func(row dbutil.Scannable) (*DeactivationSuspect, error) {
		var s DeactivationSuspect
		var first, last int64
		if err := row.Scan(&s.User, &s.Reason, &first, &last, &s.Leaves); err != nil {
			return nil, err
		}
		s.FirstSeen, s.LastSeen = time.UnixMilli(first).UTC(), time.UnixMilli(last).UTC()
		return &s, nil
	}, listSuspectsQuery)
	if err != nil {
		return nil, fmt.Errorf("failed to list deactivation suspects: %w", err)
	}
	return list, nil
}

// RequestShred records that a full erasure committed at at needs a shred rotation
// (vault.shred_backups). Call it in the erasing transaction. A pending request keeps its
// beginning and takes at as its latest request: only a rotation that started after the latest
// request serves it.
func (pq *PrivacyQuery) RequestShred(ctx context.Context, at time.Time) error {
	if _, err := pq.db.Exec(ctx, requestShredQuery, at.UnixMilli()); err != nil {
		return fmt.Errorf("failed to record shred request: %w", err)
	}
	return nil
}

// PendingShred reports whether a shred rotation is pending, and since when (the oldest request
// not served yet).
func (pq *PrivacyQuery) PendingShred(ctx context.Context) (since time.Time, pending bool, err error) {
	var ms int64
	err = pq.db.QueryRow(ctx, pendingShredQuery).Scan(&ms)
	if errors.Is(err, sql.ErrNoRows) {
		return time.Time{}, false, nil
	} else if err != nil {
		return time.Time{}, false, fmt.Errorf("failed to read shred request: %w", err)
	}
	return time.UnixMilli(ms), true, nil
}

// ClearShred removes the pending shred request if its latest request was recorded before
// started, the time a shred rotation that has now completed started (a request recorded during
// the rotation stays, for the next one). It reports whether one was removed.
func (pq *PrivacyQuery) ClearShred(ctx context.Context, started time.Time) (bool, error) {
	res, err := pq.db.Exec(ctx, clearShredQuery, started.UnixMilli())
	if err != nil {
		return false, fmt.Errorf("failed to clear shred request: %w", err)
	}
	n, err := res.RowsAffected()
	return n > 0, err
}

// EscapeLike escapes s for use in a LIKE pattern with ESCAPE '\', so that it matches only
// itself.
func EscapeLike(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)
	return r.Replace(s)
}

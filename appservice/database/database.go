// Package database holds the core's queries and schema: the users root table, the durable
// inbox, transaction and event deduplication, bot setups and room ownership.
package database

import (
	"context"
	"fmt"

	"go.mau.fi/util/dbutil"

	"github.com/custodian-matrix/custodian/appservice/database/upgrades"
)

// Database wraps the core's database with one query type per table group.
type Database struct {
	*dbutil.Database
	Inbox    *InboxQuery
	User     *UserQuery
	BotSetup *BotSetupQuery
	Room     *RoomQuery
}

// New wraps db. It does not touch the database; call Upgrade before use.
func New(db *dbutil.Database) *Database {
	db.UpgradeTable = upgrades.Table
	return &Database{
		Database: db,
		Inbox:    &InboxQuery{db: db},
		User:     &UserQuery{db: db},
		BotSetup: &BotSetupQuery{db: db},
		Room:     &RoomQuery{db: db},
	}
}

// Upgrade runs the core's migrations.
func (db *Database) Upgrade(ctx context.Context) error {
	if err := db.Database.Upgrade(ctx); err != nil {
		return fmt.Errorf("failed to upgrade core database: %w", err)
	}
	return nil
}

// QueryList runs query with args on db and scans every row with scan, in order. It returns an
// empty, non-nil slice when there are no rows, so callers that encode the list as JSON answer
// [] rather than null. Errors are the query's or the scan's, unwrapped: the caller says what it
// was listing.
func QueryList[T any](ctx context.Context, db *dbutil.Database, scan func(dbutil.Scannable) (T, error), query string, args ...any) ([]T, error) {
	rows, err := db.Query(ctx, query, args...)
	list, err := dbutil.NewRowIterWithError(rows, scan, err).AsList()
	if err != nil {
		return nil, err
	}
	if list == nil {
		list = []T{}
	}
	return list, nil
}

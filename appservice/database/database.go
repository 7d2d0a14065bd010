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

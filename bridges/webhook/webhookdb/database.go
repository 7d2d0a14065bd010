// Package webhookdb holds the webhook bridge's queries and schema: the hooks (tables
// webhook_*, version table webhook_version). The rooms secrets are sent in are the core's
// management rooms (Host.NotifyUser), not the bridge's.
package webhookdb

import (
	"go.mau.fi/util/dbutil"

	"github.com/custodian-matrix/custodian/bridges/webhook/webhookdb/upgrades"
)

// Database wraps the bridge's child database with one query type per table.
type Database struct {
	*dbutil.Database
	Hook *HookQuery
}

// New wraps db, the child database the core gives the bridge (it shares the core's pool and
// transactions). It does not touch the database.
func New(db *dbutil.Database) *Database {
	return &Database{
		Database: db,
		Hook:     &HookQuery{dbutil.MakeQueryHelper(db, newHook)},
	}
}

// UpgradeTable returns the bridge's migrations, for Bridge.Migrations.
func UpgradeTable() dbutil.UpgradeTable {
	return upgrades.Table
}

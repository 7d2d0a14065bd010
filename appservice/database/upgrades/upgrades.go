// Package upgrades holds the core's numbered schema migrations.
package upgrades

import (
	"embed"

	"go.mau.fi/util/dbutil"
)

//go:embed *.sql
var rawUpgrades embed.FS

// Table is the core's upgrade table, run on the main database before any bridge's.
var Table = dbutil.BuildUpgradeTable().WithFS(rawUpgrades).Finish()

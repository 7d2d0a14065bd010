// Package upgrades holds the credential vault's numbered schema migrations. They run on a child
// database with the version table as_vault_version, after the core's migrations (the vault's
// tables reference users).
package upgrades

import (
	"embed"

	"go.mau.fi/util/dbutil"
)

//go:embed *.sql
var rawUpgrades embed.FS

// Table is the vault's upgrade table.
var Table = dbutil.BuildUpgradeTable().WithFS(rawUpgrades).Finish()

// Package upgrades holds the IRC bridge's schema migrations, embedded in the binary.
package upgrades

import (
	"embed"

	"go.mau.fi/util/dbutil"
)

//go:embed *.sql
var rawUpgrades embed.FS

// Table is the IRC bridge's upgrade table. The core runs it on a child database with the
// version table irc_version, after its own migrations (the tables reference users).
var Table = dbutil.BuildUpgradeTable().WithFS(rawUpgrades).Finish()

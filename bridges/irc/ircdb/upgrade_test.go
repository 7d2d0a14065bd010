package ircdb_test

import (
	"context"
	"testing"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/bridges/irc/ircdb"
)

// v2Portal is irc_portal as schema v2 made it: the actor's erasure deleted the portal.
const v2Portal = `CREATE TABLE irc_portal (
	network         TEXT   NOT NULL,
	channel         TEXT   NOT NULL,
	channel_name    TEXT   NOT NULL,
	room_id         TEXT   NOT NULL UNIQUE,
	actor_mxid      TEXT   REFERENCES users (mxid) ON DELETE CASCADE ON UPDATE CASCADE,
	source_event_id TEXT,
	created_at      BIGINT NOT NULL,
	PRIMARY KEY (network, channel)
)`

// TestUpgradeKeepsPortalsOfErasedUsers upgrades a v2 irc_portal with a linked portal in it to
// the latest schema: the row survives the upgrade, and erasing its actor keeps it, unattributed.
func TestUpgradeKeepsPortalsOfErasedUsers(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) { testUpgradeKeepsPortalsOfErasedUsers(t, dialect) })
	}
}

func testUpgradeKeepsPortalsOfErasedUsers(t *testing.T, dialect string) {
	ctx := context.Background()
	core := astest.CoreDB(t, dialect)
	stmts := []string{
		`CREATE TABLE irc_version (version INTEGER, compat INTEGER)`,
		`INSERT INTO irc_version (version, compat) VALUES (2, 1)`,
		v2Portal,
		`INSERT INTO users (mxid, created_at) VALUES ('@alice:example.org', 0)`,
		`INSERT INTO irc_portal VALUES ('net', '#chan', '#Chan', '!room:example.org', '@alice:example.org', '$link', 1)`,
	}
	db := core.Database
	for _, stmt := range stmts {
		if _, err := db.Exec(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	child := db.Child("irc_version", ircdb.UpgradeTable(), dbutil.ZeroLogger(zerolog.Nop()))
	if err := child.Upgrade(ctx); err != nil {
		t.Fatalf("upgrade from v2: %v", err)
	}
	idb := ircdb.New(child)
	if p, err := idb.Portal.GetByRoom(ctx, "!room:example.org"); err != nil || p == nil || p.Actor != "@alice:example.org" {
		t.Fatalf("portal after the upgrade = %+v, %v", p, err)
	}
	if _, err := db.Exec(ctx, `DELETE FROM users WHERE mxid='@alice:example.org'`); err != nil {
		t.Fatal(err)
	}
	p, err := idb.Portal.GetByRoom(ctx, "!room:example.org")
	if err != nil || p == nil || p.Actor != "" || p.ChannelName != "#Chan" {
		t.Errorf("portal after erasing its actor = %+v, %v; want it kept without actor", p, err)
	}
}

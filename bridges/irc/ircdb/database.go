// Package ircdb holds the IRC bridge's queries and schema (tables irc_*, version table
// irc_version): portals, linked accounts, users' client certificates, chosen nicks,
// private-message rooms, the sealed keys of keyed channels, the map from Matrix events to IRC
// message IDs, the media links given to IRC users, the messages queued for IRC, and the bridge's
// own keys. No table holds a message's text.
package ircdb

import (
	"database/sql"
	"time"

	"go.mau.fi/util/dbutil"

	"github.com/custodian-matrix/custodian/bridges/irc/ircdb/upgrades"
)

// Database wraps the bridge's child database with one query type per table.
type Database struct {
	*dbutil.Database
	Portal  *PortalQuery
	Account *AccountQuery
	Nick    *NickQuery
	PM      *PMQuery
	Message *MessageQuery
	Media   *MediaQuery
	Outbox  *OutboxQuery
	// ChannelKey holds the sealed keys (+k) of portal channels.
	ChannelKey *ChannelKeyQuery
	Cert       *CertQuery
	Key        *KeyQuery
}

// New wraps db, the child database the core gives the bridge (it shares the core's pool and
// transactions). It does not touch the database.
func New(db *dbutil.Database) *Database {
	return &Database{
		Database: db,
		Portal:   &PortalQuery{dbutil.MakeQueryHelper(db, func(*dbutil.QueryHelper[*Portal]) *Portal { return &Portal{} })},
		Account:  &AccountQuery{dbutil.MakeQueryHelper(db, func(*dbutil.QueryHelper[*Account]) *Account { return &Account{} })},
		Nick:     &NickQuery{dbutil.MakeQueryHelper(db, func(*dbutil.QueryHelper[*Nick]) *Nick { return &Nick{} })},
		PM:       &PMQuery{dbutil.MakeQueryHelper(db, func(*dbutil.QueryHelper[*PM]) *PM { return &PM{} })},
		Message:  &MessageQuery{dbutil.MakeQueryHelper(db, func(*dbutil.QueryHelper[*Message]) *Message { return &Message{} })},
		Media:    &MediaQuery{dbutil.MakeQueryHelper(db, func(*dbutil.QueryHelper[*Media]) *Media { return &Media{} })},
		Outbox:   &OutboxQuery{dbutil.MakeQueryHelper(db, func(*dbutil.QueryHelper[*Outbox]) *Outbox { return &Outbox{} })},
		ChannelKey: &ChannelKeyQuery{dbutil.MakeQueryHelper(db, func(*dbutil.QueryHelper[*ChannelKey]) *ChannelKey {
			return &ChannelKey{}
		})},
		Cert: &CertQuery{dbutil.MakeQueryHelper(db, func(*dbutil.QueryHelper[*Cert]) *Cert { return &Cert{} })},
		Key:  &KeyQuery{db: db},
	}
}

// UpgradeTable returns the bridge's migrations, for Bridge.Migrations.
func UpgradeTable() dbutil.UpgradeTable {
	return upgrades.Table
}

func ms(t time.Time) int64 { return t.UnixMilli() }

func nullString(s string) sql.NullString { return sql.NullString{String: s, Valid: s != ""} }

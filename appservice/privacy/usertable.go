package privacy

import (
	"time"

	"maunium.net/go/mautrix/id"
)

// ErasePolicy says how erasure treats a declared personal-data table.
type ErasePolicy int

const (
	// EraseCascade is the default: the table's user column references users(mxid) ON DELETE
	// CASCADE, so deleting the users row removes the table's rows about the user. The schema test
	// fails if the foreign key is missing or does not cascade.
	EraseCascade ErasePolicy = iota
	// EraseDeleteRows is for tables about users who need not have a users row (the homeserver
	// state cache, the transient inbox): erasure runs DELETE FROM <table> WHERE <column> = $1 in
	// the same transaction that deletes the users row.
	EraseDeleteRows
	// EraseSetNull is for provenance on configuration shared by a room (who set a bot up, who
	// claimed a portal): the column references users(mxid) ON DELETE SET NULL, so erasure keeps
	// the room's configuration working but the row no longer names the user.
	EraseSetNull
	// EraseRetain keeps the rows on erasure, for a stated reason (UserTable.Reason must be set),
	// and relies on the table's Retention to remove them.
	EraseRetain
)

// String returns the policy's name as used in exports and docs.
func (p ErasePolicy) String() string {
	switch p {
	case EraseCascade:
		return "cascade"
	case EraseDeleteRows:
		return "delete_rows"
	case EraseSetNull:
		return "set_null"
	case EraseRetain:
		return "retain"
	default:
		return "unknown"
	}
}

// UserTable declares one table that holds data about Matrix users. Every module (the core and
// each bridge) lists its tables in its inventory; erasure and export are generic over it.
type UserTable struct {
	// Table is the SQL table name.
	Table string
	// UserColumn is the column that holds the user's Matrix ID.
	UserColumn string
	// Export lists the columns included in the user's export. Nil exports no column but still
	// counts the rows.
	Export []string
	// Secret lists columns that hold sealed secrets; they are exported as "[redacted]".
	Secret []string
	// Policy says how erasure treats the table; see [ErasePolicy].
	Policy ErasePolicy
	// Reason explains why rows are kept on erasure; required with [EraseRetain].
	Reason string
	// Retention is how long rows are kept before the sweeper deletes them; zero means as long
	// as the user's data is kept.
	Retention time.Duration
	// Description says in plain words what the table holds, for !mydata and the docs.
	Description string
	// SourceEventColumn, if set, names the column holding the ID of the Matrix event that created
	// or last changed the row (its provenance). Redacting that event deletes the row, and what
	// cascades from it.
	SourceEventColumn string
	// TimeColumn names the column that Retention is measured from (milliseconds since the epoch,
	// unless TimeKind says otherwise); required when Retention or RetentionClass is set.
	TimeColumn string
	// TimeKind says how TimeColumn stores time; the zero value is [TimeUnixMillis].
	TimeKind TimeKind
	// Orphaned, if set, is an SQL condition (no parameters) that selects rows whose parent row,
	// in another table of the module, is gone: the retention sweep deletes them after the
	// expired rows. It is for tables that have no time of their own and live only as long as
	// another table's rows, such as the crypto store's message indexes of expired sessions.
	Orphaned string
	// RetentionClass, if set, takes the table's retention from the configuration instead of
	// Retention, so that the administrator decides it: [RetentionActivity] for records of what
	// users did, [RetentionNetwork] for IP addresses and user agents. The retention sweeper
	// deletes rows whose TimeColumn is older than that.
	RetentionClass RetentionClass
	// Match, if set, is the SQL condition that selects the table's rows about the user ($1 is
	// the user's Matrix ID), used by export, counts and erasure instead of UserColumn=$1. It is
	// for tables that name a user only through another table, such as the crypto store's
	// sessions, found by the identity keys of the user's devices. It needs [EraseDeleteRows].
	// UserColumn must still name the column that links the row to the user.
	Match string
	// RoomColumn, if set, names the column holding the room where the row's source event was
	// sent (see SourceEventColumn). A redaction purges only rows of the room it was sent in.
	// Without it, the core asks the homeserver whether the redacted event belongs to the room
	// before purging.
	RoomColumn string
}

// TimeKind says how a [UserTable.TimeColumn] stores time.
type TimeKind int

const (
	// TimeUnixMillis is an integer column of milliseconds since the epoch, the way every table
	// of Custodian's own stores time.
	TimeUnixMillis TimeKind = iota
	// TimeSQLTimestamp is an SQL timestamp column holding UTC, the way mautrix's crypto store
	// writes it: "timestamp" on PostgreSQL (without time zone, so the UTC wall clock) and, on
	// SQLite, text in go-sqlite3's format with the writer's zone offset. The retention sweep
	// compares it as a time on both (julianday on SQLite), never as text.
	TimeSQLTimestamp
)

// RetentionClass names a retention limit set in the configuration (see
// [UserTable.RetentionClass]).
type RetentionClass string

const (
	// RetentionActivity is privacy.activity_retention (14 days by default): records of what a
	// user did, such as the commands they ran.
	RetentionActivity RetentionClass = "activity"
	// RetentionNetwork is privacy.network_retention (60 days by default): IP addresses and user
	// agents, for example of webhook callers.
	RetentionNetwork RetentionClass = "network"
	// RetentionSessions is encryption.session_retention (privacy.activity_retention unless
	// set): the end-to-end encryption sessions the bot received or created. Once they are
	// deleted, a database backup cannot decrypt older messages (forward secrecy at rest).
	RetentionSessions RetentionClass = "sessions"
)

// Provenance records who created or last changed a configuration row, where and through which
// event, so that redacting that event can purge the row.
type Provenance struct {
	// Actor is the Matrix user who issued the command.
	Actor id.UserID
	// RoomID is the room the command was issued in.
	RoomID id.RoomID
	// EventID is the event that created or last changed the row.
	EventID id.EventID
	// At is when the change happened.
	At time.Time
}

// userCondition returns the SQL condition selecting ut's rows about the user given as $1: Match
// if set, else UserColumn=$1.
func (ut UserTable) userCondition() string {
	if ut.Match != "" {
		return "(" + ut.Match + ")"
	}
	return quoteIdent(ut.UserColumn) + "=$1"
}

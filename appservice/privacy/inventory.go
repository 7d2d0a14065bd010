package privacy

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"go.mau.fi/util/dbutil"
)

// CoreModule is the module name under which the core's own personal-data tables are declared,
// in exports and in inventory errors.
const CoreModule = "core"

// CoreInventory declares the core's tables about Matrix users, and those of the mautrix state
// cache, which the core owns.
func CoreInventory() []UserTable {
	return []UserTable{
		{
			Table: "users", UserColumn: "mxid", Export: []string{"mxid", "created_at", "management_room"},
			Description: "that Custodian holds data about you, since when, and the room where the bot tells you what is meant for you alone",
		},
		{
			Table: "as_bot_setup", UserColumn: "inviter_mxid", Policy: EraseSetNull,
			Export:      []string{"room_id", "bot", "invite_event_id", "invited_at", "joined_at", "is_direct", "config"},
			Description: "rooms where you invited a bot: when, with which event and its configuration then",
		},
		{
			Table: "as_room", UserColumn: "actor_mxid", Policy: EraseSetNull,
			Export:      []string{"room_id", "bridge_id", "event_id", "created_at"},
			Description: "rooms you connected to a bridge",
		},
		{
			Table: "as_inbox", UserColumn: "sender", Policy: EraseDeleteRows,
			Export:      []string{"event_id", "room_id", "received_at"},
			Description: "your events received but not yet handled (normally held for milliseconds)",
		},
		{
			Table: "mx_user_profile", UserColumn: "user_id", Policy: EraseDeleteRows,
			Export:      []string{"room_id", "membership", "displayname", "avatar_url"},
			Description: "the homeserver state cache: your membership, display name and avatar in rooms Custodian's bots share with you",
		},
		{
			Table: "mx_registrations", UserColumn: "user_id", Policy: EraseDeleteRows,
			Description: "appservice users Custodian registered (only its own bot and ghosts)",
		},
		{
			// Never the key: only which master key wraps it and when. Erasure deletes it by
			// cascade, which makes every secret ever sealed for the user unreadable.
			Table: "as_vault_dek", UserColumn: "user_mxid", Export: []string{"dek_id", "kek_id", "created_at", "rewrapped_at"},
			Description: "the data key your stored credentials are encrypted with (exported as its ID and dates, never the key)",
		},
		{
			Table: "as_activity", UserColumn: "user_mxid", Export: []string{"action", "room_id", "at"},
			TimeColumn: "at", RetentionClass: RetentionActivity,
			Description: "commands you sent to Custodian's bot, by name only (never what you typed after it)",
		},
		{
			// Withdrawn (message redacted, upload deleted) at expiry and before erasure; see
			// appservice/exportfile.go.
			// SET NULL, not CASCADE: a file whose withdrawal failed at erasure must stay listed,
			// naming nobody, so the expiry loop can still withdraw it.
			Table: "as_export", UserColumn: "user_mxid", Policy: EraseSetNull,
			Export:      []string{"room_id", "event_id", "mxc_uri", "created_at", "expires_at"},
			Description: "export files the bot sent you, until they expire: where, and the encrypted upload",
		},
		{
			// The job names the user only while the erasure is pending; the erasing transaction
			// clears the column (see erasure.go), so erasure itself handles this table.
			Table: "as_erasure", UserColumn: "user_mxid", Policy: EraseRetain,
			Export:      []string{"job_id", "erase_trigger", "scope", "state", "created_at"},
			Reason:      "erasure bookkeeping: names you only until your erasure is done, then no longer",
			Description: "erasures of your data that are under way",
		},
		{
			Table: "as_deactivation_suspect", UserColumn: "user_mxid",
			Export:      []string{"reason", "first_seen", "last_seen", "leaves"},
			Description: "a note that your account looked deactivated when you left a room, kept for the homeserver's admins to check",
		},
	}
}

// userColumnPattern matches column names that hold a Matrix user ID by the naming conventions
// used in this codebase and in mautrix: anything with mxid, user_id, sender, inviter or actor in
// its name. A table with such a column must be declared.
var userColumnPattern = regexp.MustCompile(`(?i)(mxid|user_id|sender|inviter|actor|_user$)`)

// SchemaColumn is one column found by introspection.
type SchemaColumn struct {
	Table, Column string
}

// SchemaForeignKey is one foreign key to users(mxid) found by introspection.
type SchemaForeignKey struct {
	Table, Column, OnDelete string
}

// IntrospectSchema lists every column and every foreign key that references users, on either
// dialect. Version tables and the core's own bookkeeping of the schema are included; callers
// filter.
func IntrospectSchema(ctx context.Context, db *dbutil.Database) (cols []SchemaColumn, fks []SchemaForeignKey, err error) {
	switch db.Dialect {
	case dbutil.Postgres:
		rows, err := db.Query(ctx, `
			SELECT table_name, column_name FROM information_schema.columns
			WHERE table_schema = current_schema()`)
		if err != nil {
			return nil, nil, err
		}
		for rows.Next() {
			var c SchemaColumn
			if err = rows.Scan(&c.Table, &c.Column); err != nil {
				_ = rows.Close()
				return nil, nil, err
			}
			cols = append(cols, c)
		}
		if err = rows.Close(); err != nil {
			return nil, nil, err
		}
		rows, err = db.Query(ctx, `
			SELECT kcu.table_name, kcu.column_name, rc.delete_rule
			FROM information_schema.referential_constraints rc
			JOIN information_schema.key_column_usage kcu
				ON kcu.constraint_name = rc.constraint_name AND kcu.constraint_schema = rc.constraint_schema
			JOIN information_schema.constraint_column_usage ccu
				ON ccu.constraint_name = rc.unique_constraint_name AND ccu.constraint_schema = rc.unique_constraint_schema
			WHERE rc.constraint_schema = current_schema() AND ccu.table_name = 'users' AND ccu.column_name = 'mxid'`)
		if err != nil {
			return nil, nil, err
		}
		for rows.Next() {
			var fk SchemaForeignKey
			if err = rows.Scan(&fk.Table, &fk.Column, &fk.OnDelete); err != nil {
				_ = rows.Close()
				return nil, nil, err
			}
			fks = append(fks, fk)
		}
		return cols, fks, rows.Close()
	case dbutil.SQLite:
		var tables []string
		rows, err := db.Query(ctx, `SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'`)
		if err != nil {
			return nil, nil, err
		}
		for rows.Next() {
			var name string
			if err = rows.Scan(&name); err != nil {
				_ = rows.Close()
				return nil, nil, err
			}
			tables = append(tables, name)
		}
		if err = rows.Close(); err != nil {
			return nil, nil, err
		}
		for _, table := range tables {
			rows, err = db.Query(ctx, `SELECT name FROM pragma_table_info($1)`, table)
			if err != nil {
				return nil, nil, err
			}
			for rows.Next() {
				c := SchemaColumn{Table: table}
				if err = rows.Scan(&c.Column); err != nil {
					_ = rows.Close()
					return nil, nil, err
				}
				cols = append(cols, c)
			}
			if err = rows.Close(); err != nil {
				return nil, nil, err
			}
			rows, err = db.Query(ctx, `SELECT "table", "from", COALESCE("to", ''), on_delete FROM pragma_foreign_key_list($1)`, table)
			if err != nil {
				return nil, nil, err
			}
			for rows.Next() {
				var refTable, from, to, onDelete string
				if err = rows.Scan(&refTable, &from, &to, &onDelete); err != nil {
					_ = rows.Close()
					return nil, nil, err
				}
				if refTable == "users" && (to == "mxid" || to == "") {
					fks = append(fks, SchemaForeignKey{Table: table, Column: from, OnDelete: onDelete})
				}
			}
			if err = rows.Close(); err != nil {
				return nil, nil, err
			}
		}
		return cols, fks, nil
	default:
		return nil, nil, fmt.Errorf("unsupported dialect %s", db.Dialect)
	}
}

// CheckInventory compares the declared personal-data inventory (module → tables) with the
// migrated schema and reports every mismatch at once:
//   - a declared table or column that does not exist;
//   - a table that references users(mxid) without being declared;
//   - a table with a user-ID-like column (see userColumnPattern) that is not declared;
//   - a declared table whose foreign key does not match its policy (CASCADE for EraseCascade,
//     SET NULL for EraseSetNull), or EraseRetain without a reason.
//
// The service runs it at startup and refuses to start on any error, so a bridge cannot ship a
// table that erasure and export would miss.
func CheckInventory(ctx context.Context, db *dbutil.Database, inventory map[string][]UserTable) error {
	cols, fks, err := IntrospectSchema(ctx, db)
	if err != nil {
		return fmt.Errorf("failed to introspect schema: %w", err)
	}
	columns := make(map[string][]string)
	for _, c := range cols {
		columns[c.Table] = append(columns[c.Table], c.Column)
	}
	fkByTable := make(map[string][]SchemaForeignKey)
	for _, fk := range fks {
		fkByTable[fk.Table] = append(fkByTable[fk.Table], fk)
	}
	declared := make(map[string]string) // table → module
	var errs []error
	for _, module := range sortedKeys(inventory) {
		for _, ut := range inventory[module] {
			prefix := fmt.Sprintf("%s: table %s", module, ut.Table)
			if other, dup := declared[ut.Table]; dup {
				errs = append(errs, fmt.Errorf("%s: already declared by %s", prefix, other))
				continue
			}
			declared[ut.Table] = module
			tableCols, ok := columns[ut.Table]
			if !ok {
				errs = append(errs, fmt.Errorf("%s: declared but does not exist", prefix))
				continue
			}
			named := slices.Concat([]string{ut.UserColumn}, ut.Export, ut.Secret)
			for _, col := range []string{ut.SourceEventColumn, ut.TimeColumn, ut.RoomColumn} {
				if col != "" {
					named = append(named, col)
				}
			}
			for _, col := range named {
				if !slices.Contains(tableCols, col) {
					errs = append(errs, fmt.Errorf("%s: declared column %s does not exist", prefix, col))
				}
			}
			if ut.Table == "users" {
				continue
			}
			var fkRule string
			for _, fk := range fkByTable[ut.Table] {
				if fk.Column == ut.UserColumn {
					fkRule = strings.ToUpper(fk.OnDelete)
				}
			}
			switch ut.Policy {
			case EraseCascade:
				if fkRule != "CASCADE" {
					errs = append(errs, fmt.Errorf("%s: column %s must reference users (mxid) ON DELETE CASCADE (found %q)", prefix, ut.UserColumn, fkRule))
				}
			case EraseSetNull:
				if fkRule != "SET NULL" {
					errs = append(errs, fmt.Errorf("%s: column %s must reference users (mxid) ON DELETE SET NULL (found %q)", prefix, ut.UserColumn, fkRule))
				}
			case EraseRetain:
				if ut.Reason == "" {
					errs = append(errs, fmt.Errorf("%s: EraseRetain needs a Reason", prefix))
				}
			}
			if ut.Match != "" && ut.Policy != EraseDeleteRows {
				errs = append(errs, fmt.Errorf("%s: Match needs EraseDeleteRows", prefix))
			}
			if ut.Match != "" && ut.SourceEventColumn != "" {
				errs = append(errs, fmt.Errorf("%s: Match cannot be combined with SourceEventColumn", prefix))
			}
		}
	}
	for _, table := range sortedKeys(columns) {
		if _, ok := declared[table]; ok || strings.HasSuffix(table, "_version") {
			continue
		}
		if len(fkByTable[table]) > 0 {
			errs = append(errs, fmt.Errorf("table %s references users but is not declared in any personal-data inventory", table))
			continue
		}
		for _, col := range columns[table] {
			if userColumnPattern.MatchString(col) {
				errs = append(errs, fmt.Errorf("table %s has user-ID column %s but is not declared in any personal-data inventory", table, col))
			}
		}
	}
	return errors.Join(errs...)
}

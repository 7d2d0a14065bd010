//go:build e2e

package e2e

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// dumpTimeout bounds one dump or copy of Custodian's database.
const dumpTimeout = time.Minute

// DumpRow is one row of a [DatabaseDump]: its table and its text form.
type DumpRow struct {
	Table string
	// Text is the row as text: on SQLite every column's value (blobs as their raw bytes)
	// separated by " | "; on PostgreSQL the row's own text form (row::text, bytea as \x hex).
	Text string
}

// DatabaseDump is every row of every table of Custodian's database, as text.
type DatabaseDump struct {
	Tables []string
	Rows   []DumpRow
}

// Find returns the rows whose text contains any of needles.
func (d *DatabaseDump) Find(needles ...string) []DumpRow {
	var found []DumpRow
	for _, row := range d.Rows {
		for _, needle := range needles {
			if needle != "" && strings.Contains(row.Text, needle) {
				found = append(found, row)
				break
			}
		}
	}
	return found
}

// Count returns how many rows table has in the dump.
func (d *DatabaseDump) Count(table string) int {
	n := 0
	for _, row := range d.Rows {
		if row.Table == table {
			n++
		}
	}
	return n
}

// Describe lists rows for a failure message, at most 30, each cut to 300 bytes.
func Describe(rows []DumpRow) string {
	var sb strings.Builder
	for i, row := range rows {
		if i == 30 {
			fmt.Fprintf(&sb, "  … and %d more\n", len(rows)-30)
			break
		}
		text := row.Text
		if len(text) > 300 {
			text = text[:300] + "…"
		}
		fmt.Fprintf(&sb, "  %s: %q\n", row.Table, text)
	}
	return sb.String()
}

// DumpDatabase reads every row of every table of Custodian's database (through [Env.DB]) as text,
// as a full dump would: the tables are listed from the catalogue, not from what the test
// expects, so a table nobody thought of is included.
func (env *Env) DumpDatabase(t testing.TB) *DatabaseDump {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), dumpTimeout)
	defer cancel()
	dump, err := dumpDatabase(ctx, env.DB(t), env.dbDriver)
	if err != nil {
		t.Fatalf("dumping Custodian's database: %v", err)
	}
	return dump
}

func dumpDatabase(ctx context.Context, db *sql.DB, driver string) (*DatabaseDump, error) {
	tableQuery := `SELECT name FROM sqlite_master WHERE type='table' ORDER BY name`
	if driver == "postgres" {
		tableQuery = `SELECT table_name FROM information_schema.tables
			WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name`
	}
	tables, err := queryStrings(ctx, db, tableQuery)
	if err != nil {
		return nil, fmt.Errorf("listing tables: %w", err)
	}
	if len(tables) == 0 {
		return nil, fmt.Errorf("the database has no tables")
	}
	dump := &DatabaseDump{Tables: tables}
	for _, table := range tables {
		quoted := `"` + strings.ReplaceAll(table, `"`, `""`) + `"`
		query := `SELECT * FROM ` + quoted
		if driver == "postgres" {
			query = `SELECT t::text FROM ` + quoted + ` AS t`
		}
		rows, err := db.QueryContext(ctx, query)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", table, err)
		}
		cols, err := rows.Columns()
		if err != nil {
			_ = rows.Close()
			return nil, err
		}
		for rows.Next() {
			vals := make([]sql.RawBytes, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				_ = rows.Close()
				return nil, fmt.Errorf("reading %s: %w", table, err)
			}
			parts := make([]string, len(vals))
			for i, val := range vals {
				parts[i] = string(val)
			}
			dump.Rows = append(dump.Rows, DumpRow{Table: table, Text: strings.Join(parts, " | ")})
		}
		if err := rows.Close(); err != nil {
			return nil, fmt.Errorf("reading %s: %w", table, err)
		}
	}
	return dump, nil
}

func queryStrings(ctx context.Context, db *sql.DB, query string, args ...any) ([]string, error) {
	rows, err := db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	sort.Strings(out)
	return out, rows.Err()
}

// DatabaseCopy is a full copy of Custodian's database taken by [Env.CopyDatabase], as a backup
// would be: a separate SQLite file, or a separate PostgreSQL database. It is deleted when the
// test ends.
type DatabaseCopy struct {
	// Driver is the database/sql driver ("sqlite3" or "postgres"), DSN what to open with it.
	Driver, DSN string
	// DB is an open handle on the copy, closed when the test ends.
	DB *sql.DB
}

// CopyDatabase copies Custodian's whole database. Custodian must be stopped ([Env.StopCustodian])
// on PostgreSQL, where the copy is CREATE DATABASE … TEMPLATE, which needs the original to have
// no connections (the harness closes its own handle; [Env.DB] opens a new one); on SQLite it may
// run, and the copy is VACUUM INTO, a consistent snapshot.
func (env *Env) CopyDatabase(t testing.TB) *DatabaseCopy {
	t.Helper()
	env.needCustodian(t)
	ctx, cancel := context.WithTimeout(context.Background(), dumpTimeout)
	defer cancel()
	cp := &DatabaseCopy{Driver: env.dbDriver}
	switch env.Backend {
	case SQLite:
		path := filepath.Join(env.dir, "copy-"+randomHex(t, 4)+".db")
		if _, err := env.DB(t).ExecContext(ctx, `VACUUM INTO '`+path+`'`); err != nil {
			t.Fatalf("copying the database with VACUUM INTO: %v", err)
		}
		t.Cleanup(func() { _ = os.Remove(path) })
		cp.DSN = "file:" + path + "?_busy_timeout=10000"
	case Postgres:
		if !env.custodianExited() {
			t.Fatalf("CopyDatabase: stop Custodian first (PostgreSQL copies only a database nobody is connected to)")
		}
		env.mu.Lock()
		if env.db != nil {
			_ = env.db.Close()
			env.db = nil
		}
		env.mu.Unlock()
		cp.DSN = copyPostgresDatabase(t, env.dbDSN)
	}
	db, err := sql.Open(cp.Driver, cp.DSN)
	if err != nil {
		t.Fatalf("opening the database copy: %v", err)
	}
	t.Cleanup(func() { _ = db.Close() })
	if err := db.PingContext(ctx); err != nil {
		t.Fatalf("opening the database copy: %v", err)
	}
	cp.DB = db
	return cp
}

// Dump is [Env.DumpDatabase] for the copy.
func (cp *DatabaseCopy) Dump(t testing.TB) *DatabaseDump {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), dumpTimeout)
	defer cancel()
	dump, err := dumpDatabase(ctx, cp.DB, cp.Driver)
	if err != nil {
		t.Fatalf("dumping the database copy: %v", err)
	}
	return dump
}

// copyPostgresDatabase creates a copy of the database srcURI names (on the POSTGRES_TEST_URI
// server) with CREATE DATABASE … TEMPLATE, drops it when t ends, and returns its URI. The source
// must have no open connections.
func copyPostgresDatabase(t testing.TB, srcURI string) string {
	t.Helper()
	src, err := url.Parse(srcURI)
	if err != nil {
		t.Fatalf("parsing the database URI: %v", err)
	}
	srcName := strings.TrimPrefix(src.Path, "/")
	name := srcName + "_copy_" + randomHex(t, 4)
	admin, err := sql.Open("postgres", os.Getenv("POSTGRES_TEST_URI"))
	if err != nil {
		t.Fatalf("opening POSTGRES_TEST_URI: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), dumpTimeout)
	defer cancel()
	// Connections closed a moment ago may still be ending on the server: retry briefly.
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err = admin.ExecContext(ctx, `CREATE DATABASE "`+name+`" TEMPLATE "`+srcName+`"`)
		if err == nil || time.Now().After(deadline) || !strings.Contains(err.Error(), "being accessed by other users") {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		_ = admin.Close()
		t.Fatalf("copying database %s: %v", srcName, err)
	}
	t.Cleanup(func() {
		defer admin.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := admin.ExecContext(ctx, `DROP DATABASE IF EXISTS "`+name+`" WITH (FORCE)`); err != nil {
			t.Errorf("dropping database %s: %v", name, err)
		}
	})
	cp := *src
	cp.Path = "/" + name
	return cp.String()
}

package vault

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
)

// createSecretTable creates a bridge-like table that stores sealed values and cascades from users.
func createSecretTable(t testing.TB, db *dbutil.Database, dialect string) {
	t.Helper()
	blob := "BLOB"
	if dialect == astest.Postgres {
		blob = "BYTEA"
	}
	mustExec(t, db, `CREATE TABLE test_secret (
		user_mxid TEXT NOT NULL REFERENCES users (mxid) ON DELETE CASCADE,
		name      TEXT NOT NULL,
		sealed    `+blob+` NOT NULL,
		PRIMARY KEY (user_mxid, name)
	)`)
}

// backupOf copies the whole database, as a backup would, and returns the copy (restored into a
// fresh database) as a vault child database. SQLite: VACUUM INTO; PostgreSQL: the rows of every
// table involved, read into memory and inserted into a fresh database.
func backupOf(t *testing.T, ctx context.Context, db *dbutil.Database, dialect string) *dbutil.Database {
	t.Helper()
	if dialect == astest.SQLite {
		path := filepath.Join(t.TempDir(), "backup.db")
		mustExec(t, db, `VACUUM INTO '`+path+`'`)
		raw, err := dbutil.NewWithDialect("file:"+path+"?_txlock=immediate", "sqlite3-fk-wal")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = raw.Close() })
		return ChildDB(raw, zerolog.Nop())
	}
	restored := vaultDB(t, dialect)
	createSecretTable(t, restored, dialect)
	for _, table := range []struct{ name, cols string }{
		{"users", "mxid, created_at"},
		{"as_vault_kek", "kek_id, check_value, created_at"},
		{"as_vault_dek", "user_mxid, dek_id, kek_id, wrapped, created_at"},
		{"test_secret", "user_mxid, name, sealed"},
	} {
		n := len(strings.Split(table.cols, ","))
		rows, err := db.Query(ctx, "SELECT "+table.cols+" FROM "+table.name)
		if err != nil {
			t.Fatal(err)
		}
		var copied [][]any
		for rows.Next() {
			vals := make([]any, n)
			ptrs := make([]any, n)
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err = rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			copied = append(copied, vals)
		}
		if err = rows.Close(); err != nil {
			t.Fatal(err)
		}
		placeholders := make([]string, n)
		for i := range placeholders {
			placeholders[i] = fmt.Sprintf("$%d", i+1)
		}
		for _, vals := range copied {
			mustExec(t, restored, "INSERT INTO "+table.name+" ("+table.cols+") VALUES ("+strings.Join(placeholders, ", ")+")", vals...)
		}
	}
	return restored
}

func readSecrets(t *testing.T, ctx context.Context, db *dbutil.Database) map[id.UserID][]byte {
	t.Helper()
	rows, err := db.Query(ctx, `SELECT user_mxid, sealed FROM test_secret WHERE name='pw'`)
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[id.UserID][]byte)
	for rows.Next() {
		var user id.UserID
		var sealed []byte
		if err = rows.Scan(&user, &sealed); err != nil {
			t.Fatal(err)
		}
		out[user] = sealed
	}
	if err = rows.Close(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestCryptoShredding erases a user (deletes the users row, as the erasure does, then
// Vault.Forget) after a backup was taken, and shows what can and cannot be opened afterwards.
func TestCryptoShredding(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			ctx := testCtx(t, nil)
			db := vaultDB(t, dialect)
			createSecretTable(t, db, dialect)
			k1 := mustKey(t)
			v := newVault(t, ctx, db, Options{Keys: StaticKeys{k1}})
			for _, user := range []id.UserID{alice, bob} {
				ensureUser(t, db, user)
				mustExec(t, db, `INSERT INTO test_secret VALUES ($1, 'pw', $2)`, user, mustSeal(t, ctx, v, user, "irc", "pw", string(user)+"-pw"))
			}
			live := readSecrets(t, ctx, db)
			// Alice's key is in the cache, as it would be in a running service.
			mustOpen(t, ctx, v, alice, "irc", "pw", live[alice], string(alice)+"-pw")

			backup := backupOf(t, ctx, db, dialect)
			copied := readSecrets(t, ctx, backup)
			if len(copied) != 2 {
				t.Fatalf("backup holds %d secrets, want 2", len(copied))
			}

			// The erasure: one transaction deletes the users row; afterwards Forget.
			mustExec(t, db, `DELETE FROM users WHERE mxid=$1`, alice)
			v.Forget(alice)

			var n int
			if err := db.QueryRow(ctx, `SELECT COUNT(*) FROM as_vault_dek WHERE user_mxid=$1`, alice).Scan(&n); err != nil || n != 0 {
				t.Fatalf("alice's data keys after erasure = %d, %v; want 0 (cascade)", n, err)
			}
			if _, ok := readSecrets(t, ctx, db)[alice]; ok {
				t.Fatal("alice's secret row survived the erasure")
			}
			// Her copied ciphertexts cannot be opened with the current keys and the live
			// database, neither by the service that had her key cached nor by a fresh process.
			cold := newVault(t, ctx, db, Options{Keys: StaticKeys{k1}})
			for name, vault := range map[string]*Vault{"service": v, "fresh process": cold} {
				if got, err := vault.Open(ctx, alice, "irc", "pw", copied[alice]); !errors.Is(err, ErrDecrypt) {
					t.Errorf("%s: Open(alice's copied value) = %q, %v; want ErrDecrypt (data key gone)", name, got.Reveal(), err)
				}
				mustOpen(t, ctx, vault, bob, "irc", "pw", copied[bob], string(bob)+"-pw")
			}

			// A full backup also holds alice's wrapped data key: with the master key that
			// wrapped it, the backup still opens (the documented limit of crypto-shredding)...
			fromBackup := newVault(t, ctx, backup, Options{Keys: StaticKeys{k1}})
			mustOpen(t, ctx, fromBackup, alice, "irc", "pw", copied[alice], string(alice)+"-pw")

			// ...until the master key is rotated and the old one retired. Then nothing in the
			// backup opens with the current keys, and the live database is unaffected.
			k2 := mustKey(t)
			rotator := newVault(t, ctx, db, Options{Keys: StaticKeys{k2, k1}})
			if _, err := rotator.Rotate(ctx, RotateOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := rotator.RetireKey(ctx, k1.ID()); err != nil {
				t.Fatal(err)
			}
			current := StaticKeys{k2}
			fromBackup = newVault(t, ctx, backup, Options{Keys: current})
			for _, user := range []id.UserID{alice, bob} {
				if got, err := fromBackup.Open(ctx, user, "irc", "pw", copied[user]); err == nil {
					t.Errorf("backup Open(%s) with the current keys = %q, want an error", user, got.Reveal())
				}
			}
			after := newVault(t, ctx, db, Options{Keys: current})
			mustOpen(t, ctx, after, bob, "irc", "pw", live[bob], string(bob)+"-pw")
			if _, err := after.Open(ctx, alice, "irc", "pw", copied[alice]); !errors.Is(err, ErrDecrypt) {
				t.Errorf("Open(alice's copied value) after rotation = %v, want ErrDecrypt", err)
			}
		})
	}
}

// TestNoPlaintextInDatabase seals known secrets, dumps every table as text and checks that
// neither the secrets nor the master key appear in any form.
func TestNoPlaintextInDatabase(t *testing.T) {
	const secret = "correct-horse-battery-staple-0451"
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			ctx := testCtx(t, nil)
			db := vaultDB(t, dialect)
			createSecretTable(t, db, dialect)
			k := mustKey(t)
			v := newVault(t, ctx, db, Options{Keys: StaticKeys{k}})
			for i := range 5 {
				ensureUser(t, db, userN(i))
				mustExec(t, db, `INSERT INTO test_secret VALUES ($1, 'pw', $2)`, userN(i), mustSeal(t, ctx, v, userN(i), "irc", "pw", secret))
			}
			dump := dumpDatabase(t, ctx, db, dialect)
			if !strings.Contains(dump, string(userN(0))) || !strings.Contains(dump, k.ID()) {
				t.Fatalf("dump looks incomplete (no user ID or key ID):\n%.2000s", dump)
			}
			forbidden := map[string]string{
				"secret":              secret,
				"secret (hex)":        hex.EncodeToString([]byte(secret)),
				"secret (base64)":     base64.StdEncoding.EncodeToString([]byte(secret))[:20],
				"master key (hex)":    hex.EncodeToString(k.material[:]),
				"master key (base64)": base64.StdEncoding.EncodeToString(k.material[:]),
				"master key (raw)":    string(k.material[:]),
			}
			for what, s := range forbidden {
				if strings.Contains(strings.ToLower(dump), strings.ToLower(s)) {
					t.Errorf("database dump contains the %s", what)
				}
			}
		})
	}
}

// dumpDatabase renders every row of every table as text: raw bytes and their hex for SQLite,
// the row's text form (bytea as hex) for PostgreSQL.
func dumpDatabase(t *testing.T, ctx context.Context, db *dbutil.Database, dialect string) string {
	t.Helper()
	tableQuery := `SELECT name FROM sqlite_master WHERE type='table'`
	if dialect == astest.Postgres {
		tableQuery = `SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()`
	}
	rows, err := db.Query(ctx, tableQuery)
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for rows.Next() {
		var name string
		if err = rows.Scan(&name); err != nil {
			t.Fatal(err)
		}
		tables = append(tables, name)
	}
	if err = rows.Close(); err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	for _, table := range tables {
		query := `SELECT * FROM "` + table + `"`
		if dialect == astest.Postgres {
			query = `SELECT t::text FROM "` + table + `" AS t`
		}
		rows, err := db.RawDB.QueryContext(ctx, query)
		if err != nil {
			t.Fatal(err)
		}
		cols, _ := rows.Columns()
		for rows.Next() {
			vals := make([]sql.RawBytes, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err = rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			sb.WriteString(table + ":")
			for _, val := range vals {
				sb.WriteString(" " + string(val) + " " + hex.EncodeToString(val))
			}
			sb.WriteString("\n")
		}
		if err = rows.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return sb.String()
}

package appservice

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	_ "github.com/lib/pq"
	"github.com/rs/zerolog"
	_ "go.mau.fi/util/dbutil/litestream"

	"github.com/custodian-matrix/custodian/appservice/astest"
)

func TestRedactURI(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"postgres://custodian:hunter2@db:5432/custodian?sslmode=disable", "postgres://custodian:xxxxx@db:5432/custodian?sslmode=disable"},
		{"postgres://custodian@db/custodian", "postgres://custodian@db/custodian"},
		{"postgres:///custodian?host=/var/run/postgresql", "postgres:///custodian?host=/var/run/postgresql"},
		{"postgres://u:p%40ss@db/x", "postgres://u:xxxxx@db/x"},
		{"postgres://u:bad pass@db:5432/x", "postgres://u:xxxxx@db:5432/x"},
		{"host=db user=custodian password=hunter2 dbname=custodian", "host=db user=custodian password=xxxxx dbname=custodian"},
		{"host=db password='hunter 2' dbname=custodian", "host=db password=xxxxx dbname=custodian"},
		{"file:custodian.db?_txlock=immediate", "file:custodian.db?_txlock=immediate"},
		{"", ""},
	}
	for _, tt := range tests {
		if got := redactURI(tt.in); got != tt.want {
			t.Errorf("redactURI(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestWithSQLiteParams(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"file:custodian.db", "file:custodian.db?_txlock=immediate&_secure_delete=on"},
		{"file:custodian.db?mode=rwc", "file:custodian.db?mode=rwc&_txlock=immediate&_secure_delete=on"},
		{"file:custodian.db?_txlock=immediate", "file:custodian.db?_txlock=immediate&_secure_delete=on"},
		{"file:custodian.db?_txlock=exclusive", "file:custodian.db?_txlock=exclusive&_secure_delete=on"},
		{"file:custodian.db?_secure_delete=fast", "file:custodian.db?_secure_delete=fast&_txlock=immediate"},
		{"custodian.db", "custodian.db?_txlock=immediate&_secure_delete=on"},
	}
	for _, tt := range tests {
		if got := withSQLiteParams(tt.in); got != tt.want {
			t.Errorf("withSQLiteParams(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestRedactError(t *testing.T) {
	cause := errors.New(`parse "postgres://u:hunter2@db:x/y": invalid port`)
	err := redactError(errors.Join(errors.New("failed"), cause), "postgres://u:hunter2@db:x/y")
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("redactError() = %q, still shows the password", err)
	}
	if plain := errors.New("no password here"); redactError(plain, "postgres://u:hunter2@db/y") != plain {
		t.Error("redactError changed an error without the password")
	}
}

func TestOpenDatabase(t *testing.T) {
	log := zerolog.New(astest.LogWriter(t))
	t.Run("sqlite", func(t *testing.T) {
		cfg := DefaultConfig().Database
		cfg.URI = "file:" + filepath.Join(t.TempDir(), "c.db")
		db, err := openDatabase(&cfg, log)
		if err != nil {
			t.Fatalf("openDatabase() = %v", err)
		}
		defer db.Close()
		ctx := context.Background()
		var journal string
		var foreignKeys int
		if err = db.QueryRow(ctx, "PRAGMA journal_mode").Scan(&journal); err != nil || journal != "wal" {
			t.Errorf("journal_mode = %q, %v; want wal", journal, err)
		}
		if err = db.QueryRow(ctx, "PRAGMA foreign_keys").Scan(&foreignKeys); err != nil || foreignKeys != 1 {
			t.Errorf("foreign_keys = %d, %v; want 1", foreignKeys, err)
		}
		// Every connection of the pool, not just the first: hold several at once.
		conns := make([]*sql.Conn, 0, 3)
		defer func() {
			for _, conn := range conns {
				_ = conn.Close()
			}
		}()
		for i := range cap(conns) {
			conn, err := db.RawDB.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, conn)
			// 1 is on (2 would be "fast", which leaves deleted content in the WAL's pages).
			var secureDelete int
			if err = conn.QueryRowContext(ctx, "PRAGMA secure_delete").Scan(&secureDelete); err != nil || secureDelete != 1 {
				t.Errorf("connection %d: secure_delete = %d, %v; want 1", i, secureDelete, err)
			}
		}
		if got := db.RawDB.Stats().MaxOpenConnections; got != cfg.MaxOpenConns {
			t.Errorf("max open connections = %d, want %d", got, cfg.MaxOpenConns)
		}
	})
	t.Run("postgres error hides password", func(t *testing.T) {
		cfg := DatabaseConfig{Type: DatabasePostgres, URI: "postgres://u:hunter2@127.0.0.1:notaport/x", MaxOpenConns: 1}
		_, err := openDatabase(&cfg, log)
		if err == nil {
			t.Fatal("openDatabase() = nil, want an error")
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("openDatabase() error = %q, shows the password", err)
		}
		t.Logf("error: %v", err)
	})
	t.Run("unknown driver", func(t *testing.T) {
		cfg := DatabaseConfig{Type: "sqlite3-nope", URI: "x", MaxOpenConns: 1}
		_, err := openDatabase(&cfg, log)
		if err == nil || !strings.Contains(err.Error(), "import it in cmd/custodian") {
			t.Fatalf("openDatabase() = %v, want an error naming the missing driver import", err)
		}
	})
}

// TestSQLiteFilesArePrivate checks that the database file and its -wal and -shm files are
// readable by their owner only: created so, and tightened at start when an earlier version left
// them readable by others.
func TestSQLiteFilesArePrivate(t *testing.T) {
	tests := []struct {
		name     string
		existing os.FileMode // 0: no files before the start
		uri      func(path string) string
	}{
		{"new file: URI", 0, func(p string) string { return "file:" + p + "?_txlock=immediate" }},
		{"new plain path", 0, func(p string) string { return p }},
		{"existing 0644 files", 0o644, func(p string) string { return "file:" + p }},
		{"existing 0660 files", 0o660, func(p string) string { return "file:" + p }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// SQLite gives new files the mode the process umask allows; make it permissive, as on
			// a default system, so the test shows what Custodian itself does.
			old := syscall.Umask(0o022)
			defer syscall.Umask(old)
			path := filepath.Join(t.TempDir(), "custodian.db")
			if tt.existing != 0 {
				// A database left by an older version, readable by others.
				cfg := DefaultConfig().Database
				cfg.URI = "file:" + path
				raw, err := sql.Open("sqlite3-fk-wal", cfg.URI)
				if err != nil {
					t.Fatal(err)
				}
				if _, err = raw.Exec("CREATE TABLE t (x TEXT)"); err != nil {
					t.Fatal(err)
				}
				_ = raw.Close()
				for _, suffix := range []string{"", "-wal", "-shm"} {
					if err = os.WriteFile(path+suffix, nil, 0o600); err != nil && suffix != "" {
						t.Fatal(err)
					}
					if err = os.Chmod(path+suffix, tt.existing); err != nil {
						t.Fatal(err)
					}
				}
			}
			cfg := DefaultConfig().Database
			cfg.URI = tt.uri(path)
			db, err := openDatabase(&cfg, zerolog.New(astest.LogWriter(t)))
			if err != nil {
				t.Fatalf("openDatabase() = %v", err)
			}
			defer db.Close()
			ctx := context.Background()
			// A write creates the -wal and -shm files if they are not there yet.
			if _, err = db.Exec(ctx, "CREATE TABLE IF NOT EXISTS w (x TEXT)"); err != nil {
				t.Fatal(err)
			}
			if _, err = db.Exec(ctx, "INSERT INTO w VALUES ('x')"); err != nil {
				t.Fatal(err)
			}
			for _, suffix := range []string{"", "-wal", "-shm"} {
				info, err := os.Stat(path + suffix)
				if err != nil {
					t.Fatalf("stat %s: %v", "custodian.db"+suffix, err)
				}
				if got := info.Mode().Perm(); got != 0o600 {
					t.Errorf("mode of custodian.db%s = %04o, want 0600", suffix, got)
				}
			}
		})
	}
}

func TestSQLitePath(t *testing.T) {
	tests := []struct{ in, want string }{
		{"file:custodian.db?_txlock=immediate", "custodian.db"},
		{"custodian.db", "custodian.db"},
		{"file:/var/lib/custodian/c.db", "/var/lib/custodian/c.db"},
		{"file:///var/lib/c%20d.db?mode=rwc", "/var/lib/c d.db"},
		{"file::memory:?cache=shared", ""},
		{":memory:", ""},
		{"file:x.db?mode=memory", ""},
	}
	for _, tt := range tests {
		if got := sqlitePath(tt.in); got != tt.want {
			t.Errorf("sqlitePath(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

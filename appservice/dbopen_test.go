package appservice

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	_ "github.com/lib/pq"
	"github.com/rs/zerolog"
	_ "go.mau.fi/util/dbutil/litestream"
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
	log := zerolog.New(zerolog.NewTestWriter(t))
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

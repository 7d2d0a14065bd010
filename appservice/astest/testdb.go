package astest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	// Registers the sqlite3-fk-wal drivers.
	_ "go.mau.fi/util/dbutil/litestream"

	"github.com/custodian-matrix/custodian/appservice/database"
)

// Dialect names accepted by [TestDB].
const (
	SQLite   = "sqlite"
	Postgres = "postgres"
)

// Dialects returns the database dialects tests run on: SQLite always, and PostgreSQL when
// POSTGRES_TEST_URI is set. In CI (see [InCI]) PostgreSQL is required, so nothing is silently
// skipped there.
func Dialects(t testing.TB) []string {
	t.Helper()
	if os.Getenv("POSTGRES_TEST_URI") == "" {
		if InCI() {
			t.Fatal("POSTGRES_TEST_URI must be set in CI")
		}
		return []string{SQLite}
	}
	return []string{SQLite, Postgres}
}

// InCI reports whether the tests run in CI: the environment variable CI is set to anything but
// "", "false" or "0". CI systems spell it differently (GitHub Actions and GitLab set "true",
// others "1" or "yes"), and a test that requires PostgreSQL must not be skipped in any of them.
func InCI() bool {
	return isCIValue(os.Getenv("CI"))
}

func isCIValue(v string) bool {
	v = strings.TrimSpace(v)
	return v != "" && v != "0" && !strings.EqualFold(v, "false")
}

// ForEachDialect runs fn once per dialect from [Dialects], as a subtest named after it, with a
// fresh empty database.
func ForEachDialect(t *testing.T, fn func(t *testing.T, db *dbutil.Database)) {
	t.Helper()
	for _, dialect := range Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			fn(t, TestDB(t, dialect))
		})
	}
}

// TestDB returns a fresh, empty database of the given dialect, closed (and for PostgreSQL
// dropped) when the test ends. No migrations have run on it.
func TestDB(t testing.TB, dialect string) *dbutil.Database {
	t.Helper()
	var db *dbutil.Database
	var err error
	switch dialect {
	case SQLite:
		// The parameters the service adds to SQLite URIs (appservice/dbopen.go).
		uri := "file:" + filepath.Join(t.TempDir(), "test.db") + "?_txlock=immediate&_secure_delete=on"
		db, err = dbutil.NewWithDialect(uri, "sqlite3-fk-wal")
	case Postgres:
		db, err = dbutil.NewWithDialect(PostgresURI(t), "postgres")
	default:
		t.Fatalf("unknown dialect %q", dialect)
	}
	if err != nil {
		t.Fatalf("failed to open %s test database: %v", dialect, err)
	}
	db.Owner = "custodian-test"
	db.Log = dbutil.ZeroLogger(zerolog.New(LogWriter(t)).Level(zerolog.WarnLevel))
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// CoreDB returns a fresh database of the given dialect with the core's migrations applied.
func CoreDB(t testing.TB, dialect string) *database.Database {
	t.Helper()
	db := database.New(TestDB(t, dialect))
	if err := db.Upgrade(context.Background()); err != nil {
		t.Fatalf("failed to upgrade %s test database: %v", dialect, err)
	}
	return db
}

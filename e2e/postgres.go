//go:build e2e

package e2e

import (
	"context"
	"database/sql"
	"net/url"
	"os"
	"testing"
	"time"

	_ "github.com/lib/pq" // the "postgres" driver, for creating databases and for Env.DB
)

// createPostgresDatabase creates an empty database on the server POSTGRES_TEST_URI names, drops it
// when t ends, and returns its URI. Without POSTGRES_TEST_URI it fails the test under CI=true and
// skips it otherwise.
func createPostgresDatabase(t testing.TB) string {
	t.Helper()
	base := os.Getenv("POSTGRES_TEST_URI")
	if base == "" {
		if isCI() {
			t.Fatal("POSTGRES_TEST_URI is not set, and CI=true: the PostgreSQL variant must run in CI (make test sets it)")
		}
		t.Skip("POSTGRES_TEST_URI is not set; skipping the PostgreSQL variant (make test starts a throwaway server)")
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		t.Fatalf("POSTGRES_TEST_URI must be a postgres:// URI")
	}
	admin, err := sql.Open("postgres", base)
	if err != nil {
		t.Fatalf("opening POSTGRES_TEST_URI: %v", err)
	}
	name := "custodian_e2e_" + randomHex(t, 8)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := admin.ExecContext(ctx, `CREATE DATABASE "`+name+`"`); err != nil {
		_ = admin.Close()
		t.Fatalf("creating database %s on POSTGRES_TEST_URI (%s): %v", name, u.Redacted(), err)
	}
	t.Cleanup(func() {
		defer admin.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// FORCE ends connections a killed Custodian may have left behind.
		if _, err := admin.ExecContext(ctx, `DROP DATABASE IF EXISTS "`+name+`" WITH (FORCE)`); err != nil {
			t.Errorf("dropping database %s: %v", name, err)
		}
	})
	u.Path = "/" + name
	return u.String()
}

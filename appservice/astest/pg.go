// Package astest holds fakes and helpers for testing the core and bridges: test databases on
// both dialects and a fake homeserver.
package astest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	// Registers the postgres driver.
	_ "github.com/lib/pq"
)

// PostgresURI returns the URI of a fresh, empty PostgreSQL database created on the server named
// by POSTGRES_TEST_URI, and drops it when the test ends. Without POSTGRES_TEST_URI the test
// fails in CI (CI=true) and is skipped elsewhere.
func PostgresURI(t testing.TB) string {
	t.Helper()
	base := os.Getenv("POSTGRES_TEST_URI")
	if base == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("POSTGRES_TEST_URI must be set in CI")
		}
		t.Skip("POSTGRES_TEST_URI not set; skipping PostgreSQL")
	}
	admin, err := sql.Open("postgres", base)
	if err != nil {
		t.Fatalf("failed to open POSTGRES_TEST_URI: %v", err)
	}
	var buf [6]byte
	_, _ = rand.Read(buf[:])
	name := "test_" + hex.EncodeToString(buf[:])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err = admin.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		_ = admin.Close()
		t.Fatalf("failed to create test database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Logf("failed to drop test database %s: %v", name, err)
		}
		_ = admin.Close()
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("POSTGRES_TEST_URI is not a URL: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}

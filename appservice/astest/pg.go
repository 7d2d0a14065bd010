// Package astest holds fakes and helpers for testing the core and bridges. It has test databases
// on both dialects and a fake homeserver.
package astest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	// Registers the "postgres" driver used to create and drop test databases.
	_ "github.com/lib/pq"
)

// pgAdminTimeout bounds CREATE DATABASE and DROP DATABASE.
const pgAdminTimeout = 30 * time.Second

// PostgresURI returns the URI of a fresh, empty PostgreSQL database named test_<random>, created
// on the server that POSTGRES_TEST_URI names, and drops the database when the test ends (ending
// any connections left open). Every call creates a new database, so tests may run in parallel.
//
// POSTGRES_TEST_URI may be a postgres:// URI or a key=value connection string; make test and
// scripts/with-postgres.sh set it to a throwaway cluster. Without it, PostgresURI fails the test
// in CI (see [InCI]; nothing may be skipped there) and skips it otherwise. It must
// be called from the test's goroutine.
func PostgresURI(t testing.TB) string {
	t.Helper()
	base := os.Getenv("POSTGRES_TEST_URI")
	if base == "" {
		if InCI() {
			t.Fatal("POSTGRES_TEST_URI is not set, and CI is: PostgreSQL tests must run in CI (make test sets it)")
		}
		t.Skip("POSTGRES_TEST_URI is not set; skipping PostgreSQL (make test starts a throwaway server)")
	}

	var buf [8]byte
	if _, err := rand.Read(buf[:]); err != nil {
		t.Fatalf("failed to generate a database name: %v", err)
	}
	name := "test_" + hex.EncodeToString(buf[:])
	uri, err := withDatabase(base, name)
	if err != nil {
		t.Fatalf("POSTGRES_TEST_URI: %v", err)
	}

	admin, err := sql.Open("postgres", base)
	if err != nil {
		t.Fatalf("failed to open POSTGRES_TEST_URI: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), pgAdminTimeout)
	defer cancel()
	// The name is generated hex, but quote it anyway: identifiers cannot be bound as parameters.
	if _, err := admin.ExecContext(ctx, `CREATE DATABASE "`+name+`"`); err != nil {
		_ = admin.Close()
		t.Fatalf("failed to create test database %s: %v", name, err)
	}
	t.Cleanup(func() {
		defer admin.Close()
		ctx, cancel := context.WithTimeout(context.Background(), pgAdminTimeout)
		defer cancel()
		// FORCE ends connections the code under test may have left open (PostgreSQL 13+).
		if _, err := admin.ExecContext(ctx, `DROP DATABASE IF EXISTS "`+name+`" WITH (FORCE)`); err != nil {
			t.Logf("failed to drop test database %s: %v", name, err)
		}
	})
	return uri
}

// withDatabase returns the connection string base with its database replaced by name.
func withDatabase(base, name string) (string, error) {
	if !strings.HasPrefix(base, "postgres://") && !strings.HasPrefix(base, "postgresql://") {
		// A key=value connection string: lib/pq lets a later key override an earlier one.
		return base + " dbname=" + name, nil
	}
	u, err := url.Parse(base)
	if err != nil {
		// The error may quote the URI, password included.
		return "", errInvalidURI
	}
	u.Path = "/" + name
	u.RawPath = ""
	return u.String(), nil
}

// errInvalidURI is returned by withDatabase for a URI that does not parse; it deliberately
// carries no part of the URI, which may hold a password.
var errInvalidURI = errors.New("not a valid postgres:// URI")

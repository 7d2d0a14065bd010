//go:build e2e

package e2e_test

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/custodian-matrix/custodian/e2e"
)

// TestNoPlaintextAtRest: after an "!irc login" with a password and a "!webhook out" with a URL
// holding a secret were handled, the bytes Custodian's database keeps on disk hold neither: on
// SQLite the database file and its -wal and -shm files, on PostgreSQL the cluster's whole data
// directory, pg_wal included (the inbox seals event content, so even the WAL, its archives and
// replicas never see it). As a control, alice's user ID, which is stored in clear, is found in
// the same bytes, so the search can fail. The SQLite files must also be mode 0600.
func TestNoPlaintextAtRest(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		ircNet := e2e.StartIRC(t)
		env := e2e.New(t, backend, e2e.WithIRCBridge(ircNet), e2e.WithWebhookBridge(t))
		receiver := e2e.NewReceiver(t)
		alice := env.Register(t, "alice")
		password := "pw-" + e2e.RandomHex(t, 12)
		ircNet.RegisterAccount(t, "aliceacct", password)

		dm := env.MustCreateDMWithBot(t, alice)
		login := env.SendText(t, alice, dm, "!irc login testnet aliceacct "+password)
		mustBotReply(t, env, alice, dm, login, "Logged in")

		roomID := mustCreateGroupRoom(t, env, alice)
		urlSecret := "hooksecret" + e2e.RandomHex(t, 12)
		out := mustAddOutbound(t, env, alice, roomID, "relay", receiver.URL("/at-rest/"+urlSecret))
		waitInboxEmpty(t, env)

		needles := map[string]string{
			"the IRC password":          password,
			"the outgoing webhook URL":  out.URL,
			"the URL's secret path":     urlSecret,
			"the login command's start": "login testnet aliceacct " + password[:6],
		}
		var files []string
		switch backend {
		case e2e.SQLite:
			base := filepath.Join(env.Dir(), "custodian.db")
			for _, suffix := range []string{"", "-wal", "-shm"} {
				info, err := os.Stat(base + suffix)
				if os.IsNotExist(err) && suffix != "" {
					continue
				} else if err != nil {
					t.Fatal(err)
				}
				if mode := info.Mode().Perm(); mode != 0o600 {
					t.Errorf("custodian.db%s has mode %04o, want 0600", suffix, mode)
				}
				files = append(files, base+suffix)
			}
		case e2e.Postgres:
			files = postgresDataFiles(t)
		}
		found := map[string]bool{}
		control := []byte(alice.UserID.String())
		var controlSeen, walSeen bool
		for _, path := range files {
			data, err := os.ReadFile(path)
			if err != nil {
				if os.IsNotExist(err) {
					continue // PostgreSQL removed a temporary file meanwhile
				}
				t.Fatal(err)
			}
			if bytes.Contains(data, control) {
				controlSeen = true
			}
			if strings.Contains(filepath.ToSlash(path), "/pg_wal/") || strings.HasSuffix(path, "-wal") {
				walSeen = true
			}
			for what, needle := range needles {
				if bytes.Contains(data, []byte(needle)) {
					found[what] = true
					t.Errorf("%s is on disk in plaintext, in %s", what, path)
				}
			}
		}
		if !controlSeen {
			t.Fatalf("alice's user ID, stored in clear, is in none of the %d files read: the search cannot fail, so it proves nothing", len(files))
		}
		if backend == e2e.Postgres && !walSeen {
			t.Errorf("no pg_wal file among the %d files read", len(files))
		}
		t.Logf("searched %d files for %d secrets; found %d", len(files), len(needles), len(found))
	})
}

// postgresDataFiles returns every regular file under the PostgreSQL cluster's data directory,
// POSTGRES_TEST_DATADIR (exported by scripts/with-postgres.sh). Without it the test is skipped,
// except under CI=true, where it fails.
func postgresDataFiles(t *testing.T) []string {
	t.Helper()
	dir := os.Getenv("POSTGRES_TEST_DATADIR")
	if dir == "" {
		if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
			t.Fatal("POSTGRES_TEST_DATADIR is not set: run the e2e tests through scripts/with-postgres.sh, which exports the cluster's data directory")
		}
		t.Skip("POSTGRES_TEST_DATADIR is not set (scripts/with-postgres.sh exports it); skipping the PostgreSQL data directory search")
	}
	var files []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if d.Type().IsRegular() {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("reading the PostgreSQL data directory %s: %v", dir, err)
	}
	return files
}

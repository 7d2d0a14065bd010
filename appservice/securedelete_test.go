package appservice

import (
	"bytes"
	"os"
	"testing"

	"github.com/custodian-matrix/custodian/appservice/astest"
)

// TestErasureLeavesNoTraceInSQLiteFiles reads the SQLite database file and its WAL byte by byte
// after an erasure: with secure_delete on and the WAL checkpointed and truncated, the erased
// user's ID is in neither, not even in free pages or old WAL frames, while another user's is.
func TestErasureLeavesNoTraceInSQLiteFiles(t *testing.T) {
	env := newPrivacyEnv(t, astest.SQLite, nil).start()
	env.seedUser(pvAlice, pvDM)
	env.seedUser(pvBob, "!dm-bob:example.org")
	var seq int
	var name, path string
	if err := env.svc.rawDB.QueryRow(env.ctx, "PRAGMA database_list").Scan(&seq, &name, &path); err != nil {
		t.Fatal(err)
	}
	files := func() []byte {
		t.Helper()
		var all []byte
		for _, p := range []string{path, path + "-wal"} {
			data, err := os.ReadFile(p)
			if err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
			all = append(all, data...)
		}
		return all
	}
	if !bytes.Contains(files(), []byte(pvAlice)) {
		t.Fatal("the seeded user is not in the database files; the test would prove nothing")
	}
	if _, err := env.svc.Erase(env.ctx, pvAlice, EraseRequest{Trigger: TriggerAdmin}); err != nil {
		t.Fatalf("Erase = %v", err)
	}
	data := files()
	if i := bytes.Index(data, []byte(pvAlice)); i >= 0 {
		t.Errorf("the database files still hold %s after erasure (at byte %d of %s and its WAL)", pvAlice, i, path)
	}
	if !bytes.Contains(data, []byte(pvBob)) {
		t.Errorf("the database files no longer hold %s, who was not erased", pvBob)
	}
}

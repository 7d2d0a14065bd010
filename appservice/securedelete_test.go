package appservice

import (
	"bytes"
	"os"
	"testing"
	"time"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/privacy"
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
	if _, err := env.svc.engine.Erase(env.ctx, pvAlice, EraseRequest{Trigger: TriggerAdmin}); err != nil {
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

// TestErasureWaitsForTheWALCheckpoint: while another connection reads, SQLite cannot truncate
// its WAL, which then keeps old frames with the erased user's rows and data key. The erasure
// stays in cleanup and the runner retries on the service's clock; once the reader is gone the
// checkpoint succeeds, the job is done, and neither file holds the user's ID.
func TestErasureWaitsForTheWALCheckpoint(t *testing.T) {
	env := newPrivacyEnv(t, astest.SQLite, nil).start()
	env.seedUser(pvAlice, pvDM)
	env.seedUser(pvBob, "!dm-bob:example.org")
	var seq int
	var name, path string
	if err := env.svc.rawDB.QueryRow(env.ctx, "PRAGMA database_list").Scan(&seq, &name, &path); err != nil {
		t.Fatal(err)
	}
	read := func(p string) []byte {
		t.Helper()
		data, err := os.ReadFile(p)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		return data
	}

	reader, err := env.svc.rawDB.RawDB.Conn(env.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	if _, err = reader.ExecContext(env.ctx, "BEGIN DEFERRED"); err != nil {
		t.Fatal(err)
	}
	var users int
	if err = reader.QueryRowContext(env.ctx, "SELECT COUNT(*) FROM users").Scan(&users); err != nil || users != 2 {
		t.Fatalf("reader sees %d users, %v; want 2", users, err)
	}

	receipt, err := env.svc.engine.Erase(env.ctx, pvAlice, EraseRequest{Trigger: TriggerAdmin})
	if err != nil {
		t.Fatalf("Erase = %v", err)
	}
	if receipt.State != string(privacy.ErasureCleanup) {
		t.Errorf("receipt state with a reader holding the WAL = %q, want %q", receipt.State, privacy.ErasureCleanup)
	}
	if n := env.count(`SELECT COUNT(*) FROM as_erasure WHERE job_id=$1 AND state='cleanup'`, receipt.JobID); n != 1 {
		t.Errorf("job %s not in cleanup while the WAL cannot be truncated", receipt.JobID)
	}
	if wal := read(path + "-wal"); !bytes.Contains(wal, []byte(pvAlice)) {
		t.Fatalf("the WAL (%d bytes) does not hold the erased user while the reader is open; the test would prove nothing", len(wal))
	}

	if _, err = reader.ExecContext(env.ctx, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	_ = reader.Close()
	if env.clock.BlockUntilInterval(astest.Within(t, 10*time.Second), privacy.ErasureRetryMin) != nil {
		t.Fatal("the erasure runner is not waiting to retry")
	}
	env.clock.Advance(privacy.ErasureRetryMin)
	for i := 0; ; i++ {
		if env.count(`SELECT COUNT(*) FROM as_erasure WHERE job_id=$1 AND state='done'`, receipt.JobID) == 1 {
			break
		}
		if i == 20 {
			t.Fatal("the erasure job is not done after 20 runs of the erasure runner")
		}
		select {
		case <-env.erasureRan:
		case <-time.After(30 * time.Second):
			t.Fatal("the erasure job is not done 30 s after the reader ended")
		}
	}
	for _, p := range []string{path, path + "-wal"} {
		data := read(p)
		if i := bytes.Index(data, []byte(pvAlice)); i >= 0 {
			t.Errorf("%s holds %s at byte %d after the erasure finished", p, pvAlice, i)
		}
	}
	if !bytes.Contains(append(read(path), read(path+"-wal")...), []byte(pvBob)) {
		t.Errorf("the database files no longer hold %s, who was not erased", pvBob)
	}
}

package database_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/database"
)

// TestMarkDoneRunsItsHookInItsTransaction checks, on both dialects, that the hook set with
// SetBeforeDone writes in MarkDone's transaction (its row and the done marks commit together,
// or neither does), and that committed runs after the commit only, and not when MarkDone runs
// in a transaction of the caller's.
func TestMarkDoneRunsItsHookInItsTransaction(t *testing.T) {
	errHook := errors.New("hook failed")
	tests := []struct {
		name          string
		hookErr       error
		callerTxn     bool
		wantDone      bool
		wantCommitted bool
	}{
		{name: "commit", wantDone: true, wantCommitted: true},
		{name: "hook-error", hookErr: errHook},
		{name: "caller-transaction", callerTxn: true, wantDone: true},
	}
	for _, dialect := range astest.Dialects(t) {
		for _, tt := range tests {
			t.Run(dialect+"/"+tt.name, func(t *testing.T) {
				ctx := astest.Within(t, time.Minute)
				db := astest.CoreDB(t, dialect)
				if _, err := db.Exec(ctx, `CREATE TABLE hook_rows (n INTEGER)`); err != nil {
					t.Fatal(err)
				}
				now := time.Unix(1_700_000_000, 0)
				if _, _, err := db.Inbox.Accept(ctx, "1", inboxEvents("1", "$a"), now); err != nil {
					t.Fatal(err)
				}
				committed := 0
				var rowsAtCommit int
				db.Inbox.SetBeforeDone(func(ctx context.Context) (func(), error) {
					if _, err := db.Exec(ctx, `INSERT INTO hook_rows (n) VALUES (1)`); err != nil {
						return nil, err
					}
					return func() {
						committed++
						// Read outside any transaction: the hook's row is committed by now.
						if err := db.QueryRow(context.Background(), `SELECT COUNT(*) FROM hook_rows`).Scan(&rowsAtCommit); err != nil {
							t.Error(err)
						}
					}, tt.hookErr
				})
				markDone := func(ctx context.Context) error {
					return db.Inbox.MarkDone(ctx, []database.Done{{TxnID: "1", Index: 0, EventID: "$a"}}, now)
				}
				var err error
				if tt.callerTxn {
					err = db.DoTxn(ctx, nil, markDone)
				} else {
					err = markDone(ctx)
				}
				if (err == nil) != (tt.hookErr == nil) || (err != nil && !errors.Is(err, tt.hookErr)) {
					t.Fatalf("MarkDone() = %v, want %v", err, tt.hookErr)
				}
				pending, err := db.Inbox.CountPending(ctx)
				if err != nil {
					t.Fatal(err)
				}
				var rows int
				if err = db.QueryRow(ctx, `SELECT COUNT(*) FROM hook_rows`).Scan(&rows); err != nil {
					t.Fatal(err)
				}
				if done := pending == 0; done != tt.wantDone || (rows == 1) != tt.wantDone {
					t.Errorf("after MarkDone: %d events pending and %d hook rows; want done %v with its hook's row, or neither", pending, rows, tt.wantDone)
				}
				if wantN := map[bool]int{true: 1, false: 0}[tt.wantCommitted]; committed != wantN {
					t.Errorf("committed ran %d times, want %d", committed, wantN)
				}
				if tt.wantCommitted && rowsAtCommit != 1 {
					t.Errorf("hook rows seen by committed = %d, want 1 (it must run after the commit)", rowsAtCommit)
				}
			})
		}
	}
}

package database_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"go.mau.fi/util/dbutil"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/database"
)

func TestQueryList(t *testing.T) {
	astest.ForEachDialect(t, func(t *testing.T, db *dbutil.Database) {
		ctx := context.Background()
		if _, err := db.Exec(ctx, `CREATE TABLE qlist (n INTEGER NOT NULL)`); err != nil {
			t.Fatal(err)
		}
		scan := func(row dbutil.Scannable) (int, error) {
			var n int
			return n, row.Scan(&n)
		}
		const query = `SELECT n FROM qlist WHERE n > $1 ORDER BY n`
		empty, err := database.QueryList(ctx, db, scan, query, 0)
		if err != nil {
			t.Fatal(err)
		}
		if empty == nil || len(empty) != 0 {
			t.Errorf("QueryList of no rows = %#v, want an empty, non-nil slice", empty)
		}
		for _, n := range []int{3, 1, 2} {
			if _, err = db.Exec(ctx, `INSERT INTO qlist (n) VALUES ($1)`, n); err != nil {
				t.Fatal(err)
			}
		}
		got, err := database.QueryList(ctx, db, scan, query, 1)
		if err != nil {
			t.Fatal(err)
		}
		if want := []int{2, 3}; !slices.Equal(got, want) {
			t.Errorf("QueryList = %v, want %v", got, want)
		}
		errScan := errors.New("scan failed")
		if _, err = database.QueryList(ctx, db, func(dbutil.Scannable) (int, error) { return 0, errScan }, query, 0); !errors.Is(err, errScan) {
			t.Errorf("QueryList with a failing scan: error %v, want %v", err, errScan)
		}
		if _, err = database.QueryList(ctx, db, scan, `SELECT n FROM no_such_table`); err == nil {
			t.Error("QueryList of a bad query: no error")
		}
	})
}

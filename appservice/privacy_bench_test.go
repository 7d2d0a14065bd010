package appservice

import (
	"context"
	"fmt"
	"testing"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
)

// benchBridge has one large per-user table, indexed on its user column, that cascades from
// users: the shape of a bridge's message or delivery log.
type benchBridge struct{}

func (benchBridge) ID() string             { return "bench" }
func (benchBridge) Namespaces() Namespaces { return Namespaces{UserPrefix: "bench_"} }
func (benchBridge) Config() (string, any)  { return "", nil }
func (benchBridge) Migrations() dbutil.UpgradeTable {
	return dbutil.BuildUpgradeTable().WithRaw(0, 1, 0, "Bench table", dbutil.TxnModeOn, func(ctx context.Context, db *dbutil.Database) error {
		id := "id INTEGER PRIMARY KEY"
		if db.Dialect == dbutil.Postgres {
			id = "id BIGSERIAL PRIMARY KEY"
		}
		_, err := db.Exec(ctx, `CREATE TABLE bench_item (
			`+id+`,
			user_mxid  TEXT   NOT NULL REFERENCES users (mxid) ON DELETE CASCADE ON UPDATE CASCADE,
			payload    TEXT   NOT NULL,
			created_at BIGINT NOT NULL
		)`)
		if err == nil {
			_, err = db.Exec(ctx, `CREATE INDEX bench_item_user_idx ON bench_item (user_mxid)`)
		}
		return err
	}).Finish()
}
func (benchBridge) PersonalData() []UserTable {
	return []UserTable{{
		Table: "bench_item", UserColumn: "user_mxid", Export: []string{"payload", "created_at"},
		TimeColumn: "created_at", Description: "benchmark rows",
	}}
}
func (benchBridge) Init(Host) error                                        { return nil }
func (benchBridge) Start(context.Context) error                            { return nil }
func (benchBridge) Stop(context.Context) error                             { return nil }
func (benchBridge) HandleEvent(context.Context, *event.Event, Route) error { return nil }

// benchService returns a migrated service whose bench_item table holds tableRows rows, perUser
// for each of tableRows/perUser users.
func benchService(b *testing.B, dialect string, tableRows, perUser int) *Service {
	b.Helper()
	svc, err := newService(testConfig("http://127.0.0.1:1"), testRegistration(), []Bridge{benchBridge{}}, testLogger(b), astest.TestDB(b, dialect))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if err = svc.upgradeDatabases(ctx); err != nil {
		b.Fatal(err)
	}
	users := tableRows / perUser
	var seedUsers, seedRows string
	if dialect == astest.Postgres {
		seedUsers = `INSERT INTO users (mxid, created_at) SELECT '@u' || i || ':bench.example', 0 FROM generate_series(0, $1 - 1) AS i`
		seedRows = `INSERT INTO bench_item (user_mxid, payload, created_at)
			SELECT '@u' || (i / $2) || ':bench.example', 'a row of a typical size, say a message ID map', i FROM generate_series(0, $1 - 1) AS i`
	} else {
		seedUsers = `WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < $1)
			INSERT INTO users (mxid, created_at) SELECT '@u' || i || ':bench.example', 0 FROM s`
		seedRows = `WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < $1)
			INSERT INTO bench_item (user_mxid, payload, created_at)
			SELECT '@u' || (i / $2) || ':bench.example', 'a row of a typical size, say a message ID map', i FROM s`
	}
	if _, err = svc.rawDB.Exec(ctx, seedUsers, users); err != nil {
		b.Fatal(err)
	}
	if _, err = svc.rawDB.Exec(ctx, seedRows, tableRows, perUser); err != nil {
		b.Fatal(err)
	}
	// Let the database settle after the bulk insert (statistics; on PostgreSQL, the visibility
	// map and a checkpoint), so that the measurement is not of autovacuum catching up.
	settle := []string{`ANALYZE`}
	if dialect == astest.Postgres {
		settle = []string{`VACUUM ANALYZE`, `CHECKPOINT`}
	}
	for _, stmt := range settle {
		if _, err = svc.rawDB.Exec(ctx, stmt); err != nil {
			b.Fatal(err)
		}
	}
	if err != nil {
		b.Fatal(err)
	}
	return svc
}

// addBenchUser gives a new user n rows in bench_item.
func addBenchUser(b *testing.B, svc *Service, user id.UserID, n int) {
	b.Helper()
	ctx := context.Background()
	if err := svc.db.User.Ensure(ctx, user); err != nil {
		b.Fatal(err)
	}
	query := `WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < $2)
		INSERT INTO bench_item (user_mxid, payload, created_at) SELECT $1, 'a row of a typical size, say a message ID map', i FROM s`
	if svc.rawDB.Dialect == dbutil.Postgres {
		query = `INSERT INTO bench_item (user_mxid, payload, created_at)
			SELECT $1, 'a row of a typical size, say a message ID map', i FROM generate_series(0, $2 - 1) AS i`
	}
	if _, err := svc.rawDB.Exec(ctx, query, user, n); err != nil {
		b.Fatal(err)
	}
}

var benchSizes = []struct{ tableRows, perUser int }{
	{100_000, 1_000},
	{1_000_000, 1_000},
	{1_000_000, 100},
	{1_000_000, 10_000},
}

// BenchmarkErase measures the engine's Erase (job, counts over every declared table, the cascade,
// the tombstone) of one user with perUser rows in a bridge table of tableRows rows.
func BenchmarkErase(b *testing.B) {
	for _, dialect := range astest.Dialects(b) {
		for _, size := range benchSizes {
			b.Run(fmt.Sprintf("%s/table=%d/user=%d", dialect, size.tableRows, size.perUser), func(b *testing.B) {
				svc := benchService(b, dialect, size.tableRows, size.perUser)
				ctx := context.Background()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					user := id.UserID(fmt.Sprintf("@victim%d:bench.example", i))
					addBenchUser(b, svc, user, size.perUser)
					b.StartTimer()
					receipt, err := svc.engine.Erase(ctx, user, EraseRequest{Trigger: TriggerAdmin})
					if err != nil {
						b.Fatal(err)
					}
					if got := receipt.Erased["bench"]["bench_item"]; got != int64(size.perUser) {
						b.Fatalf("erased %d bench rows, want %d", got, size.perUser)
					}
				}
			})
		}
	}
}

// BenchmarkExport measures the engine's Export of one user with perUser rows in a bridge table of
// tableRows rows.
func BenchmarkExport(b *testing.B) {
	for _, dialect := range astest.Dialects(b) {
		for _, size := range benchSizes[:2] {
			b.Run(fmt.Sprintf("%s/table=%d/user=%d", dialect, size.tableRows, size.perUser), func(b *testing.B) {
				svc := benchService(b, dialect, size.tableRows, size.perUser)
				ctx := context.Background()
				const user = id.UserID("@u7:bench.example")
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					export, err := svc.engine.Export(ctx, user)
					if err != nil {
						b.Fatal(err)
					}
					if got := export.Modules["bench"]["bench_item"].RowCount; got != size.perUser {
						b.Fatalf("exported %d rows, want %d", got, size.perUser)
					}
				}
			})
		}
	}
}

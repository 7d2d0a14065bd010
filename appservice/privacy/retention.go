package privacy

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
)

// finishedErasureTTL is how long a finished erasure job stays visible in the admin API. The job
// no longer names the user; its tombstone stays for good.
const finishedErasureTTL = 90 * 24 * time.Hour

// CheckRetention reports declarations the retention sweeper cannot enforce: a retention without
// a time column, or an unknown retention class. start refuses to run with them.
func CheckRetention(inventory map[string][]UserTable) error {
	var errs []error
	for _, module := range sortedKeys(inventory) {
		for _, ut := range inventory[module] {
			switch ut.RetentionClass {
			case "", RetentionActivity, RetentionNetwork, RetentionSessions:
			default:
				errs = append(errs, fmt.Errorf("%s: table %s: unknown retention class %q", module, ut.Table, ut.RetentionClass))
			}
			if (ut.RetentionClass != "" || ut.Retention > 0) && ut.TimeColumn == "" {
				errs = append(errs, fmt.Errorf("%s: table %s: a retention needs a TimeColumn", module, ut.Table))
			}
			if ut.TimeKind != TimeUnixMillis && ut.TimeKind != TimeSQLTimestamp {
				errs = append(errs, fmt.Errorf("%s: table %s: unknown time kind %d", module, ut.Table, ut.TimeKind))
			}
			if ut.Retention < 0 {
				errs = append(errs, fmt.Errorf("%s: table %s: negative retention", module, ut.Table))
			}
		}
	}
	return errors.Join(errs...)
}

// RetentionCommitter is an optional interface that a [Host] can implement to drop copies of
// expired rows it keeps in memory (the crypto store's decryption cache) after a retention sweep.
type RetentionCommitter interface {
	Host
	// RetentionCommitted runs after a retention sweep deleted rows, with the modules whose
	// tables it deleted rows of (also when some tables failed). It must not block for long.
	RetentionCommitted(ctx context.Context, modules []string)
}

// retentionLoop runs the retention sweeper every interval until ctx ends.
func (e *Engine) retentionLoop(ctx context.Context, interval time.Duration) {
	ticker := e.clk.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C():
		}
		deleted, err := e.SweepRetention(ctx)
		if err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("Retention sweep failed; will try again at the next interval")
		}
		// Every pass, also an empty one: a debug log shows the loop is alive.
		zerolog.Ctx(ctx).Debug().Int64("rows", deleted).Bool("failed", err != nil).Msg("Retention sweep pass finished")
	}
}

// SweepRetention deletes, in every module's declared tables with a retention (their own, or
// their retention class's from the configuration), the rows whose TimeColumn is older than the
// retention; then, in every module, the rows its tables declare orphaned ([UserTable.Orphaned]);
// and finished erasure jobs older than 90 days. It returns how many rows it deleted. A host that
// implements [RetentionCommitter] is told which modules lost rows.
// On PostgreSQL only one instance sweeps at a time (an advisory lock); the others skip the
// sweep. A table that fails does not stop the others; the failures are returned together.
func (e *Engine) SweepRetention(ctx context.Context) (int64, error) {
	var total int64
	// swept are the modules the sweep deleted rows of, for the host's RetentionCommitted.
	var swept []string
	start := time.Now()
	ran, err := WithSweepLock(ctx, e.db.Database, "retention", func(ctx context.Context) error {
		now := e.now()
		inv := e.host.Inventory()
		var errs []error
		deleted := func(module, table string, res sql.Result) {
			if n, _ := res.RowsAffected(); n > 0 {
				total += n
				if !slices.Contains(swept, module) {
					swept = append(swept, module)
				}
				zerolog.Ctx(ctx).Debug().Str("module", module).Str("table", table).Int64("rows", n).
					Msg("Deleted expired rows")
			}
		}
		for _, module := range sortedKeys(inv) {
			for _, ut := range inv[module] {
				retention := e.EffectiveRetention(ut)
				if retention <= 0 || ut.TimeColumn == "" {
					continue
				}
				cond, cutoff := OlderThan(e.db.Dialect, ut.TimeColumn, ut.TimeKind, now.Add(-retention))
				res, err := e.db.Exec(ctx, fmt.Sprintf(`DELETE FROM %s WHERE %s`, quoteIdent(ut.Table), cond), cutoff)
				if err != nil {
					errs = append(errs, fmt.Errorf("failed to delete expired rows of %s: %w", ut.Table, err))
					continue
				}
				deleted(module, ut.Table, res)
			}
		}
		// After the expired rows, which orphan theirs.
		for _, module := range sortedKeys(inv) {
			for _, ut := range inv[module] {
				if ut.Orphaned == "" {
					continue
				}
				res, err := e.db.Exec(ctx, fmt.Sprintf(`DELETE FROM %s WHERE %s`, quoteIdent(ut.Table), ut.Orphaned))
				if err != nil {
					errs = append(errs, fmt.Errorf("failed to delete orphaned rows of %s: %w", ut.Table, err))
					continue
				}
				deleted(module, ut.Table, res)
			}
		}
		n, err := e.queries().DeleteFinishedErasures(ctx, now.Add(-finishedErasureTTL))
		if err != nil {
			errs = append(errs, err)
		}
		total += n
		return errors.Join(errs...)
	})
	if !ran {
		zerolog.Ctx(ctx).Debug().Msg("Another instance is running the retention sweep")
		return 0, err
	}
	if rc, ok := e.host.(RetentionCommitter); ok && len(swept) > 0 {
		rc.RetentionCommitted(ctx, swept)
	}
	if total > 0 {
		zerolog.Ctx(ctx).Info().Int64("rows", total).Dur("duration", time.Since(start)).Msg("Retention sweep deleted expired rows")
	}
	return total, err
}

// sqliteTimeFormat writes a UTC time the way SQLite's date functions read it.
const sqliteTimeFormat = "2006-01-02 15:04:05.000Z"

// pgTimeFormat writes a UTC wall clock for a PostgreSQL timestamp (without time zone) column.
const pgTimeFormat = "2006-01-02 15:04:05.999999"

// OlderThan returns the SQL condition that selects rows whose column col, stored as kind, is
// before cutoff, and the value to pass as its $1. Millisecond columns compare as integers. SQL
// timestamps compare as times: on SQLite through julianday, since the text go-sqlite3 writes
// carries the writer's zone offset and so does not sort as time; on PostgreSQL against the UTC
// wall clock, which is what a timestamp column without time zone holds for the UTC times
// mautrix writes. Rows whose time is NULL are never selected.
func OlderThan(dialect dbutil.Dialect, col string, kind TimeKind, cutoff time.Time) (cond string, arg any) {
	switch {
	case kind != TimeSQLTimestamp:
		return quoteIdent(col) + " < $1", cutoff.UnixMilli()
	case dialect == dbutil.SQLite:
		return "julianday(" + quoteIdent(col) + ") < julianday($1)", cutoff.UTC().Format(sqliteTimeFormat)
	default:
		return quoteIdent(col) + " < CAST($1 AS timestamp)", cutoff.UTC().Format(pgTimeFormat)
	}
}

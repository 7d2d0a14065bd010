package privacy

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"
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
			case "", RetentionActivity, RetentionNetwork:
			default:
				errs = append(errs, fmt.Errorf("%s: table %s: unknown retention class %q", module, ut.Table, ut.RetentionClass))
			}
			if (ut.RetentionClass != "" || ut.Retention > 0) && ut.TimeColumn == "" {
				errs = append(errs, fmt.Errorf("%s: table %s: a retention needs a TimeColumn", module, ut.Table))
			}
			if ut.Retention < 0 {
				errs = append(errs, fmt.Errorf("%s: table %s: negative retention", module, ut.Table))
			}
		}
	}
	return errors.Join(errs...)
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
// retention, and finished erasure jobs older than 90 days. It returns how many rows it deleted.
// On PostgreSQL only one instance sweeps at a time (an advisory lock); the others skip the
// sweep. A table that fails does not stop the others; the failures are returned together.
func (e *Engine) SweepRetention(ctx context.Context) (int64, error) {
	var total int64
	start := time.Now()
	ran, err := WithSweepLock(ctx, e.db.Database, "retention", func(ctx context.Context) error {
		now := e.now()
		inv := e.host.Inventory()
		var errs []error
		for _, module := range sortedKeys(inv) {
			for _, ut := range inv[module] {
				retention := e.EffectiveRetention(ut)
				if retention <= 0 || ut.TimeColumn == "" {
					continue
				}
				res, err := e.db.Exec(ctx, fmt.Sprintf(`DELETE FROM %s WHERE %s < $1`, quoteIdent(ut.Table), quoteIdent(ut.TimeColumn)),
					now.Add(-retention).UnixMilli())
				if err != nil {
					errs = append(errs, fmt.Errorf("failed to delete expired rows of %s: %w", ut.Table, err))
					continue
				}
				if n, _ := res.RowsAffected(); n > 0 {
					total += n
					zerolog.Ctx(ctx).Debug().Str("module", module).Str("table", ut.Table).Int64("rows", n).
						Msg("Deleted expired rows")
				}
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
	if total > 0 {
		zerolog.Ctx(ctx).Info().Int64("rows", total).Dur("duration", time.Since(start)).Msg("Retention sweep deleted expired rows")
	}
	return total, err
}

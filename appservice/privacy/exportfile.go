package privacy

import (
	"context"
	"errors"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/id"
)

// ExportExpiryInterval is how often the expiry loop looks for export files past their TTL
// (privacy.export_ttl).
const ExportExpiryInterval = time.Minute

// exportExpiryBatch is how many expired export files one pass of the expiry loop withdraws at
// most; the rest wait for the next pass.
const exportExpiryBatch = 100

// withdrawExportsOf withdraws every export file sent to user ([Host.WithdrawExport]). Every
// erasure calls it, a one-module one too (the files hold that module's data as well), before
// the transaction that, for a full erasure, unlinks the tracking rows from the user (SET NULL).
// It is best effort: a failure is logged, with counts only, the
// erasure goes on, and the file's expiry is moved to now, so the expiry loop retries it from its
// row, which by then names nobody.
func (e *Engine) withdrawExportsOf(ctx context.Context, user id.UserID) {
	log := zerolog.Ctx(ctx)
	files, err := e.db.Export().OfUser(ctx, user)
	if err != nil {
		log.Warn().Err(err).Msg("Failed to list the user's export files; they are not withdrawn")
		return
	}
	failed := 0
	for _, ef := range files {
		if err = e.host.WithdrawExport(ctx, ef); err != nil {
			failed++
			log.Warn().Err(err).Msg("Failed to withdraw an export file before erasure; the expiry loop retries it")
			if err = e.db.Export().ExpireNow(ctx, ef.MXC, e.now()); err != nil {
				log.Warn().Err(err).Msg("Failed to mark an export file for withdrawal")
			}
			continue
		}
		if err = e.db.Export().Delete(ctx, ef.MXC); err != nil {
			log.Warn().Err(err).Msg("Failed to forget a withdrawn export file")
		}
	}
	if len(files) > 0 {
		log.Info().Int("export_files", len(files)).Int("failed", failed).Msg("Withdrew export files before erasure")
	}
}

// ExpireExports withdraws the export files whose TTL has passed, at most exportExpiryBatch of
// them, and forgets those it withdrew. It returns how many it withdrew; a file whose withdrawal
// failed stays for the next pass, and the first such failure is returned.
func (e *Engine) ExpireExports(ctx context.Context) (int, error) {
	files, err := e.db.Export().Expired(ctx, e.now(), exportExpiryBatch)
	if err != nil {
		return 0, err
	}
	var errs []error
	done := 0
	for _, ef := range files {
		if err = e.host.WithdrawExport(ctx, ef); err != nil {
			errs = append(errs, err)
			continue
		}
		if err = e.db.Export().Delete(ctx, ef.MXC); err != nil {
			errs = append(errs, err)
			continue
		}
		done++
	}
	if done > 0 {
		zerolog.Ctx(ctx).Info().Int("export_files", done).Msg("Withdrew expired export files")
	}
	return done, errors.Join(errs...)
}

// exportExpiryLoop withdraws expired export files: once at once (files that expired while
// Custodian was down), then every ExportExpiryInterval on the engine's clock, until ctx ends. It
// logs each pass at debug level.
func (e *Engine) exportExpiryLoop(ctx context.Context) {
	ticker := e.clk.NewTicker(ExportExpiryInterval)
	defer ticker.Stop()
	for {
		n, err := e.ExpireExports(ctx)
		if err != nil && ctx.Err() == nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to withdraw expired export files; will try again")
		}
		// Every pass, also an empty one: a debug log shows the loop is alive.
		zerolog.Ctx(ctx).Debug().Int("export_files", n).Bool("failed", err != nil).Msg("Export expiry pass finished")
		select {
		case <-ctx.Done():
			return
		case <-ticker.C():
		}
	}
}

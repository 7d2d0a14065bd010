package appservice

import (
	"context"
	"time"

	"github.com/custodian-matrix/custodian/appservice/clock"
)

// clock returns the service's clock: the one tests set in Service.clk (a [clock.Fake]), or the
// real one. Every time-driven behaviour of the core (retention, sweeps, confirmation expiry,
// pruning of processed IDs, debounces and retries, the homeserver connection's backoff) runs on
// it, so tests drive it without sleeping.
func (svc *Service) clock() clock.Clock {
	if svc.clk != nil {
		return svc.clk
	}
	return clock.Real()
}

// now returns the service's current time.
func (svc *Service) now() time.Time {
	return svc.clock().Now()
}

// sleep waits d on the service's clock. It reports false if ctx ended first.
func (svc *Service) sleep(ctx context.Context, d time.Duration) bool {
	return clock.Sleep(ctx, svc.clock(), d) == nil
}

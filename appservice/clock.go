package appservice

import (
	"context"
	"time"
)

// Clock tells the time and makes tickers. The service uses the real clock; tests hand in a fake
// one (astest.FakeClock) so that time-driven behaviour (retention, sweeps, confirmation expiry,
// pruning of processed IDs, the homeserver connection's backoff) is tested without sleeping.
// Implementations are safe for concurrent use.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// NewTicker returns a channel that receives the time every d (dropping ticks a slow reader
	// misses, like [time.Ticker]) and a function that stops it. d must be positive.
	NewTicker(d time.Duration) (<-chan time.Time, func())
}

// RealClock is the [Clock] of the wall clock and the time package's tickers.
type RealClock struct{}

var _ Clock = RealClock{}

// Now returns time.Now().
func (RealClock) Now() time.Time { return time.Now() }

// NewTicker returns a [time.Ticker]'s channel and Stop function.
func (RealClock) NewTicker(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTicker(d)
	return t.C, t.Stop
}

// clock returns the service's clock: the one tests set in Service.clk, or the real one.
func (svc *Service) clock() Clock {
	if svc.clk != nil {
		return svc.clk
	}
	return RealClock{}
}

// now returns the service's current time.
func (svc *Service) now() time.Time {
	return svc.clock().Now()
}

// sleep waits d on the service's clock. It reports false if ctx ended first.
func (svc *Service) sleep(ctx context.Context, d time.Duration) bool {
	// A ticker's first tick is a timer; the Clock interface has tickers only.
	tick, stop := svc.clock().NewTicker(d)
	defer stop()
	select {
	case <-tick:
		return true
	case <-ctx.Done():
		return false
	}
}

package appservice

import "time"

// Clock tells the time and makes tickers. The service uses the real clock; tests hand in a fake
// one (astest.FakeClock) so that time-driven behaviour (retention, sweeps, confirmation expiry)
// is tested without sleeping. Implementations are safe for concurrent use.
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

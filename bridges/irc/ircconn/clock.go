package ircconn

import "time"

// Clock tells the time and makes tickers: the method set of appservice.Clock and
// backoff.Clock, so appservice.RealClock, astest.FakeClock and [RealClock] all satisfy it.
// Implementations must be safe for concurrent use.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// NewTicker returns a channel that receives the time every d (dropping ticks a slow
	// reader misses) and a function that stops it. d is always positive.
	NewTicker(d time.Duration) (<-chan time.Time, func())
}

// RealClock is the [Clock] of the wall clock and the time package's tickers; it is what a
// nil [Config.Clock] means.
type RealClock struct{}

var _ Clock = RealClock{}

// Now returns time.Now().
func (RealClock) Now() time.Time { return time.Now() }

// NewTicker returns a [time.Ticker]'s channel and Stop function.
func (RealClock) NewTicker(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTicker(d)
	return t.C, t.Stop
}

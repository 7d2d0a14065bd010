package ircconn

import (
	"time"

	"github.com/custodian-matrix/custodian/bridges/irc/backoff"
)

// Clock tells the time and makes tickers. It is [backoff.Clock], whose method set
// appservice.Clock shares, so appservice.RealClock, astest.FakeClock and [RealClock] all
// satisfy it. Implementations must be safe for concurrent use.
type Clock = backoff.Clock

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

// Package clock is the one source of time for Custodian: the core, the vault and the bridges
// take a [Clock] instead of calling time.Now, time.NewTimer, time.NewTicker, time.AfterFunc or
// time.Sleep, so that every time-driven behaviour (retention, sweeps, confirmation expiry,
// debounces, reconnect backoff, flood control) can be tested with [Fake], which moves only when
// a test tells it to. Production code uses [Real].
//
// The package imports only the standard library, so every other package may import it.
package clock

import (
	"context"
	"time"
)

// Clock tells the time and makes timers and tickers. Implementations are safe for concurrent
// use.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// NewTimer returns a timer that sends the time on its channel once, after d (at once if d
	// is not positive), like [time.NewTimer].
	NewTimer(d time.Duration) Timer
	// NewTicker returns a ticker that sends the time on its channel every d, dropping ticks a
	// slow reader misses, like [time.NewTicker]. d must be positive.
	NewTicker(d time.Duration) Ticker
	// AfterFunc calls f in its own goroutine once d has passed, like [time.AfterFunc]. The
	// returned timer's channel is nil; Stop prevents the call if it has not started.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a single event, like [time.Timer] with its Go 1.23 semantics: after Stop or Reset
// returns, no stale value is received from C.
type Timer interface {
	// C returns the channel the time is sent on; nil for a timer made by AfterFunc.
	C() <-chan time.Time
	// Stop prevents the timer from firing. It returns true if it stopped the timer, false if
	// the timer had already fired or been stopped.
	Stop() bool
	// Reset re-arms the timer to fire after d. It returns true if the timer had been active.
	Reset(d time.Duration) bool
}

// Ticker delivers ticks at intervals, like [time.Ticker].
type Ticker interface {
	// C returns the channel the ticks are sent on.
	C() <-chan time.Time
	// Stop turns the ticker off; no tick is received after it returns.
	Stop()
	// Reset stops the ticker and restarts it with period d, the next tick coming d from now.
	// d must be positive.
	Reset(d time.Duration)
}

// Sleep waits d on c, or until ctx is done, then returning ctx's error. A non-positive d
// returns ctx.Err() at once.
func Sleep(ctx context.Context, c Clock, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := c.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Real returns the [Clock] of the wall clock and the time package.
func Real() Clock { return realClock{} }

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }

func (realClock) NewTicker(d time.Duration) Ticker { return realTicker{time.NewTicker(d)} }

func (realClock) AfterFunc(d time.Duration, f func()) Timer {
	return realTimer{time.AfterFunc(d, f)}
}

type realTimer struct{ t *time.Timer }

func (r realTimer) C() <-chan time.Time        { return r.t.C }
func (r realTimer) Stop() bool                 { return r.t.Stop() }
func (r realTimer) Reset(d time.Duration) bool { return r.t.Reset(d) }

type realTicker struct{ t *time.Ticker }

func (r realTicker) C() <-chan time.Time   { return r.t.C }
func (r realTicker) Stop()                 { r.t.Stop() }
func (r realTicker) Reset(d time.Duration) { r.t.Reset(d) }

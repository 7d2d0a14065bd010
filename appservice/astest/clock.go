package astest

import (
	"sync"
	"time"
)

// FakeClock is a clock for tests that moves only when told to (see [FakeClock.Advance]). It has
// the methods of appservice.Clock, so code that takes a Clock accepts it. Its tickers behave like
// time.Ticker: a tick that finds the channel full is dropped. Safe for concurrent use.
type FakeClock struct {
	lock    sync.Mutex
	now     time.Time
	tickers []*fakeTicker
	changed chan struct{} // closed and replaced when a ticker is created
}

type fakeTicker struct {
	c       chan time.Time
	every   time.Duration
	next    time.Time
	stopped bool
}

// NewFakeClock returns a fake clock reading start.
func NewFakeClock(start time.Time) *FakeClock {
	return &FakeClock{now: start, changed: make(chan struct{})}
}

// Now returns the fake time.
func (c *FakeClock) Now() time.Time {
	c.lock.Lock()
	defer c.lock.Unlock()
	return c.now
}

// NewTicker returns a ticker that fires whenever [FakeClock.Advance] moves the clock past its
// next tick, and a function that stops it.
func (c *FakeClock) NewTicker(d time.Duration) (<-chan time.Time, func()) {
	if d <= 0 {
		panic("astest: non-positive interval for FakeClock.NewTicker")
	}
	c.lock.Lock()
	defer c.lock.Unlock()
	ft := &fakeTicker{c: make(chan time.Time, 1), every: d, next: c.now.Add(d)}
	c.tickers = append(c.tickers, ft)
	close(c.changed)
	c.changed = make(chan struct{})
	return ft.c, func() {
		c.lock.Lock()
		defer c.lock.Unlock()
		ft.stopped = true
	}
}

// Advance moves the clock forward by d and fires every ticker whose next tick is now due (once,
// however many intervals passed, as a real ticker would for a slow reader).
func (c *FakeClock) Advance(d time.Duration) {
	c.lock.Lock()
	defer c.lock.Unlock()
	c.now = c.now.Add(d)
	for _, ft := range c.tickers {
		if ft.stopped || ft.next.After(c.now) {
			continue
		}
		for !ft.next.After(c.now) {
			ft.next = ft.next.Add(ft.every)
		}
		select {
		case ft.c <- c.now:
		default:
		}
	}
}

// Set moves the clock to t (forward or back) without firing tickers.
func (c *FakeClock) Set(t time.Time) {
	c.lock.Lock()
	defer c.lock.Unlock()
	c.now = t
}

// WaitForTickers blocks until at least n tickers that were not stopped exist, or timeout passes;
// it reports whether they did. Tests use it to know that a loop under test is waiting for its
// ticker before they advance the clock.
func (c *FakeClock) WaitForTickers(n int, timeout time.Duration) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		c.lock.Lock()
		active := 0
		for _, ft := range c.tickers {
			if !ft.stopped {
				active++
			}
		}
		changed := c.changed
		c.lock.Unlock()
		if active >= n {
			return true
		}
		select {
		case <-changed:
		case <-deadline.C:
			return false
		}
	}
}

// WaitForTicker blocks until a ticker with interval every exists that was not stopped, or
// timeout passes; it reports whether one did. Unlike [FakeClock.WaitForTickers] it tells apart
// loops that share the clock, as long as their intervals differ (a retry with backoff and a
// periodic sweep).
func (c *FakeClock) WaitForTicker(every, timeout time.Duration) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		c.lock.Lock()
		found := false
		for _, ft := range c.tickers {
			if !ft.stopped && ft.every == every {
				found = true
				break
			}
		}
		changed := c.changed
		c.lock.Unlock()
		if found {
			return true
		}
		select {
		case <-changed:
		case <-deadline.C:
			return false
		}
	}
}

package clock

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"
)

// Fake is a [Clock] for tests that moves only when told to: [Fake.Advance] moves it forward and
// fires, in order of their due time, the timers and tickers that come due; [Fake.Set] changes
// the wall time only, as an operator changing the system clock would, without firing anything.
// Timers and tickers measure durations, not wall time, just like the time package's. Tests
// wait with [Fake.BlockUntil] or [Fake.BlockUntilInterval] until the code under test has armed
// its timers before advancing. Safe for concurrent use.
type Fake struct {
	lock    sync.Mutex
	now     time.Time     // wall time
	mono    time.Duration // time advanced since NewFake: what timers are measured on
	seq     uint64        // creation order, to fire waiters due at the same time in order
	waiters map[*fakeWaiter]struct{}
	changed chan struct{} // closed and replaced whenever the set of armed waiters changes
}

var _ Clock = (*Fake)(nil)

// fakeWaiter is an armed timer or ticker of a Fake.
type fakeWaiter struct {
	c      chan time.Time // nil for AfterFunc
	f      func()         // AfterFunc's function, or nil
	period time.Duration  // 0 for timers
	last   time.Duration  // the duration it was last armed with, for BlockUntilInterval
	when   time.Duration  // due time on the Fake's monotonic clock
	seq    uint64
	armed  bool
}

// NewFake returns a fake clock reading start.
func NewFake(start time.Time) *Fake {
	return &Fake{now: start, waiters: map[*fakeWaiter]struct{}{}, changed: make(chan struct{})}
}

// Now returns the fake time.
func (c *Fake) Now() time.Time {
	c.lock.Lock()
	defer c.lock.Unlock()
	return c.now
}

// NewTimer returns a timer that fires when [Fake.Advance] reaches d from now; a non-positive d
// fires it at once.
func (c *Fake) NewTimer(d time.Duration) Timer {
	w := &fakeWaiter{c: make(chan time.Time, 1)}
	c.lock.Lock()
	defer c.lock.Unlock()
	c.arm(w, d)
	return (*fakeTimer)(c.handle(w))
}

// AfterFunc returns a timer that, when [Fake.Advance] reaches d from now, calls f in its own
// goroutine; a non-positive d calls it at once.
func (c *Fake) AfterFunc(d time.Duration, f func()) Timer {
	w := &fakeWaiter{f: f}
	c.lock.Lock()
	defer c.lock.Unlock()
	c.arm(w, d)
	return (*fakeTimer)(c.handle(w))
}

// NewTicker returns a ticker that fires every d of [Fake.Advance]. Like a real ticker's, its
// channel holds one tick: ticks that find it full are dropped. It panics if d is not positive.
func (c *Fake) NewTicker(d time.Duration) Ticker {
	if d <= 0 {
		panic("clock: non-positive interval for NewTicker")
	}
	w := &fakeWaiter{c: make(chan time.Time, 1), period: d}
	c.lock.Lock()
	defer c.lock.Unlock()
	c.arm(w, d)
	return (*fakeTicker)(c.handle(w))
}

// Advance moves the clock forward by d and fires, in order, every timer and ticker that comes
// due, each seeing [Fake.Now] at its due time. A ticker fires at most once per Advance however
// many periods pass (its channel holds one tick; a real one drops the ticks a slow reader
// misses). AfterFunc functions run in their own goroutines; Advance does not wait for them.
// It panics if d is negative.
func (c *Fake) Advance(d time.Duration) {
	if d < 0 {
		panic("clock: negative Advance")
	}
	c.lock.Lock()
	defer c.lock.Unlock()
	target := c.mono + d
	wall := c.now.Add(d)
	for {
		w := c.nextDue(target)
		if w == nil {
			break
		}
		c.now = c.now.Add(w.when - c.mono)
		c.mono = w.when
		c.fire(w, target)
	}
	c.now = wall
	c.mono = target
}

// Set moves the wall time to t, forward or back, without firing or moving any timer or ticker:
// like the system clock being changed under a running process.
func (c *Fake) Set(t time.Time) {
	c.lock.Lock()
	defer c.lock.Unlock()
	c.now = t
}

// Waiters returns the number of armed timers and tickers: created or reset, and neither fired
// (timers) nor stopped.
func (c *Fake) Waiters() int {
	c.lock.Lock()
	defer c.lock.Unlock()
	return len(c.waiters)
}

// BlockUntil waits until at least n timers and tickers are armed (see [Fake.Waiters]), or ctx
// is done, then returning an error naming how many were armed. Tests call it, with a deadline
// on ctx, to know the code under test is waiting on the clock before they advance it.
func (c *Fake) BlockUntil(ctx context.Context, n int) error {
	return c.block(ctx, fmt.Sprintf("%d armed timers", n), func() bool { return len(c.waiters) >= n })
}

// BlockUntilInterval waits until a timer or ticker last armed with duration d is armed, or
// ctx is done (then returning an error). Unlike [Fake.BlockUntil] it tells apart loops that
// share the clock, as long as their durations differ (a retry with backoff and a periodic
// sweep).
func (c *Fake) BlockUntilInterval(ctx context.Context, d time.Duration) error {
	return c.block(ctx, fmt.Sprintf("a timer armed for %s", d), func() bool {
		for w := range c.waiters {
			if w.last == d {
				return true
			}
		}
		return false
	})
}

func (c *Fake) block(ctx context.Context, what string, done func() bool) error {
	for {
		c.lock.Lock()
		ok := done()
		n := len(c.waiters)
		changed := c.changed
		c.lock.Unlock()
		if ok {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("clock: waiting for %s (%d armed): %w", what, n, ctx.Err())
		}
	}
}

// handle is the common representation of timers and tickers handed out.
type handle struct {
	c *Fake
	w *fakeWaiter
}

func (c *Fake) handle(w *fakeWaiter) *handle { return &handle{c: c, w: w} }

// arm schedules w d from now, firing it at once if d is not positive. c.lock is held.
func (c *Fake) arm(w *fakeWaiter, d time.Duration) {
	c.seq++
	w.seq = c.seq
	w.last = d
	w.when = c.mono + d
	if d <= 0 && w.period == 0 {
		w.armed = true
		c.fire(w, c.mono)
		return
	}
	w.armed = true
	c.waiters[w] = struct{}{}
	c.notify()
}

// disarm removes w and drains its channel, so no stale value is received after Stop or
// Reset. It reports whether w was armed. c.lock is held.
func (c *Fake) disarm(w *fakeWaiter) bool {
	was := w.armed
	w.armed = false
	if _, ok := c.waiters[w]; ok {
		delete(c.waiters, w)
		c.notify()
	}
	if w.c != nil {
		select {
		case <-w.c:
		default:
		}
	}
	return was
}

// nextDue returns the armed waiter due first at or before target, or nil. c.lock is held.
func (c *Fake) nextDue(target time.Duration) *fakeWaiter {
	due := make([]*fakeWaiter, 0, len(c.waiters))
	for w := range c.waiters {
		if w.when <= target {
			due = append(due, w)
		}
	}
	if len(due) == 0 {
		return nil
	}
	sort.Slice(due, func(i, j int) bool {
		if due[i].when != due[j].when {
			return due[i].when < due[j].when
		}
		return due[i].seq < due[j].seq
	})
	return due[0]
}

// fire delivers w's event at the current fake time. A ticker is rescheduled past target, so it
// fires once per Advance. c.lock is held.
func (c *Fake) fire(w *fakeWaiter, target time.Duration) {
	if w.period > 0 {
		// The next tick after target, in one step: a long Advance of a short ticker must not
		// walk every period.
		w.when += (target-w.when)/w.period*w.period + w.period
	} else {
		w.armed = false
		if _, ok := c.waiters[w]; ok {
			delete(c.waiters, w)
			c.notify()
		}
	}
	if w.f != nil {
		go w.f()
		return
	}
	select {
	case w.c <- c.now:
	default:
	}
}

// notify wakes BlockUntil callers. c.lock is held.
func (c *Fake) notify() {
	close(c.changed)
	c.changed = make(chan struct{})
}

type fakeTimer handle

func (t *fakeTimer) C() <-chan time.Time { return t.w.c }

func (t *fakeTimer) Stop() bool {
	t.c.lock.Lock()
	defer t.c.lock.Unlock()
	return t.c.disarm(t.w)
}

func (t *fakeTimer) Reset(d time.Duration) bool {
	t.c.lock.Lock()
	defer t.c.lock.Unlock()
	was := t.c.disarm(t.w)
	t.c.arm(t.w, d)
	return was
}

type fakeTicker handle

func (t *fakeTicker) C() <-chan time.Time { return t.w.c }

func (t *fakeTicker) Stop() {
	t.c.lock.Lock()
	defer t.c.lock.Unlock()
	t.c.disarm(t.w)
}

func (t *fakeTicker) Reset(d time.Duration) {
	if d <= 0 {
		panic("clock: non-positive interval for Ticker.Reset")
	}
	t.c.lock.Lock()
	defer t.c.lock.Unlock()
	t.c.disarm(t.w)
	t.w.period = d
	t.c.arm(t.w, d)
}

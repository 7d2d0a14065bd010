package clock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/custodian-matrix/custodian/appservice/clock"
)

var start = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// recv returns the value waiting on c, failing the test if there is none.
func recv(t *testing.T, c <-chan time.Time, what string) time.Time {
	t.Helper()
	select {
	case v := <-c:
		return v
	default:
		t.Fatalf("%s: no value on channel", what)
		return time.Time{}
	}
}

// none fails the test if a value is waiting on c.
func none(t *testing.T, c <-chan time.Time, what string) {
	t.Helper()
	select {
	case v := <-c:
		t.Fatalf("%s: unexpected value %v", what, v)
	default:
	}
}

func ctxTimeout(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestFakeNowAdvanceSet(t *testing.T) {
	c := clock.NewFake(start)
	if got := c.Now(); !got.Equal(start) {
		t.Fatalf("Now = %v, want %v", got, start)
	}
	c.Advance(90 * time.Second)
	if got, want := c.Now(), start.Add(90*time.Second); !got.Equal(want) {
		t.Fatalf("after Advance: Now = %v, want %v", got, want)
	}
	back := start.Add(-time.Hour)
	c.Set(back)
	if got := c.Now(); !got.Equal(back) {
		t.Fatalf("after Set: Now = %v, want %v", got, back)
	}
}

func TestFakeTimersFireInOrder(t *testing.T) {
	c := clock.NewFake(start)
	order := make(chan string, 3)
	c.AfterFunc(3*time.Second, func() { order <- "third" })
	t2 := c.NewTimer(2 * time.Second)
	t1 := c.NewTimer(time.Second)
	c.Advance(500 * time.Millisecond)
	none(t, t1.C(), "1s timer at 0.5s")
	c.Advance(10 * time.Second)
	v1 := recv(t, t1.C(), "1s timer")
	v2 := recv(t, t2.C(), "2s timer")
	if !v1.Equal(start.Add(time.Second)) || !v2.Equal(start.Add(2*time.Second)) {
		t.Fatalf("timers sent %v and %v, want their due times", v1, v2)
	}
	select {
	case got := <-order:
		if got != "third" {
			t.Fatalf("AfterFunc ran %q", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("AfterFunc did not run")
	}
	if n := c.Waiters(); n != 0 {
		t.Fatalf("Waiters = %d after every timer fired, want 0", n)
	}
}

// TestFakeAdvanceSeesDueTime checks that code run by a timer sees Now at the timer's due time,
// and that timers armed by one that fires fire within the same Advance when due.
func TestFakeAdvanceSeesDueTime(t *testing.T) {
	c := clock.NewFake(start)
	seen := make(chan time.Time, 2)
	c.AfterFunc(time.Second, func() { seen <- c.Now() })
	tm := c.NewTimer(2 * time.Second)
	c.Advance(time.Second)
	select {
	case got := <-seen:
		// The goroutine may run after Advance returned; either way it never sees the past.
		if got.Before(start.Add(time.Second)) {
			t.Fatalf("AfterFunc saw %v, before its due time", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("AfterFunc did not run")
	}
	none(t, tm.C(), "2s timer at 1s")
	c.Advance(time.Second)
	recv(t, tm.C(), "2s timer at 2s")
}

func TestFakeTimerStopReset(t *testing.T) {
	tests := []struct {
		name     string
		run      func(c *clock.Fake, tm clock.Timer) bool
		wantRet  bool
		advance  time.Duration
		wantFire bool
	}{
		{"stop before due", func(c *clock.Fake, tm clock.Timer) bool { return tm.Stop() }, true, time.Hour, false},
		{"stop after fired", func(c *clock.Fake, tm clock.Timer) bool {
			c.Advance(time.Minute)
			return tm.Stop()
		}, false, time.Hour, false},
		{"stop twice", func(c *clock.Fake, tm clock.Timer) bool {
			tm.Stop()
			return tm.Stop()
		}, false, time.Hour, false},
		{"reset active later", func(c *clock.Fake, tm clock.Timer) bool {
			return tm.Reset(2 * time.Minute)
		}, true, 90 * time.Second, false},
		{"reset active, reaches it", func(c *clock.Fake, tm clock.Timer) bool {
			return tm.Reset(2 * time.Minute)
		}, true, 2 * time.Minute, true},
		{"reset after fired drains stale value", func(c *clock.Fake, tm clock.Timer) bool {
			c.Advance(time.Minute)
			return tm.Reset(time.Minute)
		}, false, 30 * time.Second, false},
		{"reset after stop re-arms", func(c *clock.Fake, tm clock.Timer) bool {
			tm.Stop()
			return tm.Reset(time.Second)
		}, false, time.Second, true},
		{"reset to zero fires at once", func(c *clock.Fake, tm clock.Timer) bool {
			return tm.Reset(0)
		}, true, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := clock.NewFake(start)
			tm := c.NewTimer(time.Minute)
			if got := tt.run(c, tm); got != tt.wantRet {
				t.Fatalf("returned %v, want %v", got, tt.wantRet)
			}
			c.Advance(tt.advance)
			select {
			case <-tm.C():
				if !tt.wantFire {
					t.Fatal("timer fired")
				}
			default:
				if tt.wantFire {
					t.Fatal("timer did not fire")
				}
			}
		})
	}
}

func TestFakeNewTimerNonPositiveFiresAtOnce(t *testing.T) {
	c := clock.NewFake(start)
	for _, d := range []time.Duration{0, -time.Second} {
		recv(t, c.NewTimer(d).C(), d.String())
	}
	if n := c.Waiters(); n != 0 {
		t.Fatalf("Waiters = %d, want 0", n)
	}
}

func TestFakeAfterFuncRunsOnceAndStops(t *testing.T) {
	c := clock.NewFake(start)
	ran := make(chan struct{}, 10)
	tm := c.AfterFunc(time.Second, func() { ran <- struct{}{} })
	if tm.C() != nil {
		t.Fatal("AfterFunc timer has a channel")
	}
	c.Advance(time.Second)
	c.Advance(time.Hour)
	select {
	case <-ran:
	case <-time.After(5 * time.Second):
		t.Fatal("f did not run")
	}
	if tm.Stop() {
		t.Fatal("Stop after the call reported stopping it")
	}
	stopped := c.AfterFunc(time.Second, func() { ran <- struct{}{} })
	if !stopped.Stop() {
		t.Fatal("Stop before due reported false")
	}
	c.Advance(time.Hour)
	// Run a later function and wait for it: f of the stopped timer would have been started
	// before it, so if it had run it would be on the channel by now.
	done := make(chan struct{})
	c.AfterFunc(time.Second, func() { close(done) })
	c.Advance(time.Second)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("later AfterFunc did not run")
	}
	select {
	case <-ran:
		t.Fatal("f ran twice or after Stop")
	default:
	}
}

func TestFakeTickerDropsMissedTicks(t *testing.T) {
	c := clock.NewFake(start)
	tk := c.NewTicker(time.Minute)
	c.Advance(30 * time.Second)
	none(t, tk.C(), "before first tick")
	c.Advance(30 * time.Second)
	if v := recv(t, tk.C(), "first tick"); !v.Equal(start.Add(time.Minute)) {
		t.Fatalf("first tick %v, want %v", v, start.Add(time.Minute))
	}
	// A slow reader misses ticks: ten periods pass, one tick waits.
	for range 10 {
		c.Advance(time.Minute)
	}
	recv(t, tk.C(), "after ten periods")
	none(t, tk.C(), "second tick after ten periods")
	// One long Advance also leaves one tick, and the ticker keeps its phase.
	c.Advance(time.Hour + 30*time.Second)
	recv(t, tk.C(), "after an hour")
	c.Advance(29 * time.Second)
	none(t, tk.C(), "between ticks")
	c.Advance(time.Second)
	recv(t, tk.C(), "on the phase")
}

func TestFakeTickerStopReset(t *testing.T) {
	c := clock.NewFake(start)
	tk := c.NewTicker(time.Minute)
	c.Advance(time.Minute)
	tk.Stop()
	none(t, tk.C(), "after Stop (stale tick drained)")
	c.Advance(time.Hour)
	none(t, tk.C(), "stopped ticker")
	if n := c.Waiters(); n != 0 {
		t.Fatalf("Waiters = %d after Stop, want 0", n)
	}
	tk.Reset(10 * time.Second)
	c.Advance(9 * time.Second)
	none(t, tk.C(), "before reset period")
	c.Advance(time.Second)
	recv(t, tk.C(), "reset period")
	c.Advance(10 * time.Second)
	recv(t, tk.C(), "second reset period")
}

func TestFakeTickerPanicsOnNonPositive(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("NewTicker(0) did not panic")
		}
	}()
	clock.NewFake(start).NewTicker(0)
}

// TestFakeSetDoesNotFire checks that changing the wall time moves no timer: timers measure
// durations.
func TestFakeSetDoesNotFire(t *testing.T) {
	c := clock.NewFake(start)
	tm := c.NewTimer(time.Minute)
	c.Set(start.Add(24 * time.Hour))
	none(t, tm.C(), "after Set forward")
	c.Set(start.Add(-24 * time.Hour))
	c.Advance(time.Minute)
	if v := recv(t, tm.C(), "after a minute"); !v.Equal(start.Add(-24*time.Hour + time.Minute)) {
		t.Fatalf("timer sent %v, want the wall time at its due time", v)
	}
}

func TestFakeBlockUntil(t *testing.T) {
	c := clock.NewFake(start)
	ctx := ctxTimeout(t)
	armed := make(chan clock.Timer)
	go func() {
		a := c.NewTimer(time.Second)
		c.NewTicker(time.Minute)
		armed <- a
	}()
	if err := c.BlockUntil(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if err := c.BlockUntilInterval(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	a := <-armed
	a.Stop()
	short, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := c.BlockUntil(short, 2); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("BlockUntil with one armed = %v, want deadline exceeded", err)
	}
	if err := c.BlockUntilInterval(short, time.Second); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("BlockUntilInterval for a stopped timer = %v, want deadline exceeded", err)
	}
}

func TestSleep(t *testing.T) {
	c := clock.NewFake(start)
	ctx := ctxTimeout(t)
	done := make(chan error, 1)
	go func() { done <- clock.Sleep(ctx, c, time.Minute) }()
	if err := c.BlockUntilInterval(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	c.Advance(time.Minute)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Sleep = %v", err)
		}
	case <-ctx.Done():
		t.Fatal("Sleep did not return")
	}

	cctx, cancel := context.WithCancel(ctx)
	go func() { done <- clock.Sleep(cctx, c, time.Minute) }()
	if err := c.BlockUntilInterval(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled Sleep = %v", err)
		}
	case <-ctx.Done():
		t.Fatal("cancelled Sleep did not return")
	}
	if err := c.BlockUntil(ctx, 0); err != nil || c.Waiters() != 0 {
		t.Fatalf("Sleep left %d timers armed", c.Waiters())
	}
}

func TestReal(t *testing.T) {
	c := clock.Real()
	before := time.Now()
	if now := c.Now(); now.Before(before) {
		t.Fatalf("Real().Now() = %v, before %v", now, before)
	}
	tm := c.NewTimer(time.Millisecond)
	select {
	case <-tm.C():
	case <-time.After(5 * time.Second):
		t.Fatal("real timer did not fire")
	}
	if tm.Stop() {
		t.Fatal("Stop of a fired timer reported true")
	}
	tk := c.NewTicker(time.Millisecond)
	defer tk.Stop()
	select {
	case <-tk.C():
	case <-time.After(5 * time.Second):
		t.Fatal("real ticker did not tick")
	}
	ran := make(chan struct{})
	c.AfterFunc(time.Millisecond, func() { close(ran) })
	select {
	case <-ran:
	case <-time.After(5 * time.Second):
		t.Fatal("real AfterFunc did not run")
	}
	if err := clock.Sleep(context.Background(), c, time.Millisecond); err != nil {
		t.Fatalf("Sleep = %v", err)
	}
}

// TestFakeLongAdvanceIsCheap checks that a long Advance does not step through every period of
// a short ticker: a year of a millisecond ticker is one tick, at once.
func TestFakeLongAdvanceIsCheap(t *testing.T) {
	c := clock.NewFake(start)
	tk := c.NewTicker(time.Millisecond)
	done := make(chan struct{})
	go func() {
		c.Advance(365 * 24 * time.Hour)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Advance of a year with a millisecond ticker did not return within 5 s")
	}
	recv(t, tk.C(), "after a year")
	c.Advance(time.Millisecond)
	recv(t, tk.C(), "one period later, on the phase")
}

package backoff

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/clock"
)

func TestPolicyDelay(t *testing.T) {
	p := Policy{Initial: time.Second, Max: 10 * time.Second, Multiplier: 2, Jitter: 0.5}
	tests := []struct {
		name    string
		policy  Policy
		attempt int
		r       float64
		want    time.Duration
	}{
		{"first, no jitter drawn", p, 0, 0, time.Second},
		{"first, most jitter", p, 0, 0.999999, 500000500 * time.Nanosecond},
		{"second", p, 1, 0, 2 * time.Second},
		{"fourth", p, 3, 0, 8 * time.Second},
		{"capped", p, 4, 0, 10 * time.Second},
		{"far beyond cap", p, 10000, 0, 10 * time.Second},
		{"capped, half jitter", p, 50, 0.5, 7500 * time.Millisecond},
		{"full jitter", Policy{Initial: time.Second, Max: time.Second, Multiplier: 2, Jitter: 1}, 0, 0.25, 750 * time.Millisecond},
		{"jitter clamped", Policy{Initial: time.Second, Max: time.Second, Multiplier: 2, Jitter: 3}, 0, 0.25, 750 * time.Millisecond},
		{"multiplier below one", Policy{Initial: time.Second, Max: time.Minute, Multiplier: 0.5}, 5, 0, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.policy.Delay(tt.attempt, tt.r); got != tt.want {
				t.Errorf("Delay(%d, %v) = %v, want %v", tt.attempt, tt.r, got, tt.want)
			}
		})
	}
}

func TestBackoffNextAndReset(t *testing.T) {
	b := New(Policy{Initial: time.Second, Max: 4 * time.Second, Multiplier: 2}, func() float64 { return 0 })
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second}
	for i, w := range want {
		if got := b.Next(); got != w {
			t.Errorf("Next() #%d = %v, want %v", i, got, w)
		}
	}
	if b.Attempts() != len(want) {
		t.Errorf("Attempts() = %d, want %d", b.Attempts(), len(want))
	}
	b.Reset()
	if got := b.Next(); got != time.Second {
		t.Errorf("Next() after Reset = %v, want 1s", got)
	}
}

// TestBackoffSpreads checks that jitter spreads a thousand connections that failed together.
func TestBackoffSpreads(t *testing.T) {
	seen := map[time.Duration]bool{}
	for range 1000 {
		d := New(DefaultPolicy, nil).Next()
		if d <= DefaultPolicy.Initial/2-1 || d > DefaultPolicy.Initial {
			t.Fatalf("Next() = %v, want in (%v, %v]", d, DefaultPolicy.Initial/2, DefaultPolicy.Initial)
		}
		seen[d] = true
	}
	if len(seen) < 900 {
		t.Errorf("1000 first delays had only %d distinct values", len(seen))
	}
}

func TestLimiterReserve(t *testing.T) {
	clock := clock.NewFake(time.Unix(1e9, 0))
	l := NewLimiter(clock, 100*time.Millisecond, 3)
	steps := []struct {
		advance time.Duration
		want    time.Duration
	}{
		{0, 0}, {0, 0}, {0, 0}, // the burst
		{0, 100 * time.Millisecond}, // queued behind the empty bucket
		{0, 200 * time.Millisecond},
		{200 * time.Millisecond, 100 * time.Millisecond}, // two tokens came, both spoken for
		{time.Second, 0},                                 // refilled (to the burst, not beyond)
		{0, 0},
		{0, 0},
		{0, 100 * time.Millisecond},
	}
	for i, s := range steps {
		clock.Advance(s.advance)
		if got := l.Reserve(); got != s.want {
			t.Errorf("step %d: Reserve() = %v, want %v", i, got, s.want)
		}
	}
	l.Cancel()
	if got := l.Reserve(); got != 100*time.Millisecond {
		t.Errorf("Reserve() after Cancel = %v, want 100ms", got)
	}
}

// TestLimiterRate checks the long-run rate: 1000 reservations at once are spread over
// (1000-burst) intervals, in order.
func TestLimiterRate(t *testing.T) {
	clock := clock.NewFake(time.Unix(1e9, 0))
	l := NewLimiter(clock, 10*time.Millisecond, 20)
	var last time.Duration
	for i := range 1000 {
		d := l.Reserve()
		if d < last {
			t.Fatalf("reservation %d waits %v, less than the one before (%v)", i, d, last)
		}
		last = d
	}
	if want := 980 * 10 * time.Millisecond; last != want {
		t.Errorf("last of 1000 waits %v, want %v", last, want)
	}
}

func TestLimiterWait(t *testing.T) {
	clock := clock.NewFake(time.Unix(1e9, 0))
	l := NewLimiter(clock, time.Second, 1)
	if err := l.Wait(context.Background()); err != nil {
		t.Fatalf("Wait with a token = %v", err)
	}

	done := make(chan error, 1)
	go func() { done <- l.Wait(context.Background()) }()
	if clock.BlockUntil(astest.Within(t, 5*time.Second), 1) != nil {
		t.Fatal("Wait did not start waiting")
	}
	select {
	case err := <-done:
		t.Fatalf("Wait returned %v before its token was due", err)
	default:
	}
	clock.Advance(time.Second)
	if err := <-done; err != nil {
		t.Fatalf("Wait = %v", err)
	}

	// A cancelled waiter gives its token back.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := l.Wait(ctx); !errors.Is(err, context.Canceled) {
			t.Errorf("Wait after cancel = %v, want context.Canceled", err)
		}
	}()
	if clock.BlockUntil(astest.Within(t, 5*time.Second), 1) != nil { // the first ticker was stopped
		t.Fatal("second Wait did not start waiting")
	}
	cancel()
	wg.Wait()
	clock.Advance(time.Second)
	if got := l.Reserve(); got != 0 {
		t.Errorf("Reserve() after a cancelled wait and one interval = %v, want 0", got)
	}
}

func TestSleep(t *testing.T) {
	clock := clock.NewFake(time.Unix(1e9, 0))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Sleep(ctx, clock, time.Hour); !errors.Is(err, context.Canceled) {
		t.Errorf("Sleep with a cancelled ctx = %v, want context.Canceled", err)
	}
	if err := Sleep(context.Background(), clock, 0); err != nil {
		t.Errorf("Sleep(0) = %v", err)
	}
}

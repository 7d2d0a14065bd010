package astest

import (
	"testing"
	"time"
)

func TestFakeClock(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := NewFakeClock(start)
	ticks, stop := c.NewTicker(10 * time.Minute)
	if !c.WaitForTickers(1, time.Second) {
		t.Fatal("WaitForTickers(1) = false with one ticker")
	}
	tests := []struct {
		advance  time.Duration
		wantTick bool
	}{
		{advance: 9 * time.Minute, wantTick: false},
		{advance: time.Minute, wantTick: true},
		{advance: 35 * time.Minute, wantTick: true}, // several intervals: one tick, like a real ticker
		{advance: 4 * time.Minute, wantTick: false},
		{advance: time.Minute, wantTick: true},
	}
	for i, tt := range tests {
		c.Advance(tt.advance)
		select {
		case <-ticks:
			if !tt.wantTick {
				t.Errorf("step %d: ticked after advancing %s, want no tick", i, tt.advance)
			}
		default:
			if tt.wantTick {
				t.Errorf("step %d: no tick after advancing %s, want one", i, tt.advance)
			}
		}
	}
	if got, want := c.Now(), start.Add(50*time.Minute); !got.Equal(want) {
		t.Errorf("Now() = %s, want %s", got, want)
	}
	stop()
	c.Advance(time.Hour)
	select {
	case <-ticks:
		t.Error("a stopped ticker ticked")
	default:
	}
	if c.WaitForTickers(1, 10*time.Millisecond) {
		t.Error("WaitForTickers(1) = true after the only ticker stopped")
	}
}

func TestFakeClockWaitForTicker(t *testing.T) {
	c := NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	_, stopMinute := c.NewTicker(time.Minute)
	if !c.WaitForTicker(time.Minute, time.Second) {
		t.Error("WaitForTicker(1m) = false with a 1m ticker")
	}
	if c.WaitForTicker(2*time.Minute, 10*time.Millisecond) {
		t.Error("WaitForTicker(2m) = true with only a 1m ticker")
	}
	created := make(chan func())
	go func() {
		_, stop := c.NewTicker(2 * time.Minute)
		created <- stop
	}()
	if !c.WaitForTicker(2*time.Minute, 10*time.Second) {
		t.Error("WaitForTicker(2m) = false after a 2m ticker was created")
	}
	(<-created)()
	stopMinute()
	if c.WaitForTicker(time.Minute, 10*time.Millisecond) {
		t.Error("WaitForTicker(1m) = true after the 1m ticker stopped")
	}
}

package webhook

import (
	"testing"
	"time"

	"github.com/custodian-matrix/custodian/appservice/clock"
)

func TestRateLimiter(t *testing.T) {
	clock := clock.NewFake(time.Unix(1000, 0))
	rl := newRateLimiter(clock, 2, 3) // 2 per second, bursts of 3
	type step struct {
		advance  time.Duration
		key      string
		want     bool
		wantWait time.Duration
	}
	steps := []step{
		{key: "a", want: true},
		{key: "a", want: true},
		{key: "a", want: true},
		{key: "a", want: false, wantWait: 500 * time.Millisecond},
		{key: "b", want: true}, // buckets are per key
		{advance: 250 * time.Millisecond, key: "a", want: false, wantWait: 250 * time.Millisecond},
		{advance: 250 * time.Millisecond, key: "a", want: true},
		{advance: time.Hour, key: "a", want: true}, // refills to the burst, not beyond
		{key: "a", want: true},
		{key: "a", want: true},
		{key: "a", want: false, wantWait: 500 * time.Millisecond},
	}
	for i, s := range steps {
		clock.Advance(s.advance)
		ok, wait := rl.allow(s.key)
		if ok != s.want || (!ok && (wait < s.wantWait-time.Millisecond || wait > s.wantWait+time.Millisecond)) {
			t.Errorf("step %d: allow(%q) = %v, %s; want %v, %s", i, s.key, ok, wait, s.want, s.wantWait)
		}
	}
	rl.forget("a")
	if ok, _ := rl.allow("a"); !ok {
		t.Error("allow after forget = false, want a fresh bucket")
	}
}

func TestRateLimiterPrunesIdleBuckets(t *testing.T) {
	clock := clock.NewFake(time.Unix(1000, 0))
	rl := newRateLimiter(clock, 1, 1)
	for i := range maxBuckets {
		rl.allow(string(rune('a'+i%26)) + string(rune(i)))
	}
	clock.Advance(time.Minute)
	rl.allow("new")
	if n := len(rl.buckets); n != 1 {
		t.Errorf("buckets after pruning = %d, want 1", n)
	}
}

package webhook

import (
	"math"
	"sync"
	"time"

	"github.com/custodian-matrix/custodian/appservice/clock"
)

// maxBuckets bounds the rate limiter's memory; beyond it, full (idle) buckets are forgotten.
const maxBuckets = 10000

// rateLimiter is a token bucket per key (an inbound hook's ID). It is safe for concurrent use.
type rateLimiter struct {
	clock clock.Clock
	rate  float64 // tokens per second
	burst float64

	lock    sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newRateLimiter(clk clock.Clock, perSecond float64, burst int) *rateLimiter {
	return &rateLimiter{clock: clk, rate: perSecond, burst: float64(burst), buckets: make(map[string]*bucket)}
}

// allow takes a token from key's bucket. If there is none, it reports false and how long until
// the next one.
func (rl *rateLimiter) allow(key string) (bool, time.Duration) {
	now := rl.clock.Now()
	rl.lock.Lock()
	defer rl.lock.Unlock()
	b, ok := rl.buckets[key]
	if !ok {
		if len(rl.buckets) >= maxBuckets {
			rl.prune(now)
		}
		b = &bucket{tokens: rl.burst, last: now}
		rl.buckets[key] = b
	} else if elapsed := now.Sub(b.last).Seconds(); elapsed > 0 {
		b.tokens = math.Min(rl.burst, b.tokens+elapsed*rl.rate)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	wait := time.Duration((1 - b.tokens) / rl.rate * float64(time.Second))
	return false, max(wait, time.Millisecond)
}

// forget drops key's bucket, for a removed hook.
func (rl *rateLimiter) forget(key string) {
	rl.lock.Lock()
	delete(rl.buckets, key)
	rl.lock.Unlock()
}

// prune forgets buckets that have refilled completely: they behave exactly like new ones.
// rl.lock must be held.
func (rl *rateLimiter) prune(now time.Time) {
	for key, b := range rl.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*rl.rate >= rl.burst {
			delete(rl.buckets, key)
		}
	}
}

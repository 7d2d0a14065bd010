// Package backoff paces the IRC bridge's (re)connections: [Backoff] is the jittered exponential
// delay of one connection between attempts, and [Limiter] is a token bucket shared by every
// connection to a network, so that when a network restarts, thousands of puppets come back at a
// bounded rate instead of all at once (the stampede that blew up the reference bridge's memory).
//
// A connection asks its Backoff for the delay before its next attempt, waits it, then waits
// for a token from the Limiter, then dials:
//
//	delay := bo.Next()
//	// … wait delay …
//	if err := lim.Wait(ctx); err != nil { return err }
//	// … dial; once the connection has been up a while: bo.Reset()
//
// Time comes from a [clock.Clock], so tests drive both with a [clock.Fake] and never sleep.
package backoff

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/custodian-matrix/custodian/appservice/clock"
)

// Policy describes an exponential backoff. The zero value is not useful; start from
// [DefaultPolicy].
type Policy struct {
	// Initial is the delay before the first retry, before jitter. Must be positive.
	Initial time.Duration
	// Max caps the delay, before jitter. Must be at least Initial.
	Max time.Duration
	// Multiplier is the factor by which the delay grows per failed attempt; at least 1.
	Multiplier float64
	// Jitter is the fraction of each delay that is random, in [0, 1]: the delay is uniformly
	// drawn from [d·(1−Jitter), d). 0 is no jitter; 1 is "full jitter".
	Jitter float64
}

// DefaultPolicy is the bridge's reconnect policy: 2 s, doubling, capped at 5 min, half jittered.
var DefaultPolicy = Policy{Initial: 2 * time.Second, Max: 5 * time.Minute, Multiplier: 2, Jitter: 0.5}

// Delay returns the delay before attempt number attempt (0 for the first retry), with r in
// [0, 1) choosing the jitter. It is deterministic, for tests and for callers with their own
// randomness.
func (p Policy) Delay(attempt int, r float64) time.Duration {
	d := float64(p.Initial)
	for i := 0; i < attempt && d < float64(p.Max); i++ {
		d *= max(p.Multiplier, 1)
	}
	d = min(d, float64(p.Max))
	jitter := min(max(p.Jitter, 0), 1)
	return time.Duration(d * (1 - jitter*r))
}

// Backoff is one connection's backoff state: how many attempts failed in a row. It is not safe
// for concurrent use; each connection owns one.
type Backoff struct {
	policy  Policy
	attempt int
	rand    func() float64
}

// New returns a Backoff following p, drawing jitter from rnd (values in [0, 1)); a nil rnd uses
// math/rand/v2.
func New(p Policy, rnd func() float64) *Backoff {
	if rnd == nil {
		rnd = rand.Float64
	}
	return &Backoff{policy: p, rand: rnd}
}

// Next returns the delay before the next attempt and counts the attempt.
func (b *Backoff) Next() time.Duration {
	d := b.policy.Delay(b.attempt, b.rand())
	if b.attempt < 64 {
		b.attempt++
	}
	return d
}

// Attempts returns the number of delays handed out since the last [Backoff.Reset].
func (b *Backoff) Attempts() int { return b.attempt }

// Reset starts over from the initial delay. The connection calls it once a connection has
// proved stable (registered and up for a while), not merely on a successful dial, so a server
// that accepts and immediately drops connections still backs off.
func (b *Backoff) Reset() { b.attempt = 0 }

// Limiter is a token bucket limiting how fast connections are opened: it holds up to Burst
// tokens and gains one every Every. It is safe for concurrent use; a bridge shares one per
// network (and may chain a global one).
type Limiter struct {
	clock clock.Clock
	every time.Duration
	burst float64

	lock   sync.Mutex
	tokens float64 // may go negative: reservations waiting for future tokens
	last   time.Time
}

// NewLimiter returns a limiter that allows burst connections at once and one more every every.
// The bucket starts full. every must be positive and burst at least 1.
func NewLimiter(clk clock.Clock, every time.Duration, burst int) *Limiter {
	if every <= 0 || burst < 1 {
		panic("backoff: NewLimiter needs a positive interval and a burst of at least 1")
	}
	return &Limiter{clock: clk, every: every, burst: float64(burst), tokens: float64(burst), last: clk.Now()}
}

// Reserve takes a token and returns how long the caller must wait before using it: 0 if one was
// available. Reservations are served in call order; a caller that gives up must call
// [Limiter.Cancel] so later callers do not wait for it.
func (l *Limiter) Reserve() time.Duration {
	l.lock.Lock()
	defer l.lock.Unlock()
	l.refill()
	l.tokens--
	if l.tokens >= 0 {
		return 0
	}
	return time.Duration(-l.tokens * float64(l.every))
}

// Cancel returns a token taken by [Limiter.Reserve] and not used.
func (l *Limiter) Cancel() {
	l.lock.Lock()
	defer l.lock.Unlock()
	l.refill()
	l.tokens = min(l.tokens+1, l.burst)
}

// Wait blocks until a token is available or ctx is done; in the latter case it gives the token
// back and returns ctx's error.
func (l *Limiter) Wait(ctx context.Context) error {
	d := l.Reserve()
	if d <= 0 {
		return nil
	}
	return sleep(ctx, l.clock, d, l.Cancel)
}

// Sleep waits d on clock, or until ctx is done (then returning its error). Connections use it to
// wait the delays a [Backoff] hands out.
func Sleep(ctx context.Context, clk clock.Clock, d time.Duration) error {
	return clock.Sleep(ctx, clk, d)
}

func sleep(ctx context.Context, clk clock.Clock, d time.Duration, onCancel func()) error {
	if err := clock.Sleep(ctx, clk, d); err != nil {
		onCancel()
		return err
	}
	return nil
}

func (l *Limiter) refill() {
	now := l.clock.Now()
	if elapsed := now.Sub(l.last); elapsed > 0 {
		l.tokens = min(l.tokens+float64(elapsed)/float64(l.every), l.burst)
	}
	l.last = now
}

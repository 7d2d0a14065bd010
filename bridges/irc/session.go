package irc

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/ergochat/irc-go/ircmsg"
	"github.com/rs/zerolog"

	"github.com/custodian-matrix/custodian/bridges/irc/backoff"
	"github.com/custodian-matrix/custodian/bridges/irc/ircconn"
	"github.com/custodian-matrix/custodian/bridges/irc/ircline"
)

// session keeps one IRC connection alive: the bridge's own connection to a network, or one
// user's puppet. It dials through the bridge's shared connection-rate limiter, reconnects with
// jittered exponential backoff when the connection drops, and rejoins its channels. Callers wait
// for a usable connection with conn.
type session struct {
	net *network
	log zerolog.Logger
	// dialConfig returns the connection's configuration for the next attempt: the nick and SASL
	// credentials may have changed since the last one.
	dialConfig func(ctx context.Context) (ircconn.Config, error)
	// onConnect runs once per established connection, before waiters are released.
	onConnect func(ctx context.Context, c *ircconn.Conn)
	// onDialError is told about failed attempts; it returns true to stop trying.
	onDialError func(ctx context.Context, err error) (stop bool)

	// joinMu orders a channel's JOIN before the messages to it on each connection; joinedOn
	// says on which connection each channel's JOIN was queued. Guarded by joinMu.
	joinMu   sync.Mutex
	joinedOn map[string]*ircconn.Conn

	// loopMu serializes connect; bo is the reconnect backoff, used under loopMu.
	loopMu     sync.Mutex
	bo         *backoff.Backoff
	finishOnce sync.Once

	mu       sync.Mutex
	cur      *ircconn.Conn
	ready    chan struct{} // closed while cur is usable; replaced when it drops
	channels map[string]string
	lastUsed time.Time
	// holdUntil is when a killed connection may reconnect (see holdReconnect).
	holdUntil time.Time
	restart   bool
	cancel    context.CancelFunc
	done      chan struct{}
	stopped   bool
}

func newSession(n *network, log zerolog.Logger) *session {
	return &session{
		net:      n,
		log:      log,
		ready:    make(chan struct{}),
		channels: make(map[string]string),
		joinedOn: make(map[string]*ircconn.Conn),
		done:     make(chan struct{}),
		lastUsed: n.br.clock.Now(),
	}
}

// holdReconnect makes the next reconnect wait until until at the earliest (after a KILL).
func (s *session) holdReconnect(until time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.holdUntil.Before(s.net.br.clock.Now()) {
		// A KILL followed by its ERROR holds once.
		s.holdUntil = until
	}
}

// heldUntil returns when a killed connection may reconnect, or a past time.
func (s *session) heldUntil() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.holdUntil
}

// heldFor returns how long the next reconnect must still wait because of holdReconnect.
func (s *session) heldFor() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.holdUntil.Sub(s.net.br.clock.Now())
}

// errSessionStopped is returned by conn once the session was stopped.
var errSessionStopped = errors.New("irc: connection stopped")

// start starts connecting. It returns at once; the session runs until stop.
func (s *session) start(ctx context.Context) {
	ctx, s.cancel = context.WithCancel(ctx)
	br := s.net.br
	s.bo = backoff.New(backoff.Policy{
		Initial: br.cfg.Reconnect.Initial, Max: br.cfg.Reconnect.Max, Multiplier: 2, Jitter: 0.5,
	}, rand.Float64)
	go s.connect(ctx, nil)
}

// connect runs between connections: after one dropped (dropped is not nil) it waits the
// backoff, then dials until a connection is up, sets it up and returns; that connection's
// OnClose starts connect again. So no goroutine of the session waits while it is connected,
// which keeps an idle puppet small (ircconn's reader and writer are all it has). When ctx ends,
// connect marks the session done.
func (s *session) connect(ctx context.Context, dropped *ircconn.Conn) {
	// One connect at a time: a connection that drops at once may call it again before the call
	// that made it has returned.
	s.loopMu.Lock()
	defer s.loopMu.Unlock()
	br := s.net.br
	if dropped != nil {
		s.mu.Lock()
		if s.cur == dropped {
			s.cur = nil
			s.ready = make(chan struct{})
		}
		restart := s.restart
		s.mu.Unlock()
		if ctx.Err() != nil {
			s.finish()
			return
		}
		// A deliberate reconnect (new credentials or nick) goes at once.
		if !restart {
			delay := s.bo.Next()
			if hold := s.heldFor(); hold > delay {
				// Killed by an operator: wait rejoin_delay.
				delay = hold
			}
			s.log.Warn().AnErr("reason", dropped.Err()).Dur("retry_in", delay).Msg("IRC connection lost; reconnecting")
			if backoff.Sleep(ctx, br.clock, delay) != nil {
				s.finish()
				return
			}
		}
	}
	for ctx.Err() == nil && !s.isStopped() {
		if err := br.limiter.Wait(ctx); err != nil {
			break
		}
		cfg, err := s.dialConfig(ctx)
		var c *ircconn.Conn
		if err == nil {
			cfg.OnClose = func(c *ircconn.Conn, _ error) { go s.connect(ctx, c) }
			c, err = br.dial(ctx, cfg)
		}
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if s.onDialError != nil && s.onDialError(ctx, err) {
				s.stopLocked()
				break
			}
			delay := s.bo.Next()
			s.log.Warn().Err(err).Dur("retry_in", delay).Int("attempt", s.bo.Attempts()).Msg("Failed to connect to IRC")
			if backoff.Sleep(ctx, br.clock, delay) != nil {
				break
			}
			continue
		}
		s.bo.Reset()
		s.log.Debug().Str("nick", c.Nick()).Bool("account", c.Account() != "").Msg("Connected to IRC")
		if s.onConnect != nil {
			s.onConnect(ctx, c)
		}
		// A new connection is in no channel yet; this also lets go of the old one.
		s.joinMu.Lock()
		clear(s.joinedOn)
		s.joinMu.Unlock()
		s.mu.Lock()
		s.cur = c
		channels := make(map[string]string, len(s.channels))
		for folded, name := range s.channels {
			channels[folded] = name
		}
		s.restart = false
		close(s.ready)
		s.mu.Unlock()
		for folded, name := range channels {
			if err := s.ensureJoined(ctx, c, folded, name); err != nil {
				break
			}
		}
		if ctx.Err() != nil {
			// Stopped while connecting: the connection's OnClose finishes the session.
			_ = c.Close()
		}
		return
	}
	s.finish()
}

// finish marks the session done; it is idempotent.
func (s *session) finish() {
	s.finishOnce.Do(func() { close(s.done) })
}

// conn waits until the session has a usable connection or ctx ends. It marks the session used.
func (s *session) conn(ctx context.Context) (*ircconn.Conn, error) {
	for {
		s.mu.Lock()
		if s.stopped {
			s.mu.Unlock()
			return nil, errSessionStopped
		}
		s.lastUsed = s.net.br.clock.Now()
		c, ready := s.cur, s.ready
		s.mu.Unlock()
		if c != nil {
			select {
			case <-c.Done():
				// Dropped, and connect has not noticed yet: ready is still closed, so wait for the
				// poll below.
				ready = nil
			default:
				return c, nil
			}
		}
		recheck := s.net.br.clock.NewTimer(100 * time.Millisecond)
		select {
		case <-ready:
		case <-s.done:
			recheck.Stop()
			return nil, errSessionStopped
		case <-ctx.Done():
			recheck.Stop()
			return nil, ctx.Err()
		case <-recheck.C():
			// Re-check: the connection may have dropped between our two looks.
		}
		recheck.Stop()
	}
}

// current returns the connection if there is one right now, without waiting.
func (s *session) current() *ircconn.Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

// join makes the session be in channel (folded) from now on, across reconnects, and sends JOIN
// if it is connected and was not in it yet.
func (s *session) join(ctx context.Context, folded, name string) error {
	s.mu.Lock()
	_, had := s.channels[folded]
	s.channels[folded] = name
	c := s.cur
	s.mu.Unlock()
	if had || c == nil {
		return nil
	}
	return s.ensureJoined(ctx, c, folded, name)
}

// ensureJoined queues JOIN name on c unless that was done already. Call it before sending
// anything to the channel: a JOIN queued by another goroutine is queued before it returns.
func (s *session) ensureJoined(ctx context.Context, c *ircconn.Conn, folded, name string) error {
	s.joinMu.Lock()
	defer s.joinMu.Unlock()
	if s.joinedOn[folded] == c {
		return nil
	}
	params := []string{name}
	if key := s.net.channelKey(folded); key != "" {
		params = append(params, key)
	}
	if err := c.Send(ctx, nil, "JOIN", params...); err != nil {
		return err
	}
	s.joinedOn[folded] = c
	return nil
}

// rejoin sends JOIN for channel (folded) again, with its current key, if the session is meant to
// be in it and connected: after the key changed or the server refused the join.
func (s *session) rejoin(ctx context.Context, folded string) {
	s.mu.Lock()
	name, ok := s.channels[folded]
	c := s.cur
	s.mu.Unlock()
	if !ok || c == nil {
		return
	}
	s.forgetJoin(folded)
	if err := s.ensureJoined(ctx, c, folded, name); err != nil {
		s.log.Debug().Err(err).Msg("Failed to send JOIN again")
	}
}

// forgetJoin records that channel (folded) was not joined on the current connection (the server
// refused it), so that the next ensureJoined sends JOIN again. The channel stays on the list.
func (s *session) forgetJoin(folded string) {
	s.joinMu.Lock()
	delete(s.joinedOn, folded)
	s.joinMu.Unlock()
}

// inChannel reports whether the session is meant to be in channel (folded).
func (s *session) inChannel(folded string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.channels[folded]
	return ok
}

// part leaves channel (folded) and stops rejoining it.
func (s *session) part(ctx context.Context, folded, reason string) {
	s.mu.Lock()
	name, had := s.channels[folded]
	delete(s.channels, folded)
	c := s.cur
	s.mu.Unlock()
	s.joinMu.Lock()
	delete(s.joinedOn, folded)
	s.joinMu.Unlock()
	if had && c != nil {
		_ = c.Send(ctx, nil, "PART", name, reason)
	}
}

// forgetChannel drops channel (folded) from the channels to rejoin, without sending anything
// (we were kicked, or the server refused the join).
func (s *session) forgetChannel(folded string) {
	s.mu.Lock()
	delete(s.channels, folded)
	s.mu.Unlock()
	s.joinMu.Lock()
	delete(s.joinedOn, folded)
	s.joinMu.Unlock()
}

// reconnect drops the connection on purpose so that the loop dials again at once, with the
// configuration dialConfig then returns (new credentials, a new nick).
func (s *session) reconnect(ctx context.Context, reason string) {
	s.mu.Lock()
	c := s.cur
	s.restart = true
	s.mu.Unlock()
	if c != nil {
		quitCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_ = c.Quit(quitCtx, reason)
	}
}

// idleSince returns when the session was last used.
func (s *session) idleSince() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastUsed
}

// stop ends the session: it sends QUIT with reason if connected, waits for the server to close
// the connection until ctx ends, and stops the loop. It is idempotent.
func (s *session) stop(ctx context.Context, reason string) {
	s.mu.Lock()
	c := s.cur
	already := s.stopped
	s.stopped = true
	s.mu.Unlock()
	if c != nil && !already {
		quitCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_ = c.Quit(quitCtx, reason)
		cancel()
	}
	if s.cancel != nil {
		s.cancel()
	}
	if c != nil {
		// Whether or not QUIT went through: the connection's OnClose then finishes the session.
		_ = c.Close()
	}
	select {
	case <-s.done:
	case <-ctx.Done():
	}
}

// isStopped reports whether stop was called (or the session gave up).
func (s *session) isStopped() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopped
}

func (s *session) stopLocked() {
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
}

// handler returns the function ircconn calls for each server message: it hands the message to
// the network's inbound queue, tagged with who received it.
func (s *session) handler(p *puppet) func(c *ircconn.Conn, msg *ircmsg.Message) {
	return func(c *ircconn.Conn, msg *ircmsg.Message) {
		if p != nil && isKill(c, msg, s.net.fold) {
			// Held back here, on the reader, before the connection's OnClose starts connect.
			s.holdReconnect(s.net.br.clock.Now().Add(s.net.cfg.RejoinDelay))
		}
		if p != nil && !puppetWants(c, msg) {
			// Channel traffic is bridged from the bridge's own connection; with many puppets in
			// a channel, queueing each line once per puppet only to drop it would cost.
			return
		}
		s.net.enqueue(inbound{conn: c, msg: *msg, puppet: p})
	}
}

// puppetWants reports whether a message a puppet received is one handlePuppetMessage acts on:
// private messages and their deletions (REDACT), echoes of our own messages where they carry IDs
// we keep (see wantsEchoes), KICK, and numerics refusing a message, a topic or a JOIN (refusalNumerics).
func puppetWants(c *ircconn.Conn, msg *ircmsg.Message) bool {
	switch msg.Command {
	case "PRIVMSG", "NOTICE":
		target := ircline.Param(msg, 0)
		if target == "" || !strings.ContainsRune("#&+!", rune(target[0])) {
			return true
		}
		return wantsEchoes(c) && c.CaseMapping().Equal(msg.Nick(), c.Nick())
	case "REDACT":
		// Only a private message's deletion: a channel's reaches the bridge's connection.
		target := ircline.Param(msg, 0)
		return target != "" && !strings.ContainsRune("#&+!", rune(target[0]))
	case "KICK", "KILL", "ERROR", "474", "473", "475", "471", "403":
		return true
	}
	return refusalNumerics[msg.Command]
}

package ircconn

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/ergochat/irc-go/ircmsg"
	"github.com/ergochat/irc-go/ircutils"

	"github.com/custodian-matrix/custodian/appservice/clock"
	"github.com/custodian-matrix/custodian/bridges/irc/ircline"
)

// FallbackNick returns the nick registration tries at attempt (0 for the first): nick itself,
// then nick+"_", then nick+"1", nick+"2", and so on. A fallback longer than nickLen bytes has
// nick shortened (on a UTF-8 boundary, keeping at least its first character) so that the
// suffix fits; nick itself is never shortened. It is pure; the bridge can use it to predict the nick a
// connection will get.
func FallbackNick(nick string, attempt, nickLen int) string {
	var suffix string
	switch {
	case attempt <= 0:
		return nick
	case attempt == 1:
		suffix = "_"
	default:
		suffix = strconv.Itoa(attempt - 1)
	}
	if len(nick)+len(suffix) > nickLen {
		base := truncateUTF8(nick, nickLen-len(suffix))
		if base == "" {
			_, size := utf8.DecodeRuneInString(nick)
			base = nick[:size]
		}
		nick = base
	}
	return nick + suffix
}

// truncateUTF8 returns the longest prefix of s of at most n bytes that does not end inside a
// UTF-8 sequence. (Not ircmsg.TruncateUTF8Safe: in irc-go v0.7.0 it panics when a limit of 1
// to 3 bytes falls inside the first character.)
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	n = max(n, 0)
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// errMOTDWait interrupts the wait for the end of the MOTD; registration then succeeds.
var errMOTDWait = errors.New("irc: end of MOTD not received")

var longAgo = time.Unix(1, 0)

// watch interrupts registration (the dial, or a blocked read or write) when ctx ends or a
// timeout passes, and remembers why.
type watch struct {
	mu         sync.Mutex
	conn       net.Conn
	cause      error
	finished   bool
	cancelDial context.CancelCauseFunc
}

func (w *watch) interrupt(cause error, readOnly bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.finished || w.cause != nil {
		return
	}
	w.cause = cause
	w.cancelDial(cause)
	if w.conn == nil {
		return
	}
	if readOnly {
		_ = w.conn.SetReadDeadline(longAgo)
	} else {
		_ = w.conn.SetDeadline(longAgo)
	}
}

func (w *watch) setConn(conn net.Conn) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.conn = conn
	if w.cause != nil {
		_ = conn.SetDeadline(longAgo)
	}
	return w.cause
}

// finish stops further interruptions and returns the one that happened, if any.
func (w *watch) finish() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.finished = true
	return w.cause
}

func (w *watch) run(ctx context.Context, clk clock.Clock, timeout, motd time.Duration, welcomed, stop <-chan struct{}) {
	timer := clk.NewTimer(timeout)
	defer timer.Stop()
	var motdTick <-chan time.Time
	registered := welcomed
	for {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			w.interrupt(fmt.Errorf("irc: registration interrupted: %w", context.Cause(ctx)), false)
			return
		case <-timer.C():
			select {
			case <-registered:
				// 001 came: stop waiting for the end of the MOTD, keep the connection.
				w.interrupt(errMOTDWait, true)
			default:
				w.interrupt(ErrRegistrationTimeout, false)
			}
			return
		case <-welcomed:
			welcomed = nil
			motdTimer := clk.NewTimer(motd)
			motdTick = motdTimer.C()
			defer motdTimer.Stop()
		case <-motdTick:
			w.interrupt(errMOTDWait, true)
			return
		}
	}
}

// registration is the state of Dial's registration exchange, on the caller's goroutine.
type registration struct {
	c   *Conn
	cfg *Config

	welcomedCh chan struct{}
	offered    map[string]string // CAP LS, accumulated over continuation lines
	lsDone     bool
	pendingReq int // CAP REQ lines not yet answered
	capEnded   bool
	saslSent   bool // AUTHENTICATE PLAIN sent
	saslResp   bool // credentials sent
	saslDone   bool
	nickTry    int
	welcomed   bool
	burst      []*ircmsg.Message
}

func (r *registration) run(ctx context.Context) ([]*ircmsg.Message, error) {
	c := r.c
	dialCtx, cancelDial := context.WithCancelCause(ctx)
	defer cancelDial(nil)
	w := &watch{cancelDial: cancelDial}
	r.welcomedCh = make(chan struct{})
	stop, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		w.run(ctx, c.clock, r.cfg.RegisterTimeout, r.cfg.MOTDTimeout, r.welcomedCh, stop)
	}()
	// Dial leaves nothing behind: not the watcher, not its tickers (which a test's fake
	// clock would count).
	defer func() {
		close(stop)
		<-exited
	}()

	conn, err := r.dial(dialCtx)
	if err != nil {
		if cause := w.finish(); cause != nil {
			return nil, cause
		}
		return nil, err
	}
	c.conn = conn
	c.rd.Initialize(conn, readBufInitial, readBufMax)
	if cause := w.setConn(conn); cause != nil {
		_ = conn.Close()
		return nil, cause
	}
	err = r.register()
	cause := w.finish()
	switch {
	case cause == errMOTDWait && r.welcomed && (err == nil || errors.Is(err, os.ErrDeadlineExceeded)):
		// Give up waiting for the end of the MOTD, keep the connection.
		err = conn.SetReadDeadline(time.Time{})
	case cause != nil:
		// Whatever the read or write said, it failed because we interrupted it.
		err = cause
	}
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	return r.burst, nil
}

func (r *registration) dial(ctx context.Context) (net.Conn, error) {
	var conn net.Conn
	var err error
	if r.cfg.Dialer != nil {
		conn, err = r.cfg.Dialer(ctx, "tcp", r.cfg.Addr)
	} else {
		var d net.Dialer
		conn, err = d.DialContext(ctx, "tcp", r.cfg.Addr)
	}
	if err != nil {
		return nil, fmt.Errorf("irc: failed to connect: %w", err)
	}
	if r.cfg.TLS == nil {
		return conn, nil
	}
	tc := r.cfg.TLS.Clone()
	if tc.ServerName == "" {
		host, _, splitErr := net.SplitHostPort(r.cfg.Addr)
		if splitErr != nil {
			host = r.cfg.Addr
		}
		tc.ServerName = host
	}
	tlsConn := tls.Client(conn, tc)
	if err := tlsConn.HandshakeContext(ctx); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("irc: TLS handshake failed: %w", err)
	}
	return tlsConn, nil
}

// send writes one line during registration, straight to the socket (no writer runs yet).
func (r *registration) send(command string, params ...string) error {
	b, err := ircline.Build(nil, command, params...)
	if err != nil {
		return fmt.Errorf("irc: failed to build %s: %w", command, err)
	}
	if _, err := r.c.conn.Write(b); err != nil {
		return fmt.Errorf("irc: failed to write: %w", err)
	}
	return nil
}

func (r *registration) register() error {
	cfg := r.cfg
	if !cfg.Password.IsZero() {
		// send's errors never quote parameters, so this one cannot leak the password.
		if err := r.send("PASS", cfg.Password.Reveal()); err != nil {
			return err
		}
	}
	if err := r.send("CAP", "LS", "302"); err != nil {
		return err
	}
	if err := r.send("NICK", cfg.Nick); err != nil {
		return err
	}
	if err := r.send("USER", cfg.Username, "0", "*", ircline.Clean(cfg.RealName)); err != nil {
		return err
	}
	for {
		msg, err := r.c.next()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return err
			}
			if r.welcomed {
				return fmt.Errorf("irc: connection lost before end of MOTD: %w", err)
			}
			return fmt.Errorf("irc: connection lost during registration: %w", err)
		}
		done, err := r.handle(msg)
		if err != nil || done {
			return err
		}
	}
}

// handle processes one message during registration; it reports true when registration is
// complete.
func (r *registration) handle(msg *ircmsg.Message) (bool, error) {
	c := r.c
	if r.welcomed {
		switch msg.Command {
		case "PING":
			return false, r.send("PONG", ircline.Param(msg, 0))
		case "ERROR":
			return false, &ServerError{Reason: ircline.Param(msg, 0)}
		case "005":
			c.addISupport(msg)
		case "372":
			return false, nil // MOTD text: nobody needs it
		case "376", "422":
			r.keep(msg)
			return true, nil
		}
		if req := c.track(msg); req != nil {
			if _, err := c.conn.Write(req); err != nil {
				return false, fmt.Errorf("irc: failed to write: %w", err)
			}
		}
		r.keep(msg)
		return false, nil
	}
	switch msg.Command {
	case "PING":
		return false, r.send("PONG", ircline.Param(msg, 0))
	case "ERROR":
		return false, &ServerError{Reason: ircline.Param(msg, 0)}
	case "CAP":
		return false, r.handleCap(msg)
	case "AUTHENTICATE":
		if !r.saslSent || r.saslResp || ircline.Param(msg, 0) != "+" {
			return false, nil
		}
		r.saslResp = true
		sasl := r.cfg.SASL
		raw := []byte("\x00" + sasl.Account + "\x00" + sasl.Password.Reveal())
		for _, chunk := range ircutils.EncodeSASLResponse(raw) {
			if err := r.send("AUTHENTICATE", chunk); err != nil {
				return false, errors.New("irc: failed to send SASL response")
			}
		}
		clear(raw)
	case "900":
		c.mu.Lock()
		c.account = strings.Clone(ircline.Param(msg, 2))
		c.mu.Unlock()
	case "903", "907":
		if r.saslSent && !r.saslDone {
			r.saslDone = true
			c.log.Debug().Msg("SASL authentication succeeded")
			return false, r.endCap()
		}
	case "902", "904", "905", "906", "908":
		if r.saslSent && !r.saslDone {
			return false, &SASLError{Numeric: msg.Command}
		}
	case "433", "436", "432", "437":
		r.nickTry++
		if r.nickTry >= r.cfg.MaxNickAttempts {
			return false, fmt.Errorf("%w: %d nicks rejected", ErrNickUnavailable, r.nickTry)
		}
		c.log.Debug().Str("numeric", msg.Command).Int("attempt", r.nickTry).Msg("Nick rejected, trying fallback")
		return false, r.send("NICK", FallbackNick(r.cfg.Nick, r.nickTry, r.cfg.NickLen))
	case "001":
		if r.cfg.SASL != nil && !r.saslDone {
			// The server registered us without (or before) SASL: it has no CAP support.
			return false, fmt.Errorf("%w: server registered without capability negotiation", ErrSASLUnavailable)
		}
		r.welcomed = true
		close(r.welcomedCh)
		c.mu.Lock()
		c.nick = strings.Clone(ircline.Param(msg, 0))
		if c.nick == "" {
			c.nick = FallbackNick(r.cfg.Nick, r.nickTry, r.cfg.NickLen)
		}
		c.mu.Unlock()
		r.keep(msg)
	}
	return false, nil
}

// keep stores a message from 001 on for the handler, up to a bound.
func (r *registration) keep(msg *ircmsg.Message) {
	if len(r.burst) < maxBurst {
		r.burst = append(r.burst, msg)
	}
}

func (r *registration) handleCap(msg *ircmsg.Message) error {
	c := r.c
	switch strings.ToUpper(ircline.Param(msg, 1)) {
	case "LS":
		if r.lsDone {
			return nil
		}
		if r.offered == nil {
			r.offered = make(map[string]string)
		}
		for _, token := range capList(msg) {
			if len(r.offered) >= maxCaps {
				break
			}
			name, value, _ := strings.Cut(token, "=")
			r.offered[name] = value
		}
		if ircline.Param(msg, 2) == "*" && len(msg.Params) >= 4 {
			return nil // more to come
		}
		r.lsDone = true
		return r.requestCaps()
	case "ACK", "NAK":
		if strings.EqualFold(ircline.Param(msg, 1), "ACK") {
			c.mu.Lock()
			for _, name := range capList(msg) {
				c.ackCap(name)
			}
			c.mu.Unlock()
		}
		if r.pendingReq == 0 {
			return nil
		}
		if r.pendingReq--; r.pendingReq > 0 {
			return nil
		}
		return r.afterCaps()
	case "DEL":
		c.capUpdate(msg)
	}
	return nil
}

// requestCaps sends CAP REQ for the wanted capabilities the server offers, in lines short
// enough for any server, or moves on if there are none.
func (r *registration) requestCaps() error {
	var want []string
	for _, name := range r.c.wantCaps {
		if _, ok := r.offered[name]; ok && !hasString(want, name) {
			want = append(want, name)
		}
	}
	if r.cfg.SASL != nil {
		mechs, ok := r.offered["sasl"]
		if !ok {
			return fmt.Errorf("%w: server does not offer sasl", ErrSASLUnavailable)
		}
		if mechs != "" && !hasString(strings.Split(mechs, ","), "PLAIN") {
			return fmt.Errorf("%w: server does not offer PLAIN", ErrSASLUnavailable)
		}
		want = append(want, "sasl")
	}
	r.c.log.Debug().Int("offered", len(r.offered)).Int("requested", len(want)).Msg("Requesting IRC capabilities")
	r.offered = nil
	var line []string
	n := 0
	flush := func() error {
		if len(line) == 0 {
			return nil
		}
		r.pendingReq++
		err := r.send("CAP", "REQ", strings.Join(line, " "))
		line, n = line[:0], 0
		return err
	}
	for _, name := range want {
		if n+len(name)+1 > 300 {
			if err := flush(); err != nil {
				return err
			}
		}
		line = append(line, name)
		n += len(name) + 1
	}
	if err := flush(); err != nil {
		return err
	}
	if r.pendingReq == 0 {
		return r.afterCaps()
	}
	return nil
}

// afterCaps runs once every CAP REQ was answered: SASL if configured, else CAP END.
func (r *registration) afterCaps() error {
	if r.cfg.SASL == nil {
		return r.endCap()
	}
	if !r.c.HasCap("sasl") {
		return fmt.Errorf("%w: server refused the sasl capability", ErrSASLUnavailable)
	}
	r.saslSent = true
	return r.send("AUTHENTICATE", "PLAIN")
}

func (r *registration) endCap() error {
	if r.capEnded {
		return nil
	}
	r.capEnded = true
	return r.send("CAP", "END")
}

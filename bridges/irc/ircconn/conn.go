package ircconn

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ergochat/irc-go/ircmsg"
	"github.com/ergochat/irc-go/ircreader"
	"github.com/rs/zerolog"

	"github.com/custodian-matrix/custodian/appservice/clock"
	"github.com/custodian-matrix/custodian/appservice/vault"
	"github.com/custodian-matrix/custodian/bridges/irc/backoff"
	"github.com/custodian-matrix/custodian/bridges/irc/ircid"
	"github.com/custodian-matrix/custodian/bridges/irc/ircline"
)

// Defaults for the zero values of [Config]'s fields.
const (
	DefaultPingInterval    = 2 * time.Minute
	DefaultPingTimeout     = time.Minute
	DefaultRegisterTimeout = 30 * time.Second
	DefaultMOTDTimeout     = 5 * time.Second
	DefaultMaxNickAttempts = 10
	DefaultNickLen         = 30
)

// QueueLen is how many lines [Conn.Send] can queue ahead of the writer before it blocks. It is
// small on purpose: flood control should push back on the caller rather than buffer.
const QueueLen = 4

const (
	readBufInitial = 512
	// The reader's hard cap: the longest line ircline.Parse accepts, plus its CRLF.
	readBufMax = ircline.MaxInboundLen + 2
	// Bounds on what a hostile server can make a connection store.
	maxISupport   = 256
	maxCaps       = 256
	maxBurst      = 512
	maxQuitReason = 400
)

// DefaultCaps returns the IRCv3 capabilities requested when [Config.Caps] is nil. It leaves
// out echo-message (the bridge tracks its own sends) and sasl (requested only with
// [Config.SASL]). Each call returns a new slice.
func DefaultCaps() []string {
	return []string{
		"server-time", "message-tags", "account-tag", "extended-join", "multi-prefix",
		"away-notify", "chghost", "setname", "batch", "draft/message-redaction",
	}
}

// SASL mechanisms [SASL.Mechanism] may name.
const (
	MechanismPlain    = "PLAIN"
	MechanismExternal = "EXTERNAL"
)

// SASL holds credentials for SASL, with an empty authorization identity: PLAIN (account and
// password) or EXTERNAL (the TLS client certificate of [Config.TLS], whose fingerprint the
// network's services know).
type SASL struct {
	// Mechanism is [MechanismPlain] (also when empty) or [MechanismExternal].
	Mechanism string
	// Account is the services account name (PLAIN only).
	Account string
	// Password is sent only base64-encoded in AUTHENTICATE and only after the server
	// acknowledged the sasl capability; it is never logged or put in an error (PLAIN only).
	Password vault.Secret
}

// mechanism returns the SASL mechanism, upper case.
func (s *SASL) mechanism() string {
	if s.Mechanism == "" {
		return MechanismPlain
	}
	return strings.ToUpper(s.Mechanism)
}

// Identify holds credentials sent to a services bot after registration, for networks without
// SASL: "PRIVMSG <Service> :IDENTIFY <Account> <Password>".
type Identify struct {
	// Service is the target of the services bot: its nick (NickServ) or, where the network
	// supports it, nick@server (NickServ@services.), which only the services server can
	// receive, so that whoever holds the nick cannot collect the password.
	Service string
	// Account is the services account name; empty sends "IDENTIFY <Password>", which
	// identifies to the account of the current nick.
	Account string
	// Password is never logged or put in an error.
	Password vault.Secret
}

// Config describes one connection. Zero values mean the documented defaults; [Dial] does
// not modify or retain the Config (it copies what it needs).
type Config struct {
	// Addr is the server's host:port. Required.
	Addr string
	// TLS, if not nil, wraps the connection in TLS with this configuration; an empty
	// ServerName is taken from Addr's host. Nil means plain TCP.
	TLS *tls.Config
	// Password, if not zero, is sent as the server password (PASS) before NICK, for
	// bouncers and private servers. Prefer SASL for services accounts.
	Password vault.Secret
	// Nick is the nick to register with; it must satisfy ircid.ValidNick. Required.
	Nick string
	// Username is the ident user name in USER; empty means Nick.
	Username string
	// RealName is the real name (gecos) in USER; empty means Nick. CR, LF and NUL are
	// replaced.
	RealName string
	// SASL, if not nil, makes registration authenticate with SASL PLAIN or EXTERNAL, and fail
	// with [ErrSASLUnavailable] or a [*SASLError] rather than register without it. EXTERNAL
	// needs TLS with a client certificate in [Config.TLS] (without one the server refuses it).
	SASL *SASL
	// Identify, if not nil, is sent to its services bot once registration is complete, before
	// Dial returns (so before any JOIN the caller sends). Dial does not wait for the answer:
	// services differ in how they reply.
	Identify *Identify
	// Caps are the capabilities requested if the server offers them; nil means
	// [DefaultCaps], an empty non-nil slice requests none. "sasl" is ignored here.
	Caps []string
	// LineRate and LineBurst are the flood control of [Conn.Send]: a token bucket that allows
	// LineBurst lines at once and one more every LineRate. LineRate 0 means unlimited;
	// LineBurst below 1 means 1. Replies to PING, keepalive PINGs, CAP requests and QUIT
	// bypass it.
	LineRate  time.Duration
	LineBurst int
	// PingInterval is how long the server may stay silent before the connection sends a
	// PING (default 2 min); PingTimeout is how long it then waits for any line before
	// ending the connection with [ErrPingTimeout] (default 1 min). Both are checked every
	// half of the smaller one, so an idle connection notices a dead server within about
	// PingInterval+PingTimeout+half of the smaller. PingTimeout also bounds each socket
	// write, on the wall clock (a socket deadline), so a server that stops reading cannot
	// wedge the writer.
	PingInterval time.Duration
	PingTimeout  time.Duration
	// RegisterTimeout bounds all of Dial: connecting, TLS, CAP, SASL and waiting for 001
	// (default 30 s). Exceeding it before 001 fails Dial with [ErrRegistrationTimeout]; after
	// 001 it only cuts short the wait for the end of the MOTD.
	RegisterTimeout time.Duration
	// MOTDTimeout is how long Dial waits after 001 for the end of the MOTD (376 or 422)
	// before returning anyway (default 5 s). ISUPPORT arrives before the MOTD.
	MOTDTimeout time.Duration
	// MaxNickAttempts is how many nicks registration tries when the server rejects one with
	// 433, 436, 432 or 437 (default 10) before failing with [ErrNickUnavailable]. The nicks
	// are, in order: Nick, Nick+"_", Nick+"1", Nick+"2", …; see [FallbackNick].
	MaxNickAttempts int
	// NickLen is the longest nick the network accepts, to which fallback nicks are
	// truncated (default 30). ISUPPORT NICKLEN only arrives after registration, so callers
	// that know it from an earlier connection ([Conn.ISupport]) should pass it here.
	NickLen int
	// Dialer, if not nil, opens the TCP connection instead of a [net.Dialer] (for proxies,
	// binding a source address, or tests). It must honour ctx.
	Dialer func(ctx context.Context, network, addr string) (net.Conn, error)
	// Handler is called for every message the server sends from 001 on, except PING (which
	// the connection answers) and the MOTD text (372); lines before 001 (NOTICE AUTH, CAP,
	// SASL) are the connection's business. It is called serially on the reader goroutine:
	// first the messages received during Dial (at most 512), possibly before Dial returns,
	// then each line as it arrives. An ERROR is handed over before the connection ends.
	// The connection's state (Nick, Account, HasCap, ISupport) is updated before Handler
	// sees the message that changed it. While Handler runs nothing is read, so it must not
	// block for long ([Conn.Send] may block under flood control, and a handler blocked past
	// PingTimeout makes the connection time out). msg is the handler's to
	// keep. A panic in Handler is recovered and logged with the command only, and the
	// connection goes on with the next message. Nil means messages only update the
	// connection's state.
	Handler func(c *Conn, msg *ircmsg.Message)
	// OnClose, if not nil, is called exactly once when a connection returned by Dial ends,
	// with [Conn.Err] (never nil), after both goroutines have stopped and before
	// [Conn.Done] is closed. It runs on the last of the connection's goroutines, so it must
	// not wait for Done; it may start a reconnect, preferably in a new goroutine. It is not
	// called when Dial fails.
	OnClose func(c *Conn, err error)
	// Clock supplies the time for every timeout and for flood control; nil means
	// [clock.Real].
	Clock clock.Clock
	// Log receives lifecycle and debug events: commands, numerics, counts, never line
	// contents or credentials. Nil means no logging.
	Log *zerolog.Logger
}

var nopLog = zerolog.Nop()

// Conn is one registered IRC connection, returned by [Dial]. All its methods are safe for
// concurrent use. It ends when the server closes it, on a read, write or ping failure, on
// [Conn.Quit] or [Conn.Close]; it never reconnects by itself.
type Conn struct {
	conn net.Conn
	rd   ircreader.Reader // used by registration, then by the reader goroutine only
	skip bool             // reader only: the next line is the tail of an overlong one

	handler      func(*Conn, *ircmsg.Message)
	onClose      func(*Conn, error)
	clock        clock.Clock
	log          *zerolog.Logger
	wantCaps     []string
	limiter      *backoff.Limiter // nil: unlimited
	pingInterval time.Duration
	pingTimeout  time.Duration

	queue   chan []byte   // Send → writer, flood controlled
	prio    chan []byte   // reader/Quit → writer, ahead of the queue
	closing chan struct{} // closed when the connection starts to end
	done    chan struct{} // closed after both goroutines and OnClose returned

	closeOnce sync.Once
	local     atomic.Bool  // Quit or Close was called
	running   atomic.Int32 // goroutines still running
	lastRecv  atomic.Int64 // Clock time of the last line received, in Unix nanoseconds
	dropped   atomic.Uint64

	mu       sync.Mutex
	nick     string
	account  string
	caps     []string
	isupport map[string]string
	casemap  ircid.CaseMapping
	err      error
}

// Dial connects to cfg.Addr, registers and returns the connection with its reader and writer
// running. It blocks until registration is complete: the server sent 001, ISUPPORT and the
// end of the MOTD (or [Config.MOTDTimeout] passed after 001). On error nothing is left
// running and the error says why: [ErrRegistrationTimeout], ctx's error, [ErrSASLUnavailable],
// a [*SASLError], [ErrNickUnavailable], a [*ServerError], io.EOF (wrapped) if the server hung
// up, or a network error. It may be called concurrently for any number of connections.
func Dial(ctx context.Context, cfg Config) (*Conn, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	c := &Conn{
		handler:      cfg.Handler,
		onClose:      cfg.OnClose,
		clock:        cfg.Clock,
		log:          cfg.Log,
		pingInterval: cfg.PingInterval,
		pingTimeout:  cfg.PingTimeout,
		queue:        make(chan []byte, QueueLen),
		prio:         make(chan []byte, 2),
		closing:      make(chan struct{}),
		done:         make(chan struct{}),
	}
	for _, name := range cfg.Caps {
		if name != "sasl" && name != "" {
			c.wantCaps = append(c.wantCaps, name)
		}
	}
	if cfg.LineRate > 0 {
		c.limiter = backoff.NewLimiter(c.clock, cfg.LineRate, max(cfg.LineBurst, 1))
	}
	r := &registration{c: c, cfg: &cfg}
	burst, err := r.run(ctx)
	if err != nil {
		return nil, err
	}
	c.lastRecv.Store(c.clock.Now().UnixNano())
	// The keepalive ticker exists before Dial returns, so a test's fake clock can drive it.
	check := min(c.pingInterval, c.pingTimeout) / 2
	pingTicker := c.clock.NewTicker(max(check, time.Millisecond))
	c.log.Debug().Int("caps", len(c.caps)).Bool("sasl", c.account != "").Msg("Registered with IRC server")
	c.running.Store(2)
	go c.writeLoop(pingTicker)
	go c.readLoop(burst)
	return c, nil
}

func (cfg *Config) validate() error {
	switch {
	case cfg.Addr == "":
		return fmt.Errorf("%w: address is empty", ErrInvalidConfig)
	case !ircid.ValidNick(cfg.Nick):
		return fmt.Errorf("%w: nick is not a valid IRC nick", ErrInvalidConfig)
	case cfg.Username != "" && !validUser(cfg.Username):
		return fmt.Errorf("%w: username is not a valid IRC user name", ErrInvalidConfig)
	case cfg.SASL != nil && cfg.SASL.mechanism() != MechanismPlain && cfg.SASL.mechanism() != MechanismExternal:
		return fmt.Errorf("%w: unsupported SASL mechanism", ErrInvalidConfig)
	case cfg.SASL != nil && cfg.SASL.mechanism() == MechanismPlain && cfg.SASL.Account == "":
		return fmt.Errorf("%w: SASL account is empty", ErrInvalidConfig)
	case cfg.Identify != nil && (!ValidServiceTarget(cfg.Identify.Service) || strings.ContainsAny(cfg.Identify.Account, " \r\n\x00") ||
		strings.ContainsAny(cfg.Identify.Password.Reveal(), "\r\n\x00")):
		return fmt.Errorf("%w: IDENTIFY service, account or password is not valid", ErrInvalidConfig)
	case cfg.SASL != nil && strings.ContainsRune(cfg.SASL.Account, 0):
		return fmt.Errorf("%w: SASL account contains NUL", ErrInvalidConfig)
	case cfg.SASL != nil && strings.ContainsRune(cfg.SASL.Password.Reveal(), 0):
		return fmt.Errorf("%w: SASL password contains NUL", ErrInvalidConfig)
	case strings.ContainsAny(cfg.Password.Reveal(), "\r\n\x00"):
		return fmt.Errorf("%w: server password contains CR, LF or NUL", ErrInvalidConfig)
	}
	return nil
}

func validUser(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c == '@' || c == 0x7f {
			return false
		}
	}
	return s != "" && s[0] != ':'
}

func (cfg *Config) setDefaults() {
	if cfg.Username == "" {
		cfg.Username = cfg.Nick
	}
	if cfg.RealName == "" {
		cfg.RealName = cfg.Nick
	}
	if cfg.Caps == nil {
		cfg.Caps = DefaultCaps()
	}
	if cfg.PingInterval <= 0 {
		cfg.PingInterval = DefaultPingInterval
	}
	if cfg.PingTimeout <= 0 {
		cfg.PingTimeout = DefaultPingTimeout
	}
	if cfg.RegisterTimeout <= 0 {
		cfg.RegisterTimeout = DefaultRegisterTimeout
	}
	if cfg.MOTDTimeout <= 0 {
		cfg.MOTDTimeout = DefaultMOTDTimeout
	}
	if cfg.MaxNickAttempts <= 0 {
		cfg.MaxNickAttempts = DefaultMaxNickAttempts
	}
	if cfg.NickLen <= 0 {
		cfg.NickLen = DefaultNickLen
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Log == nil {
		cfg.Log = &nopLog
	}
}

// Send queues one line for the writer: command and params are built with ircline.Build, which
// refuses CR, LF and NUL anywhere, a malformed middle parameter ([ircline.ErrUnsafe]) and a
// line over 510 bytes without tags ([ircline.ErrTooLong]); tags may be nil. It blocks while
// [QueueLen] lines wait for flood control, until ctx ends (returning ctx's error). It returns
// [ErrClosed] once Quit or Close was called or the connection ended. A nil error means the
// line was queued, not that the server received it. Safe for concurrent use, including from
// Handler (which then holds up reading while it blocks).
func (c *Conn) Send(ctx context.Context, tags map[string]string, command string, params ...string) error {
	b, err := ircline.Build(tags, command, params...)
	if err != nil {
		return fmt.Errorf("irc: failed to build line: %w", err)
	}
	if c.local.Load() {
		return ErrClosed
	}
	select {
	case <-c.closing:
		return ErrClosed
	default:
	}
	select {
	case c.queue <- b:
		return nil
	case <-c.closing:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Quit sends QUIT with reason (cleaned of CR, LF and NUL and shortened to 400 bytes; empty
// sends no reason) ahead of any queued lines, which are then discarded, and waits until the
// server closes the connection or ctx ends; then the connection is closed. It returns nil if
// the server closed the connection, ctx's error if ctx ended first, and [ErrClosed] if the
// connection was already closing. [Conn.Err] is then [ErrClosed]. Called from Handler it
// can only return when ctx ends, since the reader is what notices the server closing; use
// Close there.
func (c *Conn) Quit(ctx context.Context, reason string) error {
	var params []string
	if reason = truncateUTF8(ircline.Clean(reason), maxQuitReason); reason != "" {
		params = []string{reason}
	}
	b, err := ircline.Build(nil, "QUIT", params...)
	if err != nil {
		b = []byte("QUIT\r\n")
	}
	if c.local.Swap(true) {
		return ErrClosed
	}
	select {
	case <-c.closing:
		return ErrClosed
	default:
	}
	select {
	case c.prio <- b:
	case <-c.closing:
		return nil
	case <-ctx.Done():
		c.Close()
		return ctx.Err()
	}
	select {
	case <-c.closing:
		return nil
	case <-ctx.Done():
		c.Close()
		return ctx.Err()
	}
}

// Close closes the connection at once, without QUIT, and returns nil. It does not wait for
// the goroutines (use [Conn.Done]); lines still queued are dropped. It is idempotent and may
// be called from anywhere, including Handler and OnClose. [Conn.Err] is then [ErrClosed].
func (c *Conn) Close() error {
	c.local.Store(true)
	c.shutdown(ErrClosed)
	return nil
}

// Done returns a channel that is closed when the connection has ended: both goroutines
// returned and OnClose was called.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err returns nil while the connection is up, and once it has ended (certainly once Done is
// closed) why: [ErrClosed] after Close or Quit (whatever the server did next),
// [ErrPingTimeout], a [*ServerError], io.EOF wrapped if the server hung up, or a wrapped
// network error.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Nick returns the connection's current nick: the one in 001, then updated by the server's
// NICK messages about us.
func (c *Conn) Nick() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nick
}

// Account returns the services account we are logged in to (from 900), or "" if none.
func (c *Conn) Account() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.account
}

// HasCap reports whether capability name is enabled (acknowledged and not deleted).
func (c *Conn) HasCap(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return hasString(c.caps, name)
}

// Caps returns the enabled capabilities, in the order they were acknowledged, as a new
// slice.
func (c *Conn) Caps() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.caps...)
}

// ISupport returns the value of the ISUPPORT (005) token key (case-insensitive; values have
// \xHH escapes decoded) and whether the server sent it; a token without a value is "", true.
func (c *Conn) ISupport(key string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.isupport[strings.ToUpper(key)]
	return v, ok
}

// CaseMapping returns the network's casemapping: ISUPPORT CASEMAPPING, rfc1459 if absent,
// and ascii for values ircid does not know (rfc8265/precis fold Unicode; ascii folding is
// the subset that is right for them).
func (c *Conn) CaseMapping() ircid.CaseMapping {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.casemap
}

// Network returns ISUPPORT NETWORK, the network's name as it calls itself, or "".
func (c *Conn) Network() string {
	v, _ := c.ISupport("NETWORK")
	return v
}

// Dropped returns how many lines were dropped because ircline.Parse rejected them
// (overlong, NUL, stray CR, bad tags, no command), since Dial began.
func (c *Conn) Dropped() uint64 { return c.dropped.Load() }

func hasString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// next returns the next well-formed message, dropping and counting malformed lines.
func (c *Conn) next() (*ircmsg.Message, error) {
	for {
		line, err := c.rd.ReadLine()
		if errors.Is(err, ircreader.ErrReadQ) {
			// The buffer is full of one unterminated line; start afresh and discard the
			// rest of it, which must not be parsed as a line of its own.
			if !c.skip {
				c.drop(ircline.ErrTooLong)
			}
			c.rd.Initialize(c.conn, readBufInitial, readBufMax)
			c.skip = true
			continue
		}
		if err != nil {
			return nil, err
		}
		c.lastRecv.Store(c.clock.Now().UnixNano())
		if c.skip {
			c.skip = false
			continue
		}
		if len(line) == 0 {
			continue
		}
		msg, err := ircline.Parse(string(line))
		if err != nil {
			c.drop(err)
			continue
		}
		return &msg, nil
	}
}

func (c *Conn) drop(err error) {
	n := c.dropped.Add(1)
	c.log.Debug().Err(err).Uint64("dropped_lines", n).Msg("Dropped malformed IRC line")
}

func (c *Conn) readLoop(burst []*ircmsg.Message) {
	defer c.exit()
	c.replay(burst)
	for {
		msg, err := c.next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("irc: connection closed by server: %w", err)
			} else {
				err = fmt.Errorf("irc: failed to read: %w", err)
			}
			c.shutdown(err)
			return
		}
		if !c.process(msg) {
			return
		}
	}
}

// replay hands the messages received during registration to the handler.
func (c *Conn) replay(burst []*ircmsg.Message) {
	for _, msg := range burst {
		c.dispatch(msg)
	}
}

// process updates the connection's state from msg and hands it to the handler. It reports
// false when the connection ends.
func (c *Conn) process(msg *ircmsg.Message) bool {
	switch msg.Command {
	case "PING":
		c.sendPrio(pong(msg))
		return true
	case "ERROR":
		c.dispatch(msg)
		c.shutdown(&ServerError{Reason: ircline.Param(msg, 0)})
		return false
	}
	if req := c.track(msg); req != nil {
		c.sendPrio(req)
	}
	c.dispatch(msg)
	return true
}

// track updates the connection's own state (nick, account, capabilities, ISUPPORT) from a
// message received after 001. It returns a line to send in reply, or nil.
func (c *Conn) track(msg *ircmsg.Message) []byte {
	switch msg.Command {
	case "NICK":
		c.mu.Lock()
		if c.casemap.Equal(msg.Nick(), c.nick) && ircline.Param(msg, 0) != "" {
			c.nick = strings.Clone(ircline.Param(msg, 0))
		}
		c.mu.Unlock()
	case "005":
		c.addISupport(msg)
	case "900":
		c.mu.Lock()
		c.account = strings.Clone(ircline.Param(msg, 2))
		c.mu.Unlock()
	case "901":
		c.mu.Lock()
		c.account = ""
		c.mu.Unlock()
	case "CAP":
		return c.capUpdate(msg)
	}
	return nil
}

func pong(msg *ircmsg.Message) []byte {
	b, err := ircline.Build(nil, "PONG", ircline.Param(msg, 0))
	if err != nil {
		// Only an overlong token gets here; an empty PONG still proves we are alive.
		b = []byte("PONG\r\n")
	}
	return b
}

// capUpdate applies CAP ACK, DEL and NEW after registration and returns a CAP REQ line for
// newly offered capabilities we want, or nil.
func (c *Conn) capUpdate(msg *ircmsg.Message) []byte {
	list := capList(msg)
	c.mu.Lock()
	defer c.mu.Unlock()
	switch strings.ToUpper(ircline.Param(msg, 1)) {
	case "ACK":
		for _, name := range list {
			c.ackCap(name)
		}
	case "DEL":
		for _, name := range list {
			c.caps = removeString(c.caps, capName(name))
		}
	case "NEW":
		var req []string
		for _, name := range list {
			name = capName(name)
			if hasString(c.wantCaps, name) && !hasString(c.caps, name) && !hasString(req, name) {
				req = append(req, name)
			}
		}
		if len(req) > 0 {
			if b, err := ircline.Build(nil, "CAP", "REQ", strings.Join(req, " ")); err == nil {
				return b
			}
		}
	}
	return nil
}

// ackCap records an acknowledged capability; c.mu must be held.
func (c *Conn) ackCap(name string) {
	if strings.HasPrefix(name, "-") {
		c.caps = removeString(c.caps, name[1:])
		return
	}
	name = strings.TrimPrefix(name, "~")
	if name != "" && !hasString(c.caps, name) && len(c.caps) < maxCaps {
		c.caps = append(c.caps, strings.Clone(name))
	}
}

func capList(msg *ircmsg.Message) []string {
	if len(msg.Params) < 3 {
		return nil
	}
	return strings.Fields(msg.Params[len(msg.Params)-1])
}

// capName strips the "=value" of a CAP LS or NEW token.
func capName(token string) string {
	name, _, _ := strings.Cut(token, "=")
	return name
}

func removeString(list []string, s string) []string {
	for i, v := range list {
		if v == s {
			return append(list[:i], list[i+1:]...)
		}
	}
	return list
}

// addISupport records the tokens of a 005 reply.
func (c *Conn) addISupport(msg *ircmsg.Message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.isupport == nil {
		c.isupport = make(map[string]string)
	}
	for i := 1; i < len(msg.Params); i++ {
		token := msg.Params[i]
		// The trailing "are supported by this server" is the one parameter with spaces.
		if token == "" || strings.IndexByte(token, ' ') >= 0 {
			continue
		}
		if token[0] == '-' {
			delete(c.isupport, strings.ToUpper(token[1:]))
			continue
		}
		key, value, _ := strings.Cut(token, "=")
		key = strings.ToUpper(key)
		if _, ok := c.isupport[key]; !ok && len(c.isupport) >= maxISupport {
			continue
		}
		c.isupport[strings.Clone(key)] = unescapeISupport(value)
	}
	cm, ok := ircid.ParseCaseMapping(c.isupport["CASEMAPPING"])
	if !ok {
		cm = ircid.ASCII
	}
	c.casemap = cm
}

// unescapeISupport decodes the \xHH escapes of an ISUPPORT value; it always returns a copy.
func unescapeISupport(v string) string {
	if strings.IndexByte(v, '\\') < 0 {
		return strings.Clone(v)
	}
	var b strings.Builder
	b.Grow(len(v))
	for i := 0; i < len(v); i++ {
		if v[i] == '\\' && i+3 < len(v) && v[i+1] == 'x' && unhex(v[i+2]) >= 0 && unhex(v[i+3]) >= 0 {
			b.WriteByte(byte(unhex(v[i+2])<<4 | unhex(v[i+3])))
			i += 3
			continue
		}
		b.WriteByte(v[i])
	}
	return b.String()
}

func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

func (c *Conn) dispatch(msg *ircmsg.Message) {
	if c.handler == nil {
		return
	}
	defer func() {
		if r := recover(); r != nil {
			evt := c.log.Error().Str("command", msg.Command).Str("panic_type", fmt.Sprintf("%T", r))
			if re, ok := r.(runtime.Error); ok {
				// Runtime errors (nil dereference, index out of range) carry no message text.
				evt = evt.Str("panic", re.Error())
			}
			evt.Str("stack", string(debug.Stack())).Msg("IRC message handler panicked")
		}
	}()
	c.handler(c, msg)
}

// sendPrio hands a line to the writer ahead of the queue, unless the connection is ending.
func (c *Conn) sendPrio(b []byte) {
	select {
	case c.prio <- b:
	case <-c.closing:
	}
}

var (
	quitPrefix = []byte("QUIT")
	pingLine   = []byte("PING :ircconn\r\n")
)

func (c *Conn) writeLoop(pingTicker clock.Ticker) {
	defer c.exit()
	defer pingTicker.Stop()
	var (
		pending    []byte // a queued line waiting for a flood-control token
		tokenTick  <-chan time.Time
		tokenTimer clock.Timer
		pingOut    bool  // a keepalive PING is unanswered
		pingSent   int64 // when it was sent, Unix nanoseconds
		quitSent   bool
	)
	defer func() {
		if tokenTimer != nil {
			tokenTimer.Stop()
		}
	}()
	for {
		queue := c.queue
		if pending != nil || quitSent {
			queue = nil
		}
		var b []byte
		select {
		case <-c.closing:
			return
		case b = <-c.prio:
			if bytes.HasPrefix(b, quitPrefix) {
				quitSent, pending = true, nil
			}
		case b = <-queue:
			if c.limiter != nil {
				if d := c.limiter.Reserve(); d > 0 {
					pending, b = b, nil
					tokenTimer = c.clock.NewTimer(d)
					tokenTick = tokenTimer.C()
				}
			}
		case <-tokenTick:
			tokenTimer.Stop()
			tokenTick, tokenTimer = nil, nil
			b, pending = pending, nil
		case <-pingTicker.C():
			now, last := c.clock.Now().UnixNano(), c.lastRecv.Load()
			if pingOut && last >= pingSent {
				pingOut = false
			}
			switch {
			case pingOut && time.Duration(now-pingSent) >= c.pingTimeout:
				c.shutdown(ErrPingTimeout)
				return
			case !pingOut && time.Duration(now-last) >= c.pingInterval:
				b, pingOut, pingSent = pingLine, true, now
			}
		}
		if b == nil {
			continue
		}
		if err := c.write(b); err != nil {
			c.shutdown(fmt.Errorf("irc: failed to write: %w", err))
			return
		}
	}
}

func (c *Conn) write(b []byte) error {
	// Socket deadlines are wall-clock by nature; this one only unsticks a writer whose
	// server stopped reading.
	if err := c.conn.SetWriteDeadline(time.Now().Add(c.pingTimeout)); err != nil {
		return err
	}
	_, err := c.conn.Write(b)
	return err
}

// shutdown starts ending the connection, recording why; only the first call counts.
func (c *Conn) shutdown(err error) {
	c.closeOnce.Do(func() {
		if c.local.Load() {
			err = ErrClosed
		}
		c.mu.Lock()
		c.err = err
		c.mu.Unlock()
		close(c.closing)
		_ = c.conn.Close()
	})
}

// exit is deferred by both goroutines; the last one out finishes the connection.
func (c *Conn) exit() {
	if c.running.Add(-1) != 0 {
		return
	}
	err := c.Err()
	c.log.Debug().Err(err).Uint64("dropped_lines", c.dropped.Load()).Msg("IRC connection ended")
	if c.onClose != nil {
		c.onClose(c, err)
	}
	close(c.done)
}

// ValidServiceTarget reports whether s is a services target IDENTIFY may go to: a nick, or
// nick@server with a server name of letters, digits, '.', '-' and '_'.
func ValidServiceTarget(s string) bool {
	nick, server, full := strings.Cut(s, "@")
	if !ircid.ValidNick(nick) {
		return false
	}
	if !full {
		return true
	}
	if server == "" || len(server) > 253 {
		return false
	}
	for _, c := range server {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

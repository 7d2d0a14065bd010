package irctest

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ergochat/irc-go/ircmsg"

	"github.com/custodian-matrix/custodian/bridges/irc/ircid"
)

// ServerName is the server's name: the source of its numerics and of [Server.Kick].
const ServerName = "irctest.test"

// NickLen is the longest nick the server accepts, as announced in ISUPPORT.
const NickLen = 30

// Defaults of the options.
const (
	// DefaultHistory is how many received lines [Server.WaitFor] and [Server.Lines] can see.
	DefaultHistory = 10000
	// DefaultSendQ is how many bytes may wait to be written to one client before the server
	// disconnects it.
	DefaultSendQ = 1 << 20
	// DefaultWaitTimeout bounds [Server.WaitFor], [Server.WaitUntil] and the raw client's
	// registration.
	DefaultWaitTimeout = 15 * time.Second
	// DefaultNetwork is the network name in ISUPPORT NETWORK.
	DefaultNetwork = "TestNet"
)

// writeTimeout unsticks a writer whose client stopped reading; the sendq bound is what
// normally catches such a client.
const writeTimeout = 10 * time.Second

// DefaultCaps returns the capabilities offered when [WithCaps] is not given, as CAP LS 302
// tokens. Each call returns a new slice.
func DefaultCaps() []string {
	return []string{"sasl=PLAIN", "server-time", "message-tags", "account-tag", "multi-prefix"}
}

// Option configures a [Server].
type Option func(*options)

type options struct {
	addr        string
	caps        []string
	network     string
	history     int
	sendQ       int
	waitTimeout time.Duration
	now         func() time.Time
	trace       func(format string, args ...any)
	holdReg     func(nick string) <-chan struct{}
	tls         *tls.Config
	identd      func() string
	accounts    []account
}

// WithAccount adds a services account from the start, as [Server.AddAccount] does later.
func WithAccount(name, password string) Option {
	return func(o *options) { o.accounts = append(o.accounts, account{name: name, password: password}) }
}

// WithTLS makes the server speak TLS with cert, asking clients for a certificate (any, not
// verified), whose SHA-256 fingerprint SASL EXTERNAL matches against [Server.AddCertFP].
func WithTLS(cert tls.Certificate) Option {
	return func(o *options) {
		o.tls = &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequestClientCert, MinVersion: tls.VersionTLS12}
	}
}

// WithIdentd makes the server ask the ident server at addr() (host:port; called for each
// query, so that server may start after this one) who owns each client connection, as real
// servers ask port 113 of the client's host: once the client's first line arrived, with a
// timeout of 5 seconds. A client that was answered shows its ident user name without the "~"
// of unverified ones ([Server.User]).
func WithIdentd(addr func() string) Option { return func(o *options) { o.identd = addr } }

// WithAddr makes the server listen on addr instead of 127.0.0.1:0.
func WithAddr(addr string) Option { return func(o *options) { o.addr = addr } }

// WithCaps sets the capabilities offered in CAP LS, as CAP LS 302 tokens ("sasl=PLAIN",
// "server-time"). Only sasl, server-time, message-tags, account-tag, echo-message,
// extended-join and multi-prefix change what the server does; others can be requested and do
// nothing. No arguments offers none.
func WithCaps(caps ...string) Option {
	return func(o *options) { o.caps = append([]string{}, caps...) }
}

// WithNetwork sets the network name announced in ISUPPORT NETWORK.
func WithNetwork(name string) Option { return func(o *options) { o.network = name } }

// WithHistory sets how many received lines the server keeps for [Server.WaitFor] and
// [Server.Lines]; 0 keeps none (benchmarks that measure memory). Observers
// ([Server.Observe]) see every line regardless.
func WithHistory(lines int) Option { return func(o *options) { o.history = max(lines, 0) } }

// WithSendQ sets how many bytes may wait to be written to one client before the server
// disconnects it with "SendQ exceeded".
func WithSendQ(bytes int) Option { return func(o *options) { o.sendQ = max(bytes, 512) } }

// WithWaitTimeout sets the deadline of [Server.WaitFor], [Server.WaitUntil] and of the raw
// clients' registration and waits.
func WithWaitTimeout(d time.Duration) Option { return func(o *options) { o.waitTimeout = d } }

// WithClock sets the clock of the server-time tags; the default is time.Now.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// WithRegistrationHold holds each client's registration back, as a slow real server does
// (ident and DNS look-ups, services): once NICK, USER and CAP negotiation are done, the server
// calls hold with the client's nick and sends 001 only when the returned channel is ready
// (closed or sent on), or at once if it is nil. Until then the client is not registered. hold
// is called with the server's lock held and must not call the server; return, for example,
// time.After(time.Second) for a fixed delay, or a channel the test closes.
func WithRegistrationHold(hold func(nick string) <-chan struct{}) Option {
	return func(o *options) { o.holdReg = hold }
}

// WithTrace logs every line the server reads (">> ") and the numerics and messages it sends
// ("<< ") with logf, which must be safe for concurrent use (testing.TB.Logf is). For
// debugging tests; it is slow with many clients.
func WithTrace(logf func(format string, args ...any)) Option {
	return func(o *options) { o.trace = logf }
}

// Line is one line the server received from a client, or (for [Client.WaitFor]) one line a
// raw client received from the server.
type Line struct {
	// Seq numbers the lines in the order they arrived, from 1, per server or client.
	Seq uint64
	// Conn is the server's ID of the connection the line came on (0 on a client's lines).
	Conn uint64
	// Nick is who sent the line: the connection's nick when the server read it ("" before its
	// first NICK), or on a client the source nick of the server's message ("" for the server
	// itself).
	Nick string
	// Time is when the line was read, by the server's clock ([WithClock]; a raw client uses
	// the wall clock).
	Time time.Time
	// Raw is the line as read, without CRLF. AUTHENTICATE payloads are replaced by
	// "[redacted]".
	Raw string
	// Msg is the parsed line; its Command is "" if the line did not parse.
	Msg ircmsg.Message
	// TooLong reports that the line, without tags, exceeded 512 bytes with its CRLF; the
	// server answered 417 and ignored it.
	TooLong bool
}

// Command returns the line's command, upper case, or "" if it did not parse.
func (l Line) Command() string { return l.Msg.Command }

// Param returns the line's i-th parameter, or "" if it has fewer.
func (l Line) Param(i int) string {
	if i < 0 || i >= len(l.Msg.Params) {
		return ""
	}
	return l.Msg.Params[i]
}

// String returns the raw line.
func (l Line) String() string { return l.Raw }

// Match returns a predicate for [Server.WaitFor], [Server.Lines] and [Client.WaitFor]: lines
// from nick (any sender if ""; compared under rfc1459 folding) with command (any if ""; case
// does not matter) whose first parameters equal params, in order (channel names are compared
// under rfc1459 folding too, other parameters exactly).
func Match(nick, command string, params ...string) func(Line) bool {
	command = strings.ToUpper(command)
	foldedNick := fold(nick)
	return func(l Line) bool {
		if nick != "" && fold(l.Nick) != foldedNick {
			return false
		}
		if command != "" && l.Msg.Command != command {
			return false
		}
		for i, p := range params {
			got := l.Param(i)
			if got != p && !(isChannel(p) && fold(got) == fold(p)) {
				return false
			}
		}
		return true
	}
}

// After returns pred restricted to lines with a sequence number above seq (see
// [Server.Seq]): what arrived after some point of the test.
func After(seq uint64, pred func(Line) bool) func(Line) bool {
	return func(l Line) bool { return l.Seq > seq && pred(l) }
}

// Server is an in-process IRC server; see the package documentation for what it speaks.
// Create it with [NewServer]. All its methods are safe for concurrent use.
type Server struct {
	opt   options
	addr  string
	offer map[string]string // offered capabilities: name → value

	// wg counts the accept loops and every connection's goroutines.
	wg sync.WaitGroup

	mu          sync.Mutex
	ln          net.Listener // nil while down
	closed      bool
	conns       map[uint64]*conn
	nicks       map[string]*conn // folded nick → connection holding it, registered or not
	channels    map[string]*channel
	accounts    map[string]account // folded account name → account
	certs       map[string]string  // certificate fingerprint → account name
	history     []Line
	seq         uint64
	nextConn    uint64
	msgID       uint64
	registered  int
	truncations int
	changed     chan struct{}
	observers   map[int]func(Line)
	nextObs     int
}

type account struct {
	name, password string
}

// AddCertFP makes SASL EXTERNAL log a client whose TLS certificate has the SHA-256 fingerprint
// fp (lowercase hex) in to the account name, as NickServ CERT ADD does.
func (s *Server) AddCertFP(name, fp string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.certs[strings.ToLower(fp)] = name
}

// User returns the user name part of the user@host of the client holding nick: its ident
// answer ([WithIdentd]) if there was one, else "~" and the name it sent in USER. It returns ""
// if nobody holds nick.
func (s *Server) User(nick string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.nicks[fold(nick)]; c != nil {
		return c.userPart()
	}
	return ""
}

// RealName returns the real name the client holding nick sent in USER, or "".
func (s *Server) RealName(nick string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.nicks[fold(nick)]; c != nil {
		return c.realname
	}
	return ""
}

// NewServer starts a server listening on 127.0.0.1:0 (or [WithAddr]'s address). It is
// stopped when t ends: every connection is closed, and the cleanup fails t if a goroutine of
// the server has not returned within 10 seconds.
func NewServer(t testing.TB, opts ...Option) *Server {
	t.Helper()
	s := &Server{
		opt: options{
			addr: "127.0.0.1:0", caps: DefaultCaps(), network: DefaultNetwork, history: DefaultHistory,
			sendQ: DefaultSendQ, waitTimeout: DefaultWaitTimeout, now: time.Now,
		},
		conns:     make(map[uint64]*conn),
		nicks:     make(map[string]*conn),
		channels:  make(map[string]*channel),
		accounts:  make(map[string]account),
		certs:     make(map[string]string),
		changed:   make(chan struct{}),
		observers: make(map[int]func(Line)),
		offer:     make(map[string]string),
	}
	for _, o := range opts {
		o(&s.opt)
	}
	for _, a := range s.opt.accounts {
		s.accounts[fold(a.name)] = a
	}
	for _, token := range s.opt.caps {
		name, value, _ := strings.Cut(token, "=")
		s.offer[name] = value
	}
	ln, err := net.Listen("tcp", s.opt.addr)
	if err != nil {
		t.Fatalf("irctest: failed to listen: %v", err)
	}
	if s.opt.tls != nil {
		ln = tls.NewListener(ln, s.opt.tls)
	}
	s.addr = ln.Addr().String()
	s.ln = ln
	s.wg.Add(1)
	go s.acceptLoop(ln)
	t.Cleanup(func() {
		if err := s.close(10 * time.Second); err != nil {
			t.Error(err)
		}
	})
	return s
}

// Addr returns the host:port the server listens on; it stays the same across
// [Server.Restart], [Server.Down] and [Server.Up].
func (s *Server) Addr() string { return s.addr }

// AddAccount adds (or replaces) a services account that SASL PLAIN accepts: name
// (compared under rfc1459 folding) with password.
func (s *Server) AddAccount(name, password string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.accounts[fold(name)] = account{name: name, password: password}
}

// Account returns the account the client holding nick logged in to, or "" if it did not or
// nobody holds nick.
func (s *Server) Account(nick string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.nicks[fold(nick)]; c != nil {
		return c.account
	}
	return ""
}

// Nicks returns the nicks of the registered clients, sorted.
func (s *Server) Nicks() []string {
	s.mu.Lock()
	out := make([]string, 0, s.registered)
	for _, c := range s.conns {
		if c.registered {
			out = append(out, c.nick)
		}
	}
	s.mu.Unlock()
	slices.Sort(out)
	return out
}

// Registered returns how many clients are registered (have received 001).
func (s *Server) Registered() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.registered
}

// ConnCount returns how many connections are open, registered or not.
func (s *Server) ConnCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Members returns the nicks in channel, sorted; nil if the channel does not exist.
func (s *Server) Members(channel string) []string {
	s.mu.Lock()
	ch := s.channels[fold(channel)]
	var out []string
	if ch != nil {
		for c := range ch.members {
			out = append(out, c.nick)
		}
	}
	s.mu.Unlock()
	slices.Sort(out)
	return out
}

// Topic returns channel's topic, "" if it has none or does not exist.
func (s *Server) Topic(channel string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ch := s.channels[fold(channel)]; ch != nil {
		return ch.topic
	}
	return ""
}

// Truncations returns how many messages the server had to cut to fit 512 bytes when relaying
// them (PRIVMSG, NOTICE, TOPIC, …): a client whose own splitting is right causes none.
func (s *Server) Truncations() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.truncations
}

// Seq returns the sequence number of the last line received, for [After].
func (s *Server) Seq() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seq
}

// Kick removes nick from channel as the server would for a channel operator or services:
// everyone in the channel, nick included, sees ":irctest.test KICK channel nick :reason".
func (s *Server) Kick(channel, nick, reason string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := s.channels[fold(channel)]
	if ch == nil {
		return fmt.Errorf("irctest: no channel %s", channel)
	}
	victim := s.nicks[fold(nick)]
	if victim == nil || !ch.has(victim) {
		return fmt.Errorf("irctest: %s is not in %s", nick, channel)
	}
	b := s.build(nil, ServerName, "KICK", ch.name, victim.nick, reason)
	for c := range ch.members {
		c.send(b)
	}
	s.part(victim, ch)
	s.bump()
	return nil
}

// Mode applies a channel mode change as services would (k key, b ban mask, o operator status;
// modes holds the letters with their + and -, args their arguments in order) and relays the
// MODE line from the server to everyone in the channel.
func (s *Server) Mode(channel, modes string, args ...string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := s.channels[fold(channel)]
	if ch == nil {
		return fmt.Errorf("irctest: no channel %s", channel)
	}
	s.applyModes(ServerName, ch, modes, args)
	return nil
}

// Kill disconnects nick as a server operator's KILL would: the client gets
// ":irctest.test KILL nick :reason" and an ERROR, its channel peers a QUIT with "Killed
// (reason)", and the connection is closed.
func (s *Server) Kill(nick, reason string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.nicks[fold(nick)]
	if c == nil || !c.registered {
		return fmt.Errorf("irctest: nobody holds nick %s", nick)
	}
	c.send(s.build(nil, ServerName, "KILL", c.nick, reason))
	quit := "Killed (" + reason + ")"
	c.quitReason = quit
	s.removeConn(c, quit, true)
	b, _ := buildLine(nil, "", "ERROR", "Closing Link: "+c.host+" ("+quit+")")
	c.finish(b)
	return nil
}

// SendRaw writes data to the client holding nick exactly as given: no CRLF is added and
// nothing is checked, so a test can send garbage, NUL bytes or overlong lines.
func (s *Server) SendRaw(nick, data string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.nicks[fold(nick)]
	if c == nil {
		return fmt.Errorf("irctest: nobody holds nick %s", nick)
	}
	s.tracef(c, "<< (raw) %q", data)
	c.sendRaw([]byte(data))
	return nil
}

// Observe calls fn for every line any client sends from now on, including when the history
// is off ([WithHistory] 0). fn runs with the server's lock held, on the connection's reader:
// it must be quick, must not block and must not call the server's methods. The returned
// function stops the calls.
func (s *Server) Observe(fn func(Line)) (stop func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.nextObs
	s.nextObs++
	s.observers[n] = fn
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.observers, n)
	}
}

// Lines returns the lines in the history that satisfy pred (all of them if pred is nil), in
// the order they arrived.
func (s *Server) Lines(pred func(Line) bool) []Line {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Line
	for _, l := range s.history {
		if pred == nil || pred(l) {
			out = append(out, l)
		}
	}
	return out
}

// WaitFor returns the first line in the history, or arriving later, that satisfies pred; it
// fails t if none does within the wait timeout ([WithWaitTimeout]). The history holds lines
// from before the call too, so an action followed by WaitFor cannot miss its line; use
// [After] with [Server.Seq] to skip older ones. Call it from the test's goroutine.
func (s *Server) WaitFor(t testing.TB, pred func(Line) bool) Line {
	t.Helper()
	l, err := s.Find(pred, s.opt.waitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// Find is [Server.WaitFor] for any goroutine: it returns an error instead of failing a test.
func (s *Server) Find(pred func(Line) bool, timeout time.Duration) (Line, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var next uint64 // the sequence number of the first line not yet looked at
	for {
		s.mu.Lock()
		start := 0
		if n := len(s.history); n > 0 && next > s.history[0].Seq {
			// Lines have consecutive sequence numbers; the history may have been compacted
			// since the last look.
			start = min(int(next-s.history[0].Seq), n)
		}
		for _, l := range s.history[start:] {
			if pred(l) {
				s.mu.Unlock()
				return l, nil
			}
		}
		if n := len(s.history); n > 0 {
			next = s.history[n-1].Seq + 1
		}
		changed := s.changed
		s.mu.Unlock()
		select {
		case <-changed:
		case <-timer.C:
			return Line{}, fmt.Errorf("irctest: no matching line within %s", timeout)
		}
	}
}

// WaitUntil waits until cond returns true, evaluating it again whenever the server's state
// changes (a line read, a client registered, joined, parted or disconnected); it fails t if
// cond is still false after the wait timeout. cond may call the server's methods. what names
// the condition in the failure. Call it from the test's goroutine.
func (s *Server) WaitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	if !s.Until(cond, s.opt.waitTimeout) {
		t.Fatalf("irctest: timed out after %s waiting until %s", s.opt.waitTimeout, what)
	}
}

// Until is [Server.WaitUntil] for any goroutine and any deadline: it reports whether cond
// became true within timeout.
func (s *Server) Until(cond func() bool, timeout time.Duration) bool {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		s.mu.Lock()
		changed := s.changed
		s.mu.Unlock()
		if cond() {
			return true
		}
		select {
		case <-changed:
		case <-timer.C:
			return cond()
		}
	}
}

// Restart drops every connection at once, as a crashing server does (no QUIT is relayed,
// channels and topics are gone; accounts stay), and keeps listening on the same port. It
// returns once the dropped connections are closed on the server's side; clients may already
// be connecting again.
func (s *Server) Restart() {
	s.dropAll()
}

// Down stops listening (connections are refused) and drops every connection, as
// [Server.Restart] does. [Server.Up] listens again.
func (s *Server) Down() {
	s.mu.Lock()
	ln := s.ln
	s.ln = nil
	s.mu.Unlock()
	if ln != nil {
		_ = ln.Close()
	}
	s.dropAll()
}

// Up listens again on the same address after [Server.Down]; it does nothing if the server is
// listening. It panics if the port cannot be bound again within 5 seconds (another process
// took it).
func (s *Server) Up() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil || s.closed {
		return
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		ln, err := net.Listen("tcp", s.addr)
		if err == nil {
			if s.opt.tls != nil {
				ln = tls.NewListener(ln, s.opt.tls)
			}
			s.ln = ln
			s.wg.Add(1)
			go s.acceptLoop(ln)
			return
		}
		if time.Now().After(deadline) {
			panic(fmt.Errorf("irctest: failed to listen again on %s: %w", s.addr, err))
		}
		// The old socket may linger for a moment on some systems.
		time.Sleep(10 * time.Millisecond)
	}
}

// dropAll closes every connection without relaying anything and waits until each is closed on
// the server's side.
func (s *Server) dropAll() {
	s.mu.Lock()
	dropped := make([]*conn, 0, len(s.conns))
	for _, c := range s.conns {
		c.silent = true
		dropped = append(dropped, c)
	}
	s.mu.Unlock()
	for _, c := range dropped {
		_ = c.nc.Close()
	}
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for _, c := range dropped {
		select {
		case <-c.done:
		case <-deadline.C:
			panic("irctest: a connection's reader did not stop within 10 seconds")
		}
	}
}

// close stops the server for good and waits for its goroutines.
func (s *Server) close(timeout time.Duration) error {
	s.mu.Lock()
	s.closed = true
	ln := s.ln
	s.ln = nil
	conns := make([]*conn, 0, len(s.conns))
	for _, c := range s.conns {
		c.silent = true
		conns = append(conns, c)
	}
	s.mu.Unlock()
	if ln != nil {
		_ = ln.Close()
	}
	for _, c := range conns {
		_ = c.nc.Close()
	}
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("irctest: server goroutines still running %s after close", timeout)
	}
}

func (s *Server) acceptLoop(ln net.Listener) {
	defer s.wg.Done()
	for {
		nc, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				// Out of descriptors: wait for some to be released, as servers do.
				time.Sleep(10 * time.Millisecond)
				continue
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			_ = nc.Close()
			continue
		}
		s.nextConn++
		c := newConn(s, s.nextConn, nc)
		s.conns[c.id] = c
		s.wg.Add(1)
		s.bump()
		s.mu.Unlock()
		go c.readLoop()
	}
}

// bump wakes every waiter; s.mu must be held.
func (s *Server) bump() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// record adds a received line to the history and hands it to the observers; s.mu must be held.
func (s *Server) record(l Line) {
	for _, fn := range s.observers {
		fn(l)
	}
	if s.opt.history == 0 {
		return
	}
	if len(s.history) >= 2*s.opt.history {
		s.history = append(make([]Line, 0, 2*s.opt.history), s.history[len(s.history)-s.opt.history:]...)
	}
	s.history = append(s.history, l)
}

// build serializes a message, cutting its body to 512 bytes like a real server; s.mu must be
// held. Invalid tags are dropped.
func (s *Server) build(tags map[string]string, source, command string, params ...string) []byte {
	b, truncated := buildLine(tags, source, command, params...)
	if truncated {
		s.truncations++
	}
	return b
}

func buildLine(tags map[string]string, source, command string, params ...string) ([]byte, bool) {
	msg := ircmsg.MakeMessage(tags, source, command, params...)
	b, err := msg.LineBytesStrict(false, 512)
	switch {
	case err == nil:
		return b, false
	case errors.Is(err, ircmsg.ErrorBodyTooLong):
		return b, true
	}
	// Tags or a parameter that cannot be sent: drop the tags, then make the last parameter
	// trailing-safe; the server's own lines never get here.
	msg = ircmsg.MakeMessage(nil, source, command, params...)
	b, err = msg.LineBytesStrict(false, 512)
	if err == nil || errors.Is(err, ircmsg.ErrorBodyTooLong) {
		return b, err != nil
	}
	return []byte(":" + ServerName + " NOTICE * :irctest: unsendable line dropped\r\n"), false
}

func (s *Server) tracef(c *conn, format string, args ...any) {
	if s.opt.trace != nil {
		s.opt.trace("irctest[%d %s] "+format, append([]any{c.id, c.nick}, args...)...)
	}
}

// fold folds a nick or channel name under rfc1459, the server's casemapping.
func fold(s string) string { return ircid.RFC1459.Fold(s) }

func isChannel(s string) bool { return s != "" && (s[0] == '#' || s[0] == '&') }

// Netsplit drops nick's connection as a netsplit does: its channel peers see a QUIT whose reason
// is the two servers' names ("hub.example.net leaf.example.net"), which no client can send
// itself (the server prefixes a client's own reasons with "Quit: "). It reports whether nick was
// connected.
func (s *Server) Netsplit(nick, servers string) bool {
	s.mu.Lock()
	c := s.nicks[fold(nick)]
	if c == nil {
		s.mu.Unlock()
		return false
	}
	c.quitReason = servers
	s.removeConn(c, servers, true)
	s.mu.Unlock()
	b, _ := buildLine(nil, "", "ERROR", "Closing Link: "+c.host+" ("+servers+")")
	c.finish(b)
	return true
}

// Package identd is a small RFC 1413 ident server for the IRC bridge. IRC servers ask it who
// owns each incoming connection; it answers, for the bridge's own outgoing connections only,
// with the user name the bridge registered for that connection, so that network operators see
// (and can ban) one Matrix user rather than the whole bridge.
//
// The server is bounded: one query per connection, a read deadline, a maximum line length and
// a maximum number of connections served at once. It answers only for connections it knows,
// and only to the host at the other end of that connection.
package identd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Limits of the server.
const (
	// MaxLineLength is the longest query line read, without its line ending; RFC 1413 allows
	// at most 1000 characters.
	MaxLineLength = 1000
	// Timeout bounds how long one query connection may take, from accept to answer.
	Timeout = 10 * time.Second
	// MaxConns bounds the query connections served at once; more are closed at once.
	MaxConns = 64
	// RegisterGrace is how long a query about a connection the registry does not hold waits
	// for it to be added: an IRC server may ask the moment it accepted the connection, before
	// the bridge's dialer returned and registered it.
	RegisterGrace = 3 * time.Second
)

// ErrBadRequest is returned by [ParseRequest] for a line that is not an ident query.
var ErrBadRequest = errors.New("identd: invalid request")

// ParseRequest parses one RFC 1413 query, "<port-on-server> , <port-on-client>", with
// optional spaces and tabs around each number and an optional trailing CR. The ports are
// the bridge's local port of the connection asked about and the querying host's port of it
// (the IRC server's port). Both must be in 1..65535.
func ParseRequest(line string) (local, remote uint16, err error) {
	line = strings.TrimSuffix(line, "\r")
	a, b, ok := strings.Cut(line, ",")
	if !ok {
		return 0, 0, ErrBadRequest
	}
	if local, err = parsePort(a); err != nil {
		return 0, 0, err
	}
	if remote, err = parsePort(b); err != nil {
		return 0, 0, err
	}
	return local, remote, nil
}

func parsePort(s string) (uint16, error) {
	s = strings.Trim(s, " \t")
	if s == "" || len(s) > 5 {
		return 0, ErrBadRequest
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return 0, ErrBadRequest
		}
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, ErrBadRequest
	}
	return uint16(n), nil
}

// connKey identifies one of the bridge's TCP connections: its local port and the address of
// the server it goes to.
type connKey struct {
	local  uint16
	remote netip.AddrPort
}

// Registry maps the bridge's open connections to the user names ident answers with. It is safe
// for concurrent use; the zero value is not usable, create it with [NewRegistry].
type Registry struct {
	mu    sync.Mutex
	conns map[connKey]string
	// added is closed, and replaced, whenever a connection is added.
	added chan struct{}
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{conns: make(map[connKey]string), added: make(chan struct{})}
}

// Add records that the connection from local to remote belongs to username, until the
// returned function is called (call it once the connection is closed). Addresses that are not
// TCP addresses are ignored.
func (r *Registry) Add(local, remote net.Addr, username string) (remove func()) {
	lp, ok1 := addrPort(local)
	rp, ok2 := addrPort(remote)
	if !ok1 || !ok2 {
		return func() {}
	}
	key := connKey{local: lp.Port(), remote: rp}
	r.mu.Lock()
	r.conns[key] = username
	close(r.added)
	r.added = make(chan struct{})
	r.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			r.mu.Lock()
			if r.conns[key] == username {
				delete(r.conns, key)
			}
			r.mu.Unlock()
		})
	}
}

// Lookup returns the user name of the connection from local port to remote, if it is open.
func (r *Registry) Lookup(local uint16, remote netip.AddrPort) (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	u, ok := r.conns[connKey{local: local, remote: unmap(remote)}]
	return u, ok
}

// LookupWithin is Lookup, waiting up to d for the connection to be added if it is not open
// yet. It returns early if ctx ends.
func (r *Registry) LookupWithin(ctx context.Context, local uint16, remote netip.AddrPort, d time.Duration) (string, bool) {
	key := connKey{local: local, remote: unmap(remote)}
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		r.mu.Lock()
		u, ok := r.conns[key]
		added := r.added
		r.mu.Unlock()
		if ok {
			return u, true
		}
		select {
		case <-added:
		case <-timer.C:
			return "", false
		case <-ctx.Done():
			return "", false
		}
	}
}

// Len returns the number of connections registered.
func (r *Registry) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.conns)
}

func addrPort(a net.Addr) (netip.AddrPort, bool) {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, false
	}
	return unmap(ta.AddrPort()), true
}

// unmap turns IPv4-mapped IPv6 addresses into IPv4 ones, so that both forms compare equal.
func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// Server answers ident queries from a [Registry].
type Server struct {
	reg *Registry
	log zerolog.Logger
	sem chan struct{}
	// grace is how long a query waits for its connection to be registered (RegisterGrace).
	grace time.Duration
	// stopping is closed by Close: queries stop waiting.
	stopping chan struct{}

	mu     sync.Mutex
	ln     net.Listener
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// NewServer returns a server answering from reg, logging to log (never user names or queries'
// ports next to Matrix IDs: it knows none).
func NewServer(reg *Registry, log zerolog.Logger) *Server {
	return &Server{reg: reg, log: log, sem: make(chan struct{}, MaxConns), conns: make(map[net.Conn]struct{}), grace: RegisterGrace, stopping: make(chan struct{})}
}

// Listen starts listening on addr (host:port) and serving in the background until Close.
func (s *Server) Listen(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("identd: failed to listen: %w", err)
	}
	s.Serve(ln)
	return nil
}

// Serve serves ln in the background until Close, which closes ln.
func (s *Server) Serve(ln net.Listener) {
	s.mu.Lock()
	s.ln = ln
	s.mu.Unlock()
	s.wg.Add(1)
	go s.acceptLoop(ln)
}

// Addr returns the listener's address, or nil before Listen or Serve.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Close stops listening, closes the query connections being served and waits for the
// server's goroutines until ctx ends.
func (s *Server) Close(ctx context.Context) error {
	s.mu.Lock()
	if !s.closed {
		close(s.stopping)
	}
	s.closed = true
	var err error
	if s.ln != nil {
		err = s.ln.Close()
	}
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	return err
}

func (s *Server) acceptLoop(ln net.Listener) {
	defer s.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		select {
		case s.sem <- struct{}{}:
		default:
			s.log.Warn().Int("limit", MaxConns).Msg("Too many ident queries at once; closing one")
			_ = c.Close()
			continue
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			_ = c.Close()
			<-s.sem
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			defer func() { <-s.sem }()
			s.serve(c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
			_ = c.Close()
		}()
	}
}

// serve answers one query on c.
func (s *Server) serve(c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(Timeout))
	line, err := readLine(bufio.NewReaderSize(c, 256))
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	go func() {
		select {
		case <-s.stopping:
			cancel()
		case <-ctx.Done():
		}
	}()
	_, _ = c.Write([]byte(s.answer(ctx, line, c.RemoteAddr(), s.grace)))
}

// readLine reads one line of at most MaxLineLength bytes (CR LF or LF ended).
func readLine(rd *bufio.Reader) (string, error) {
	var sb strings.Builder
	for {
		b, err := rd.ReadByte()
		if err != nil {
			return "", err
		}
		if b == '\n' {
			return sb.String(), nil
		}
		if sb.Len() >= MaxLineLength {
			return "", ErrBadRequest
		}
		sb.WriteByte(b)
	}
}

// Answer returns the reply, with CR LF, to query line from the host at from: the user name
// of the connection asked about if it is one of the bridge's connections to from's host,
// else an ERROR reply (INVALID-PORT for a malformed query, NO-USER otherwise).
func (s *Server) Answer(line string, from net.Addr) string {
	return s.answer(context.Background(), line, from, 0)
}

// answer is Answer, waiting up to grace for the connection asked about to be registered.
func (s *Server) answer(ctx context.Context, line string, from net.Addr, grace time.Duration) string {
	local, remote, err := ParseRequest(line)
	if err != nil {
		return "0 , 0 : ERROR : INVALID-PORT\r\n"
	}
	ports := strconv.Itoa(int(local)) + " , " + strconv.Itoa(int(remote))
	fromAP, ok := addrPort(from)
	if !ok {
		return ports + " : ERROR : NO-USER\r\n"
	}
	user, ok := s.reg.LookupWithin(ctx, local, netip.AddrPortFrom(fromAP.Addr(), remote), grace)
	if !ok {
		return ports + " : ERROR : NO-USER\r\n"
	}
	return ports + " : USERID : UNIX : " + user + "\r\n"
}

package irctest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ergochat/irc-go/ircmsg"
	"github.com/ergochat/irc-go/ircreader"
	"github.com/ergochat/irc-go/ircutils"
)

const (
	// maxClientLine is the longest line read from a client: client tags (4096) plus a 512-byte
	// body with its CRLF.
	maxClientLine  = ircmsg.MaxlenTagsFromClient + 512
	readBufInitial = 512
	// maxSASL bounds a SASL PLAIN response.
	maxSASL = 1024
)

// conn is the server's side of one client connection. The fields under "state" are guarded
// by the server's mu; the write side by wmu (taken after mu, never before).
type conn struct {
	srv  *Server
	id   uint64
	nc   net.Conn
	host string
	done chan struct{} // closed when the reader has finished

	// state, guarded by srv.mu
	nick       string
	user       string
	realname   string
	registered bool
	capBlock   bool // CAP negotiation holds registration
	holding    bool // WithRegistrationHold's wait is under way
	held       bool // WithRegistrationHold's wait is over
	cap302     bool
	caps       []string // enabled
	account    string
	sasl       *ircutils.SASLBuffer // non-nil while a PLAIN exchange is under way
	saslExt    bool                 // an EXTERNAL exchange is under way
	pass       string               // PASS before registration
	ident      string               // the ident server's answer, if any
	channels   map[*channel]struct{}
	gone       bool   // removed from the server's state
	silent     bool   // dropped by Restart/Down/close: relay nothing
	quitReason string // set when the server ends the connection

	overflow atomic.Bool

	wmu             sync.Mutex
	queue           [][]byte
	queued          int
	writing         bool
	wclosed         bool
	closeAfterFlush bool
}

func newConn(s *Server, id uint64, nc net.Conn) *conn {
	host := "127.0.0.1"
	if addr, ok := nc.RemoteAddr().(*net.TCPAddr); ok {
		host = addr.IP.String()
	}
	return &conn{srv: s, id: id, nc: nc, host: host, done: make(chan struct{}), channels: make(map[*channel]struct{})}
}

// prefix returns the connection's nick!user@host; s.mu must be held.
func (c *conn) prefix() string {
	return c.nick + "!" + c.userPart() + "@" + c.host
}

// userPart returns the user of the connection's user@host: the ident answer, or "~" and the
// USER name; s.mu must be held.
func (c *conn) userPart() string {
	if c.ident != "" {
		return c.ident
	}
	return "~" + c.user
}

// queryIdent asks the ident server of WithIdentd who owns the connection and keeps the answer.
// It runs on the reader before the first line is handled, without s.mu.
func (c *conn) queryIdent() {
	if c.srv.opt.identd == nil {
		return
	}
	addr := c.srv.opt.identd()
	local, ok1 := c.nc.LocalAddr().(*net.TCPAddr)
	remote, ok2 := c.nc.RemoteAddr().(*net.TCPAddr)
	if addr == "" || !ok1 || !ok2 {
		return
	}
	ic, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return
	}
	defer ic.Close()
	_ = ic.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err = fmt.Fprintf(ic, "%d , %d\r\n", remote.Port, local.Port); err != nil {
		return
	}
	line, err := bufio.NewReader(io.LimitReader(ic, 1024)).ReadString('\n')
	if err != nil {
		return
	}
	parts := strings.SplitN(strings.TrimRight(line, "\r\n"), ":", 4)
	if len(parts) != 4 || strings.TrimSpace(parts[1]) != "USERID" {
		return
	}
	ident := strings.TrimSpace(parts[3])
	if len(ident) > 10 {
		ident = ident[:10]
	}
	c.srv.mu.Lock()
	c.ident = ident
	c.srv.mu.Unlock()
}

// target returns the first parameter of a numeric to the connection: its nick, or "*".
func (c *conn) target() string {
	if c.nick == "" {
		return "*"
	}
	return c.nick
}

func (c *conn) hasCap(name string) bool {
	for _, enabled := range c.caps {
		if enabled == name {
			return true
		}
	}
	return false
}

func (c *conn) readLoop() {
	s := c.srv
	defer s.wg.Done()
	defer close(c.done)
	var rd ircreader.Reader
	rd.Initialize(c.nc, readBufInitial, maxClientLine)
	skip := false
	first := true
	for {
		line, err := rd.ReadLine()
		if errors.Is(err, ircreader.ErrReadQ) {
			// One line filled the buffer: answer 417 once and discard the rest of it.
			if !skip {
				c.handleLine("", true)
			}
			rd.Initialize(c.nc, readBufInitial, maxClientLine)
			skip = true
			continue
		}
		if err != nil {
			break
		}
		if skip {
			skip = false
			continue
		}
		if len(line) > 0 {
			if first {
				// The client is connected for sure once it speaks: ask who it is.
				first = false
				c.queryIdent()
			}
			c.handleLine(string(line), false)
		}
	}
	s.mu.Lock()
	reason := "Connection closed"
	if c.quitReason != "" {
		reason = c.quitReason
	} else if c.overflow.Load() {
		reason = "SendQ exceeded"
	}
	s.removeConn(c, reason, !c.silent)
	s.mu.Unlock()
	c.wmu.Lock()
	c.wclosed = true
	c.queue = nil
	c.wmu.Unlock()
	_ = c.nc.Close()
}

// send queues a line for the client. A client whose queue exceeds the sendq is disconnected.
func (c *conn) send(b []byte) {
	if c.srv.opt.trace != nil {
		c.srv.tracef(c, "<< %s", strings.TrimRight(string(b), "\r\n"))
	}
	c.sendRaw(b)
}

func (c *conn) sendRaw(b []byte) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wclosed || c.closeAfterFlush {
		return
	}
	if c.queued+len(b) > c.srv.opt.sendQ {
		c.overflow.Store(true)
		c.wclosed = true
		c.queue = nil
		_ = c.nc.Close()
		return
	}
	c.queue = append(c.queue, b)
	c.queued += len(b)
	c.startWriter()
}

// finish queues a last line and closes the connection once it is written; c.wmu must not be
// held.
func (c *conn) finish(b []byte) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wclosed || c.closeAfterFlush {
		return
	}
	c.queue = append(c.queue, b)
	c.queued += len(b)
	c.closeAfterFlush = true
	c.startWriter()
}

// startWriter starts the writer goroutine if it is not running; c.wmu must be held. The
// connection's reader is still running (wclosed is false), so the server's WaitGroup is above
// zero and may grow.
func (c *conn) startWriter() {
	if c.writing {
		return
	}
	c.writing = true
	c.srv.wg.Add(1)
	go c.writeLoop()
}

func (c *conn) writeLoop() {
	defer c.srv.wg.Done()
	for {
		c.wmu.Lock()
		if c.wclosed {
			c.writing = false
			c.wmu.Unlock()
			return
		}
		if len(c.queue) == 0 {
			c.writing = false
			closeNow := c.closeAfterFlush
			if closeNow {
				c.wclosed = true
			}
			c.wmu.Unlock()
			if closeNow {
				_ = c.nc.Close()
			}
			return
		}
		batch := net.Buffers(c.queue)
		c.queue, c.queued = nil, 0
		c.wmu.Unlock()
		_ = c.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
		if _, err := batch.WriteTo(c.nc); err != nil {
			c.wmu.Lock()
			c.wclosed, c.writing, c.queue = true, false, nil
			c.wmu.Unlock()
			_ = c.nc.Close()
			return
		}
	}
}

// handleLine handles one line read from the client; overflow means the line did not fit the
// read buffer and raw is empty.
func (c *conn) handleLine(raw string, overflow bool) {
	s := c.srv
	var msg ircmsg.Message
	var err error
	tooLong := overflow
	if overflow {
		raw, err = "[line longer than the read buffer]", errors.New("overlong")
	} else {
		msg, err = ircmsg.ParseLineStrict(raw, true, 0)
		body := raw
		if strings.HasPrefix(raw, "@") {
			if i := strings.IndexByte(raw, ' '); i >= 0 {
				body = strings.TrimLeft(raw[i+1:], " ")
			}
		}
		tooLong = len(body)+2 > 512
	}
	if err != nil {
		msg = ircmsg.Message{}
	} else {
		msg.Command = strings.ToUpper(msg.Command)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.gone {
		return
	}
	if s.opt.trace != nil {
		s.tracef(c, ">> %s", redact(raw, &msg))
	}
	s.seq++
	s.record(Line{Seq: s.seq, Conn: c.id, Nick: c.nick, Time: s.opt.now(), Raw: redact(raw, &msg), Msg: msg, TooLong: tooLong})
	s.bump()
	switch {
	case tooLong:
		c.numeric("417", "Input line was too long")
	case err != nil:
		// Real servers ignore what they cannot parse.
	default:
		c.dispatch(&msg)
	}
}

// redact hides AUTHENTICATE payloads, which carry credentials.
func redact(raw string, msg *ircmsg.Message) string {
	if msg.Command != "AUTHENTICATE" || len(msg.Params) == 0 {
		return raw
	}
	switch p := msg.Params[0]; {
	case p == "+", p == "*", strings.EqualFold(p, "PLAIN"):
		return raw
	}
	return "AUTHENTICATE [redacted]"
}

// numeric sends a numeric reply: ":irctest.test <code> <nick> <params…>"; s.mu must be held.
func (c *conn) numeric(code string, params ...string) {
	c.send(c.srv.build(nil, ServerName, code, append([]string{c.target()}, params...)...))
}

// sendFrom sends a message with a source; s.mu must be held.
func (c *conn) sendFrom(source, command string, params ...string) {
	c.send(c.srv.build(nil, source, command, params...))
}

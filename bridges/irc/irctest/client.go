package irctest

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ergochat/irc-go/ircmsg"
	"github.com/ergochat/irc-go/ircreader"
	"github.com/ergochat/irc-go/ircutils"
)

// clientHistory bounds the lines a raw client keeps for WaitFor.
const clientHistory = 4096

// ClientOption configures a raw [Client].
type ClientOption func(*clientOptions)

type clientOptions struct {
	caps            []string
	account, passwd string
	sasl            bool
	user, realname  string
}

// WithSASL makes the client log in with SASL PLAIN during registration.
func WithSASL(account, password string) ClientOption {
	return func(o *clientOptions) { o.sasl, o.account, o.passwd = true, account, password }
}

// WithClientCaps sets the capabilities the client requests (those the server offers); the
// default is server-time, message-tags and account-tag. No arguments requests none.
func WithClientCaps(caps ...string) ClientOption {
	return func(o *clientOptions) { o.caps = append([]string{}, caps...) }
}

// WithUser sets the client's ident and real name (default: the nick, and "irctest client").
func WithUser(user, realname string) ClientOption {
	return func(o *clientOptions) { o.user, o.realname = user, realname }
}

// Client is a raw IRC client for tests: it registers with the server and then keeps every
// line the server sends (bounded) for [Client.WaitFor], answering PING by itself. Create it
// with [Server.Client] or [Server.Dial]. Its methods are safe for concurrent use.
type Client struct {
	nc      net.Conn
	timeout time.Duration
	done    chan struct{}

	wmu sync.Mutex

	mu      sync.Mutex
	nick    string
	account string
	seq     uint64
	lines   []clientLine
	changed chan struct{}
	err     error
}

type clientLine struct {
	Line
	taken bool
}

// Client connects and registers a raw client with nick, failing t if it cannot. The client
// is closed when t ends.
func (s *Server) Client(t testing.TB, nick string, opts ...ClientOption) *Client {
	t.Helper()
	c, err := s.Dial(nick, opts...)
	if err != nil {
		t.Fatalf("irctest: client %s: %v", nick, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Dial connects and registers a raw client with nick; it fails if the nick is taken, SASL
// fails (an error containing "904") or registration takes longer than the wait timeout. The
// caller must Close the client.
func (s *Server) Dial(nick string, opts ...ClientOption) (*Client, error) {
	o := clientOptions{caps: []string{"server-time", "message-tags", "account-tag"}, user: nick, realname: "irctest client"}
	for _, opt := range opts {
		opt(&o)
	}
	nc, err := net.DialTimeout("tcp", s.addr, s.opt.waitTimeout)
	if err != nil {
		return nil, err
	}
	c := &Client{nc: nc, timeout: s.opt.waitTimeout, done: make(chan struct{}), nick: nick, changed: make(chan struct{})}
	var rd ircreader.Reader
	rd.Initialize(nc, readBufInitial, maxClientLine+ircmsg.MaxlenServerTagData)
	if err = c.register(&rd, &o); err != nil {
		_ = nc.Close()
		return nil, err
	}
	go c.readLoop(&rd)
	return c, nil
}

func (c *Client) register(rd *ircreader.Reader, o *clientOptions) error {
	_ = c.nc.SetDeadline(time.Now().Add(c.timeout))
	defer func() { _ = c.nc.SetDeadline(time.Time{}) }()
	if err := c.Send("CAP LS 302"); err != nil {
		return err
	}
	if err := c.Send("NICK " + c.nick); err != nil {
		return err
	}
	if err := c.Send("USER " + o.user + " 0 * :" + o.realname); err != nil {
		return err
	}
	want := append([]string{}, o.caps...)
	if o.sasl {
		want = append(want, "sasl")
	}
	for {
		raw, err := rd.ReadLine()
		if err != nil {
			return fmt.Errorf("registration: %w", err)
		}
		msg, err := ircmsg.ParseLine(string(raw))
		if err != nil {
			continue
		}
		switch msg.Command {
		case "CAP":
			switch param(&msg, 1) {
			case "LS":
				if param(&msg, 2) == "*" {
					continue
				}
				offered := map[string]bool{}
				for _, token := range strings.Fields(msg.Params[len(msg.Params)-1]) {
					name, _, _ := strings.Cut(token, "=")
					offered[name] = true
				}
				var req []string
				for _, name := range want {
					if offered[name] {
						req = append(req, name)
					}
				}
				if o.sasl && !offered["sasl"] {
					return errors.New("server does not offer sasl")
				}
				if len(req) == 0 {
					err = c.Send("CAP END")
				} else {
					err = c.Send("CAP REQ :" + strings.Join(req, " "))
				}
			case "ACK":
				if o.sasl {
					err = c.Send("AUTHENTICATE PLAIN")
				} else {
					err = c.Send("CAP END")
				}
			case "NAK":
				return errors.New("server refused the requested capabilities")
			}
		case "AUTHENTICATE":
			if param(&msg, 0) == "+" {
				for _, chunk := range ircutils.EncodeSASLResponse([]byte("\x00" + o.account + "\x00" + o.passwd)) {
					if err = c.Send("AUTHENTICATE " + chunk); err != nil {
						break
					}
				}
			}
		case "903":
			c.account = o.account
			err = c.Send("CAP END")
		case "902", "904", "905", "906", "908":
			return fmt.Errorf("SASL failed (%s)", msg.Command)
		case "432", "433", "436":
			return fmt.Errorf("nick %s refused (%s)", c.nick, msg.Command)
		case "PING":
			err = c.Send("PONG :" + param(&msg, 0))
		case "001":
			c.nick = param(&msg, 0)
			c.keep(msg, string(raw))
		case "376", "422":
			c.keep(msg, string(raw))
			return nil
		default:
			c.keep(msg, string(raw))
		}
		if err != nil {
			return err
		}
	}
}

func (c *Client) readLoop(rd *ircreader.Reader) {
	defer close(c.done)
	skip := false
	for {
		raw, err := rd.ReadLine()
		if errors.Is(err, ircreader.ErrReadQ) {
			// Drop the overlong line and its tail.
			rd.Initialize(c.nc, readBufInitial, maxClientLine+ircmsg.MaxlenServerTagData)
			skip = true
			continue
		}
		if err == nil && skip {
			skip = false
			continue
		}
		if err != nil {
			c.mu.Lock()
			c.err = err
			close(c.changed)
			c.changed = make(chan struct{})
			c.mu.Unlock()
			return
		}
		msg, err := ircmsg.ParseLine(string(raw))
		if err != nil {
			continue
		}
		switch msg.Command {
		case "PING":
			_ = c.Send("PONG :" + param(&msg, 0))
			continue
		case "NICK":
			c.mu.Lock()
			if fold(msg.Nick()) == fold(c.nick) {
				c.nick = param(&msg, 0)
			}
			c.mu.Unlock()
		}
		c.keep(msg, string(raw))
	}
}

// keep stores a received line for WaitFor.
func (c *Client) keep(msg ircmsg.Message, raw string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	nick := msg.Nick()
	if nick == ServerName || msg.Source == "" {
		nick = ""
	}
	if len(c.lines) >= 2*clientHistory {
		c.lines = append(make([]clientLine, 0, 2*clientHistory), c.lines[len(c.lines)-clientHistory:]...)
	}
	c.lines = append(c.lines, clientLine{Line: Line{Seq: c.seq, Nick: nick, Time: time.Now(), Raw: raw, Msg: msg}})
	close(c.changed)
	c.changed = make(chan struct{})
}

// Nick returns the client's current nick.
func (c *Client) Nick() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nick
}

// Send writes one line, adding CRLF; it must not contain CR or LF.
func (c *Client) Send(line string) error {
	if strings.ContainsAny(line, "\r\n") {
		return errors.New("irctest: line contains CR or LF")
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, err := c.nc.Write([]byte(line + "\r\n"))
	return err
}

// Privmsg sends PRIVMSG target :text.
func (c *Client) Privmsg(target, text string) error {
	return c.Send("PRIVMSG " + target + " :" + text)
}

// Join joins channel and waits for the end of its NAMES.
func (c *Client) Join(channel string) error {
	if err := c.Send("JOIN " + channel); err != nil {
		return err
	}
	_, err := c.WaitFor(Match("", "366", c.Nick(), channel), c.timeout)
	return err
}

// WaitFor returns the first line received, before or after the call, that satisfies pred and
// was not returned by an earlier WaitFor; it fails after timeout or once the connection is
// closed and no line matches. It is for any goroutine.
func (c *Client) WaitFor(pred func(Line) bool, timeout time.Duration) (Line, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		c.mu.Lock()
		for i := range c.lines {
			if !c.lines[i].taken && pred(c.lines[i].Line) {
				c.lines[i].taken = true
				l := c.lines[i].Line
				c.mu.Unlock()
				return l, nil
			}
		}
		changed, err := c.changed, c.err
		c.mu.Unlock()
		if err != nil {
			return Line{}, fmt.Errorf("irctest: connection closed before a matching line: %w", err)
		}
		select {
		case <-changed:
		case <-timer.C:
			return Line{}, fmt.Errorf("irctest: %s received no matching line within %s", c.Nick(), timeout)
		}
	}
}

// MustWaitFor is [Client.WaitFor] with the server's wait timeout that fails t instead of
// returning an error. Call it from the test's goroutine.
func (c *Client) MustWaitFor(t testing.TB, pred func(Line) bool) Line {
	t.Helper()
	l, err := c.WaitFor(pred, c.timeout)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// Lines returns the lines received so far (within the bounded history) that satisfy pred,
// whether or not WaitFor returned them.
func (c *Client) Lines(pred func(Line) bool) []Line {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Line
	for _, l := range c.lines {
		if pred == nil || pred(l.Line) {
			out = append(out, l.Line)
		}
	}
	return out
}

// Quit sends QUIT with reason and waits (up to the wait timeout) for the server to close the
// connection, then closes it.
func (c *Client) Quit(reason string) error {
	err := c.Send("QUIT :" + reason)
	select {
	case <-c.done:
	case <-time.After(c.timeout):
		err = errors.New("irctest: server did not close the connection after QUIT")
	}
	c.Close()
	return err
}

// Close closes the connection and waits for the client's reader to stop. It is idempotent.
func (c *Client) Close() {
	_ = c.nc.Close()
	<-c.done
}

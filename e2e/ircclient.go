//go:build e2e

package e2e

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ergochat/irc-go/ircmsg"
)

// IRC numerics and commands the client acts on.
const (
	rplWelcome      = "001"
	rplWhoisUser    = "311"
	rplEndOfWhois   = "318"
	rplWhoisChans   = "319"
	rplWhoisAccount = "330"
	rplNamReply     = "353"
	rplEndOfNames   = "366"
	errNoSuchNick   = "401"
	rplSASLSuccess  = "903"
	errSASLFail     = "904"
)

// ircDefaultCaps are the capabilities every [IRCClient] requests; [WithCaps] adds more.
// echo-message is not among them: a client does not see its own messages unless it asks.
var ircDefaultCaps = []string{"server-time", "message-tags", "account-tag"}

// ircPollInterval is how often [IRCClient.WaitWhois] asks again.
const ircPollInterval = 200 * time.Millisecond

// IRCOption changes how [IRCNet.Connect] registers a client.
type IRCOption func(*ircOptions)

type ircOptions struct {
	user, realname    string
	caps              []string
	account, password string
}

// WithSASL makes the client log in to account with password by SASL PLAIN before it completes
// registration; [IRCNet.Connect] fails the test if the login fails. See [IRCNet.RegisterAccount].
func WithSASL(account, password string) IRCOption {
	return func(o *ircOptions) { o.account, o.password = account, password }
}

// WithCaps makes the client request these IRCv3 capabilities (such as "echo-message", "batch"
// or "extended-join") besides server-time, message-tags and account-tag. [IRCNet.Connect] fails
// the test if the server does not offer one of them.
func WithCaps(caps ...string) IRCOption {
	return func(o *ircOptions) { o.caps = append(o.caps, caps...) }
}

// WithIdent sets the client's user name (ident) and real name; the defaults are "e2e" and
// "Custodian e2e".
func WithIdent(user, realname string) IRCOption {
	return func(o *ircOptions) { o.user, o.realname = user, realname }
}

// IRCClient is a raw IRC client connected to an [IRCNet]: it writes the lines a test gives it,
// answers PING, and records every line it receives. [IRCClient.WaitFor] and the methods built on
// it consume the lines they return, so a line is returned once. Create it with
// [IRCNet.Connect]; it is disconnected when the test ends. Its methods must be called from the
// test's goroutine, except [IRCClient.Lines] and [IRCClient.Nick].
type IRCClient struct {
	conn    net.Conn
	writeMu sync.Mutex
	done    chan struct{} // closed when the reader has ended

	mu      sync.Mutex
	nick    string
	lines   []*ircLine
	first   int           // every line before first is consumed
	changed chan struct{} // closed and replaced whenever a line arrives or the reader ends
	closed  bool
	readErr error // why the reader ended, once closed
}

// ircLine is one line received; only consumed changes after it is recorded.
type ircLine struct {
	index    int
	raw      string
	at       time.Time
	msg      *ircmsg.Message // nil if the line does not parse
	consumed atomic.Bool
}

// Connect connects an IRC client with nick to the network and registers it: CAP LS 302, NICK,
// USER, CAP REQ of server-time, message-tags, account-tag (and what [WithCaps] adds), the SASL
// login of [WithSASL], CAP END; it returns once 001 arrived. It fails the test if any step fails,
// such as the nick being in use. Registration takes about a second (InspIRCd's registration
// tick).
func (n *IRCNet) Connect(t testing.TB, nick string, opts ...IRCOption) *IRCClient {
	t.Helper()
	o := ircOptions{}
	for _, opt := range opts {
		opt(&o)
	}
	caps := slices.Clone(ircDefaultCaps)
	if o.account != "" {
		caps = append(caps, "sasl")
	}
	for _, capab := range o.caps {
		if !slices.Contains(caps, capab) {
			caps = append(caps, capab)
		}
	}

	c := n.dial(t, nick, o)
	c.negotiate(t, caps)
	if o.account != "" {
		if res := c.authenticate(t, o.account, o.password); res.msg.Command != rplSASLSuccess {
			t.Fatalf("IRC client %s: SASL PLAIN login to %q failed: %s", nick, o.account, res.raw)
		}
	}
	c.send(t, "CAP END")
	welcome := c.waitFrom(t, 0, ircWait, "001 RPL_WELCOME", func(m *ircmsg.Message) bool {
		switch m.Command {
		case rplWelcome, "ERROR", "432", "433", "436":
			return true
		}
		return false
	})
	if welcome.msg.Command != rplWelcome || len(welcome.msg.Params) == 0 {
		t.Fatalf("IRC client %s: registration failed: %s", nick, welcome.raw)
	}
	c.mu.Lock()
	c.nick = welcome.msg.Params[0]
	c.mu.Unlock()
	return c
}

// dial connects, starts the reader and sends CAP LS 302, NICK and USER.
func (n *IRCNet) dial(t testing.TB, nick string, o ircOptions) *IRCClient {
	t.Helper()
	if o.user == "" {
		o.user, o.realname = "e2e", "Custodian e2e"
	}
	conn, err := net.DialTimeout("tcp", n.Addr(), ircWait)
	if err != nil {
		t.Fatalf("IRC client %s: connecting to %s: %v", nick, n.Addr(), err)
	}
	c := &IRCClient{conn: conn, done: make(chan struct{}), nick: nick, changed: make(chan struct{})}
	go c.read()
	t.Cleanup(func() { c.close(t) })
	c.send(t, "CAP LS 302")
	c.send(t, "NICK "+nick)
	c.send(t, "USER "+o.user+" 0 * :"+o.realname)
	return c
}

// negotiate reads the CAP LS reply and requests caps, failing the test unless the server
// acknowledges all of them.
func (c *IRCClient) negotiate(t testing.TB, caps []string) {
	t.Helper()
	offered := map[string]bool{}
	for {
		// ":irc.test CAP * LS * :caps…" while more lines follow, ":irc.test CAP * LS :caps…" last.
		ls := c.waitFrom(t, 0, ircWait, "CAP LS", func(m *ircmsg.Message) bool {
			return m.Command == "CAP" && len(m.Params) >= 3 && m.Params[1] == "LS"
		})
		p := ls.msg.Params
		for _, capab := range strings.Fields(p[len(p)-1]) {
			name, _, _ := strings.Cut(capab, "=")
			offered[name] = true
		}
		if len(p) < 4 || p[2] != "*" {
			break
		}
	}
	for _, capab := range caps {
		if !offered[capab] {
			t.Fatalf("IRC client %s: the server does not offer %s; it offers %s", c.Nick(), capab, strings.Join(slices.Sorted(maps.Keys(offered)), " "))
		}
	}
	c.send(t, "CAP REQ :"+strings.Join(caps, " "))
	ack := c.waitFrom(t, 0, ircWait, "CAP ACK", func(m *ircmsg.Message) bool {
		return m.Command == "CAP" && len(m.Params) >= 3 && (m.Params[1] == "ACK" || m.Params[1] == "NAK")
	})
	if ack.msg.Params[1] != "ACK" {
		t.Fatalf("IRC client %s: the server refused CAP REQ :%s: %s", c.Nick(), strings.Join(caps, " "), ack.raw)
	}
}

// authenticate runs a SASL PLAIN exchange (sasl must be acknowledged) and returns the line that
// ended it: 903 on success, or 902, 904, 905, 906 or 907.
func (c *IRCClient) authenticate(t testing.TB, account, password string) *ircLine {
	t.Helper()
	saslEnd := func(m *ircmsg.Message) bool {
		switch m.Command {
		case "902", rplSASLSuccess, errSASLFail, "905", "906", "907":
			return true
		}
		return false
	}
	c.send(t, "AUTHENTICATE PLAIN")
	l := c.waitFrom(t, 0, ircWait, "the answer to AUTHENTICATE PLAIN", func(m *ircmsg.Message) bool {
		return m.Command == "AUTHENTICATE" || saslEnd(m)
	})
	if l.msg.Command != "AUTHENTICATE" {
		return l
	}
	if len(l.msg.Params) == 0 || l.msg.Params[0] != "+" {
		t.Fatalf("IRC client %s: unexpected SASL challenge %s", c.Nick(), l.raw)
	}
	// Sent in chunks of 400 bytes; a final chunk of exactly 400 is followed by "+".
	payload := base64.StdEncoding.EncodeToString([]byte(account + "\x00" + account + "\x00" + password))
	for len(payload) >= 400 {
		c.send(t, "AUTHENTICATE "+payload[:400])
		payload = payload[400:]
	}
	if payload == "" {
		payload = "+"
	}
	c.send(t, "AUTHENTICATE "+payload)
	return c.waitFrom(t, 0, ircWait, "the SASL result (903 or 904)", saslEnd)
}

// read records lines until the connection ends, answering PING on the way.
func (c *IRCClient) read() {
	defer close(c.done)
	sc := bufio.NewScanner(c.conn)
	sc.Buffer(make([]byte, 0, 16<<10), 1<<20)
	for sc.Scan() {
		raw := strings.TrimSuffix(sc.Text(), "\r")
		if raw == "" {
			continue
		}
		l := &ircLine{raw: raw, at: time.Now()}
		if m, err := ircmsg.ParseLine(raw); err == nil {
			l.msg = &m
		}
		if l.msg != nil && l.msg.Command == "PING" && len(l.msg.Params) > 0 {
			_ = c.write("PONG :" + l.msg.Params[len(l.msg.Params)-1])
		}
		c.mu.Lock()
		if l.msg != nil && l.msg.Command == "NICK" && len(l.msg.Params) > 0 && ircEqualFold(l.msg.Nick(), c.nick) {
			c.nick = l.msg.Params[0]
		}
		l.index = len(c.lines)
		c.lines = append(c.lines, l)
		close(c.changed)
		c.changed = make(chan struct{})
		c.mu.Unlock()
	}
	c.mu.Lock()
	c.closed = true
	c.readErr = sc.Err()
	if c.readErr == nil {
		c.readErr = io.EOF
	}
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
}

func (c *IRCClient) write(line string) error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if err := c.conn.SetWriteDeadline(time.Now().Add(ircWait)); err != nil {
		return err
	}
	_, err := io.WriteString(c.conn, line+"\r\n")
	return err
}

func (c *IRCClient) send(t testing.TB, line string) {
	t.Helper()
	if strings.ContainsAny(line, "\r\n\x00") {
		t.Fatalf("IRC client %s: a line must not contain CR, LF or NUL: %q", c.Nick(), line)
	}
	if err := c.write(line); err != nil {
		t.Fatalf("IRC client %s: sending %q: %v", c.Nick(), line, err)
	}
}

// close disconnects the client when the test ends, printing its last lines if the test failed.
func (c *IRCClient) close(t testing.TB) {
	_ = c.conn.Close()
	select {
	case <-c.done:
	case <-time.After(killTimeout):
		t.Errorf("IRC client %s: the reader did not end within %v of closing the connection", c.Nick(), killTimeout)
	}
	if t.Failed() {
		t.Logf("IRC client %s: the last lines it received:\n%s", c.Nick(), c.describe(20))
	}
}

// Nick is the client's current nick.
func (c *IRCClient) Nick() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nick
}

// Lines returns every line the client has received so far, in order, consumed or not.
func (c *IRCClient) Lines() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, len(c.lines))
	for i, l := range c.lines {
		out[i] = l.raw
	}
	return out
}

// Send sends one raw line, such as "MODE #chan +o bob", without the trailing CRLF.
func (c *IRCClient) Send(t testing.TB, line string) {
	t.Helper()
	c.send(t, line)
}

// Privmsg sends text to target (a nick or a channel).
func (c *IRCClient) Privmsg(t testing.TB, target, text string) {
	t.Helper()
	c.send(t, "PRIVMSG "+target+" :"+text)
}

// Notice sends text to target as a NOTICE.
func (c *IRCClient) Notice(t testing.TB, target, text string) {
	t.Helper()
	c.send(t, "NOTICE "+target+" :"+text)
}

// Action sends text to target as a CTCP ACTION (/me).
func (c *IRCClient) Action(t testing.TB, target, text string) {
	t.Helper()
	c.send(t, "PRIVMSG "+target+" :\x01ACTION "+text+"\x01")
}

// Join joins channel and returns once the server confirmed it (the client's own JOIN and the end
// of the channel's NAMES). It fails the test if the server refuses the join.
func (c *IRCClient) Join(t testing.TB, channel string) {
	t.Helper()
	from := c.mark()
	c.send(t, "JOIN "+channel)
	nick := c.Nick()
	join := c.waitFrom(t, from, ircWait, "the JOIN of "+channel, func(m *ircmsg.Message) bool {
		switch m.Command {
		case "JOIN":
			return len(m.Params) > 0 && ircEqualFold(m.Nick(), nick) && ircEqualFold(m.Params[0], channel)
		case "403", "405", "471", "473", "474", "475", "476", "477", "489":
			return len(m.Params) > 1 && ircEqualFold(m.Params[1], channel)
		}
		return false
	})
	if join.msg.Command != "JOIN" {
		t.Fatalf("IRC client %s: could not join %s: %s", nick, channel, join.raw)
	}
	end := c.waitFrom(t, from, ircWait, "366 RPL_ENDOFNAMES for "+channel, isNumericFor(rplEndOfNames, 1, channel))
	// The NAMES reply of the join is spent too, so it does not answer a later WaitFor.
	c.consume(from, end.index, isNumericFor(rplNamReply, 2, channel))
}

// Part leaves channel and returns once the server confirmed it.
func (c *IRCClient) Part(t testing.TB, channel string) {
	t.Helper()
	from := c.mark()
	c.send(t, "PART "+channel)
	nick := c.Nick()
	c.waitFrom(t, from, ircWait, "the PART of "+channel, func(m *ircmsg.Message) bool {
		return m.Command == "PART" && len(m.Params) > 0 && ircEqualFold(m.Nick(), nick) && ircEqualFold(m.Params[0], channel)
	})
}

// Names returns the nicks in channel (without prefixes such as @ and +), in the server's order.
func (c *IRCClient) Names(t testing.TB, channel string) []string {
	t.Helper()
	from := c.mark()
	c.send(t, "NAMES "+channel)
	deadline := time.Now().Add(ircWait)
	reply, end := isNumericFor(rplNamReply, 2, channel), isNumericFor(rplEndOfNames, 1, channel)
	var nicks []string
	for {
		l := c.waitFrom(t, from, time.Until(deadline), "NAMES "+channel, func(m *ircmsg.Message) bool { return reply(m) || end(m) })
		if l.msg.Command == rplEndOfNames {
			return nicks
		}
		for _, name := range strings.Fields(l.msg.Params[len(l.msg.Params)-1]) {
			name = strings.TrimLeft(name, "~&@%+")
			name, _, _ = strings.Cut(name, "!")
			nicks = append(nicks, name)
		}
	}
}

// IRCWhois is what a WHOIS reported about a nick.
type IRCWhois struct {
	// Online is false if the server answered 401 ERR_NOSUCHNICK.
	Online   bool
	User     string
	Host     string
	RealName string
	// Account is the services account the user is logged in to (330 RPL_WHOISACCOUNT), or "".
	Account string
	// Channels are the channels of 319 RPL_WHOISCHANNELS, with prefixes such as @.
	Channels []string
}

// Whois sends WHOIS nick and collects the reply up to 318 RPL_ENDOFWHOIS.
func (c *IRCClient) Whois(t testing.TB, nick string) IRCWhois {
	t.Helper()
	from := c.mark()
	c.send(t, "WHOIS "+nick)
	deadline := time.Now().Add(ircWait)
	var w IRCWhois
	for {
		l := c.waitFrom(t, from, time.Until(deadline), "WHOIS "+nick, func(m *ircmsg.Message) bool {
			switch m.Command {
			case rplWhoisUser, rplEndOfWhois, rplWhoisChans, rplWhoisAccount, errNoSuchNick:
				return len(m.Params) > 1 && ircEqualFold(m.Params[1], nick)
			}
			return false
		})
		p := l.msg.Params
		switch l.msg.Command {
		case rplWhoisUser:
			w.Online = true
			if len(p) >= 6 {
				w.User, w.Host, w.RealName = p[2], p[3], p[5]
			}
		case rplWhoisChans:
			w.Channels = append(w.Channels, strings.Fields(p[len(p)-1])...)
		case rplWhoisAccount:
			if len(p) >= 3 {
				w.Account = p[2]
			}
		case errNoSuchNick:
			w.Online = false
		case rplEndOfWhois:
			return w
		}
	}
}

// WhoisAccount returns the services account nick is logged in to, by WHOIS (330
// RPL_WHOISACCOUNT); "" if the reply ends without one, also when nobody has that nick.
func (c *IRCClient) WhoisAccount(t testing.TB, nick string) string {
	t.Helper()
	return c.Whois(t, nick).Account
}

// WaitWhois repeats WHOIS nick until pred accepts the answer and returns it; it fails the test,
// with the last answer, if that does not happen within timeout. For example, to wait until a
// puppet is back and logged in:
//
//	c.WaitWhois(t, 30*time.Second, "alice[m]", func(w e2e.IRCWhois) bool { return w.Account == "alice" })
func (c *IRCClient) WaitWhois(t testing.TB, timeout time.Duration, nick string, pred func(IRCWhois) bool) IRCWhois {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		w := c.Whois(t, nick)
		if pred(w) {
			return w
		}
		if time.Now().After(deadline) {
			t.Fatalf("IRC client %s: WHOIS %s did not give the expected answer within %v; the last: %+v", c.Nick(), nick, timeout, w)
		}
		timer := time.NewTimer(ircPollInterval)
		<-timer.C
	}
}

// Quit sends QUIT and waits (briefly) for the server to close the connection. Calling it again,
// or after the connection was lost, does nothing.
func (c *IRCClient) Quit(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if !closed {
		_ = c.write("QUIT :bye")
		select {
		case <-c.done:
		case <-time.After(ircWait):
			t.Logf("IRC client %s: the server did not close the connection within %v of QUIT", c.Nick(), ircWait)
		}
	}
	_ = c.conn.Close()
}

// WaitFor waits up to timeout for a received line that pred accepts and that no earlier wait
// returned, looking at lines that arrived earlier first, and returns it (it is then consumed). On
// a timeout, or if the connection closes first, it fails the test, listing the last lines.
// pred must not call the client's methods.
func (c *IRCClient) WaitFor(t testing.TB, timeout time.Duration, pred func(*ircmsg.Message) bool) *ircmsg.Message {
	t.Helper()
	return c.waitFrom(t, 0, timeout, "matching line", pred).msg
}

// mark returns the index the next line received will have, for waits that only look at the
// answer to what the test is about to send.
func (c *IRCClient) mark() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.lines)
}

// waitFrom is WaitFor looking only at lines from index from on; what describes the wait for the
// failure message.
func (c *IRCClient) waitFrom(t testing.TB, from int, timeout time.Duration, what string, pred func(*ircmsg.Message) bool) *ircLine {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	next := from
	for {
		c.mu.Lock()
		lines, changed, closed, readErr := c.lines, c.changed, c.closed, c.readErr
		next = max(next, c.first)
		c.mu.Unlock()
		for ; next < len(lines); next++ {
			if l := lines[next]; l.msg != nil && !l.consumed.Load() && pred(l.msg) {
				l.consumed.Store(true)
				c.advance()
				return l
			}
		}
		if closed {
			t.Fatalf("IRC client %s: the connection closed (%v) before %s arrived; the last lines it received:\n%s", c.Nick(), readErr, what, c.describe(25))
		}
		select {
		case <-changed:
		case <-timer.C:
			t.Fatalf("IRC client %s: no %s within %v; the last lines it received:\n%s", c.Nick(), what, timeout, c.describe(25))
		}
	}
}

// consume marks the lines in [from, to) that pred accepts as consumed.
func (c *IRCClient) consume(from, to int, pred func(*ircmsg.Message) bool) {
	c.mu.Lock()
	lines := c.lines[from:to]
	c.mu.Unlock()
	for _, l := range lines {
		if l.msg != nil && pred(l.msg) {
			l.consumed.Store(true)
		}
	}
	c.advance()
}

// advance moves first past consumed lines.
func (c *IRCClient) advance() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.first < len(c.lines) && c.lines[c.first].consumed.Load() {
		c.first++
	}
}

// describe lists the last n lines received, marking those a wait has consumed.
func (c *IRCClient) describe(n int) string {
	c.mu.Lock()
	lines := c.lines
	c.mu.Unlock()
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	if len(lines) == 0 {
		return "  (none)\n"
	}
	var sb strings.Builder
	for _, l := range lines {
		mark := " "
		if l.consumed.Load() {
			mark = "✓"
		}
		fmt.Fprintf(&sb, "  %s %s %s\n", l.at.Format("15:04:05.000"), mark, l.raw)
	}
	sb.WriteString("  (✓: returned by an earlier wait)\n")
	return sb.String()
}

// IsIRCMessage returns a predicate for [IRCClient.WaitFor] that accepts a message with command
// (such as "PRIVMSG" or "JOIN"), sent by nick ("" for anyone), whose first parameters are params.
// For example, IsIRCMessage("PRIVMSG", "alice[m]", "#chan", "hello") matches alice[m] saying
// hello in #chan.
func IsIRCMessage(command, nick string, params ...string) func(*ircmsg.Message) bool {
	return func(m *ircmsg.Message) bool {
		if !strings.EqualFold(m.Command, command) || len(m.Params) < len(params) {
			return false
		}
		if nick != "" && !ircEqualFold(m.Nick(), nick) {
			return false
		}
		for i, p := range params {
			if m.Params[i] != p {
				return false
			}
		}
		return true
	}
}

// isNumericFor matches numeric whose parameter i is name (a nick or channel).
func isNumericFor(numeric string, i int, name string) func(*ircmsg.Message) bool {
	return func(m *ircmsg.Message) bool {
		return m.Command == numeric && len(m.Params) > i && ircEqualFold(m.Params[i], name)
	}
}

// ircEqualFold compares nicks or channel names under the network's rfc1459 casemapping, in which
// []\~ are the upper case of {}|^.
func ircEqualFold(a, b string) bool {
	return ircFold(a) == ircFold(b)
}

func ircFold(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'A' && r <= 'Z':
			return r + ('a' - 'A')
		case r == '[':
			return '{'
		case r == ']':
			return '}'
		case r == '\\':
			return '|'
		case r == '~':
			return '^'
		}
		return r
	}, s)
}

package irctest

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ergochat/irc-go/ircmsg"
	"github.com/ergochat/irc-go/ircutils"
)

// channel is one channel; guarded by the server's mu.
type channel struct {
	name    string
	topic   string
	topicBy string
	topicAt time.Time
	members map[*conn]bool // → channel operator
	key     string         // +k, "" if none
	bans    []string       // +b masks (nick!user@host globs, compared folded)
}

// banned reports whether c matches one of ch's ban masks.
func (ch *channel) banned(c *conn) bool {
	for _, mask := range ch.bans {
		if globMatch(fold(mask), fold(c.prefix())) {
			return true
		}
	}
	return false
}

// globMatch matches s against pattern, where * stands for any run and ? for one byte.
func globMatch(pattern, s string) bool {
	if pattern == "" {
		return s == ""
	}
	switch pattern[0] {
	case '*':
		for i := 0; i <= len(s); i++ {
			if globMatch(pattern[1:], s[i:]) {
				return true
			}
		}
		return false
	case '?':
		return s != "" && globMatch(pattern[1:], s[1:])
	}
	return s != "" && s[0] == pattern[0] && globMatch(pattern[1:], s[1:])
}

func (ch *channel) has(c *conn) bool {
	_, ok := ch.members[c]
	return ok
}

// list returns the members, except skip (may be nil).
func (ch *channel) list(skip *conn) []*conn {
	out := make([]*conn, 0, len(ch.members))
	for c := range ch.members {
		if c != skip {
			out = append(out, c)
		}
	}
	return out
}

func param(msg *ircmsg.Message, i int) string {
	if i < 0 || i >= len(msg.Params) {
		return ""
	}
	return msg.Params[i]
}

// dispatch handles a parsed line; s.mu must be held.
func (c *conn) dispatch(msg *ircmsg.Message) {
	switch msg.Command {
	case "CAP":
		c.cmdCap(msg)
	case "AUTHENTICATE":
		c.cmdAuthenticate(msg)
	case "PASS":
		if c.registered {
			c.numeric("462", "You may not reregister")
		} else {
			c.pass = param(msg, 0)
		}
	case "NICK":
		c.cmdNick(msg)
	case "USER":
		c.cmdUser(msg)
	case "PING":
		if token := param(msg, 0); token == "" {
			c.numeric("409", "No origin specified")
		} else {
			c.sendFrom(ServerName, "PONG", ServerName, token)
		}
	case "PONG":
	case "QUIT":
		c.cmdQuit(msg)
	default:
		if !c.registered {
			c.numeric("451", "You have not registered")
			return
		}
		switch msg.Command {
		case "JOIN":
			c.cmdJoin(msg)
		case "PART":
			c.cmdPart(msg)
		case "PRIVMSG", "NOTICE":
			c.cmdMessage(msg)
		case "TOPIC":
			c.cmdTopic(msg)
		case "NAMES":
			if ch := c.srv.channels[fold(param(msg, 0))]; ch != nil {
				c.names(ch)
			} else {
				c.numeric("366", param(msg, 0), "End of /NAMES list")
			}
		case "WHOIS":
			c.cmdWhois(msg)
		case "KICK":
			c.cmdKick(msg)
		case "MODE":
			c.cmdMode(msg)
		case "WHO":
			c.numeric("315", param(msg, 0), "End of WHO list")
		default:
			c.numeric("421", msg.Command, "Unknown command")
		}
	}
}

func (c *conn) cmdCap(msg *ircmsg.Message) {
	s := c.srv
	sub := strings.ToUpper(param(msg, 0))
	switch sub {
	case "LS":
		if !c.registered {
			c.capBlock = true
		}
		if v, err := strconv.Atoi(param(msg, 1)); err == nil && v >= 302 {
			c.cap302 = true
		}
		var tokens []string
		for _, token := range s.opt.caps {
			if !c.cap302 {
				token, _, _ = strings.Cut(token, "=")
			}
			tokens = append(tokens, token)
		}
		chunks := chunkWords(tokens, 400)
		for i, chunk := range chunks {
			if i < len(chunks)-1 {
				c.sendFrom(ServerName, "CAP", c.target(), "LS", "*", chunk)
			} else {
				c.sendFrom(ServerName, "CAP", c.target(), "LS", chunk)
			}
		}
	case "LIST":
		c.sendFrom(ServerName, "CAP", c.target(), "LIST", strings.Join(c.caps, " "))
	case "REQ":
		if !c.registered {
			c.capBlock = true
		}
		req := param(msg, 1)
		names := strings.Fields(req)
		ok := len(names) > 0
		for _, name := range names {
			if _, offered := s.offer[strings.TrimPrefix(name, "-")]; !offered {
				ok = false
			}
		}
		if !ok {
			c.sendFrom(ServerName, "CAP", c.target(), "NAK", req)
			return
		}
		for _, name := range names {
			if off, found := strings.CutPrefix(name, "-"); found {
				c.caps = slices.DeleteFunc(c.caps, func(s string) bool { return s == off })
			} else if !c.hasCap(name) {
				c.caps = append(c.caps, name)
			}
		}
		c.sendFrom(ServerName, "CAP", c.target(), "ACK", req)
	case "END":
		if !c.registered {
			c.capBlock = false
			c.tryRegister()
		}
	default:
		c.numeric("410", sub, "Invalid CAP command")
	}
}

// chunkWords joins words with spaces into strings of at most limit bytes (a longer word gets
// a string of its own). It returns one empty string for no words.
func chunkWords(words []string, limit int) []string {
	var out []string
	var cur strings.Builder
	for _, w := range words {
		if cur.Len() > 0 && cur.Len()+1+len(w) > limit {
			out = append(out, cur.String())
			cur.Reset()
		}
		if cur.Len() > 0 {
			cur.WriteByte(' ')
		}
		cur.WriteString(w)
	}
	return append(out, cur.String())
}

func (c *conn) cmdAuthenticate(msg *ircmsg.Message) {
	s := c.srv
	p := param(msg, 0)
	switch {
	case !c.hasCap("sasl"):
		c.numeric("904", "SASL authentication failed")
		return
	case c.account != "":
		c.numeric("907", "You have already authenticated using SASL")
		return
	case p == "*":
		c.sasl = nil
		c.saslExt = false
		c.numeric("906", "SASL authentication aborted")
		return
	case c.saslExt:
		c.saslExt = false
		c.authenticateExternal(p)
		return
	case c.sasl == nil:
		if strings.EqualFold(p, "EXTERNAL") && strings.Contains(","+s.offer["sasl"]+",", ",EXTERNAL,") {
			c.saslExt = true
			c.send(s.build(nil, "", "AUTHENTICATE", "+"))
			return
		}
		if !strings.EqualFold(p, "PLAIN") {
			c.numeric("908", s.offer["sasl"], "are available SASL mechanisms")
			c.numeric("904", "SASL authentication failed")
			return
		}
		c.sasl = ircutils.NewSASLBuffer(maxSASL)
		c.send(s.build(nil, "", "AUTHENTICATE", "+"))
		return
	}
	done, data, err := c.sasl.Add(p)
	if !done {
		return
	}
	c.sasl = nil
	parts := bytes.Split(data, []byte{0})
	if err != nil || len(parts) != 3 {
		c.numeric("904", "SASL authentication failed")
		return
	}
	authz, authc, password := string(parts[0]), string(parts[1]), string(parts[2])
	acct, ok := s.accounts[fold(authc)]
	if !ok || acct.password != password || authz != "" && fold(authz) != fold(authc) {
		c.numeric("904", "SASL authentication failed")
		return
	}
	c.account = acct.name
	mask := "*"
	if c.nick != "" {
		mask = c.prefix()
	}
	c.numeric("900", mask, acct.name, "You are now logged in as "+acct.name)
	c.numeric("903", "SASL authentication successful")
	s.bump()
}

// authenticateExternal ends a SASL EXTERNAL exchange with the client's response p ("+" for an
// empty authorization identity): the account is the one of the TLS client certificate's
// fingerprint; s.mu must be held.
func (c *conn) authenticateExternal(p string) {
	s := c.srv
	tc, ok := c.nc.(*tls.Conn)
	if !ok || p != "+" {
		c.numeric("904", "SASL authentication failed")
		return
	}
	certs := tc.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		c.numeric("904", "SASL authentication failed")
		return
	}
	sum := sha256.Sum256(certs[0].Raw)
	name, ok := s.certs[hex.EncodeToString(sum[:])]
	if !ok {
		c.numeric("904", "SASL authentication failed")
		return
	}
	c.logIn(name)
	c.numeric("903", "SASL authentication successful")
}

// logIn logs the connection in to the account name and says so (900); s.mu must be held.
func (c *conn) logIn(name string) {
	c.account = name
	mask := "*"
	if c.nick != "" {
		mask = c.prefix()
	}
	c.numeric("900", mask, name, "You are now logged in as "+name)
	c.srv.bump()
}

// checkPassword returns the account that name and password log in to, if any; s.mu must be
// held.
func (s *Server) checkPassword(name, password string) (string, bool) {
	acct, ok := s.accounts[fold(name)]
	if !ok || acct.password != password {
		return "", false
	}
	return acct.name, true
}

// nickServ answers a private message to NickServ: "IDENTIFY [account] password" logs the
// connection in; s.mu must be held.
func (c *conn) nickServ(text string) {
	words := strings.Fields(text)
	reply := func(text string) { c.send(c.srv.build(nil, "NickServ!NickServ@services.", "NOTICE", c.nick, text)) }
	if len(words) < 2 || !strings.EqualFold(words[0], "IDENTIFY") {
		reply("Unknown command. This NickServ knows IDENTIFY only.")
		return
	}
	name, password := c.nick, words[1]
	if len(words) >= 3 {
		name, password = words[1], words[2]
	}
	acct, ok := c.srv.checkPassword(name, password)
	if !ok {
		reply("Invalid password for " + name + ".")
		return
	}
	c.logIn(acct)
	reply("You are now identified for " + acct + ".")
}

// validNick reports whether the server accepts nick: at most NickLen bytes, not starting with
// a digit, '-' or a channel prefix, and without spaces, control characters or the characters
// masks and targets use.
func validNick(nick string) bool {
	if nick == "" || len(nick) > NickLen {
		return false
	}
	if first := nick[0]; first >= '0' && first <= '9' || strings.IndexByte("-#&:$+~", first) >= 0 {
		return false
	}
	for i := 0; i < len(nick); i++ {
		if b := nick[i]; b <= ' ' || b == 0x7f || strings.IndexByte(",*?!@.", b) >= 0 {
			return false
		}
	}
	return true
}

func validChannel(name string) bool {
	if len(name) < 2 || len(name) > 64 || !isChannel(name) {
		return false
	}
	for i := 0; i < len(name); i++ {
		if b := name[i]; b <= ' ' || b == ',' || b == 0x07 {
			return false
		}
	}
	return true
}

func (c *conn) cmdNick(msg *ircmsg.Message) {
	s := c.srv
	nick := param(msg, 0)
	switch {
	case nick == "":
		c.numeric("431", "No nickname given")
		return
	case !validNick(nick):
		c.numeric("432", nick, "Erroneous nickname")
		return
	}
	if holder := s.nicks[fold(nick)]; holder != nil && holder != c {
		c.numeric("433", nick, "Nickname is already in use")
		return
	}
	if nick == c.nick {
		return
	}
	oldPrefix := c.prefix()
	if c.nick != "" && s.nicks[fold(c.nick)] == c {
		delete(s.nicks, fold(c.nick))
	}
	s.nicks[fold(nick)] = c
	c.nick = nick
	if c.registered {
		s.relay(c, oldPrefix, c.peers(true), nil, false, "NICK", nick)
	} else {
		c.tryRegister()
	}
	s.bump()
}

func (c *conn) cmdUser(msg *ircmsg.Message) {
	switch {
	case c.registered:
		c.numeric("462", "You may not reregister")
		return
	case len(msg.Params) < 4 || param(msg, 0) == "":
		c.numeric("461", "USER", "Not enough parameters")
		return
	}
	user := param(msg, 0)
	if len(user) > 10 {
		user = user[:10]
	}
	c.user = user
	c.realname = param(msg, 3)
	c.tryRegister()
}

// tryRegister completes registration once NICK and USER arrived and CAP negotiation ended.
func (c *conn) tryRegister() {
	s := c.srv
	if c.registered || c.nick == "" || c.user == "" || c.capBlock || c.holding {
		return
	}
	if s.opt.holdReg != nil && !c.held {
		if ready := s.opt.holdReg(c.nick); ready != nil {
			c.holding = true
			s.wg.Add(1)
			go c.awaitRegistration(ready)
			return
		}
	}
	c.registered = true
	s.registered++
	c.sasl = nil
	c.saslExt = false
	if name, password, ok := strings.Cut(c.pass, ":"); ok && c.account == "" {
		// The server password "account:password" logs in, as on networks whose services
		// take it.
		if acct, ok := s.checkPassword(name, password); ok {
			c.logIn(acct)
		}
	}
	c.pass = ""
	c.numeric("001", "Welcome to the "+s.opt.network+" IRC Network "+c.prefix())
	c.numeric("002", "Your host is "+ServerName+", running version irctest")
	c.numeric("003", "This server was created for a test")
	c.numeric("004", ServerName, "irctest", "i", "ont")
	c.numeric("005", "CASEMAPPING=rfc1459", "NETWORK="+s.opt.network, "CHANTYPES=#&", "PREFIX=(o)@",
		"NICKLEN="+strconv.Itoa(NickLen), "CHANNELLEN=64", "TOPICLEN=390", "CHANMODES=,,,nt", "are supported by this server")
	c.numeric("375", "- "+ServerName+" Message of the day -")
	c.numeric("372", "- This is irctest, not a real IRC server.")
	c.numeric("376", "End of /MOTD command.")
	s.bump()
}

// awaitRegistration completes the registration WithRegistrationHold held back once ready is,
// unless the connection ended first.
func (c *conn) awaitRegistration(ready <-chan struct{}) {
	s := c.srv
	defer s.wg.Done()
	select {
	case <-ready:
	case <-c.done:
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c.holding, c.held = false, true
	if !c.gone {
		c.tryRegister()
	}
}

func (c *conn) cmdQuit(msg *ircmsg.Message) {
	s := c.srv
	reason := "Client Quit"
	if r := param(msg, 0); r != "" {
		reason = "Quit: " + r
	}
	c.quitReason = reason
	s.removeConn(c, reason, true)
	b, _ := buildLine(nil, "", "ERROR", "Closing Link: "+c.host+" ("+reason+")")
	c.finish(b)
}

// removeConn takes c out of the server's state, relaying QUIT with reason to its channel peers
// if broadcast is set; s.mu must be held. It is idempotent.
func (s *Server) removeConn(c *conn, reason string, broadcast bool) {
	if c.gone {
		return
	}
	c.gone = true
	if broadcast && c.registered {
		s.relay(c, c.prefix(), c.peers(false), nil, false, "QUIT", reason)
	}
	for ch := range c.channels {
		s.part(c, ch)
	}
	if c.nick != "" && s.nicks[fold(c.nick)] == c {
		delete(s.nicks, fold(c.nick))
	}
	delete(s.conns, c.id)
	if c.registered {
		s.registered--
	}
	c.sasl = nil
	s.bump()
}

// peers returns everyone sharing a channel with c, each once, and c itself if self is set.
func (c *conn) peers(self bool) []*conn {
	seen := map[*conn]struct{}{c: {}}
	var out []*conn
	if self {
		out = append(out, c)
	}
	for ch := range c.channels {
		for m := range ch.members {
			if _, ok := seen[m]; !ok {
				seen[m] = struct{}{}
				out = append(out, m)
			}
		}
	}
	return out
}

// part takes c out of ch, deleting ch once empty; s.mu must be held.
func (s *Server) part(c *conn, ch *channel) {
	delete(ch.members, c)
	delete(c.channels, ch)
	if len(ch.members) == 0 && s.channels[fold(ch.name)] == ch {
		delete(s.channels, fold(ch.name))
	}
}

// relay sends a message from a client to recipients, tagged per recipient: time= with
// server-time, msgid= (if withMsgID) and the client-only tags with message-tags, account= with
// account-tag if from is logged in. s.mu must be held.
func (s *Server) relay(from *conn, source string, to []*conn, clientTags map[string]string, withMsgID bool, command string, params ...string) {
	if len(to) == 0 {
		return
	}
	now := s.opt.now().UTC().Format("2006-01-02T15:04:05.000Z")
	var msgID string
	if withMsgID {
		s.msgID++
		msgID = "irctest-" + strconv.FormatUint(s.msgID, 36)
	}
	var variants [8][]byte
	truncated := false
	for _, r := range to {
		k := 0
		if r.hasCap("server-time") {
			k |= 1
		}
		if r.hasCap("message-tags") {
			k |= 2
		}
		if from.account != "" && r.hasCap("account-tag") {
			k |= 4
		}
		if variants[k] == nil {
			var tags map[string]string
			if k != 0 {
				tags = make(map[string]string, 3+len(clientTags))
			}
			if k&1 != 0 {
				tags["time"] = now
			}
			if k&2 != 0 {
				if msgID != "" {
					tags["msgid"] = msgID
				}
				for name, value := range clientTags {
					tags[name] = value
				}
			}
			if k&4 != 0 {
				tags["account"] = from.account
			}
			b, cut := buildLine(tags, source, command, params...)
			truncated = truncated || cut
			variants[k] = b
		}
		r.send(variants[k])
	}
	if truncated {
		s.truncations++
	}
}

func (c *conn) cmdJoin(msg *ircmsg.Message) {
	s := c.srv
	keys := strings.Split(param(msg, 1), ",")
	for i, name := range strings.Split(param(msg, 0), ",") {
		if name == "0" {
			for ch := range c.channels {
				s.relay(c, c.prefix(), ch.list(nil), nil, false, "PART", ch.name)
				s.part(c, ch)
			}
			continue
		}
		if !validChannel(name) {
			c.numeric("403", name, "No such channel")
			continue
		}
		ch := s.channels[fold(name)]
		op := false
		if ch == nil {
			ch = &channel{name: name, members: make(map[*conn]bool)}
			s.channels[fold(name)] = ch
			op = true
		}
		if ch.has(c) {
			continue
		}
		if ch.key != "" && (i >= len(keys) || keys[i] != ch.key) {
			c.numeric("475", ch.name, "Cannot join channel (+k)")
			continue
		}
		if ch.banned(c) {
			c.numeric("474", ch.name, "Cannot join channel (+b)")
			continue
		}
		ch.members[c] = op
		c.channels[ch] = struct{}{}
		var plain, extended []*conn
		for m := range ch.members {
			if m.hasCap("extended-join") {
				extended = append(extended, m)
			} else {
				plain = append(plain, m)
			}
		}
		s.relay(c, c.prefix(), plain, nil, false, "JOIN", ch.name)
		acct := c.account
		if acct == "" {
			acct = "*"
		}
		s.relay(c, c.prefix(), extended, nil, false, "JOIN", ch.name, acct, c.realname)
		if ch.topic != "" {
			c.numeric("332", ch.name, ch.topic)
			c.numeric("333", ch.name, ch.topicBy, strconv.FormatInt(ch.topicAt.Unix(), 10))
		}
		c.names(ch)
	}
	s.bump()
}

// names sends NAMES for ch, in as many 353 lines as needed, then 366.
func (c *conn) names(ch *channel) {
	nicks := make([]string, 0, len(ch.members))
	for m, op := range ch.members {
		if op {
			nicks = append(nicks, "@"+m.nick)
		} else {
			nicks = append(nicks, m.nick)
		}
	}
	slices.Sort(nicks)
	budget := 510 - len(":"+ServerName+" 353 "+c.target()+" = "+ch.name+" :")
	for _, chunk := range chunkWords(nicks, budget) {
		if chunk != "" {
			c.numeric("353", "=", ch.name, chunk)
		}
	}
	c.numeric("366", ch.name, "End of /NAMES list")
}

func (c *conn) cmdPart(msg *ircmsg.Message) {
	s := c.srv
	reason := param(msg, 1)
	for _, name := range strings.Split(param(msg, 0), ",") {
		ch := s.channels[fold(name)]
		switch {
		case ch == nil:
			c.numeric("403", name, "No such channel")
			continue
		case !ch.has(c):
			c.numeric("442", ch.name, "You're not on that channel")
			continue
		}
		params := []string{ch.name}
		if reason != "" {
			params = append(params, reason)
		}
		s.relay(c, c.prefix(), ch.list(nil), nil, false, "PART", params...)
		s.part(c, ch)
	}
	s.bump()
}

func (c *conn) cmdMessage(msg *ircmsg.Message) {
	s := c.srv
	notice := msg.Command == "NOTICE"
	targets, text := param(msg, 0), param(msg, 1)
	switch {
	case targets == "":
		if !notice {
			c.numeric("411", "No recipient given ("+msg.Command+")")
		}
		return
	case text == "":
		if !notice {
			c.numeric("412", "No text to send")
		}
		return
	}
	clientTags := msg.ClientOnlyTags()
	echo := c.hasCap("echo-message")
	for _, target := range strings.Split(targets, ",") {
		var to []*conn
		var name string
		if isChannel(target) {
			ch := s.channels[fold(target)]
			switch {
			case ch == nil:
				if !notice {
					c.numeric("401", target, "No such nick/channel")
				}
				continue
			case !ch.has(c):
				if !notice {
					c.numeric("404", ch.name, "Cannot send to channel")
				}
				continue
			}
			name = ch.name
			skip := c
			if echo {
				skip = nil
			}
			to = ch.list(skip)
		} else {
			r := s.nicks[fold(target)]
			if r == nil && fold(target) == "nickserv" && !notice {
				c.nickServ(text)
				continue
			}
			if r == nil || !r.registered {
				if !notice {
					c.numeric("401", target, "No such nick/channel")
				}
				continue
			}
			name = r.nick
			to = []*conn{r}
			if echo && r != c {
				to = append(to, c)
			}
		}
		s.relay(c, c.prefix(), to, clientTags, true, msg.Command, name, text)
	}
}

func (c *conn) cmdTopic(msg *ircmsg.Message) {
	s := c.srv
	ch := s.channels[fold(param(msg, 0))]
	switch {
	case ch == nil:
		c.numeric("403", param(msg, 0), "No such channel")
		return
	case len(msg.Params) < 2:
		if ch.topic == "" {
			c.numeric("331", ch.name, "No topic is set")
		} else {
			c.numeric("332", ch.name, ch.topic)
			c.numeric("333", ch.name, ch.topicBy, strconv.FormatInt(ch.topicAt.Unix(), 10))
		}
		return
	case !ch.has(c):
		c.numeric("442", ch.name, "You're not on that channel")
		return
	}
	topic := param(msg, 1)
	if len(topic) > 390 {
		topic = ircmsg.TruncateUTF8Safe(topic, 390)
	}
	ch.topic, ch.topicBy, ch.topicAt = topic, c.nick, s.opt.now()
	s.relay(c, c.prefix(), ch.list(nil), nil, false, "TOPIC", ch.name, topic)
	s.bump()
}

func (c *conn) cmdWhois(msg *ircmsg.Message) {
	s := c.srv
	nick := param(msg, len(msg.Params)-1)
	nick, _, _ = strings.Cut(nick, ",")
	r := s.nicks[fold(nick)]
	if r == nil || !r.registered {
		c.numeric("401", nick, "No such nick/channel")
		c.numeric("318", nick, "End of /WHOIS list")
		return
	}
	c.numeric("311", r.nick, r.userPart(), r.host, "*", r.realname)
	if len(r.channels) > 0 {
		var names []string
		for ch := range r.channels {
			if ch.members[r] {
				names = append(names, "@"+ch.name)
			} else {
				names = append(names, ch.name)
			}
		}
		slices.Sort(names)
		c.numeric("319", r.nick, strings.Join(names, " "))
	}
	c.numeric("312", r.nick, ServerName, "irctest")
	if r.account != "" {
		c.numeric("330", r.nick, r.account, "is logged in as")
	}
	c.numeric("318", r.nick, "End of /WHOIS list")
}

func (c *conn) cmdKick(msg *ircmsg.Message) {
	s := c.srv
	ch := s.channels[fold(param(msg, 0))]
	victim := s.nicks[fold(param(msg, 1))]
	switch {
	case ch == nil:
		c.numeric("403", param(msg, 0), "No such channel")
		return
	case !ch.has(c):
		c.numeric("442", ch.name, "You're not on that channel")
		return
	case !ch.members[c]:
		c.numeric("482", ch.name, "You're not channel operator")
		return
	case victim == nil || !ch.has(victim):
		c.numeric("441", param(msg, 1), ch.name, "They aren't on that channel")
		return
	}
	reason := param(msg, 2)
	if reason == "" {
		reason = c.nick
	}
	s.relay(c, c.prefix(), ch.list(nil), nil, false, "KICK", ch.name, victim.nick, reason)
	s.part(victim, ch)
	s.bump()
}

func (c *conn) cmdMode(msg *ircmsg.Message) {
	s := c.srv
	target := param(msg, 0)
	if isChannel(target) {
		ch := s.channels[fold(target)]
		switch {
		case ch == nil:
			c.numeric("403", target, "No such channel")
			return
		case len(msg.Params) == 1:
			if ch.key != "" {
				c.numeric("324", ch.name, "+ntk", ch.key)
			} else {
				c.numeric("324", ch.name, "+nt")
			}
			return
		case strings.TrimLeft(param(msg, 1), "+") == "b":
			for _, mask := range ch.bans {
				c.numeric("367", ch.name, mask)
			}
			c.numeric("368", ch.name, "End of channel ban list")
			return
		case !ch.members[c]:
			c.numeric("482", ch.name, "You're not channel operator")
			return
		}
		s.applyModes(c.prefix(), ch, msg.Params[1], msg.Params[2:])
		return
	}
	if fold(target) != fold(c.nick) {
		c.numeric("502", "Can't change mode for other users")
		return
	}
	c.numeric("221", "+i")
}

// applyModes applies a channel operator's mode change to ch and relays it to the channel:
// k (key), b (ban mask), o (operator status); other modes are relayed and ignored. s.mu must be
// held.
func (s *Server) applyModes(source string, ch *channel, modes string, args []string) {
	add := true
	var applied []string
	changes := ""
	for _, m := range modes {
		switch m {
		case '+', '-':
			add = m == '+'
			changes += string(m)
			continue
		}
		arg := ""
		if m == 'k' || m == 'b' || m == 'o' {
			if len(args) == 0 {
				continue
			}
			arg, args = args[0], args[1:]
		}
		switch m {
		case 'k':
			if add {
				ch.key = arg
			} else {
				ch.key = ""
			}
		case 'b':
			ch.bans = slices.DeleteFunc(ch.bans, func(b string) bool { return fold(b) == fold(arg) })
			if add {
				ch.bans = append(ch.bans, arg)
			}
		case 'o':
			r := s.nicks[fold(arg)]
			if r == nil || !ch.has(r) {
				continue
			}
			ch.members[r] = add
			arg = r.nick
		}
		changes += string(m)
		if arg != "" {
			applied = append(applied, arg)
		}
	}
	b := s.build(nil, source, "MODE", append([]string{ch.name, changes}, applied...)...)
	for m := range ch.members {
		m.send(b)
	}
	s.bump()
}

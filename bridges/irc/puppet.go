package irc

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/vault"
	"github.com/custodian-matrix/custodian/bridges/irc/ircconn"
	"github.com/custodian-matrix/custodian/bridges/irc/ircid"
)

// puppet is one Matrix user's connection to one network.
type puppet struct {
	net  *network
	user id.UserID
	sess *session
	// accountEvent and nickEvent are the commands that stored the credentials and the nick the
	// current connection uses, so that a redaction of either can reconnect without them.
	accountEvent atomic.Pointer[id.EventID]
	nickEvent    atomic.Pointer[id.EventID]
	// saslFailed is set when the network refused the stored credentials, so the user is told
	// once and the puppet connects without them.
	saslFailed atomic.Bool
	// certEvent is the !irc cert command whose certificate the current connection attempt
	// uses, or nil; certFailed is set when the network refused it, so the user is told once
	// and the puppet connects without it (with the password, if any).
	certEvent  atomic.Pointer[id.EventID]
	certFailed atomic.Bool

	// echoes are the lines sent and not yet echoed by the server, oldest first (see
	// wantsEchoes). Their text stays in memory only until the echo arrives.
	echoMu sync.Mutex
	echoes []pendingLine

	// outMu guards the outbox (see outbox.go): the events waiting to go out, oldest first; the
	// one being sent; whether a drain goroutine runs; whether the puppet was dropped (nothing is
	// queued or sent any more); and whether the user was told the outbox is full.
	outMu        sync.Mutex
	outbox       []*outItem
	sending      *outItem
	draining     bool
	outClosed    bool
	fullNotified bool

	// sent remembers the last message and topic sent to each target, for the server's refusals.
	sent sentLog
	// kicked holds, per folded channel, until when the puppet stays out of it after a KICK
	// (see kick.go). Guarded by kickMu.
	kickMu sync.Mutex
	kicked map[string]time.Time
	// source is the puppet's nick!user@host as the bridge's connection last saw it join, which
	// ban masks are matched against.
	source atomic.Pointer[string]
}

// pendingLine is a line a puppet sent whose echo, with its message ID, is awaited.
type pendingLine struct {
	eventID id.EventID
	part    int
	roomID  id.RoomID
	target  string
	text    string
}

// maxPendingEchoes bounds the lines a puppet remembers while waiting for their echoes.
const maxPendingEchoes = 64

// wantsEchoes reports whether a connection's own messages should be matched with their echoes:
// only where the server can delete messages (draft/message-redaction), which needs their IDs,
// and echoes them with those IDs (echo-message).
func wantsEchoes(c *ircconn.Conn) bool {
	return c.HasCap("echo-message") && c.HasCap("draft/message-redaction")
}

// expectEcho remembers a line about to be sent.
func (p *puppet) expectEcho(l pendingLine) {
	p.echoMu.Lock()
	defer p.echoMu.Unlock()
	if len(p.echoes) >= maxPendingEchoes {
		p.echoes[0] = pendingLine{}
		p.echoes = p.echoes[1:]
	}
	p.echoes = append(p.echoes, l)
}

// matchEcho returns the pending line an echo of text answers, dropping older lines that were
// never echoed (the server refused them).
func (p *puppet) matchEcho(text string) (pendingLine, bool) {
	p.echoMu.Lock()
	defer p.echoMu.Unlock()
	for i, l := range p.echoes {
		if l.text == text {
			clear(p.echoes[:i+1])
			p.echoes = p.echoes[i+1:]
			return l, true
		}
	}
	return pendingLine{}, false
}

// errStopping is returned by puppetFor once the network is stopping.
var errStopping = errors.New("irc: the bridge is shutting down")

// ErrTooManyPuppets is returned when a network's max_puppets connections are in use.
var ErrTooManyPuppets = errors.New("irc: too many puppet connections to this network")

// puppetFor returns userID's puppet on the network, creating and starting it if create is set.
// It returns nil without create if the user has none.
func (n *network) puppetFor(userID id.UserID, create bool) (*puppet, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if p := n.puppets[userID]; p != nil || !create {
		return p, nil
	}
	if n.stopping {
		return nil, errStopping
	}
	if !n.puppetAllowed(userID) {
		return nil, ErrPuppetNotAllowed
	}
	if n.cfg.MaxPuppets > 0 && len(n.puppets) >= n.cfg.MaxPuppets {
		return nil, ErrTooManyPuppets
	}
	p := &puppet{net: n, user: userID}
	p.sess = newSession(n, n.log.With().Str("connection", "puppet").Stringer("user_id", userID).Logger())
	p.sess.dialConfig = p.dialConfig
	p.sess.onDialError = p.onDialError
	n.puppets[userID] = p
	p.sess.start(n.br.runCtx)
	return p, nil
}

// dropPuppet stops userID's puppet, if any, with a QUIT carrying reason. What its outbox holds
// is dropped, never sent (an erasure, a pause).
func (n *network) dropPuppet(ctx context.Context, userID id.UserID, reason string) bool {
	return n.dropPuppetIf(ctx, userID, reason, false)
}

// dropIdlePuppet is dropPuppet for a puppet whose outbox is empty: an idle disconnect must not
// race a message just queued. It reports whether it dropped the puppet.
func (n *network) dropIdlePuppet(ctx context.Context, userID id.UserID, reason string) bool {
	return n.dropPuppetIf(ctx, userID, reason, true)
}

func (n *network) dropPuppetIf(ctx context.Context, userID id.UserID, reason string, ifIdle bool) bool {
	n.mu.Lock()
	p := n.puppets[userID]
	if p == nil || !p.closeOutbox(ifIdle) {
		n.mu.Unlock()
		return false
	}
	delete(n.puppets, userID)
	n.mu.Unlock()
	if !ifIdle {
		// Never to be sent, not even after a restart.
		if err := n.br.db.Outbox.DeleteUser(ctx, userID, n.cfg.ID); err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to forget queued messages")
		}
	}
	p.sess.stop(ctx, reason)
	return true
}

// dialConfig builds the puppet's next connection: the user's chosen nick or the template's, the
// network's ident and real-name templates, and their login: the client certificate of !irc
// cert with SASL EXTERNAL if they have one the network did not refuse, else their linked
// account's credentials (!irc login) the way the network's auth says, if the network did not
// refuse them. A certificate wins over a password: the user made it for this network on
// purpose, and it puts no password on the wire.
func (p *puppet) dialConfig(ctx context.Context) (ircconn.Config, error) {
	br := p.net.br
	nc := p.net.cfg
	nick, nickEvent, err := br.puppetNick(ctx, p.net, p.user)
	if err != nil {
		return ircconn.Config{}, err
	}
	cfg := p.net.baseConfig(nick)
	// Echoes carry the IDs of our own messages, which REDACT needs; see wantsEchoes.
	cfg.Caps = append(ircconn.DefaultCaps(), "echo-message")
	cfg.Username = identName(nc.IdentTemplate, br.identKey, p.user)
	var displayName string
	if strings.Contains(nc.RealnameTemplate, "{displayname}") {
		displayName = br.displayName(ctx, p.user)
	}
	cfg.RealName = realName(nc.RealnameTemplate, p.user, displayName)
	cfg.Handler = p.sess.handler(p)
	p.nickEvent.Store(&nickEvent)
	var accountEvent, certEvent id.EventID
	defer func() {
		p.accountEvent.Store(&accountEvent)
		p.certEvent.Store(&certEvent)
	}()
	if !p.certFailed.Load() && nc.AllowsCert() {
		cert, err := br.db.Cert.Get(ctx, p.user, nc.ID)
		if err != nil {
			return ircconn.Config{}, fmt.Errorf("failed to get client certificate: %w", err)
		}
		if cert != nil {
			tlsCert, err := br.tlsCertificate(ctx, cert)
			if err != nil {
				zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to open client certificate's key")
				p.certFailed.Store(true)
				br.notifyUser(ctx, p.user, cert.SourceEventID, "cert-open-failed:"+nc.ID, fmt.Sprintf("I could not unlock the key of "+
					"your client certificate for %s, so your connection does not use it. Make a new one with `!irc cert %s`.",
					nc.Name, nc.ID))
			} else {
				cfg.TLS = cfg.TLS.Clone()
				cfg.TLS.Certificates = []tls.Certificate{*tlsCert}
				cfg.SASL = &ircconn.SASL{Mechanism: ircconn.MechanismExternal}
				certEvent = cert.SourceEventID
				return cfg, nil
			}
		}
	}
	if !p.saslFailed.Load() && nc.AllowsLogin() {
		acct, err := br.db.Account.Get(ctx, p.user, nc.ID)
		if err != nil {
			return ircconn.Config{}, fmt.Errorf("failed to get linked account: %w", err)
		}
		if acct != nil {
			password, err := br.host.Vault().Open(ctx, p.user, secretName(nc.ID), acct.Password)
			if err != nil {
				// A missing master key or a tampered value: connect without the account, and
				// tell the user to link again.
				zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to open linked account's password")
				p.saslFailed.Store(true)
				br.notifyUser(ctx, p.user, acct.SourceEventID, "vault-open-failed:"+nc.ID, fmt.Sprintf("I could not unlock the password of your %s account, so your "+
					"connection to %s is not logged in. Link it again with `!irc login %s <account> <password>`.",
					nc.Name, nc.Name, nc.ID))
			} else {
				nc.applyLogin(&cfg, acct.Account, password)
				accountEvent = acct.SourceEventID
			}
		}
	}
	return cfg, nil
}

// applyLogin makes cfg log in to account the way the network's auth says: SASL PLAIN, the
// server password "account:password" (the form Atheme- and Anope-backed networks such as
// Libera.Chat and OFTC take), or IDENTIFY to NickServ after registration.
func (nc *NetworkConfig) applyLogin(cfg *ircconn.Config, account string, password vault.Secret) {
	switch nc.Auth {
	case AuthPass:
		cfg.Password = vault.NewSecret(account + ":" + password.Reveal())
	case AuthNickServ:
		cfg.Identify = &ircconn.Identify{Service: nc.NickServ, Account: account, Password: password}
	default:
		cfg.SASL = &ircconn.SASL{Account: account, Password: password}
	}
}

// onDialError tells the user once when the network refused their client certificate or their
// stored credentials, and makes the next attempt connect without them; they stay until the
// user removes or replaces them.
func (p *puppet) onDialError(ctx context.Context, err error) bool {
	if !errors.Is(err, ircconn.ErrSASLFailed) && !errors.Is(err, ircconn.ErrSASLUnavailable) {
		return false
	}
	nc := p.net.cfg
	if ev := p.certEvent.Load(); ev != nil && *ev != "" {
		if !p.certFailed.Swap(true) {
			p.net.br.notifyUser(ctx, p.user, *ev, "cert-refused:"+nc.ID, fmt.Sprintf("%s refused your client certificate, so I connect "+
				"you without it. Register its fingerprint with your account first (`!irc cert %s` shows it again), then "+
				"make me use it again with `!irc cert %s`.", nc.Name, nc.ID, nc.ID))
		}
		return false
	}
	if errors.Is(err, ircconn.ErrSASLFailed) && !p.saslFailed.Swap(true) {
		var cause id.EventID
		if ev := p.accountEvent.Load(); ev != nil {
			cause = *ev
		}
		p.net.br.notifyUser(ctx, p.user, cause, "sasl-refused:"+nc.ID, fmt.Sprintf("%s refused your linked account's credentials, so I connected you "+
			"without logging in. Link your account again with `!irc login %s <account> <password>`.",
			nc.Name, nc.ID))
	}
	return false
}

// secretName is the vault name of a network's SASL password.
func secretName(network string) string { return "sasl_password/" + network }

// puppetNick returns the nick userID's puppet asks for on n: their chosen one, or the template's.
// event is the command that chose it, or "".
func (br *Bridge) puppetNick(ctx context.Context, n *network, userID id.UserID) (nick string, event id.EventID, err error) {
	chosen, err := br.db.Nick.Get(ctx, userID, n.cfg.ID)
	if err != nil {
		return "", "", fmt.Errorf("failed to get chosen nick: %w", err)
	}
	if chosen != nil && !n.puppetFormOfOther(ctx, chosen.Nick, userID) {
		return chosen.Nick, chosen.SourceEventID, nil
	}
	return templateNick(n.cfg.NickTemplate, userID, br.displayName(ctx, userID)), "", nil
}

// puppetFormOfOther reports whether nick has the form n's nick template gives puppets ("bob[m]"
// for "{localpart}[m]") without being userID's own template nick. Such nicks are reserved for the
// puppets of the users they name: someone else using one could speak as them, and receive their
// private messages. A template without literal characters ("{localpart}") gives every nick its
// form, so it reserves nothing this way; nicks in use by other puppets are refused regardless
// (see nickTakenByOther).
func (n *network) puppetFormOfOther(ctx context.Context, nick string, userID id.UserID) bool {
	if !puppetNickPattern(n.cfg.NickTemplate, n.fold).MatchString(n.fold(nick)) {
		return false
	}
	own := templateNick(n.cfg.NickTemplate, userID, n.br.displayName(ctx, userID))
	return n.fold(own) != n.fold(nick)
}

// templatePlaceholders matches the placeholders of a nick template.
var templatePlaceholders = regexp.MustCompile(`\{(localpart|displayname)\}`)

// puppetNickPattern returns a pattern that matches, folded, every nick template can make: its
// literal parts in order around placeholders that stand for one or more characters. It matches
// nothing for a template without literal parts.
func puppetNickPattern(template string, fold func(string) string) *regexp.Regexp {
	literals := templatePlaceholders.Split(template, -1)
	var sb strings.Builder
	sb.WriteString("^_?")
	hasLiteral := false
	for i, lit := range literals {
		if i > 0 {
			sb.WriteString(".+")
		}
		if lit != "" {
			hasLiteral = true
		}
		sb.WriteString(regexp.QuoteMeta(fold(lit)))
	}
	if !hasLiteral {
		return regexp.MustCompile(`[^\s\S]`)
	}
	sb.WriteString("$")
	return regexp.MustCompile(sb.String())
}

// nickTakenByOther reports whether nick is held by the puppet of a user other than userID on n:
// as the live connection's nick, or as a nick another user chose (irc_nick).
func (n *network) nickTakenByOther(ctx context.Context, nick string, userID id.UserID) (bool, error) {
	folded := n.fold(nick)
	n.mu.Lock()
	others := make([]*puppet, 0, len(n.puppets))
	for owner, p := range n.puppets {
		if owner != userID {
			others = append(others, p)
		}
	}
	n.mu.Unlock()
	for _, p := range others {
		if c := p.sess.current(); c != nil && n.fold(c.Nick()) == folded {
			return true, nil
		}
	}
	chosen, err := n.br.db.Nick.GetOthers(ctx, n.cfg.ID, userID)
	if err != nil {
		return false, fmt.Errorf("failed to get other users' nicks: %w", err)
	}
	for _, c := range chosen {
		if n.fold(c.Nick) == folded {
			return true, nil
		}
	}
	return false, nil
}

// templateNick fills a nick template for userID. Characters IRC does not allow in nicks are
// dropped; a nick that would start with a digit or '-' gets a leading '_'.
func templateNick(template string, userID id.UserID, displayName string) string {
	localpart, _, _ := userID.Parse()
	nick := strings.NewReplacer("{localpart}", nickSafe(localpart), "{displayname}", nickSafe(displayName)).Replace(template)
	if nick == "" || nick[0] >= '0' && nick[0] <= '9' || nick[0] == '-' {
		nick = "_" + nick
	}
	if len(nick) > 30 {
		nick = nick[:30]
	}
	if !ircid.ValidNick(nick) {
		return "matrix_user"
	}
	return nick
}

// nickSafe keeps the characters of s that are valid in any position of an IRC nick.
func nickSafe(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			return r
		case strings.ContainsRune("-_[]{}\\|^`", r):
			return r
		case unicode.IsSpace(r):
			return '_'
		}
		return -1
	}, s)
}

// displayName returns userID's display name, or "" if it is not known.
func (br *Bridge) displayName(ctx context.Context, userID id.UserID) string {
	store := br.host.Bot().StateStore
	if store == nil {
		return ""
	}
	// Any room's member event will do; the state store keeps the global profile too.
	if profile, err := br.host.Bot().GetProfile(ctx, userID); err == nil && profile != nil {
		return profile.DisplayName
	}
	return ""
}

// verifyLogin connects to n once with the given credentials and reports whether SASL succeeded.
// The connection quits at once. It never logs or returns the password.
func (br *Bridge) verifyLogin(ctx context.Context, n *network, userID id.UserID, account string, password vault.Secret) error {
	ctx, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	if err := br.limiter.Wait(ctx); err != nil {
		return err
	}
	nick, _, err := br.puppetNick(ctx, n, userID)
	if err != nil {
		return err
	}
	// Another nick than the puppet's, so as not to collide with a running puppet.
	cfg := n.baseConfig(verifyNick(nick))
	cfg.Username = identName(n.cfg.IdentTemplate, br.identKey, userID)
	cfg.SASL = &ircconn.SASL{Account: account, Password: password}
	c, err := br.dial(ctx, cfg)
	if err != nil {
		return err
	}
	quitCtx, quitCancel := context.WithTimeout(ctx, 5*time.Second)
	defer quitCancel()
	_ = c.Quit(quitCtx, "Account check done")
	return nil
}

// verifyNick returns a nick for a short-lived credentials check, derived from nick.
func verifyNick(nick string) string {
	if len(nick) > 25 {
		nick = nick[:25]
	}
	return nick + "-chk"
}

// userFacingDialError turns a connection error into words for the user.
func userFacingDialError(err error) string {
	switch {
	case errors.Is(err, ircconn.ErrSASLFailed):
		return "the network refused the account name or password"
	case errors.Is(err, ircconn.ErrSASLUnavailable):
		return "the network does not offer SASL login right now"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, ircconn.ErrRegistrationTimeout):
		return "the network did not answer in time"
	default:
		return "I could not connect to the network"
	}
}

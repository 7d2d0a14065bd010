package irc

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ergochat/irc-go/ircmsg"
	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/vault"
	"github.com/custodian-matrix/custodian/bridges/irc/ircconn"
	"github.com/custodian-matrix/custodian/bridges/irc/ircdb"
	"github.com/custodian-matrix/custodian/bridges/irc/ircid"
)

// inboundQueueSize bounds the server messages waiting to be bridged per network. When it is
// full, the connections' readers wait, and TCP pushes back on the server.
const inboundQueueSize = 1024

// inbound is one server message to bridge, with the connection it came on: the bridge's own
// connection (puppet nil) or a user's puppet.
type inbound struct {
	conn   *ircconn.Conn
	msg    ircmsg.Message
	puppet *puppet
}

// network is the bridge's state for one IRC network: its own connection, which sits in every
// portal channel, the users' puppets, and what it knows of the channels.
type network struct {
	br  *Bridge
	cfg *NetworkConfig
	log zerolog.Logger

	bot *session
	// cm is the network's casemapping (an ircid.CaseMapping), from ISUPPORT.
	cm atomic.Int32

	queue      chan inbound
	done       chan struct{}
	workerDone chan struct{}

	// drains counts the running outbox goroutines (see outbox.go), which stop waits for.
	drains sync.WaitGroup

	mu sync.Mutex
	// stopping is set by stop: no puppet is created from then on.
	stopping bool
	puppets  map[id.UserID]*puppet
	// members holds, per portal channel (folded), the folded nicks the bridge's connection
	// saw in it, so that a QUIT or NICK reaches the right rooms.
	members map[string]map[string]string
	// portals caches portals by folded channel.
	portals map[string]*ircdb.Portal
	// splits holds, by folded nick, users who quit in a netsplit and whose ghosts have not left
	// yet (see quit_debounce).
	splits map[string]*splitQuit
	// keys holds the opened keys (+k) of portal channels, by folded channel (see keys.go).
	keys map[string]string
	// consents are the link requests waiting for an operator's answer, by folded channel, and
	// namesWait the NAMES lookups waiting for their reply (see consent.go).
	consents  map[string]*linkRequest
	namesWait map[string]*namesQuery
	// ircBans remembers, per folded portal channel and folded ban mask, the users the bot
	// banned in Matrix for that IRC ban, so that lifting it lifts theirs (see kick.go).
	ircBans map[string]map[string][]id.UserID
	// keptOut holds, per folded portal channel, the folded nicks a Matrix moderator removed
	// from the room while the bridge could not kick them on IRC (see kickOnIRC).
	keptOut map[string]map[string]bool
}

func newNetwork(br *Bridge, cfg *NetworkConfig) *network {
	n := &network{
		br:         br,
		cfg:        cfg,
		log:        br.log.With().Str("network", cfg.ID).Logger(),
		queue:      make(chan inbound, inboundQueueSize),
		done:       make(chan struct{}),
		workerDone: make(chan struct{}),
		puppets:    make(map[id.UserID]*puppet),
		members:    make(map[string]map[string]string),
		portals:    make(map[string]*ircdb.Portal),
		splits:     make(map[string]*splitQuit),
		keys:       make(map[string]string),
		consents:   make(map[string]*linkRequest),
		namesWait:  make(map[string]*namesQuery),
		ircBans:    make(map[string]map[string][]id.UserID),
		keptOut:    make(map[string]map[string]bool),
	}
	n.cm.Store(int32(ircid.RFC1459))
	return n
}

// casemapping returns the network's casemapping.
func (n *network) casemapping() ircid.CaseMapping { return ircid.CaseMapping(n.cm.Load()) }

// fold folds a nick or channel under the network's casemapping.
func (n *network) fold(s string) string { return n.casemapping().Fold(s) }

// enqueue hands a server message to the network's worker. It blocks while the queue is full
// and drops the message once the network stopped.
func (n *network) enqueue(in inbound) {
	select {
	case n.queue <- in:
	case <-n.done:
	}
}

// start connects the bridge's own connection and starts the worker that bridges what arrives.
func (n *network) start(ctx context.Context) error {
	portals, err := n.br.db.Portal.GetAll(ctx, n.cfg.ID)
	if err != nil {
		return err
	}
	if err = n.loadKeys(ctx); err != nil {
		return err
	}
	n.bot = newSession(n, n.log.With().Str("connection", "bridge").Logger())
	n.mu.Lock()
	for _, p := range portals {
		n.portals[p.Channel] = p
		n.bot.channels[p.Channel] = p.ChannelName
	}
	n.mu.Unlock()
	var botPassword vault.Secret
	if ba := n.cfg.BotAccount; ba != nil {
		if botPassword, err = ba.password(); err != nil {
			return err
		}
	}
	n.bot.dialConfig = func(ctx context.Context) (ircconn.Config, error) {
		cfg := n.baseConfig(n.cfg.BotNick)
		cfg.Handler = n.bot.handler(nil)
		if ba := n.cfg.BotAccount; ba != nil {
			n.cfg.applyLogin(&cfg, ba.Account, botPassword)
		}
		return cfg, nil
	}
	n.bot.onConnect = func(ctx context.Context, c *ircconn.Conn) {
		n.cm.Store(int32(c.CaseMapping()))
		n.mu.Lock()
		// Fresh NAMES replies will fill this again.
		n.members = make(map[string]map[string]string)
		n.mu.Unlock()
	}
	go n.work(n.br.runCtx)
	n.bot.start(n.br.runCtx)
	return nil
}

// puppetList returns the network's puppets now, so that the caller can act on each without
// holding n.mu.
func (n *network) puppetList() []*puppet {
	n.mu.Lock()
	defer n.mu.Unlock()
	puppets := make([]*puppet, 0, len(n.puppets))
	for _, p := range n.puppets {
		puppets = append(puppets, p)
	}
	return puppets
}

// stop quits every connection of the network and stops its worker.
func (n *network) stop(ctx context.Context) {
	n.mu.Lock()
	n.stopping = true
	puppets := make([]*puppet, 0, len(n.puppets))
	for _, p := range n.puppets {
		// Queued messages are not sent during shutdown; their irc_outbox rows stay for the
		// next start.
		p.closeOutbox(false)
		puppets = append(puppets, p)
	}
	n.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range puppets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.sess.stop(ctx, "Bridge shutting down")
		}()
	}
	if n.bot != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.bot.stop(ctx, "Bridge shutting down")
		}()
	}
	wg.Wait()
	// No outbox starts a goroutine any more (all are closed, and no puppet is created), and
	// with their sessions stopped the running ones end at once.
	drained := make(chan struct{})
	go func() {
		n.drains.Wait()
		close(drained)
	}()
	select {
	case <-drained:
	case <-ctx.Done():
	}
	close(n.done)
	select {
	case <-n.workerDone:
	case <-ctx.Done():
	}
}

// baseConfig returns the connection settings every connection to the network shares.
func (n *network) baseConfig(nick string) ircconn.Config {
	cfg := ircconn.Config{
		Addr:      n.cfg.Address,
		Nick:      nick,
		Username:  "custodian",
		RealName:  "Custodian Matrix bridge",
		LineBurst: n.cfg.LineRate.Burst,
		Log:       &n.log,
	}
	if n.cfg.LineRate.PerSecond > 0 {
		cfg.LineRate = secondsDuration(1 / n.cfg.LineRate.PerSecond)
	}
	if n.cfg.TLS {
		cfg.TLS = n.br.tlsConfig(n.cfg)
	}
	return cfg
}

// work bridges the network's server messages, one at a time, in the order they arrived.
func (n *network) work(ctx context.Context) {
	defer close(n.workerDone)
	var splitTick <-chan time.Time
	if d := n.br.cfg.QuitDebounce; d > 0 {
		ticker := n.br.clock.NewTicker(splitCheckInterval(d))
		defer ticker.Stop()
		splitTick = ticker.C()
	}
	for {
		select {
		case in := <-n.queue:
			n.handleIRC(ctx, in)
		case <-splitTick:
			n.expireSplits(ctx)
		case <-n.done:
			return
		}
	}
}

// portal returns the portal of channel (folded), from the cache or the database, or nil.
func (n *network) portal(ctx context.Context, folded string) *ircdb.Portal {
	n.mu.Lock()
	p := n.portals[folded]
	n.mu.Unlock()
	if p != nil {
		return p
	}
	p, err := n.br.db.Portal.Get(ctx, n.cfg.ID, folded)
	if err != nil {
		n.log.Err(err).Msg("Failed to get portal")
		return nil
	}
	if p != nil {
		n.mu.Lock()
		n.portals[folded] = p
		n.mu.Unlock()
	}
	return p
}

// forgetPortal drops a portal from the cache and the bridge's channel list, parting it.
func (n *network) forgetPortal(ctx context.Context, p *ircdb.Portal, reason string) {
	n.mu.Lock()
	delete(n.portals, p.Channel)
	delete(n.members, p.Channel)
	delete(n.keys, p.Channel)
	puppets := make([]*puppet, 0, len(n.puppets))
	for _, pp := range n.puppets {
		puppets = append(puppets, pp)
	}
	n.mu.Unlock()
	if n.bot != nil {
		n.bot.part(ctx, p.Channel, reason)
	}
	for _, pp := range puppets {
		pp.sess.part(ctx, p.Channel, reason)
	}
}

// puppetByNick returns the puppet whose connection has nick (folded) now, or nil.
func (n *network) puppetByNick(folded string) *puppet {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, p := range n.puppets {
		if c := p.sess.current(); c != nil && n.fold(c.Nick()) == folded {
			return p
		}
	}
	return nil
}

// disownPortals clears userID from the provenance of the cached portals they linked, as
// PortalQuery.Disown does in the database.
func (n *network) disownPortals(userID id.UserID) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for folded, p := range n.portals {
		if p.Actor == userID {
			cp := *p
			cp.Actor, cp.SourceEventID = "", ""
			n.portals[folded] = &cp
		}
	}
}

// isOurNick reports whether nick (folded) is the bridge's own connection or one of the puppets.
func (n *network) isOurNick(folded string) bool {
	if c := n.bot.current(); c != nil && n.fold(c.Nick()) == folded {
		return true
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, p := range n.puppets {
		if c := p.sess.current(); c != nil && n.fold(c.Nick()) == folded {
			return true
		}
	}
	return false
}

// targetName returns how to address a folded channel or nick: a portal channel as it was first
// written, anything else as it is.
func (n *network) targetName(folded string) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if p := n.portals[folded]; p != nil {
		return p.ChannelName
	}
	return folded
}

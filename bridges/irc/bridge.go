package irc

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/format"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice"
	"github.com/custodian-matrix/custodian/appservice/clock"
	"github.com/custodian-matrix/custodian/bridges/irc/backoff"
	"github.com/custodian-matrix/custodian/bridges/irc/identd"
	"github.com/custodian-matrix/custodian/bridges/irc/ircconn"
	"github.com/custodian-matrix/custodian/bridges/irc/ircdb"
	"github.com/custodian-matrix/custodian/bridges/irc/ircid"
)

// BridgeID is the IRC bridge's permanent ID: its config key, table prefix and log field.
const BridgeID = "irc"

// Bridge is the IRC bridge. Create it with [New]; the core drives it through the
// [appservice.Bridge] interface and its optional interfaces.
type Bridge struct {
	cfg   Config
	clock clock.Clock
	// dialer, if set, replaces the network dialer (tests).
	dialer func(ctx context.Context, network, addr string) (net.Conn, error)

	host    appservice.Host
	db      *ircdb.Database
	log     zerolog.Logger
	limiter *backoff.Limiter

	networks map[string]*network
	netIDs   []string

	// runCtx lives from Init to Stop; connections and workers run on it.
	runCtx    context.Context
	runCancel context.CancelFunc
	janitor   sync.WaitGroup

	// ghosts caches which ghosts have their display name set (localpart → nick).
	ghosts sync.Map
	// unencryptableWarned holds the encrypted private chats (room IDs) a dropped IRC message
	// was warned about in this run (see warnUnencryptable).
	unencryptableWarned sync.Map
	// mediaServer and mediaListener serve relayed media to IRC users (media_proxy); Start
	// sets them.
	mediaServer   *http.Server
	mediaListener net.Listener

	// truncatedTold remembers which users were told that their long message was cut, so that
	// each is told once per network (memory only).
	truncatedTold toldSet
	// identKey keys the {hash} of ident templates; Start loads it (irc_key).
	identKey []byte
	// idents maps the bridge's open connections to their ident user names, for identd.
	idents *identd.Registry
	// identServer is the ident server, if identd.enabled; Start starts it.
	identServer *identd.Server
	// tlsRoots holds each network's tls_ca_file, by network ID; Start loads them.
	tlsRoots map[string]*x509.CertPool
}

var (
	_ appservice.Bridge           = (*Bridge)(nil)
	_ appservice.ConfigValidator  = (*Bridge)(nil)
	_ appservice.CommandProvider  = (*Bridge)(nil)
	_ appservice.Eraser           = (*Bridge)(nil)
	_ appservice.RoomPurger       = (*Bridge)(nil)
	_ appservice.RoomKeeper       = (*Bridge)(nil)
	_ appservice.AdminAPIProvider = (*Bridge)(nil)
	_ appservice.RedactionPurger  = (*Bridge)(nil)
	_ appservice.AliasQuerier     = (*Bridge)(nil)
	_ appservice.UserQuerier      = (*Bridge)(nil)
	_ appservice.OptInBridge      = (*Bridge)(nil)
)

// New returns an IRC bridge with the example configuration's defaults and the system clock.
func New() *Bridge {
	return &Bridge{cfg: defaultConfig(), clock: clock.Real()}
}

// SetDialer replaces how connections are opened, for tests and benchmarks that run an IRC
// server in-process. It must be called before Start.
func (br *Bridge) SetDialer(dial func(ctx context.Context, network, addr string) (net.Conn, error)) {
	br.dialer = dial
}

// ID returns "irc".
func (br *Bridge) ID() string { return BridgeID }

// Namespaces claims the ghosts @irc_<network>_<nick> and the portal aliases #irc_<network>_<channel>.
func (br *Bridge) Namespaces() appservice.Namespaces {
	return appservice.Namespaces{UserPrefix: ircid.Prefix, AliasPrefix: ircid.Prefix}
}

// Config returns the embedded example configuration and the bridge's config, which holds the
// defaults until the core decodes the bridges.irc section over it.
func (br *Bridge) Config() (example string, target any) {
	return exampleConfig, &br.cfg
}

// OptIn reports true: custodian -e prints the IRC section commented out, because the example
// network is a public one, and Custodian run from the example as printed must connect nowhere.
func (br *Bridge) OptIn() bool {
	return true
}

// Migrations returns the bridge's schema upgrades (tables irc_*).
func (br *Bridge) Migrations() dbutil.UpgradeTable {
	return ircdb.UpgradeTable()
}

// PersonalData declares the bridge's tables about Matrix users.
func (br *Bridge) PersonalData() []appservice.UserTable {
	return []appservice.UserTable{
		{
			Table: "irc_account", UserColumn: "user_mxid",
			Export:            []string{"network", "account", "room_id", "source_event_id", "created_at"},
			Secret:            []string{"sasl_password"},
			SourceEventColumn: "source_event_id", RoomColumn: "room_id",
			Description: "the IRC accounts you linked (!irc login): network, account name, when and with which command; " +
				"the password is kept only sealed under your own key",
		},
		{
			Table: "irc_cert", UserColumn: "user_mxid",
			Export:            []string{"network", "fingerprint", "fingerprint_512", "room_id", "source_event_id", "created_at"},
			Secret:            []string{"private_key"},
			SourceEventColumn: "source_event_id", RoomColumn: "room_id",
			Description: "the client certificates you made for IRC networks (!irc cert), by network and fingerprint; " +
				"their private keys are kept only sealed under your own key",
		},
		{
			Table: "irc_nick", UserColumn: "user_mxid",
			Export:            []string{"network", "nick", "room_id", "source_event_id", "updated_at"},
			SourceEventColumn: "source_event_id", RoomColumn: "room_id",
			Description: "the IRC nicks you chose (!irc nick)",
		},
		{
			Table: "irc_portal", UserColumn: "actor_mxid", Policy: appservice.EraseSetNull,
			Export:            []string{"network", "channel_name", "room_id", "source_event_id", "created_at"},
			SourceEventColumn: "source_event_id", RoomColumn: "room_id",
			Description: "rooms you linked to IRC channels (!irc link), with when and which command; " +
				"when you are forgotten the rooms stay bridged for the others in them, without your name",
		},
		{
			Table: "irc_channel_key", UserColumn: "actor_mxid",
			Export:            []string{"network", "channel", "room_id", "source_event_id", "created_at"},
			Secret:            []string{"channel_key"},
			SourceEventColumn: "source_event_id", RoomColumn: "room_id",
			Description: "the keys (+k) of IRC channels you gave (!irc link, !irc key): which channel, when and with which command; " +
				"the key is kept only sealed under your own key",
		},
		{
			Table: "irc_pm", UserColumn: "user_mxid",
			Export:      []string{"network", "nick", "room_id", "created_at"},
			Description: "your private chats with IRC users: the network, their nick and the room",
		},
		{
			Table: "irc_media", UserColumn: "user_mxid",
			Export:         []string{"event_id", "original_event_id", "room_id", "created_at"},
			TimeColumn:     "created_at",
			RetentionClass: appservice.RetentionActivity,
			Description: "links that let IRC users open media you sent (only their hash is kept); " +
				"they stop working when you redact the message, after message_ttl, or when you are forgotten",
		},
		{
			Table: "irc_message", UserColumn: "user_mxid",
			Export:         []string{"event_id", "original_event_id", "room_id", "network", "target", "msgid", "created_at"},
			TimeColumn:     "created_at",
			RetentionClass: appservice.RetentionActivity,
			Description: "which of your Matrix messages were relayed to IRC, by ID only (never their text), " +
				"for replies and redactions; kept at most message_ttl",
		},
		{
			Table: "irc_outbox", UserColumn: "user_mxid",
			Export: []string{"event_id", "room_id", "network", "queued_at"},
			Description: "your Matrix messages waiting for your IRC connection, by ID only (never their text), " +
				"so that a restart still sends them; each goes once sent or dropped",
		},
	}
}

// Init stores the host and prepares the networks. It does no I/O.
func (br *Bridge) Init(host appservice.Host) error {
	br.host = host
	br.db = ircdb.New(host.DB())
	br.log = *host.Log()
	br.limiter = backoff.NewLimiter(br.clock, secondsDuration(1/br.cfg.ConnectRate.PerSecond), br.cfg.ConnectRate.Burst)
	br.runCtx, br.runCancel = context.WithCancel(br.log.WithContext(context.Background()))
	br.networks = make(map[string]*network, len(br.cfg.Networks))
	for netID, nc := range br.cfg.Networks {
		nc.ID = netID
		if nc.Name == "" {
			nc.Name = netID
		}
		br.networks[netID] = newNetwork(br, nc)
		br.netIDs = append(br.netIDs, netID)
	}
	sort.Strings(br.netIDs)
	return nil
}

// Start connects the bridge to every network, queues again the messages that were waiting for
// IRC when the bridge last stopped (see replayOutbox), and starts the janitor that disconnects
// idle and paused puppets and expires message-ID maps. A network that cannot be reached is retried in
// the background; it never stops the other networks or bridges.
func (br *Bridge) Start(ctx context.Context) error {
	key, err := br.db.Key.GetOrCreate(ctx, "ident", identKeySize)
	if err != nil {
		return fmt.Errorf("failed to get the ident key: %w", err)
	}
	br.identKey = key
	br.idents = identd.NewRegistry()
	br.tlsRoots = make(map[string]*x509.CertPool)
	for _, netID := range br.netIDs {
		nc := br.networks[netID].cfg
		if nc.TLSCAFile == "" {
			continue
		}
		pem, err := os.ReadFile(nc.TLSCAFile)
		if err != nil {
			return fmt.Errorf("failed to read networks.%s.tls_ca_file: %w", netID, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("networks.%s.tls_ca_file holds no PEM certificate", netID)
		}
		br.tlsRoots[netID] = pool
	}
	if br.cfg.Identd.Enabled {
		br.identServer = identd.NewServer(br.idents, br.log.With().Str("component", "identd").Logger())
		if err := br.identServer.Listen(br.cfg.Identd.Address); err != nil {
			return err
		}
		br.log.Info().Stringer("address", br.identServer.Addr()).Msg("Ident server listening")
	}
	for _, netID := range br.netIDs {
		if err := br.networks[netID].start(ctx); err != nil {
			return fmt.Errorf("failed to start network %s: %w", netID, err)
		}
	}
	if err := br.startMediaProxy(); err != nil {
		return err
	}
	// Before the core hands over new events, so that a user's messages queued before the
	// restart go out before their later ones. Bounded: what is left stays for the next start.
	replayCtx, cancel := context.WithTimeout(br.runCtx, outboxReplayTimeout)
	br.replayOutbox(replayCtx, br.host.Bot().GetEvent)
	cancel()
	br.janitor.Add(1)
	go br.janitorLoop(br.runCtx)
	return nil
}

// Stop refuses the link requests still waiting for an operator's answer (telling each linker),
// quits every connection (QUIT), waiting until ctx ends at most, and stops the workers.
func (br *Bridge) Stop(ctx context.Context) error {
	br.refuseConsents(ctx)
	var wg sync.WaitGroup
	for _, n := range br.networks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.stop(ctx)
		}()
	}
	wg.Wait()
	var err error
	if br.mediaServer != nil {
		err = br.mediaServer.Shutdown(ctx)
	}
	if br.identServer != nil {
		if identErr := br.identServer.Close(ctx); identErr != nil && !errors.Is(identErr, net.ErrClosed) {
			err = errors.Join(err, identErr)
		}
	}
	if br.runCancel != nil {
		br.runCancel()
	}
	br.janitor.Wait()
	return err
}

// dial opens one connection. While its TCP connection is open, the ident server answers for
// it with cfg.Username.
func (br *Bridge) dial(ctx context.Context, cfg ircconn.Config) (*ircconn.Conn, error) {
	base := cfg.Dialer
	if br.dialer != nil {
		base = br.dialer
	}
	if base == nil {
		var d net.Dialer
		base = d.DialContext
	}
	username := cfg.Username
	idents := br.idents
	cfg.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := base(ctx, network, addr)
		if err != nil || idents == nil {
			return c, err
		}
		return &identConn{Conn: c, remove: idents.Add(c.LocalAddr(), c.RemoteAddr(), username)}, nil
	}
	return ircconn.Dial(ctx, cfg)
}

// identConn is a connection the ident server answers for until it is closed.
type identConn struct {
	net.Conn
	remove func()
}

// Close closes the connection and stops answering for it.
func (c *identConn) Close() error {
	c.remove()
	return c.Conn.Close()
}

// tlsConfig returns the TLS settings for a network: the system's roots or its tls_ca_file's,
// the address's host name.
func (br *Bridge) tlsConfig(nc *NetworkConfig) *tls.Config {
	host, _, _ := net.SplitHostPort(nc.Address)
	return &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12, RootCAs: br.tlsRoots[nc.ID]}
}

// secondsDuration converts seconds to a Duration, saturating.
func secondsDuration(s float64) time.Duration {
	if s <= 0 || math.IsNaN(s) {
		return 0
	}
	if s > float64(math.MaxInt64)/float64(time.Second) {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(s * float64(time.Second))
}

// janitorInterval is how often the janitor looks for idle and paused puppets.
const janitorInterval = time.Minute

func (br *Bridge) janitorLoop(ctx context.Context) {
	defer br.janitor.Done()
	ticker := br.clock.NewTicker(janitorInterval)
	defer ticker.Stop()
	lastPrune := time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C():
		}
		br.sweepPuppets(ctx)
		br.expireConsents(ctx, br.clock.Now())
		if now := br.clock.Now(); now.Sub(lastPrune) >= time.Hour {
			lastPrune = now
			if n, err := br.db.Message.Prune(ctx, now.Add(-br.cfg.MessageTTL)); err != nil {
				br.log.Warn().Err(err).Msg("Failed to expire message ID maps")
			} else if n > 0 {
				br.log.Debug().Int64("rows", n).Msg("Expired message ID maps")
			}
			if n, err := br.db.Media.Prune(ctx, now.Add(-br.cfg.MessageTTL)); err != nil {
				br.log.Warn().Err(err).Msg("Failed to expire media links")
			} else if n > 0 {
				br.log.Debug().Int64("rows", n).Msg("Expired media links")
			}
		}
	}
}

// sweepPuppets disconnects puppets that were idle for idle_timeout (with nothing queued) and
// those of paused users, and drops queued events that waited too long for a connection.
func (br *Bridge) sweepPuppets(ctx context.Context) {
	now := br.clock.Now()
	for _, netID := range br.netIDs {
		n := br.networks[netID]
		puppets := n.puppetList()
		for _, p := range puppets {
			if paused, err := br.host.IsPaused(ctx, p.user); err == nil && paused {
				if n.dropPuppet(ctx, p.user, "Paused") {
					br.log.Debug().Str("network", netID).Str("reason", "Paused").Msg("Disconnected puppet")
				}
				continue
			}
			if now.Sub(p.sess.idleSince()) >= br.cfg.IdleTimeout && n.dropIdlePuppet(ctx, p.user, "Idle") {
				br.log.Debug().Str("network", netID).Str("reason", "Idle").Msg("Disconnected puppet")
				continue
			}
			p.expireOutbox(ctx, now)
		}
	}
}

// HandleEvent handles a Matrix event in a portal or private chat, or one concerning a ghost.
func (br *Bridge) HandleEvent(ctx context.Context, evt *event.Event, route appservice.Route) error {
	switch evt.Type {
	case event.EventMessage:
		return br.handleMatrixMessage(ctx, evt)
	case event.EventRedaction:
		return br.handleMatrixRedaction(ctx, evt)
	case event.StateMember:
		return br.handleMatrixMember(ctx, evt, route)
	case event.StateTopic:
		return br.handleMatrixTopic(ctx, evt)
	}
	return nil
}

// network returns the network with the given ID, or nil.
func (br *Bridge) network(netID string) *network { return br.networks[netID] }

// notifyUser tells userID something about their connections in a private notice from the bot,
// through [appservice.Host.NotifyUser]: in their management room, which is the direct chat
// they run !irc commands in when the notice comes from a command. The notice's transaction ID
// is derived from cause, the event that led to it, and purpose, so that handling the same event
// again (a replay after a crash, a reconnection for the same stored credentials) does not post
// it twice. Failures are logged.
func (br *Bridge) notifyUser(ctx context.Context, userID id.UserID, cause id.EventID, purpose, markdown string) {
	content := format.RenderMarkdown(markdown, true, false)
	content.MsgType = event.MsgNotice
	_, _, err := br.host.NotifyUser(ctx, userID, appservice.Notice{Cause: string(cause), Purpose: purpose, Content: &content})
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to notify user")
	}
}

// EraseRemote undoes the user's presence on IRC before the core erases their data: every puppet
// sends QUIT and disconnects and the ghosts leave the user's private chats. The rooms the user
// linked to channels stay bridged, since others may use them and only an explicit unlink
// removes a portal; they no longer name the user (actor and command cleared here, the actor
// column is also SET NULL by the erasure). It is idempotent.
func (br *Bridge) EraseRemote(ctx context.Context, userID id.UserID) error {
	var errs []error
	quit := 0
	for _, netID := range br.netIDs {
		n := br.networks[netID]
		if n.dropPuppet(ctx, userID, "Quit") {
			quit++
		}
	}
	br.truncatedTold.forget(userID)
	pms, err := br.db.PM.GetByUser(ctx, userID)
	if err != nil {
		errs = append(errs, fmt.Errorf("failed to get private chats: %w", err))
	}
	for _, pm := range pms {
		br.closePM(ctx, pm, "The user asked to be forgotten")
	}
	for _, netID := range br.netIDs {
		// The rows go with the erasure (their vault key is shredded); the opened keys go now.
		if err := br.networks[netID].forgetKeysOf(ctx, userID); err != nil {
			errs = append(errs, err)
		}
	}
	disowned, err := br.db.Portal.Disown(ctx, userID)
	if err != nil {
		errs = append(errs, fmt.Errorf("failed to clear portal provenance: %w", err))
	}
	for _, netID := range br.netIDs {
		br.networks[netID].disownPortals(userID)
		br.networks[netID].forgetBansOf(userID)
		// A request waiting for an operator would record a portal (and seal a key) with the
		// erased user as its actor: it is dropped, and nobody is told.
		br.networks[netID].dropConsentsWhere(func(req *linkRequest) bool { return req.linker == userID })
	}
	zerolog.Ctx(ctx).Info().Int("puppets_quit", quit).Int("private_chats", len(pms)).Int64("portals_kept", disowned).
		Msg("Removed the user from IRC for erasure")
	return errors.Join(errs...)
}

// closePM makes the ghost of a private chat leave it and releases the room. The row itself is
// deleted by the caller or the erasure's cascade.
func (br *Bridge) closePM(ctx context.Context, pm *ircdb.PM, reason string) {
	n := br.network(pm.Network)
	if n != nil {
		if intent, err := br.ghostIntent(n, pm.Nick); err == nil {
			if _, err = intent.LeaveRoom(ctx, pm.RoomID, &mautrix.ReqLeave{Reason: reason}); err != nil {
				zerolog.Ctx(ctx).Debug().Err(err).Msg("Ghost failed to leave private chat")
			}
		}
	}
	if err := br.host.ReleaseRoom(ctx, pm.RoomID); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to release private chat")
	}
}

// unlinkPortal removes a portal: the bridge leaves the channel and stops bridging the room, and
// the channel's alias no longer points at the room, so that whoever joins the alias later gets a
// new, working portal instead of the unlinked room.
func (br *Bridge) unlinkPortal(ctx context.Context, p *ircdb.Portal, reason string) error {
	n := br.network(p.Network)
	if n != nil {
		n.forgetPortal(ctx, p, reason)
	}
	if err := br.db.Portal.Delete(ctx, p.RoomID); err != nil {
		return fmt.Errorf("failed to delete portal: %w", err)
	}
	if err := br.host.ReleaseRoom(ctx, p.RoomID); err != nil {
		return fmt.Errorf("failed to release portal room: %w", err)
	}
	if n != nil {
		br.freeAlias(ctx, n, p)
	}
	return nil
}

// freeAlias deletes the alias of an unlinked portal's channel, so that whoever joins it later
// gets a new portal instead of the unlinked room. The alias exists only if someone used it, and
// can only point at that room. Failures are logged.
func (br *Bridge) freeAlias(ctx context.Context, n *network, p *ircdb.Portal) {
	localpart, err := ircid.AliasLocalpart(n.cfg.ID, n.casemapping(), p.ChannelName)
	if err != nil {
		return
	}
	_, err = br.host.Bot().DeleteAlias(ctx, id.NewRoomAlias(localpart, br.host.Domain()))
	if err != nil && !errors.Is(err, mautrix.MNotFound) {
		zerolog.Ctx(ctx).Debug().Err(err).Msg("Failed to remove the channel's alias from the unlinked room")
	}
}

// KeepsRoom keeps every portal: a portal stays bridged while its channel exists, also when
// everyone left it, so that a user who joins it later (through its alias, or the room's own
// address) finds it working. Only an explicit unlink removes a portal: !irc unlink, kicking the
// bot, redacting the !irc link command, or an administrator (custodian portal unlink).
func (br *Bridge) KeepsRoom(ctx context.Context, roomID id.RoomID) (bool, error) {
	p, err := br.db.Portal.GetByRoom(ctx, roomID)
	if err != nil {
		return false, fmt.Errorf("failed to get portal: %w", err)
	}
	return p != nil, nil
}

// PurgeRoom unlinks a portal or closes a private chat when the bot's setup in the room ended.
// It is idempotent and succeeds for rooms the bridge knows nothing about.
func (br *Bridge) PurgeRoom(ctx context.Context, roomID id.RoomID) error {
	if p, err := br.db.Portal.GetByRoom(ctx, roomID); err != nil {
		return fmt.Errorf("failed to get portal: %w", err)
	} else if p != nil {
		if err = br.unlinkPortal(ctx, p, "The room was unlinked"); err != nil {
			return err
		}
		zerolog.Ctx(ctx).Info().Str("network", p.Network).Msg("Unlinked portal after the bot's setup ended")
	}
	return nil
}

// RedactionPurged reacts to the core deleting rows whose command was redacted: a redacted
// !irc login or !irc cert reconnects the user's puppet without the credentials or certificate, a
// redacted !irc nick
// reconnects it with the template's nick, and a redacted !irc link unlinks the room.
func (br *Bridge) RedactionPurged(ctx context.Context, roomID id.RoomID, redacted id.EventID, purged map[string]int64) error {
	log := zerolog.Ctx(ctx)
	for _, netID := range br.netIDs {
		n := br.networks[netID]
		n.mu.Lock()
		var affected []*puppet
		for _, p := range n.puppets {
			if ev := p.accountEvent.Load(); ev != nil && *ev == redacted {
				affected = append(affected, p)
			} else if ev := p.certEvent.Load(); ev != nil && *ev == redacted {
				affected = append(affected, p)
			} else if ev := p.nickEvent.Load(); ev != nil && *ev == redacted {
				affected = append(affected, p)
			}
		}
		var portals []*ircdb.Portal
		for _, p := range n.portals {
			if p.SourceEventID == redacted {
				portals = append(portals, p)
			}
		}
		n.mu.Unlock()
		for _, p := range affected {
			if ev := p.nickEvent.Load(); ev != nil && *ev == redacted {
				// Only the nick changed: change it without reconnecting.
				nick, nickEvent, err := br.puppetNick(ctx, n, p.user)
				p.nickEvent.Store(&nickEvent)
				if c := p.sess.current(); err == nil && c != nil {
					_ = c.Send(ctx, nil, "NICK", nick)
				}
				continue
			}
			p.saslFailed.Store(false)
			p.sess.reconnect(ctx, "Reconnecting")
		}
		for _, p := range portals {
			n.forgetPortal(ctx, p, "The room was unlinked")
			if err := br.host.ReleaseRoom(ctx, p.RoomID); err != nil {
				log.Warn().Err(err).Msg("Failed to release unlinked portal")
			}
			br.freeAlias(ctx, n, p)
		}
	}
	if purged["irc_channel_key"] > 0 {
		for _, netID := range br.netIDs {
			if err := br.networks[netID].reloadKeys(ctx); err != nil {
				log.Warn().Err(err).Msg("Failed to reload channel keys")
			}
		}
	}
	log.Info().Int64("accounts", purged["irc_account"]).Int64("certs", purged["irc_cert"]).Int64("nicks", purged["irc_nick"]).
		Int64("portals", purged["irc_portal"]).Msg("Cleaned up after IRC settings were purged by a redaction")
	return nil
}

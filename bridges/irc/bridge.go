package irc

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
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
	// mediaServer and mediaListener serve relayed media to IRC users (media_proxy); Start
	// sets them.
	mediaServer   *http.Server
	mediaListener net.Listener
}

var (
	_ appservice.Bridge          = (*Bridge)(nil)
	_ appservice.ConfigValidator = (*Bridge)(nil)
	_ appservice.CommandProvider = (*Bridge)(nil)
	_ appservice.Eraser          = (*Bridge)(nil)
	_ appservice.RoomPurger      = (*Bridge)(nil)
	_ appservice.RedactionPurger = (*Bridge)(nil)
	_ appservice.AliasQuerier    = (*Bridge)(nil)
	_ appservice.UserQuerier     = (*Bridge)(nil)
	_ appservice.OptInBridge     = (*Bridge)(nil)
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
			Table: "irc_nick", UserColumn: "user_mxid",
			Export:            []string{"network", "nick", "room_id", "source_event_id", "updated_at"},
			SourceEventColumn: "source_event_id", RoomColumn: "room_id",
			Description: "the IRC nicks you chose (!irc nick)",
		},
		{
			Table: "irc_portal", UserColumn: "actor_mxid",
			Export:            []string{"network", "channel_name", "room_id", "source_event_id", "created_at"},
			SourceEventColumn: "source_event_id", RoomColumn: "room_id",
			Description: "rooms you linked to IRC channels (!irc link), with when and which command",
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

// Start connects the bridge to every network and starts the janitor that disconnects idle and
// paused puppets and expires message-ID maps. A network that cannot be reached is retried in
// the background; it never stops the other networks or bridges.
func (br *Bridge) Start(ctx context.Context) error {
	for _, netID := range br.netIDs {
		if err := br.networks[netID].start(ctx); err != nil {
			return fmt.Errorf("failed to start network %s: %w", netID, err)
		}
	}
	if err := br.startMediaProxy(); err != nil {
		return err
	}
	br.janitor.Add(1)
	go br.janitorLoop(br.runCtx)
	return nil
}

// Stop quits every connection (QUIT), waiting until ctx ends at most, and stops the workers.
func (br *Bridge) Stop(ctx context.Context) error {
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
	if br.runCancel != nil {
		br.runCancel()
	}
	br.janitor.Wait()
	return err
}

// dial opens one connection.
func (br *Bridge) dial(ctx context.Context, cfg ircconn.Config) (*ircconn.Conn, error) {
	if br.dialer != nil {
		cfg.Dialer = br.dialer
	}
	return ircconn.Dial(ctx, cfg)
}

// tlsConfig returns the TLS settings for a network: the system's roots, the address's host name.
func (br *Bridge) tlsConfig(nc *NetworkConfig) *tls.Config {
	host, _, _ := net.SplitHostPort(nc.Address)
	return &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
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

// sweepPuppets disconnects puppets that were idle for idle_timeout and those of paused users.
func (br *Bridge) sweepPuppets(ctx context.Context) {
	now := br.clock.Now()
	for _, netID := range br.netIDs {
		n := br.networks[netID]
		n.mu.Lock()
		puppets := make([]*puppet, 0, len(n.puppets))
		for _, p := range n.puppets {
			puppets = append(puppets, p)
		}
		n.mu.Unlock()
		for _, p := range puppets {
			reason := ""
			if now.Sub(p.sess.idleSince()) >= br.cfg.IdleTimeout {
				reason = "Idle"
			} else if paused, err := br.host.IsPaused(ctx, p.user); err == nil && paused {
				reason = "Paused"
			}
			if reason != "" {
				br.log.Debug().Str("network", netID).Str("reason", reason).Msg("Disconnecting puppet")
				n.dropPuppet(ctx, p.user, reason)
			}
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
// sends QUIT and disconnects, the ghosts leave the user's private chats, and the rooms the user
// linked to channels are unlinked (the bridge leaves the channels). It is idempotent.
func (br *Bridge) EraseRemote(ctx context.Context, userID id.UserID) error {
	var errs []error
	quit := 0
	for _, netID := range br.netIDs {
		n := br.networks[netID]
		if n.dropPuppet(ctx, userID, "Quit") {
			quit++
		}
	}
	pms, err := br.db.PM.GetByUser(ctx, userID)
	if err != nil {
		errs = append(errs, fmt.Errorf("failed to get private chats: %w", err))
	}
	for _, pm := range pms {
		br.closePM(ctx, pm, "The user asked to be forgotten")
	}
	portals, err := br.db.Portal.GetByActor(ctx, userID)
	if err != nil {
		errs = append(errs, fmt.Errorf("failed to get linked portals: %w", err))
	}
	for _, p := range portals {
		if err := br.unlinkPortal(ctx, p, "The room's link was removed"); err != nil {
			errs = append(errs, err)
		}
	}
	zerolog.Ctx(ctx).Info().Int("puppets_quit", quit).Int("private_chats", len(pms)).Int("portals_unlinked", len(portals)).
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

// unlinkPortal removes a portal: the bridge leaves the channel and stops bridging the room.
func (br *Bridge) unlinkPortal(ctx context.Context, p *ircdb.Portal, reason string) error {
	if n := br.network(p.Network); n != nil {
		n.forgetPortal(ctx, p, reason)
	}
	if err := br.db.Portal.Delete(ctx, p.RoomID); err != nil {
		return fmt.Errorf("failed to delete portal: %w", err)
	}
	if err := br.host.ReleaseRoom(ctx, p.RoomID); err != nil {
		return fmt.Errorf("failed to release portal room: %w", err)
	}
	return nil
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
// !irc login reconnects the user's puppet without the credentials, a redacted !irc nick
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
		}
	}
	log.Info().Int64("accounts", purged["irc_account"]).Int64("nicks", purged["irc_nick"]).
		Int64("portals", purged["irc_portal"]).Msg("Cleaned up after IRC settings were purged by a redaction")
	return nil
}

package irc

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/rs/zerolog"
	"go.mau.fi/util/ptr"
	"maunium.net/go/mautrix"
	mxas "maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice"
	"github.com/custodian-matrix/custodian/bridges/irc/ircdb"
	"github.com/custodian-matrix/custodian/bridges/irc/ircid"
)

// QueryAlias answers the homeserver's query for #irc_<network>_<channel>: it creates the
// channel's portal room with that alias, if the network is configured and the channel name is
// valid, and makes the bridge join the channel.
func (br *Bridge) QueryAlias(ctx context.Context, alias id.RoomAlias) (bool, error) {
	localpart, server, ok := strings.Cut(strings.TrimPrefix(string(alias), "#"), ":")
	if !ok || server != br.host.Domain() {
		return false, nil
	}
	netID, _, ok := strings.Cut(strings.TrimPrefix(localpart, ircid.Prefix), "_")
	n := br.network(netID)
	if !ok || n == nil {
		return false, nil
	}
	network, channel, err := ircid.ParseAlias(localpart, n.casemapping())
	if err != nil || network != netID {
		return false, nil
	}
	if p := n.portal(ctx, channel); p != nil {
		// The portal exists but its alias does not point at it (someone deleted it): point it
		// there again.
		if _, err := br.host.Bot().CreateAlias(ctx, alias, p.RoomID); err != nil {
			return false, fmt.Errorf("failed to restore portal alias: %w", err)
		}
		return true, nil
	}
	if !n.channelAllowed(channel) {
		zerolog.Ctx(ctx).Debug().Str("network", netID).Msg("Not creating a portal for a channel the policy denies")
		return false, nil
	}
	p, err := br.createPortal(ctx, n, channel, channel, localpart, appservice.Provenance{})
	if err != nil {
		return false, err
	}
	zerolog.Ctx(ctx).Info().Str("network", netID).Stringer("room_id", p.RoomID).Msg("Created portal room for alias")
	return true, nil
}

// createPortal creates a public room for channel (folded; name as written), with the alias
// localpart if not empty, records the portal and joins the channel.
func (br *Bridge) createPortal(ctx context.Context, n *network, folded, name, aliasLocalpart string, prov appservice.Provenance) (*ircdb.Portal, error) {
	resp, err := br.host.Bot().CreateRoom(ctx, br.portalRoomRequest(n, name, aliasLocalpart))
	if err != nil {
		return nil, fmt.Errorf("failed to create portal room: %w", err)
	}
	return br.recordPortal(ctx, n, &ircdb.Portal{
		Network: n.cfg.ID, Channel: folded, ChannelName: name, RoomID: resp.RoomID, CreatedAt: br.clock.Now(),
	}, prov)
}

// roomEncryption returns the initial state that makes a room the bridge creates (a portal, a
// private chat) encrypted: an m.room.encryption event with encrypt_portals while the core's
// encryption is active, else nothing. IRC users read the room's messages in plaintext, so
// encryption is off by default (see the README).
func (br *Bridge) roomEncryption() []*event.Event {
	if !br.cfg.EncryptPortals || !br.host.EncryptionActive() {
		return nil
	}
	return []*event.Event{appservice.EncryptionInitialState()}
}

// portalRoomRequest is the request that creates a public portal room for channel name, with the
// alias localpart if not empty. The bot has power level 100 in it, and the network's
// portal_power_levels users theirs, so that someone can moderate the room and run !irc unlink.
func (br *Bridge) portalRoomRequest(n *network, name, aliasLocalpart string) *mautrix.ReqCreateRoom {
	users := make(map[id.UserID]int, len(n.cfg.PortalPowerLevels)+1)
	for userID, level := range n.cfg.PortalPowerLevels {
		users[userID] = level
	}
	users[br.host.Bot().UserID] = 100
	return &mautrix.ReqCreateRoom{
		InitialState:  br.roomEncryption(),
		Visibility:    "private",
		Preset:        "public_chat",
		RoomAliasName: aliasLocalpart,
		Name:          name,
		Topic:         "",
		CreationContent: map[string]any{
			"m.federate": true,
		},
		PowerLevelOverride: &event.PowerLevelsEventContent{
			Users: users,
			// Anyone may try to change the topic, as on IRC: the channel decides (+t).
			Events:          map[string]int{event.StateTopic.Type: 0},
			EventsDefault:   0,
			StateDefaultPtr: ptr.Ptr(50),
			RedactPtr:       ptr.Ptr(50),
			KickPtr:         ptr.Ptr(50),
			BanPtr:          ptr.Ptr(50),
			InvitePtr:       ptr.Ptr(0),
		},
	}
}

// recordPortal stores p, claims its room and joins the channel. If the channel got a portal
// meanwhile, that one is returned.
func (br *Bridge) recordPortal(ctx context.Context, n *network, p *ircdb.Portal, prov appservice.Provenance) (*ircdb.Portal, error) {
	p.Actor, p.SourceEventID = prov.Actor, prov.EventID
	var stored bool
	err := br.db.DoTxn(ctx, nil, func(ctx context.Context) error {
		if p.Actor != "" {
			if err := br.host.EnsureUser(ctx, p.Actor); err != nil {
				return err
			}
		}
		var err error
		stored, err = br.db.Portal.Insert(ctx, p)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("failed to store portal: %w", err)
	}
	if !stored {
		existing, err := br.db.Portal.Get(ctx, p.Network, p.Channel)
		if err != nil || existing == nil {
			return nil, fmt.Errorf("failed to get existing portal: %w", err)
		}
		return existing, errPortalExists
	}
	if err = br.host.ClaimRoom(ctx, p.RoomID, prov); err != nil {
		return nil, fmt.Errorf("failed to claim portal room: %w", err)
	}
	n.mu.Lock()
	n.portals[p.Channel] = p
	n.mu.Unlock()
	if err = n.bot.join(ctx, p.Channel, p.ChannelName); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to join channel now; will join on reconnect")
	}
	return p, nil
}

// errPortalExists is returned by recordPortal with the channel's existing portal.
var errPortalExists = errors.New("irc: the channel already has a portal")

// ghostIntent returns the intent of nick's ghost on n.
func (br *Bridge) ghostIntent(n *network, nick string) (*mxas.IntentAPI, error) {
	localpart, err := ircid.GhostLocalpart(n.cfg.ID, n.casemapping(), nick)
	if err != nil {
		return nil, err
	}
	return br.host.Intent(localpart)
}

// ghost returns nick's ghost on n, registered and with its display name set to nick.
func (br *Bridge) ghost(ctx context.Context, n *network, nick string) (*mxas.IntentAPI, error) {
	intent, err := br.ghostIntent(n, nick)
	if err != nil {
		return nil, err
	}
	key := string(intent.UserID)
	if v, ok := br.ghosts.Load(key); ok && v.(string) == nick {
		return intent, nil
	}
	if err = intent.EnsureRegistered(ctx); err != nil {
		return nil, fmt.Errorf("failed to register ghost: %w", err)
	}
	if err = intent.SetDisplayName(ctx, nick); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to set ghost's display name")
	} else {
		br.ghosts.Store(key, nick)
	}
	return intent, nil
}

// ghostJoin makes nick's ghost join roomID, inviting it with the bot if the room needs that.
func (br *Bridge) ghostJoin(ctx context.Context, n *network, nick string, roomID id.RoomID) (*mxas.IntentAPI, error) {
	intent, err := br.ghost(ctx, n, nick)
	if err != nil {
		return nil, err
	}
	if err = intent.EnsureJoined(ctx, roomID, mxas.EnsureJoinedParams{BotOverride: br.host.Bot().Client}); err != nil {
		return nil, fmt.Errorf("failed to join ghost to room: %w", err)
	}
	return intent, nil
}

// ghostLeave makes nick's ghost leave roomID if it is in it.
func (br *Bridge) ghostLeave(ctx context.Context, n *network, nick string, roomID id.RoomID, reason string) {
	intent, err := br.ghostIntent(n, nick)
	if err != nil {
		return
	}
	if intent.StateStore != nil && !intent.StateStore.IsMembership(ctx, roomID, intent.UserID, event.MembershipJoin, event.MembershipInvite) {
		return
	}
	if _, err = intent.LeaveRoom(ctx, roomID, &mautrix.ReqLeave{Reason: reason}); err != nil {
		zerolog.Ctx(ctx).Debug().Err(err).Msg("Ghost failed to leave room")
	}
}

// QueryUser answers the homeserver's query for @irc_<network>_<nick>: any valid nick on a
// configured network exists (IRC users come and go; a message to one that is offline gets the
// server's answer). The ghost is registered before answering.
func (br *Bridge) QueryUser(ctx context.Context, userID id.UserID) (bool, error) {
	n, nick, ok := br.parseGhost(userID)
	if !ok {
		return false, nil
	}
	if _, err := br.ghost(ctx, n, nick); err != nil {
		return false, err
	}
	return true, nil
}

// parseGhost returns the network and (folded) nick of a ghost's user ID.
func (br *Bridge) parseGhost(userID id.UserID) (*network, string, bool) {
	localpart, server, err := userID.Parse()
	if err != nil || server != br.host.Domain() || !strings.HasPrefix(localpart, ircid.Prefix) {
		return nil, "", false
	}
	netID, _, ok := strings.Cut(strings.TrimPrefix(localpart, ircid.Prefix), "_")
	n := br.network(netID)
	if !ok || n == nil {
		return nil, "", false
	}
	network, nick, err := ircid.ParseGhost(localpart, n.casemapping())
	if err != nil || network != netID {
		return nil, "", false
	}
	return n, nick, true
}

// pmRoom returns userID's private chat with nick's ghost on n, creating it (the ghost invites the
// user) if there is none.
func (br *Bridge) pmRoom(ctx context.Context, n *network, userID id.UserID, nick string) (id.RoomID, error) {
	folded := n.fold(nick)
	pm, err := br.db.PM.Get(ctx, userID, n.cfg.ID, folded)
	if err != nil {
		return "", fmt.Errorf("failed to get private chat: %w", err)
	}
	intent, err := br.ghost(ctx, n, nick)
	if err != nil {
		return "", err
	}
	if pm != nil {
		// The row goes when the user leaves the chat (handleMatrixMember); the state store may
		// not know they joined, since their join can precede the ghost's.
		return pm.RoomID, nil
	}
	resp, err := intent.CreateRoom(ctx, &mautrix.ReqCreateRoom{
		Preset: "trusted_private_chat", IsDirect: true, Invite: []id.UserID{userID},
		Name:         nick + " (" + n.cfg.Name + ")",
		InitialState: br.roomEncryption(),
	})
	if err != nil {
		return "", fmt.Errorf("failed to create private chat: %w", err)
	}
	if err = br.recordPM(ctx, &ircdb.PM{UserID: userID, Network: n.cfg.ID, Nick: folded, RoomID: resp.RoomID, CreatedAt: br.clock.Now()}); err != nil {
		return "", err
	}
	return resp.RoomID, nil
}

// recordPM stores a private chat and claims its room.
func (br *Bridge) recordPM(ctx context.Context, pm *ircdb.PM) error {
	err := br.db.DoTxn(ctx, nil, func(ctx context.Context) error {
		if err := br.host.EnsureUser(ctx, pm.UserID); err != nil {
			return err
		}
		return br.db.PM.Put(ctx, pm)
	})
	if err != nil {
		return fmt.Errorf("failed to store private chat: %w", err)
	}
	if err = br.host.ClaimRoom(ctx, pm.RoomID, appservice.Provenance{Actor: pm.UserID, RoomID: pm.RoomID, At: pm.CreatedAt}); err != nil {
		return fmt.Errorf("failed to claim private chat: %w", err)
	}
	return nil
}

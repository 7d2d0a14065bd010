package irc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice"
	"github.com/custodian-matrix/custodian/bridges/irc/ircdb"
	"github.com/custodian-matrix/custodian/bridges/irc/ircid"
)

// AdminPortal is one portal in the admin API's answers (GET …/bridges/irc/portals and the
// answers of unlink and reset).
type AdminPortal struct {
	// Network is the network's ID.
	Network string `json:"network"`
	// Channel is the channel's name as first written.
	Channel string `json:"channel"`
	// RoomID is the portal's room.
	RoomID id.RoomID `json:"room_id"`
	// Alias is the channel's alias (#irc_<network>_<channel>), which points at the portal's room
	// once someone used it.
	Alias id.RoomAlias `json:"alias"`
	// LinkedBy and LinkEventID are who linked the room with !irc link, and with which command;
	// both are empty for a portal made through its alias, and once the user was forgotten.
	LinkedBy    id.UserID  `json:"linked_by,omitempty"`
	LinkEventID id.EventID `json:"link_event_id,omitempty"`
	// CreatedAt is when the portal was made.
	CreatedAt time.Time `json:"created_at"`
}

// AdminPortals is the answer of GET …/bridges/irc/portals.
type AdminPortals struct {
	// Portals are every portal of every network, by network and channel; empty, never null.
	Portals []*AdminPortal `json:"portals"`
}

// AdminPortalChange is the answer of POST …/bridges/irc/portals/{room}/unlink and …/reset.
type AdminPortalChange struct {
	// Old is the portal as it was.
	Old *AdminPortal `json:"old"`
	// New is the channel's new portal after a reset; nil after an unlink.
	New *AdminPortal `json:"new,omitempty"`
}

// AdminRoutes returns the bridge's admin API endpoints, below
// /_custodian/admin/v1/bridges/irc (see the README, "Administration"):
//
//	GET  /portals                 every portal
//	POST /portals/{room}/unlink   unlink a portal; {room} is its room ID or an alias of it
//	POST /portals/{room}/reset    give the channel a new portal room
func (br *Bridge) AdminRoutes() []appservice.AdminRoute {
	return []appservice.AdminRoute{
		{Method: http.MethodGet, Path: "/portals", Handler: br.adminListPortals},
		{Method: http.MethodPost, Path: "/portals/{room}/unlink", Handler: br.adminUnlinkPortal},
		{Method: http.MethodPost, Path: "/portals/{room}/reset", Handler: br.adminResetPortal},
	}
}

// adminPortal describes p for the admin API.
func (br *Bridge) adminPortal(p *ircdb.Portal) *AdminPortal {
	ap := &AdminPortal{
		Network: p.Network, Channel: p.ChannelName, RoomID: p.RoomID,
		LinkedBy: p.Actor, LinkEventID: p.SourceEventID, CreatedAt: p.CreatedAt.UTC(),
	}
	if n := br.network(p.Network); n != nil {
		if localpart, err := ircid.AliasLocalpart(n.cfg.ID, n.casemapping(), p.ChannelName); err == nil {
			ap.Alias = id.NewRoomAlias(localpart, br.host.Domain())
		}
	}
	return ap
}

func (br *Bridge) adminListPortals(w http.ResponseWriter, r *http.Request) {
	portals, err := br.db.Portal.List(r.Context())
	if err != nil {
		zerolog.Ctx(r.Context()).Error().Err(err).Msg("Failed to list portals")
		adminError(w, http.StatusInternalServerError, "M_UNKNOWN", "Listing failed; see the log")
		return
	}
	out := &AdminPortals{Portals: make([]*AdminPortal, 0, len(portals))}
	for _, p := range portals {
		out.Portals = append(out.Portals, br.adminPortal(p))
	}
	adminJSON(w, http.StatusOK, out)
}

// errNoPortal is returned by findPortal when the room or alias is not a portal.
var errNoPortal = errors.New("irc: not a portal")

// findPortal returns the portal a room ID or alias names. An alias of the bridge's namespace
// names its channel's portal without asking the homeserver (which would make a new portal for
// it); any other alias is resolved.
func (br *Bridge) findPortal(ctx context.Context, ref string) (*ircdb.Portal, error) {
	var roomID id.RoomID
	switch {
	case strings.HasPrefix(ref, "!"):
		roomID = id.RoomID(ref)
	case strings.HasPrefix(ref, "#"):
		alias := id.RoomAlias(ref)
		if localpart, server, ok := strings.Cut(strings.TrimPrefix(ref, "#"), ":"); ok && server == br.host.Domain() &&
			strings.HasPrefix(localpart, ircid.Prefix) {
			netID, _, _ := strings.Cut(strings.TrimPrefix(localpart, ircid.Prefix), "_")
			n := br.network(netID)
			if n == nil {
				return nil, errNoPortal
			}
			network, channel, err := ircid.ParseAlias(localpart, n.casemapping())
			if err != nil || network != netID {
				return nil, errNoPortal
			}
			p, err := br.db.Portal.Get(ctx, netID, channel)
			if err != nil {
				return nil, err
			} else if p == nil {
				return nil, errNoPortal
			}
			return p, nil
		}
		resp, err := br.host.Bot().ResolveAlias(ctx, alias)
		if errors.Is(err, mautrix.MNotFound) {
			return nil, errNoPortal
		} else if err != nil {
			return nil, fmt.Errorf("failed to resolve alias: %w", err)
		}
		roomID = resp.RoomID
	default:
		return nil, errNoPortal
	}
	p, err := br.db.Portal.GetByRoom(ctx, roomID)
	if err != nil {
		return nil, err
	} else if p == nil {
		return nil, errNoPortal
	}
	return p, nil
}

// adminFindPortal is findPortal for a handler: it answers 404 or 500 itself when it fails.
func (br *Bridge) adminFindPortal(w http.ResponseWriter, r *http.Request) (*ircdb.Portal, bool) {
	p, err := br.findPortal(r.Context(), r.PathValue("room"))
	switch {
	case errors.Is(err, errNoPortal):
		adminError(w, http.StatusNotFound, "M_NOT_FOUND", "That room or alias is not an IRC portal")
		return nil, false
	case err != nil:
		zerolog.Ctx(r.Context()).Error().Err(err).Msg("Failed to find portal")
		adminError(w, http.StatusInternalServerError, "M_UNKNOWN", "Lookup failed; see the log")
		return nil, false
	}
	return p, true
}

func (br *Bridge) adminUnlinkPortal(w http.ResponseWriter, r *http.Request) {
	p, ok := br.adminFindPortal(w, r)
	if !ok {
		return
	}
	// The unlink runs to the end even if the admin's client goes away.
	ctx := context.WithoutCancel(r.Context())
	if err := br.unlinkPortal(ctx, p, "An administrator unlinked the room"); err != nil {
		zerolog.Ctx(ctx).Error().Err(err).Msg("Admin unlink failed")
		adminError(w, http.StatusInternalServerError, "M_UNKNOWN", "Unlink failed; see the log")
		return
	}
	br.roomNotice(ctx, p.RoomID, "An administrator unlinked this room from "+p.ChannelName+"; it is no longer bridged to IRC.")
	zerolog.Ctx(ctx).Info().Str("network", p.Network).Stringer("room_id", p.RoomID).Msg("Administrator unlinked portal")
	adminJSON(w, http.StatusOK, &AdminPortalChange{Old: br.adminPortal(p)})
}

func (br *Bridge) adminResetPortal(w http.ResponseWriter, r *http.Request) {
	p, ok := br.adminFindPortal(w, r)
	if !ok {
		return
	}
	ctx := context.WithoutCancel(r.Context())
	np, err := br.resetPortal(ctx, p)
	if err != nil {
		zerolog.Ctx(ctx).Error().Err(err).Msg("Admin reset failed")
		adminError(w, http.StatusInternalServerError, "M_UNKNOWN", "Reset failed; see the log")
		return
	}
	zerolog.Ctx(ctx).Info().Str("network", p.Network).Stringer("old_room_id", p.RoomID).Stringer("room_id", np.RoomID).
		Msg("Administrator reset portal")
	adminJSON(w, http.StatusOK, &AdminPortalChange{Old: br.adminPortal(p), New: br.adminPortal(np)})
}

// resetPortal gives p's channel a new portal room, for a portal that cannot be repaired in
// place (the bot lost its power or was banned, the room's state was broken): the bridge makes a
// new public room, moves the channel's link and alias to it, and in the old room points to the
// new one (m.room.tombstone where the bot may send it, else a notice) and leaves with the ghosts. The
// channel stays joined throughout. Failures after the link moved are logged, not returned: the
// new portal works regardless.
func (br *Bridge) resetPortal(ctx context.Context, p *ircdb.Portal) (*ircdb.Portal, error) {
	n := br.network(p.Network)
	if n == nil {
		return nil, fmt.Errorf("network %s is not configured", p.Network)
	}
	log := zerolog.Ctx(ctx)
	localpart, err := ircid.AliasLocalpart(n.cfg.ID, n.casemapping(), p.ChannelName)
	if err != nil {
		return nil, fmt.Errorf("failed to make alias: %w", err)
	}
	resp, err := br.host.Bot().CreateRoom(ctx, br.portalRoomRequest(n, p.ChannelName, ""))
	if err != nil {
		return nil, fmt.Errorf("failed to create portal room: %w", err)
	}
	// The row is updated in place: deleting and re-inserting it would cascade the channel key
	// away, and drop the provenance that lets redacting the !irc link unlink the portal.
	np := *p
	np.RoomID = resp.RoomID
	moved, err := br.db.Portal.MoveRoom(ctx, p.Network, p.Channel, np.RoomID)
	if err != nil {
		return nil, fmt.Errorf("failed to move portal: %w", err)
	} else if !moved {
		return nil, fmt.Errorf("portal of %s was removed during the reset", p.Network)
	}
	if err = br.host.ClaimRoom(ctx, np.RoomID, appservice.Provenance{}); err != nil {
		return nil, fmt.Errorf("failed to claim portal room: %w", err)
	}
	if err = br.host.ReleaseRoom(ctx, p.RoomID); err != nil {
		log.Warn().Err(err).Msg("Failed to release the old portal room")
	}
	n.mu.Lock()
	n.portals[np.Channel] = &np
	nicks := make([]string, 0, len(n.members[np.Channel]))
	for _, nick := range n.members[np.Channel] {
		nicks = append(nicks, nick)
	}
	n.mu.Unlock()
	if err = n.bot.join(ctx, np.Channel, np.ChannelName); err != nil {
		log.Warn().Err(err).Msg("Failed to join channel now; will join on reconnect")
	}
	alias := id.NewRoomAlias(localpart, br.host.Domain())
	if _, err = br.host.Bot().DeleteAlias(ctx, alias); err != nil && !errors.Is(err, mautrix.MNotFound) {
		log.Warn().Err(err).Msg("Failed to remove the channel's alias from the old room")
	}
	if _, err = br.host.Bot().CreateAlias(ctx, alias, np.RoomID); err != nil {
		log.Warn().Err(err).Msg("Failed to point the channel's alias at the new room")
	}
	_, err = br.host.Bot().SendStateEvent(ctx, p.RoomID, event.StateTombstone, "", &event.TombstoneEventContent{
		Body: "This room was replaced; " + p.ChannelName + " is bridged in the new room.", ReplacementRoom: np.RoomID,
	})
	if err != nil {
		// A linked room's admins may not have given the bot the power to replace the room:
		// tell its members where the channel went instead.
		log.Debug().Err(err).Msg("Failed to point the old portal room at the new one")
		br.roomNotice(ctx, p.RoomID, fmt.Sprintf("%s is now bridged in another room, %s (%s). This room is no longer bridged.",
			p.ChannelName, alias, np.RoomID))
	}
	for _, nick := range nicks {
		br.ghostLeave(ctx, n, nick, p.RoomID, "The portal moved to a new room")
	}
	if _, err = br.host.Bot().LeaveRoom(ctx, p.RoomID, &mautrix.ReqLeave{Reason: "The portal moved to a new room"}); err != nil {
		log.Debug().Err(err).Msg("Failed to leave the old portal room")
	}
	return &np, nil
}

// roomNotice sends a notice from the bot into a room; failures are logged.
func (br *Bridge) roomNotice(ctx context.Context, roomID id.RoomID, text string) {
	content := &event.MessageEventContent{MsgType: event.MsgNotice, Body: text}
	if _, err := br.host.Bot().SendMessageEvent(ctx, roomID, event.EventMessage, content); err != nil {
		zerolog.Ctx(ctx).Debug().Err(err).Msg("Failed to send notice to room")
	}
}

// adminJSON writes an admin API answer.
func adminJSON(w http.ResponseWriter, status int, data any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(data)
}

// adminError writes an admin API error in the core's form.
func adminError(w http.ResponseWriter, status int, errcode, message string) {
	adminJSON(w, status, map[string]string{"errcode": errcode, "error": message})
}

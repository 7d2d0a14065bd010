package irc

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ergochat/irc-go/ircmsg"
	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/format"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/bridges/irc/ircconv"
	"github.com/custodian-matrix/custodian/bridges/irc/ircline"
)

// What IRC operators do to puppets shows in Matrix:
//
//   - A KICK of a puppet: the user gets a private notice with the channel and reason, and the
//     puppet stays out of the channel for rejoin_delay; messages the user sends to the room
//     meanwhile are not relayed, and the user is told so.
//   - A KILL of a puppet: the user gets a notice, and the puppet reconnects only after
//     rejoin_delay (or the usual backoff, if longer).
//   - A ban (+b) that matches a puppet's nick!user@host as the bridge saw it join, or a join
//     refused with 474: the bot bans the user from the portal room with the IRC reason. When
//     the IRC ban is lifted (-b of the same mask), the bot lifts the Matrix bans it set for it.
//     Which Matrix bans came from which mask is kept in memory only: after a restart, lifting
//     the IRC ban leaves the Matrix ban, which a room moderator lifts.

// kickedUntil returns until when the puppet must stay out of channel (folded), or the zero
// time.
func (p *puppet) kickedUntil(folded string) time.Time {
	p.kickMu.Lock()
	defer p.kickMu.Unlock()
	return p.kicked[folded]
}

// setKicked keeps the puppet out of channel (folded) until until.
func (p *puppet) setKicked(folded string, until time.Time) {
	p.kickMu.Lock()
	defer p.kickMu.Unlock()
	if p.kicked == nil {
		p.kicked = make(map[string]time.Time)
	}
	p.kicked[folded] = until
}

// mayJoin reports whether the puppet may be in channel (folded) now; an expired kick is
// forgotten.
func (p *puppet) mayJoin(folded string, now time.Time) bool {
	p.kickMu.Lock()
	defer p.kickMu.Unlock()
	until, ok := p.kicked[folded]
	if !ok {
		return true
	}
	if now.Before(until) {
		return false
	}
	delete(p.kicked, folded)
	return true
}

// ircCause is the stable key of a private notice caused by an IRC message, which has no Matrix
// event: what happened, where, and when the server said it happened.
func (n *network) ircCause(what, target string, msg *ircmsg.Message) id.EventID {
	ts := ircline.ServerTime(msg, n.br.clock.Now())
	return id.EventID(fmt.Sprintf("irc-%s:%s:%s:%d", what, n.cfg.ID, n.fold(target), ts.UnixMilli()))
}

// onPuppetKicked handles the KICK of a puppet from a channel.
func (n *network) onPuppetKicked(ctx context.Context, p *puppet, msg *ircmsg.Message) {
	channel := ircline.Param(msg, 0)
	folded := n.fold(channel)
	p.sess.forgetChannel(folded)
	delay := n.cfg.RejoinDelay
	p.setKicked(folded, n.br.clock.Now().Add(delay))
	kicker := msg.Nick()
	if kicker == "" {
		kicker = msg.Source
	}
	reason := ircconv.Strip(ircconv.DecodeText(ircline.Param(msg, 2)))
	zerolog.Ctx(ctx).Info().Dur("rejoin_delay", delay).Msg("A puppet was kicked from a channel")
	n.br.notifyUser(ctx, p.user, n.ircCause("kick", channel, msg), "kicked", fmt.Sprintf(
		"%s kicked you from %s on %s (reason: %s). Your messages there are not relayed for the next %s.",
		format.SafeMarkdownCode(kicker), channel, n.cfg.Name, format.SafeMarkdownCode(reason), delay))
}

// isKill reports whether a message a connection received means it is being killed: KILL of its
// own nick, or an ERROR that says so.
func isKill(c interface{ Nick() string }, msg *ircmsg.Message, fold func(string) string) bool {
	switch msg.Command {
	case "KILL":
		return fold(ircline.Param(msg, 0)) == fold(c.Nick())
	case "ERROR":
		return strings.Contains(strings.ToLower(ircline.Param(msg, 0)), "killed")
	}
	return false
}

// onPuppetKilled tells the user their puppet was killed; the session already holds the
// reconnect back (see session.handler).
func (n *network) onPuppetKilled(ctx context.Context, p *puppet, msg *ircmsg.Message) {
	reason := ircconv.Strip(ircconv.DecodeText(ircline.Param(msg, len(msg.Params)-1)))
	zerolog.Ctx(ctx).Info().Dur("rejoin_delay", n.cfg.RejoinDelay).Msg("A puppet was killed")
	// A KILL and the ERROR after it share the hold, so the user is told once.
	cause := id.EventID(fmt.Sprintf("irc-kill:%s:%d", n.cfg.ID, p.sess.heldUntil().UnixMilli()))
	n.br.notifyUser(ctx, p.user, cause, "killed", fmt.Sprintf(
		"An operator of %s disconnected you (reason: %s). I reconnect you in %s at the earliest.",
		n.cfg.Name, format.SafeMarkdownCode(reason), n.cfg.RejoinDelay))
}

// onJoinRefusedBan handles a puppet's JOIN refused with 474 (banned): the user is banned from
// the portal room too.
func (n *network) onJoinRefusedBan(ctx context.Context, p *puppet, channel string) {
	folded := n.fold(channel)
	p.sess.forgetChannel(folded)
	portal := n.portal(ctx, folded)
	if portal == nil {
		return
	}
	n.banInMatrix(ctx, portal.RoomID, p.user, fmt.Sprintf("Banned from %s on %s", channel, n.cfg.Name))
}

// banInMatrix bans userID from roomID as the bot, if they are not banned already.
func (n *network) banInMatrix(ctx context.Context, roomID id.RoomID, userID id.UserID, reason string) {
	bot := n.br.host.Bot()
	if bot.StateStore != nil && bot.StateStore.IsMembership(ctx, roomID, userID, event.MembershipBan) {
		return
	}
	if _, err := bot.BanUser(ctx, roomID, &mautrix.ReqBanUser{Reason: reason, UserID: userID}); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to ban a user banned on IRC")
		return
	}
	zerolog.Ctx(ctx).Info().Msg("Banned a user in Matrix who is banned on IRC")
}

// onChannelMode follows bans in a portal channel: +b masks that match a puppet ban its user
// from the portal room, -b lifts the Matrix bans that mask caused.
func (n *network) onChannelMode(ctx context.Context, msg *ircmsg.Message) {
	folded := n.fold(ircline.Param(msg, 0))
	portal := n.portal(ctx, folded)
	if portal == nil {
		return
	}
	args := msg.Params[min(2, len(msg.Params)):]
	add := true
	for _, m := range ircline.Param(msg, 1) {
		switch m {
		case '+', '-':
			add = m == '+'
			continue
		}
		if !modeTakesArg(m, add) {
			continue
		}
		if len(args) == 0 {
			return
		}
		arg := args[0]
		args = args[1:]
		if m != 'b' {
			continue
		}
		if add {
			n.applyBan(ctx, portal.RoomID, folded, arg, msg)
		} else {
			n.liftBan(ctx, portal.RoomID, folded, arg)
		}
	}
}

// modeTakesArg reports whether a channel mode letter takes an argument when set (add) or unset:
// the list modes, the prefix modes, the key, and the limit when set. Networks' other modes with
// arguments are rare in the modes a bridge sees change; the common ones are listed.
func modeTakesArg(m rune, add bool) bool {
	switch m {
	case 'b', 'e', 'I', 'q', 'a', 'o', 'h', 'v', 'k':
		return true
	case 'l', 'f', 'j', 'L':
		return add
	}
	return false
}

// applyBan bans from the portal room the users whose puppets a new ban mask matches.
func (n *network) applyBan(ctx context.Context, roomID id.RoomID, folded, mask string, msg *ircmsg.Message) {
	n.mu.Lock()
	var victims []*puppet
	for _, p := range n.puppets {
		if src := p.source.Load(); src != nil && maskMatches(n.fold(mask), n.fold(*src)) {
			victims = append(victims, p)
		}
	}
	n.mu.Unlock()
	for _, p := range victims {
		n.rememberBan(folded, mask, p.user)
		n.banInMatrix(ctx, roomID, p.user, fmt.Sprintf("Banned from %s on %s by %s", ircline.Param(msg, 0), n.cfg.Name, msg.Nick()))
	}
}

// rememberBan records that mask on channel (folded) caused userID's Matrix ban, once per user
// however often the server repeats the +b.
func (n *network) rememberBan(folded, mask string, userID id.UserID) {
	n.mu.Lock()
	defer n.mu.Unlock()
	byMask := n.ircBans[folded]
	if byMask == nil {
		byMask = make(map[string][]id.UserID)
		n.ircBans[folded] = byMask
	}
	if m := n.fold(mask); !slices.Contains(byMask[m], userID) {
		byMask[m] = append(byMask[m], userID)
	}
}

// forgetBansOf drops userID from the bans to lift, for their erasure: the bridge then neither
// keeps their ID nor unbans them later.
func (n *network) forgetBansOf(userID id.UserID) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for folded, byMask := range n.ircBans {
		for mask, users := range byMask {
			if users = slices.DeleteFunc(users, func(u id.UserID) bool { return u == userID }); len(users) == 0 {
				delete(byMask, mask)
			} else {
				byMask[mask] = users
			}
		}
		if len(byMask) == 0 {
			delete(n.ircBans, folded)
		}
	}
}

// liftBan lifts the Matrix bans a ban mask caused.
func (n *network) liftBan(ctx context.Context, roomID id.RoomID, folded, mask string) {
	n.mu.Lock()
	users := n.ircBans[folded][n.fold(mask)]
	delete(n.ircBans[folded], n.fold(mask))
	n.mu.Unlock()
	for _, userID := range users {
		if _, err := n.br.host.Bot().UnbanUser(ctx, roomID, &mautrix.ReqUnbanUser{UserID: userID, Reason: "The ban on IRC was lifted"}); err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to lift a Matrix ban after the IRC ban was lifted")
		}
	}
}

// maskMatches matches a folded nick!user@host against a folded ban mask, where * stands for any
// run of characters and ? for one.
func maskMatches(mask, s string) bool {
	// Iterative glob with backtracking to the last *.
	mi, si, star, mark := 0, 0, -1, 0
	for si < len(s) {
		switch {
		case mi < len(mask) && (mask[mi] == '?' || mask[mi] == s[si]):
			mi++
			si++
		case mi < len(mask) && mask[mi] == '*':
			star, mark = mi, si
			mi++
		case star >= 0:
			mi = star + 1
			mark++
			si = mark
		default:
			return false
		}
	}
	for mi < len(mask) && mask[mi] == '*' {
		mi++
	}
	return mi == len(mask)
}

package irc

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/format"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice"
	"github.com/custodian-matrix/custodian/bridges/irc/ircconn"
	"github.com/custodian-matrix/custodian/bridges/irc/ircconv"
	"github.com/custodian-matrix/custodian/bridges/irc/ircdb"
)

// target is where a Matrix room's messages go on IRC: a portal's channel or a private chat's
// nick.
type target struct {
	net *network
	// name is the channel or nick as sent; folded its folded form.
	name, folded string
	portal       *ircdb.Portal
	pm           *ircdb.PM
}

// targetFor returns the IRC target of roomID, or nil if the room is neither a portal nor a
// private chat of the bridge.
func (br *Bridge) targetFor(ctx context.Context, roomID id.RoomID) (*target, error) {
	p, err := br.db.Portal.GetByRoom(ctx, roomID)
	if err != nil {
		return nil, fmt.Errorf("failed to get portal: %w", err)
	}
	if p != nil {
		n := br.network(p.Network)
		if n == nil {
			return nil, nil
		}
		return &target{net: n, name: p.ChannelName, folded: p.Channel, portal: p}, nil
	}
	pm, err := br.db.PM.GetByRoom(ctx, roomID)
	if err != nil {
		return nil, fmt.Errorf("failed to get private chat: %w", err)
	}
	if pm != nil {
		n := br.network(pm.Network)
		if n == nil {
			return nil, nil
		}
		return &target{net: n, name: pm.Nick, folded: pm.Nick, pm: pm}, nil
	}
	return nil, nil
}

// enqueue queues it in the outbox of sender's puppet on it.t's network, creating the puppet if
// needed, and has it join it.t's channel from now on (a portal's). It returns
// ErrTooManyPuppets or errOutboxFull; the caller tells the user.
func (br *Bridge) enqueue(ctx context.Context, sender id.UserID, it *outItem) (*puppet, error) {
	it.queuedAt = br.clock.Now()
	// A dropped puppet's outbox refuses new items: take the user's new puppet, once.
	for range 2 {
		p, err := it.t.net.puppetFor(sender, true)
		if err != nil {
			return nil, err
		}
		if it.t.portal != nil && it.kind != outPart {
			if err = p.sess.join(ctx, it.t.folded, it.t.name); err != nil {
				return nil, err
			}
		}
		if err = p.enqueue(it); !errors.Is(err, errOutboxClosed) {
			return p, err
		}
	}
	return nil, errOutboxClosed
}

// handleMatrixMessage relays a message from a portal or private chat to IRC through the
// sender's puppet. It returns once the message is queued in the puppet's outbox (see
// outbox.go), without waiting for the puppet's connection: a message waits only for its own
// sender's connection, never holding up the room's other users.
func (br *Bridge) handleMatrixMessage(ctx context.Context, evt *event.Event) error {
	t, err := br.targetFor(ctx, evt.RoomID)
	if err != nil || t == nil {
		return err
	}
	content, ok := evt.Content.Parsed.(*event.MessageEventContent)
	if !ok {
		return nil
	}
	if br.host.CarriesSecret(evt) {
		// The core withholds such messages from bridges; this is the second line of defence.
		zerolog.Ctx(ctx).Warn().Msg("Not relaying a message that carries a secret")
		return nil
	}
	if t.pm != nil && t.pm.UserID != evt.Sender {
		// Someone else in a private chat: only its owner's messages go to IRC.
		return nil
	}
	// Queued or being sent; checked before the rows, which are written before the outbox lets
	// go of the event, so that one of the two checks sees it.
	if p, _ := t.net.puppetFor(evt.Sender, false); p != nil && p.has(evt.ID) {
		return nil
	}
	if done, err := br.relayedBefore(ctx, evt.ID); err != nil || done {
		return err
	}
	msg, ok := br.convertMatrix(ctx, evt, content)
	if !ok {
		return nil
	}
	if !t.net.puppetAllowed(evt.Sender) {
		// Nobody is told: a notice would cost every remote sender a users row and a management
		// room on this server, and remembering whom we told would grow without bound. The
		// README tells admins that users of other servers are not relayed.
		zerolog.Ctx(ctx).Debug().Str("network", t.net.cfg.ID).Msg("Sender's server gets no puppets; not relaying")
		return nil
	}
	if t.portal != nil {
		if p, _ := t.net.puppetFor(evt.Sender, false); p != nil && !p.mayJoin(t.folded, br.clock.Now()) {
			br.notifyKickedWait(ctx, p, evt, t)
			return nil
		}
	}
	// The server's echoes, which carry the lines' message IDs, may be recorded before the sends
	// return; their rows reference the sender.
	if err = br.host.EnsureUser(ctx, evt.Sender); err != nil {
		return fmt.Errorf("failed to record sender: %w", err)
	}
	// Recorded before it is queued, so that a restart sends it (see replayOutbox).
	if err = br.db.Outbox.Put(ctx, &ircdb.Outbox{
		EventID: evt.ID, RoomID: evt.RoomID, Network: t.net.cfg.ID, Sender: evt.Sender, QueuedAt: br.clock.Now(),
	}); err != nil {
		return fmt.Errorf("failed to record queued message: %w", err)
	}
	p, err := br.enqueue(ctx, evt.Sender, &outItem{kind: outMessage, evt: evt, t: t, msg: msg, replaces: content.RelatesTo.GetReplaceID()})
	if err != nil {
		br.forgetQueued(ctx, evt.ID)
	}
	switch {
	case errors.Is(err, ErrTooManyPuppets):
		br.notifyUser(ctx, evt.Sender, evt.ID, "too-many-puppets", fmt.Sprintf("%s has as many bridged users as it may; your messages there are not relayed for now.", t.net.cfg.Name))
		return nil
	case errors.Is(err, errOutboxFull):
		zerolog.Ctx(ctx).Warn().Str("network", t.net.cfg.ID).Msg("Outbox full; not relaying message")
		p.outMu.Lock()
		told := p.fullNotified
		p.fullNotified = true
		p.outMu.Unlock()
		if !told {
			br.notifyUser(ctx, evt.Sender, evt.ID, "outbox-full:"+t.net.cfg.ID, fmt.Sprintf("Your messages to %s are arriving faster than "+
				"I can send them, so some of them are not relayed. I will tell you again if it happens after the backlog cleared.", t.net.cfg.Name))
		}
		return nil
	case err != nil:
		return fmt.Errorf("failed to queue message: %w", err)
	}
	return nil
}

// notifyKickedWait tells the sender of evt that it was not relayed because their puppet was
// kicked from t's channel a short while ago (see rejoin_delay).
func (br *Bridge) notifyKickedWait(ctx context.Context, p *puppet, evt *event.Event, t *target) {
	br.notifyUser(ctx, evt.Sender, evt.ID, "kicked-wait", fmt.Sprintf("You were kicked from %s on %s a short while ago; "+
		"this message was not relayed. You can speak there again from %s.", t.name, t.net.cfg.Name,
		p.kickedUntil(t.folded).UTC().Format("15:04 MST")))
}

// relayedBefore reports whether eventID already went to IRC: the core delivers an event again
// after a crash if its handler had not returned, and IRC has no way to drop a repeated line.
func (br *Bridge) relayedBefore(ctx context.Context, eventID id.EventID) (bool, error) {
	rows, err := br.db.Message.Get(ctx, eventID)
	if err != nil {
		return false, fmt.Errorf("failed to look up relayed message: %w", err)
	}
	return len(rows) > 0, nil
}

// convertMatrix turns a Matrix message into an IRC message; ok is false for messages that are
// not relayed (verification requests, unknown types).
func (br *Bridge) convertMatrix(ctx context.Context, evt *event.Event, content *event.MessageEventContent) (ircconv.Message, bool) {
	mc := br.cfg.Messages
	msg := ircconv.Message{Kind: ircconv.KindText, ReplyFormat: mc.ReplyFormat, ReplyQuoteLen: mc.ReplyQuoteLength, EditMaxChange: mc.EditMaxChange}
	if content.NewContent != nil && content.RelatesTo != nil && content.RelatesTo.Type == event.RelReplace {
		// msg.Previous is read when the edit is sent (sendMessage): by then what it edits went
		// out and was recorded.
		msg.Edit = true
		content = content.NewContent
	}
	switch content.MsgType {
	case event.MsgText:
	case event.MsgNotice:
		msg.Kind = ircconv.KindNotice
	case event.MsgEmote:
		msg.Kind = ircconv.KindEmote
	case event.MsgImage, event.MsgFile, event.MsgAudio, event.MsgVideo:
		name := content.FileName
		if name == "" {
			name = content.Body
		}
		parsed, err := content.URL.Parse()
		if err != nil {
			return msg, false // encrypted or broken: nothing IRC users could open
		}
		link, err := br.mediaLink(ctx, evt, evt.Content.AsMessage().RelatesTo.GetReplaceID(), parsed, name)
		if err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to make a media link")
			return msg, false
		}
		msg.Text = ircconv.MediaText(name, link)
		return msg, true
	default:
		return msg, false
	}
	msg.Text = matrixText(content)
	if !msg.Edit && content.RelatesTo != nil && content.RelatesTo.InReplyTo != nil {
		msg.Reply = br.replyInfo(ctx, evt.RoomID, content.RelatesTo.InReplyTo.EventID)
	}
	return msg, true
}

// replyInfo describes the replied-to event for the quote IRC users see: its sender's nick and
// its text. It quotes only events that went through the bridge (relayed to IRC or received from
// it, so irc_message has rows for them): the core withholds some events from bridges (a message
// carrying a secret, a paused user's), and a quote must not carry their text to IRC either. For
// any other event, and on failures, it returns nil and the reply goes unquoted.
func (br *Bridge) replyInfo(ctx context.Context, roomID id.RoomID, eventID id.EventID) *ircconv.Reply {
	rows, err := br.db.Message.Get(ctx, eventID)
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to look up the replied-to message")
		return nil
	} else if len(rows) == 0 || rows[0].RoomID != roomID {
		return nil
	}
	evt, err := br.host.Bot().GetEvent(ctx, roomID, eventID)
	if err != nil {
		return nil
	}
	_ = evt.Content.ParseRaw(evt.Type)
	reply := &ircconv.Reply{Nick: br.senderNick(evt.Sender)}
	if c, ok := evt.Content.Parsed.(*event.MessageEventContent); ok {
		reply.Text = c.Body
	}
	return reply
}

// senderNick returns the IRC nick that stands for a Matrix sender: a ghost's nick, or the
// sender's localpart.
func (br *Bridge) senderNick(userID id.UserID) string {
	if v, ok := br.ghosts.Load(string(userID)); ok {
		return v.(string)
	}
	if _, nick, ok := br.parseGhost(userID); ok {
		return nick
	}
	localpart, _, _ := userID.Parse()
	return localpart
}

// handleMatrixRedaction deletes a bridged message's IRC copy where the server supports
// draft/message-redaction, and otherwise forgets its ID mapping. A message (and its edits)
// still queued when it is redacted is never sent. When the redacting user's puppet has events
// queued, the rest waits in its outbox behind them, so that a redaction of a message being
// sent follows it.
func (br *Bridge) handleMatrixRedaction(ctx context.Context, evt *event.Event) error {
	redacts := appservice.RedactedEventID(evt)
	if redacts == "" {
		return nil
	}
	// A redacted !irc link still waiting for an operator's answer is withdrawn, silently (the
	// homeserver let only its sender or a moderator of the room redact it).
	for _, netID := range br.netIDs {
		n := br.networks[netID]
		if n.dropConsentsWhere(func(req *linkRequest) bool { return req.eventID == redacts && req.roomID == evt.RoomID }) > 0 {
			zerolog.Ctx(ctx).Info().Str("network", netID).Msg("Withdrew a link request whose command was redacted")
		}
	}
	// Links to the message's media stop working, whoever redacted it.
	if err := br.db.Media.DeleteByEvent(ctx, redacts); err != nil {
		return fmt.Errorf("failed to delete media links: %w", err)
	}
	var author *puppet
	for _, netID := range br.netIDs {
		n := br.networks[netID]
		puppets := n.puppetList()
		for _, p := range puppets {
			if p.unqueue(ctx, redacts) {
				author = p
			}
		}
	}
	if author != nil && author.busy() {
		t := &target{net: author.net}
		if err := author.enqueue(&outItem{kind: outRedact, evt: evt, t: t, redacts: redacts, queuedAt: br.clock.Now()}); err == nil {
			return nil
		}
	}
	return br.redactOnIRC(ctx, evt, redacts)
}

// redactOnIRC deletes the IRC copy of redacts (and of its edits) if evt's sender wrote it and
// the server supports draft/message-redaction, and forgets its ID mapping.
func (br *Bridge) redactOnIRC(ctx context.Context, evt *event.Event, redacts id.EventID) error {
	// The message's rows and its edits': redacting a message removes its edits with it.
	rows, err := br.db.Message.GetWithEdits(ctx, redacts)
	if err != nil || len(rows) == 0 {
		return err
	}
	sent := 0
	// Only the author's own redaction deletes the IRC copy: it goes out through their puppet,
	// and IRC lets users delete only their own messages.
	if n := br.network(rows[0].Network); n != nil && rows[0].Sender == evt.Sender {
		if p, _ := n.puppetFor(evt.Sender, false); p != nil {
			if c := p.sess.current(); c != nil && c.HasCap("draft/message-redaction") {
				for _, m := range rows {
					if m.MsgID == "" {
						continue
					}
					if err = c.Send(ctx, nil, "REDACT", n.targetName(m.Target), m.MsgID); err != nil {
						zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to send REDACT")
						break
					}
					sent++
				}
			}
		}
	}
	zerolog.Ctx(ctx).Debug().Int("lines", len(rows)).Int("redacted_on_irc", sent).Msg("Forgot a redacted message's IRC IDs")
	return br.db.Message.Delete(ctx, redacts)
}

// handleMatrixMember mirrors membership: a user who leaves a portal has their puppet part the
// channel; an invite of a ghost to a room makes a private chat with that IRC user. A room the
// bridge has not claimed (route.Claim is nil) is neither a portal nor a private chat, so it is
// not looked up.
func (br *Bridge) handleMatrixMember(ctx context.Context, evt *event.Event, route appservice.Route) error {
	content, ok := evt.Content.Parsed.(*event.MemberEventContent)
	if !ok || evt.StateKey == nil {
		return nil
	}
	target := id.UserID(*evt.StateKey)
	if n, nick, ok := br.parseGhost(target); ok {
		switch content.Membership {
		case event.MembershipInvite:
			return br.acceptGhostInvite(ctx, evt, route, n, nick)
		case event.MembershipLeave, event.MembershipBan:
			if evt.Sender != target && route.Claim != nil {
				return br.kickOnIRC(ctx, evt, n, nick, content.Reason)
			}
		}
		return nil
	}
	if route.Claim != nil && content.Membership == event.MembershipJoin {
		return br.grantPortalPower(ctx, evt.RoomID, target)
	}
	if route.Claim == nil || (content.Membership != event.MembershipLeave && content.Membership != event.MembershipBan) {
		return nil
	}
	t, err := br.targetFor(ctx, evt.RoomID)
	if err != nil || t == nil {
		return err
	}
	if t.pm != nil {
		if t.pm.UserID == target {
			br.closePM(ctx, t.pm, "The private chat was left")
			return br.db.PM.Delete(ctx, t.pm.RoomID)
		}
		return nil
	}
	if p, _ := t.net.puppetFor(target, false); p != nil {
		// After the messages the user sent before leaving, which would otherwise join again.
		if !p.busy() || p.enqueue(&outItem{kind: outPart, evt: evt, t: t, text: "Left the room", queuedAt: br.clock.Now()}) != nil {
			p.sess.part(ctx, t.folded, "Left the room")
		}
	}
	return nil
}

// grantPortalPower gives a user who joined a portal the power level the network's
// portal_power_levels lists for them, if theirs is lower and the bot's own level allows it.
// Portals made before the user was listed, or linked rooms whose admins gave the bot power, get
// their moderators this way. Failures are logged: the join stands regardless.
func (br *Bridge) grantPortalPower(ctx context.Context, roomID id.RoomID, userID id.UserID) error {
	t, err := br.targetFor(ctx, roomID)
	if err != nil || t == nil || t.portal == nil {
		return err
	}
	want, ok := t.net.cfg.PortalPowerLevels[userID]
	if !ok {
		return nil
	}
	var pl event.PowerLevelsEventContent
	if err = br.host.Bot().StateEvent(ctx, roomID, event.StatePowerLevels, "", &pl); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to read portal power levels")
		return nil
	}
	bot := br.host.Bot().UserID
	// A bot missing from users may still be the room's creator, whom newer room versions give
	// unlimited power; the homeserver decides then.
	_, botListed := pl.Users[bot]
	botLevel := pl.GetUserLevel(bot)
	if pl.GetUserLevel(userID) >= want || (botListed && (botLevel < want || botLevel < pl.GetEventLevel(event.StatePowerLevels))) {
		return nil
	}
	pl.SetUserLevel(userID, want)
	if _, err = br.host.Bot().SendStateEvent(ctx, roomID, event.StatePowerLevels, "", &pl); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to grant a configured power level in a portal")
		return nil
	}
	zerolog.Ctx(ctx).Info().Str("network", t.net.cfg.ID).Int("level", want).Msg("Granted a configured power level in a portal")
	return nil
}

// acceptGhostInvite opens a private chat when a user invites an IRC user's ghost to a room.
func (br *Bridge) acceptGhostInvite(ctx context.Context, evt *event.Event, route appservice.Route, n *network, nick string) error {
	if route.Claim != nil {
		if existing, err := br.targetFor(ctx, evt.RoomID); err != nil {
			return err
		} else if existing != nil && existing.portal != nil {
			// Invited into a portal: just join, also if a kick kept them out.
			n.letIn(existing.folded, nick)
			_, err = br.ghostJoin(ctx, n, nick, evt.RoomID)
			return err
		}
	}
	intent, err := br.ghost(ctx, n, nick)
	if err != nil {
		return err
	}
	if !n.puppetAllowed(evt.Sender) {
		// Their messages could not reach IRC (puppet_servers): decline rather than open a chat
		// that relays nothing.
		_, err = intent.LeaveRoom(ctx, evt.RoomID, &mautrix.ReqLeave{Reason: "Users of your server cannot message IRC users through this bridge"})
		if err != nil {
			zerolog.Ctx(ctx).Debug().Err(err).Msg("Ghost failed to decline invite")
		}
		return nil
	}
	if _, err = intent.JoinRoomByID(ctx, evt.RoomID); err != nil {
		return fmt.Errorf("failed to accept invite: %w", err)
	}
	return br.recordPM(ctx, &ircdb.PM{UserID: evt.Sender, Network: n.cfg.ID, Nick: n.fold(nick), RoomID: evt.RoomID, CreatedAt: br.clock.Now()})
}

// handleMatrixTopic sends a portal's new topic to its channel through the sender's puppet,
// queued in its outbox like a message. The channel may refuse it (+t without operator status);
// the room keeps the topic regardless.
func (br *Bridge) handleMatrixTopic(ctx context.Context, evt *event.Event) error {
	t, err := br.targetFor(ctx, evt.RoomID)
	if err != nil || t == nil || t.portal == nil {
		return err
	}
	content, ok := evt.Content.Parsed.(*event.TopicEventContent)
	if !ok {
		return nil
	}
	topic := ircconv.PlainToIRC(strings.ReplaceAll(content.Topic, "\n", " "))
	if _, err = br.enqueue(ctx, evt.Sender, &outItem{kind: outTopic, evt: evt, t: t, text: topic}); err != nil {
		zerolog.Ctx(ctx).Debug().Err(err).Msg("Not sending topic to IRC")
	}
	return nil
}

// kickOnIRC mirrors a Matrix user kicking or banning an IRC user's ghost from a portal: their
// puppet sends KICK if it is an operator of the channel right now (NAMES), the only way IRC
// allows. Otherwise the kicker is told that the IRC user is still in the channel, and the
// IRC user is kept out of the room: their ghost is not brought back, and what they say is not
// relayed, until someone invites the ghost again (or the bridge restarts; this is memory only).
// A room moderator who removes someone expects them to stay removed, even where the bridge
// cannot remove them from IRC.
func (br *Bridge) kickOnIRC(ctx context.Context, evt *event.Event, n *network, nick, reason string) error {
	t, err := br.targetFor(ctx, evt.RoomID)
	if err != nil || t == nil || t.portal == nil || t.net != n {
		return err
	}
	name := nick
	n.mu.Lock()
	if members := n.members[t.folded]; members != nil && members[n.fold(nick)] != "" {
		name = members[n.fold(nick)]
	}
	n.mu.Unlock()
	if reason == "" {
		reason = "Kicked from Matrix"
	}
	var c *ircconn.Conn
	if p, _ := n.puppetFor(evt.Sender, false); p != nil && p.sess.inChannel(t.folded) {
		c = p.sess.current()
	}
	if c != nil {
		if ops, err := n.channelOps(ctx, t.name); err == nil && ops[n.fold(c.Nick())] != "" {
			return c.Send(ctx, nil, "KICK", t.name, name, ircconv.PlainToIRC(strings.ReplaceAll(reason, "\n", " ")))
		}
	}
	n.keepOut(t.folded, nick)
	zerolog.Ctx(ctx).Info().Msg("Could not kick an IRC user on IRC; keeping them out of the room")
	br.notifyUser(ctx, evt.Sender, evt.ID, "kick-failed", fmt.Sprintf(
		"I could not kick %s from %s on %s: only a channel operator can, and your connection is not one there. "+
			"They stay in the channel, but I keep them out of the room: I do not bring them back when they speak, "+
			"and do not relay what they say, until someone invites them again.",
		format.SafeMarkdownCode(name), t.name, n.cfg.Name))
	return nil
}

// keepOut keeps nick's ghost out of channel's (folded) portal (see kickOnIRC).
func (n *network) keepOut(channel, nick string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.keptOut[channel] == nil {
		n.keptOut[channel] = make(map[string]bool)
	}
	n.keptOut[channel][n.fold(nick)] = true
}

// letIn undoes keepOut.
func (n *network) letIn(channel, nick string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.keptOut[channel], n.fold(nick))
}

// isKeptOut reports whether nick is kept out of channel's (folded) portal.
func (n *network) isKeptOut(channel, nick string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.keptOut[channel][n.fold(nick)]
}

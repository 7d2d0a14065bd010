package irc

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice"
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

// puppetConn returns a usable connection of sender's puppet on t's network, connecting it if
// needed and joining t's channel. It waits for the connection as long as ctx allows, so that a
// message sent while the network is down goes out once it is back, in order.
func (br *Bridge) puppetConn(ctx context.Context, t *target, sender id.UserID) (*puppet, error) {
	p, err := t.net.puppetFor(sender, true)
	if err != nil {
		return nil, err
	}
	if t.portal != nil {
		if err = p.sess.join(ctx, t.folded, t.name); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// handleMatrixMessage relays a message from a portal or private chat to IRC through the
// sender's puppet.
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
	if done, err := br.relayedBefore(ctx, evt.ID); err != nil || done {
		return err
	}
	msg, ok := br.convertMatrix(ctx, evt, content)
	if !ok {
		return nil
	}
	p, err := br.puppetConn(ctx, t, evt.Sender)
	if errors.Is(err, ErrTooManyPuppets) {
		br.notifyUser(ctx, evt.Sender, evt.ID, "too-many-puppets", fmt.Sprintf("%s has as many bridged users as it may; your messages there are not relayed for now.", t.net.cfg.Name))
		return nil
	} else if err != nil {
		return fmt.Errorf("failed to get puppet: %w", err)
	}
	c, err := p.sess.conn(ctx)
	if err != nil {
		return fmt.Errorf("puppet not connected: %w", err)
	}
	if t.portal != nil {
		if err = p.sess.join(ctx, t.folded, t.name); err != nil {
			return err
		}
		if err = p.sess.ensureJoined(ctx, c, t.folded, t.name); err != nil {
			return err
		}
	}
	lines, err := ircconv.Render(msg, ircconv.Budget(ircconv.ConservativeSource(c.Nick()), "PRIVMSG", t.name))
	if err != nil {
		return fmt.Errorf("failed to render message: %w", err)
	}
	if len(lines) == 0 {
		return nil
	}
	// The server's echoes, which carry the lines' message IDs, may be recorded before the sends
	// return; their rows reference the sender.
	if err = br.host.EnsureUser(ctx, evt.Sender); err != nil {
		return fmt.Errorf("failed to record sender: %w", err)
	}
	trackEchoes := wantsEchoes(c)
	for i, line := range lines {
		if trackEchoes {
			p.expectEcho(pendingLine{eventID: evt.ID, part: i, roomID: evt.RoomID, target: t.folded, text: line.Text})
		}
		if err = c.Send(ctx, nil, line.Command, t.name, line.Text); err != nil {
			return fmt.Errorf("failed to send message: %w", err)
		}
	}
	// Recorded once sent: the rows are also what makes a replay of this event after a crash
	// send nothing again (see relayedBefore).
	now := br.clock.Now()
	err = br.db.DoTxn(ctx, nil, func(ctx context.Context) error {
		for i := range lines {
			err := br.db.Message.Put(ctx, &ircdb.Message{
				EventID: evt.ID, Part: i, RoomID: evt.RoomID, Network: t.net.cfg.ID, Target: t.folded,
				Sender: evt.Sender, CreatedAt: now, Original: content.RelatesTo.GetReplaceID(),
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to record relayed message")
	}
	zerolog.Ctx(ctx).Debug().Int("lines", len(lines)).Str("network", t.net.cfg.ID).Msg("Relayed message to IRC")
	return nil
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
	msg := ircconv.Message{Kind: ircconv.KindText}
	if content.NewContent != nil && content.RelatesTo != nil && content.RelatesTo.Type == event.RelReplace {
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
	if content.Format == event.FormatHTML && content.FormattedBody != "" {
		msg.Text = ircconv.HTMLToIRC(content.FormattedBody)
	} else {
		msg.Text = ircconv.PlainToIRC(content.Body)
	}
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
// draft/message-redaction, and otherwise forgets its ID mapping.
func (br *Bridge) handleMatrixRedaction(ctx context.Context, evt *event.Event) error {
	redacts := appservice.RedactedEventID(evt)
	if redacts == "" {
		return nil
	}
	// Links to the message's media stop working, whoever redacted it.
	if err := br.db.Media.DeleteByEvent(ctx, redacts); err != nil {
		return fmt.Errorf("failed to delete media links: %w", err)
	}
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
		p.sess.part(ctx, t.folded, "Left the room")
	}
	return nil
}

// acceptGhostInvite opens a private chat when a user invites an IRC user's ghost to a room.
func (br *Bridge) acceptGhostInvite(ctx context.Context, evt *event.Event, route appservice.Route, n *network, nick string) error {
	if route.Claim != nil {
		if existing, err := br.targetFor(ctx, evt.RoomID); err != nil {
			return err
		} else if existing != nil && existing.portal != nil {
			// Invited into a portal: just join.
			_, err = br.ghostJoin(ctx, n, nick, evt.RoomID)
			return err
		}
	}
	intent, err := br.ghost(ctx, n, nick)
	if err != nil {
		return err
	}
	if _, err = intent.JoinRoomByID(ctx, evt.RoomID); err != nil {
		return fmt.Errorf("failed to accept invite: %w", err)
	}
	return br.recordPM(ctx, &ircdb.PM{UserID: evt.Sender, Network: n.cfg.ID, Nick: n.fold(nick), RoomID: evt.RoomID, CreatedAt: br.clock.Now()})
}

// handleMatrixTopic sends a portal's new topic to its channel through the sender's puppet. The
// channel may refuse it (+t without operator status); the room keeps the topic regardless.
func (br *Bridge) handleMatrixTopic(ctx context.Context, evt *event.Event) error {
	t, err := br.targetFor(ctx, evt.RoomID)
	if err != nil || t == nil || t.portal == nil {
		return err
	}
	content, ok := evt.Content.Parsed.(*event.TopicEventContent)
	if !ok {
		return nil
	}
	p, err := br.puppetConn(ctx, t, evt.Sender)
	if err != nil {
		return nil
	}
	c, err := p.sess.conn(ctx)
	if err != nil {
		return fmt.Errorf("puppet not connected: %w", err)
	}
	// On a fresh connection the channel's JOIN may not be queued yet; TOPIC must follow it.
	if err = p.sess.ensureJoined(ctx, c, t.folded, t.name); err != nil {
		return err
	}
	return c.Send(ctx, nil, "TOPIC", t.name, ircconv.PlainToIRC(strings.ReplaceAll(content.Topic, "\n", " ")))
}

// kickOnIRC mirrors a Matrix user kicking or banning an IRC user's ghost from a portal: their
// puppet sends KICK. The channel refuses it unless the puppet is a channel operator there (IRC
// has no other way); the ghost stays out of the room either way, and comes back when the IRC user
// next speaks or joins.
func (br *Bridge) kickOnIRC(ctx context.Context, evt *event.Event, n *network, nick, reason string) error {
	t, err := br.targetFor(ctx, evt.RoomID)
	if err != nil || t == nil || t.portal == nil || t.net != n {
		return err
	}
	p, _ := n.puppetFor(evt.Sender, false)
	if p == nil || !p.sess.inChannel(t.folded) {
		return nil
	}
	c := p.sess.current()
	if c == nil {
		return nil
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
	return c.Send(ctx, nil, "KICK", t.name, name, ircconv.PlainToIRC(strings.ReplaceAll(reason, "\n", " ")))
}

package irc

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ergochat/irc-go/ircmsg"
	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	mxas "maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice"
	"github.com/custodian-matrix/custodian/bridges/irc/ircconv"
	"github.com/custodian-matrix/custodian/bridges/irc/ircdb"
	"github.com/custodian-matrix/custodian/bridges/irc/ircid"
	"github.com/custodian-matrix/custodian/bridges/irc/ircline"
)

// maxNamesGhosts bounds how many ghosts join a portal from one NAMES reply, so that a huge
// channel does not flood the homeserver with joins; the others join when they speak.
const maxNamesGhosts = 200

// handleIRC bridges one server message. It runs on the network's worker, one message at a time.
// Nothing it logs holds message text.
func (n *network) handleIRC(ctx context.Context, in inbound) {
	msg := &in.msg
	log := n.log.With().Str("irc_command", msg.Command).Logger()
	ctx = log.WithContext(ctx)
	defer func() {
		if r := recover(); r != nil {
			log.Error().Str("panic", "recovered").Msg("Bridging an IRC message panicked")
		}
	}()
	if in.puppet != nil {
		n.handlePuppetMessage(ctx, in)
		return
	}
	switch msg.Command {
	case "PRIVMSG", "NOTICE":
		n.relayChannelMessage(ctx, in)
	case "JOIN":
		n.onJoin(ctx, in)
	case "PART":
		nick := msg.Nick()
		channel := n.fold(ircline.Param(msg, 0))
		n.removeMember(ctx, channel, nick, "Left the channel")
	case "KICK":
		channel := n.fold(ircline.Param(msg, 0))
		victim := ircline.Param(msg, 1)
		if n.fold(victim) == n.fold(in.conn.Nick()) {
			// The bridge was kicked: rejoin on the next reconnect only if still a portal.
			return
		}
		n.removeMember(ctx, channel, victim, "Kicked from the channel")
	case "QUIT":
		if !n.holdSplitQuit(msg.Nick(), ircline.Param(msg, 0)) {
			n.onQuit(ctx, msg.Nick())
		}
	case "NICK":
		n.onNick(ctx, msg.Nick(), ircline.Param(msg, 0))
	case "TOPIC":
		n.setTopic(ctx, n.fold(ircline.Param(msg, 0)), ircline.Param(msg, 1))
	case "MODE":
		n.onChannelMode(ctx, msg)
	case "REDACT":
		n.onRedact(ctx, msg)
	case "332": // RPL_TOPIC: <me> <channel> :<topic>
		n.setTopic(ctx, n.fold(ircline.Param(msg, 1)), ircline.Param(msg, 2))
	case "353": // RPL_NAMREPLY: <me> <type> <channel> :<prefixed nicks>
		n.collectNames(msg)
		n.onNames(ctx, in)
	case "366": // RPL_ENDOFNAMES: <me> <channel> :<text>
		n.finishNames(msg)
	case "475": // ERR_BADCHANNELKEY: <me> <channel> :<text>
		n.onBadKey(ctx, n.fold(ircline.Param(msg, 1)))
	}
}

// relayChannelMessage bridges a PRIVMSG or NOTICE the bridge's connection saw in a portal
// channel, as the sender's ghost.
func (n *network) relayChannelMessage(ctx context.Context, in inbound) {
	msg := &in.msg
	targetName := ircline.Param(msg, 0)
	if len(targetName) == 0 || !strings.ContainsRune("#&+!", rune(targetName[0])) {
		// A private message to the bridge's own nick: only channel operators' answers and
		// requests are read (see consent.go).
		n.onBotPrivate(ctx, in)
		return
	}
	nick := msg.Nick()
	if nick == "" || strings.ContainsRune(nick, '.') && !strings.ContainsRune(msg.Source, '!') {
		return // from a server
	}
	folded := n.fold(nick)
	if n.isOurNick(folded) {
		return // one of our puppets: it came from Matrix
	}
	portal := n.portal(ctx, n.fold(targetName))
	if portal == nil {
		return
	}
	n.addMember(portal.Channel, nick)
	if n.isKeptOut(portal.Channel, nick) {
		return
	}
	intent, err := n.br.ghostJoin(ctx, n, nick, portal.RoomID)
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to get ghost into portal")
		return
	}
	n.sendToMatrix(ctx, intent, portal.RoomID, portal.Channel, msg)
}

// sendToMatrix sends a PRIVMSG or NOTICE to roomID as intent, with the IRC message's server
// time, and records its msgid.
func (n *network) sendToMatrix(ctx context.Context, intent *mxas.IntentAPI, roomID id.RoomID, target string, msg *ircmsg.Message) {
	text := ircconv.DecodeText(ircline.Param(msg, 1))
	msgType := event.MsgText
	if msg.Command == "NOTICE" {
		msgType = event.MsgNotice
	}
	if cmd, arg, ok := ircconv.ParseCTCP(text); ok {
		if cmd != "ACTION" {
			return // VERSION, PING and the like are for the client, not the room
		}
		msgType, text = event.MsgEmote, arg
	}
	plain, formatted := ircconv.ToMatrix(text)
	if strings.TrimSpace(plain) == "" {
		return
	}
	content := &event.MessageEventContent{MsgType: msgType, Body: plain, Mentions: &event.Mentions{}}
	if formatted != "" {
		content.Format, content.FormattedBody = event.FormatHTML, formatted
	}
	channel := target != "" && strings.ContainsRune("#&+!", rune(target[0]))
	if channel {
		n.addMentions(ctx, target, roomID, content)
	}
	ts := ircline.ServerTime(msg, n.br.clock.Now())
	var resp *mautrix.RespSendEvent
	var err error
	if channel {
		// A portal: the core's plaintext guard refuses it in plaintext when the state cache
		// knows the room as encrypted.
		resp, err = intent.SendMessageEvent(ctx, roomID, event.EventMessage, content, mautrix.ReqSendEvent{Timestamp: ts.UnixMilli()})
	} else {
		resp, err = n.sendPrivate(ctx, intent, roomID, content, ts)
	}
	if errors.Is(err, appservice.ErrNoEncryption) {
		n.br.warnUnencryptable(ctx, roomID)
		return
	} else if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to send IRC message to Matrix")
		return
	}
	_, msgID := msg.GetTag("msgid")
	if msgID != "" {
		err = n.br.db.Message.Put(ctx, &ircdb.Message{
			EventID: resp.EventID, RoomID: roomID, Network: n.cfg.ID, Target: target, MsgID: msgID, CreatedAt: n.br.clock.Now(),
		})
		if err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to record message ID")
		}
	}
	zerolog.Ctx(ctx).Debug().Stringer("event_id", resp.EventID).Msg("Relayed IRC message to Matrix")
}

// sendPrivate sends content into the private chat roomID as its ghost, through
// [appservice.SendMessageSensitive]: a private message is never logged, and goes out in
// plaintext only into a room that neither the state cache nor the homeserver knows as
// encrypted. Without the core's encryption the send into an encrypted chat is refused with
// [appservice.ErrNoEncryption]. It costs a request to the homeserver per message while the
// state cache says the chat is unencrypted, so portals, where messages are public to the
// channel anyway, are sent the ordinary way.
func (n *network) sendPrivate(ctx context.Context, intent *mxas.IntentAPI, roomID id.RoomID, content *event.MessageEventContent, ts time.Time) (*mautrix.RespSendEvent, error) {
	if err := intent.EnsureJoined(ctx, roomID); err != nil {
		return nil, fmt.Errorf("failed to join ghost to private chat: %w", err)
	}
	return appservice.SendMessageSensitiveAt(ctx, intent.Client, roomID, event.EventMessage, content, intent.TxnID(), ts)
}

// warnUnencryptable logs, once per private chat and run, that an IRC message for the encrypted
// chat roomID was dropped because the core's encryption is off; later drops there are logged at
// debug level. Neither the IRC sender nor the Matrix user is told: a notice on IRC would come
// from the user's own nick.
func (br *Bridge) warnUnencryptable(ctx context.Context, roomID id.RoomID) {
	log := zerolog.Ctx(ctx)
	if _, warned := br.unencryptableWarned.LoadOrStore(roomID, true); warned {
		log.Debug().Stringer("room_id", roomID).Msg("Dropped an IRC message for an encrypted private chat: encryption is off")
		return
	}
	log.Warn().Stringer("room_id", roomID).
		Str("fix", "make encryption work again (encryption.enabled, the vault's master key) and restart").
		Msg("Dropping IRC messages for an encrypted private chat: encryption is off, and they are never sent in plaintext")
}

// handlePuppetMessage handles what a puppet's own connection receives: private messages to the
// user (bridged into a private chat with the sender's ghost), kicks of the puppet, and REDACT.
// Channel traffic is bridged from the bridge's own connection, so puppets ignore it.
func (n *network) handlePuppetMessage(ctx context.Context, in inbound) {
	msg := &in.msg
	p := in.puppet
	switch msg.Command {
	case "PRIVMSG", "NOTICE":
		targetName := ircline.Param(msg, 0)
		if n.fold(msg.Nick()) == n.fold(in.conn.Nick()) {
			n.recordEcho(ctx, p, msg)
			return
		}
		if len(targetName) == 0 || strings.ContainsRune("#&+!", rune(targetName[0])) {
			return
		}
		nick := msg.Nick()
		if nick == "" || !strings.ContainsRune(msg.Source, '!') {
			return // server notices
		}
		folded := n.fold(nick)
		if n.isOurNick(folded) || isServiceNick(folded) && msg.Command == "NOTICE" {
			return
		}
		if paused, err := n.br.host.IsPaused(ctx, p.user); err == nil && paused {
			return
		}
		roomID, err := n.br.pmRoom(ctx, n, p.user, nick)
		if err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to open private chat")
			return
		}
		intent, err := n.br.ghost(ctx, n, nick)
		if err != nil {
			return
		}
		n.sendToMatrix(ctx, intent, roomID, folded, msg)
	case "REDACT":
		// A private message deleted by its sender (the server checked that they may).
		if target := ircline.Param(msg, 0); target != "" && !strings.ContainsRune("#&+!", rune(target[0])) {
			n.onRedact(ctx, msg)
		}
	case "KICK":
		if n.fold(ircline.Param(msg, 1)) == n.fold(in.conn.Nick()) {
			n.onPuppetKicked(ctx, p, msg)
		}
	case "KILL", "ERROR":
		if isKill(in.conn, msg, n.fold) {
			n.onPuppetKilled(ctx, p, msg)
		}
	case "474": // ERR_BANNEDFROMCHAN
		n.onJoinRefusedBan(ctx, p, ircline.Param(msg, 1))
	case "473", "475", "471", "403": // cannot join: invite only, key, full, no such channel
		p.sess.forgetChannel(n.fold(ircline.Param(msg, 1)))
		n.onRefused(ctx, p, msg)
	default:
		if refusalNumerics[msg.Command] {
			n.onRefused(ctx, p, msg)
		}
	}
}

// isServiceNick reports whether a folded nick is one of the usual services, whose notices to a
// puppet (login confirmations and the like) are not chat.
func isServiceNick(folded string) bool {
	switch folded {
	case "nickserv", "chanserv", "saslserv", "memoserv", "operserv", "hostserv", "botserv", "global":
		return true
	}
	return false
}

// onJoin handles a JOIN seen by the bridge's connection: another user's join brings their ghost
// into the portal.
func (n *network) onJoin(ctx context.Context, in inbound) {
	msg := &in.msg
	nick := msg.Nick()
	channel := n.fold(ircline.Param(msg, 0))
	if n.fold(nick) == n.fold(in.conn.Nick()) {
		return
	}
	if p := n.puppetByNick(n.fold(nick)); p != nil {
		// Ban masks are matched against what the network shows of the puppet.
		source := strings.Clone(msg.Source)
		p.source.Store(&source)
		return
	}
	if n.isOurNick(n.fold(nick)) {
		return
	}
	portal := n.portal(ctx, channel)
	if portal == nil {
		return
	}
	n.addMember(channel, nick)
	if n.isKeptOut(channel, nick) {
		return
	}
	if _, err := n.br.ghostJoin(ctx, n, nick, portal.RoomID); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to join ghost to portal")
	}
}

// onNames records a channel's members and brings (up to maxNamesGhosts of) their ghosts into
// the portal.
func (n *network) onNames(ctx context.Context, in inbound) {
	msg := &in.msg
	channel := n.fold(ircline.Param(msg, 2))
	portal := n.portal(ctx, channel)
	if portal == nil {
		return
	}
	joined := 0
	for _, entry := range strings.Fields(ircline.Param(msg, 3)) {
		nick := strings.TrimLeft(entry, "~&@%+")
		if i := strings.IndexByte(nick, '!'); i >= 0 {
			nick = nick[:i] // userhost-in-names
		}
		if nick == "" || n.isOurNick(n.fold(nick)) || n.fold(nick) == n.fold(in.conn.Nick()) {
			continue
		}
		if !n.addMember(channel, nick) || joined >= maxNamesGhosts || n.isKeptOut(channel, nick) {
			continue
		}
		joined++
		if _, err := n.br.ghostJoin(ctx, n, nick, portal.RoomID); err != nil {
			zerolog.Ctx(ctx).Debug().Err(err).Msg("Failed to join ghost to portal")
		}
	}
}

// addMember records nick in channel (folded); it reports whether the nick was new there.
func (n *network) addMember(channel, nick string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	members := n.members[channel]
	if members == nil {
		members = make(map[string]string)
		n.members[channel] = members
	}
	folded := n.fold(nick)
	_, had := members[folded]
	members[folded] = nick
	n.splitRejoinedLocked(channel, folded)
	return !had
}

// removeMember takes nick out of channel (folded) and its ghost out of the portal.
func (n *network) removeMember(ctx context.Context, channel, nick, reason string) {
	n.mu.Lock()
	if members := n.members[channel]; members != nil {
		delete(members, n.fold(nick))
	}
	n.mu.Unlock()
	if n.isOurNick(n.fold(nick)) {
		return
	}
	if portal := n.portal(ctx, channel); portal != nil {
		n.br.ghostLeave(ctx, n, nick, portal.RoomID, reason)
	}
}

// channelsOf returns the channels (folded) the bridge saw nick in.
func (n *network) channelsOf(nick string) []string {
	folded := n.fold(nick)
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for channel, members := range n.members {
		if _, ok := members[folded]; ok {
			out = append(out, channel)
		}
	}
	return out
}

// onQuit takes a user who quit IRC out of every portal.
func (n *network) onQuit(ctx context.Context, nick string) {
	for _, channel := range n.channelsOf(nick) {
		n.removeMember(ctx, channel, nick, "Quit IRC")
	}
}

// onNick moves a renamed user: the old nick's ghost leaves each portal, the new one joins.
func (n *network) onNick(ctx context.Context, oldNick, newNick string) {
	if newNick == "" || n.isOurNick(n.fold(newNick)) {
		return
	}
	for _, channel := range n.channelsOf(oldNick) {
		n.removeMember(ctx, channel, oldNick, "Changed nick to "+newNick)
		portal := n.portal(ctx, channel)
		if portal == nil {
			continue
		}
		n.addMember(channel, newNick)
		if n.isKeptOut(channel, oldNick) {
			n.letIn(channel, oldNick)
			n.keepOut(channel, newNick)
			continue
		}
		if _, err := n.br.ghostJoin(ctx, n, newNick, portal.RoomID); err != nil {
			zerolog.Ctx(ctx).Debug().Err(err).Msg("Failed to join renamed ghost to portal")
		}
	}
}

// setTopic sets a portal's room topic to the channel's, if it differs.
func (n *network) setTopic(ctx context.Context, channel, topic string) {
	portal := n.portal(ctx, channel)
	if portal == nil {
		return
	}
	plain, _ := ircconv.ToMatrix(ircconv.DecodeText(topic))
	bot := n.br.host.Bot()
	var current event.TopicEventContent
	if err := bot.StateEvent(ctx, portal.RoomID, event.StateTopic, "", &current); err == nil && current.Topic == plain {
		return
	}
	if _, err := bot.SendStateEvent(ctx, portal.RoomID, event.StateTopic, "", &event.TopicEventContent{Topic: plain}); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to set portal topic")
	}
}

// recordEcho stores the message ID the server gave a line a puppet sent, from its echo.
func (n *network) recordEcho(ctx context.Context, p *puppet, msg *ircmsg.Message) {
	_, msgID := msg.GetTag("msgid")
	line, ok := p.matchEcho(ircline.Param(msg, 1))
	if !ok || msgID == "" {
		return
	}
	err := n.br.db.Message.Put(ctx, &ircdb.Message{
		EventID: line.eventID, Part: line.part, RoomID: line.roomID, Network: n.cfg.ID, Target: line.target,
		MsgID: msgID, Sender: p.user, CreatedAt: n.br.clock.Now(),
	})
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to record message ID")
	}
}

// onRedact deletes the Matrix copy of an IRC message that was deleted on IRC
// (draft/message-redaction): REDACT <target> <msgid> [reason]. The sender's ghost redacts it if
// it sent it; otherwise the bot does, where it may.
func (n *network) onRedact(ctx context.Context, msg *ircmsg.Message) {
	m, err := n.br.db.Message.GetByMsgID(ctx, n.cfg.ID, ircline.Param(msg, 1))
	if err != nil || m == nil || m.Sender != "" {
		// Unknown, or a message from Matrix: the Matrix side already decided about it.
		return
	}
	req := mautrix.ReqRedact{Reason: n.br.redactionReason(ctx, m, ircline.Param(msg, 2))}
	var redactErr error
	if intent, err := n.br.ghostIntent(n, msg.Nick()); err == nil {
		_, redactErr = intent.RedactEvent(ctx, m.RoomID, m.EventID, req)
	}
	if redactErr != nil {
		_, redactErr = n.br.host.Bot().RedactEvent(ctx, m.RoomID, m.EventID, req)
	}
	if redactErr != nil {
		zerolog.Ctx(ctx).Warn().Err(redactErr).Msg("Failed to redact a message deleted on IRC")
		return
	}
	if err = n.br.db.Message.Delete(ctx, m.EventID); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to forget a redacted message")
	}
}

// redactionReason returns the reason to give the Matrix redaction of m, which was deleted on IRC
// with the free text raw. A redaction's reason is never encrypted (neither mautrix nor the
// homeserver encrypts m.room.redaction), so the text is passed on only where the message itself
// went out in plaintext: into a channel's room that the state cache holds unencrypted. A private
// chat, an encrypted room, or a room whose encryption is unknown gets no reason.
func (br *Bridge) redactionReason(ctx context.Context, m *ircdb.Message, raw string) string {
	if raw == "" || !ircid.ValidChannel(m.Target) {
		return ""
	}
	store := br.host.Bot().StateStore
	if store == nil {
		return ""
	}
	if encrypted, err := store.IsEncrypted(ctx, m.RoomID); err != nil || encrypted {
		return ""
	}
	return ircconv.Strip(ircconv.DecodeText(raw))
}

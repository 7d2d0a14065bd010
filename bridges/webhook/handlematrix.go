package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice"
	"github.com/custodian-matrix/custodian/bridges/webhook/webhookdb"
	"github.com/custodian-matrix/custodian/bridges/webhook/webhookid"
)

// OutboundEvent is the JSON body POSTed to outbound hooks, once per room message or redaction.
type OutboundEvent struct {
	// EventID is the Matrix event: the message, or the redaction.
	EventID id.EventID `json:"event_id"`
	RoomID  id.RoomID  `json:"room_id"`
	Sender  id.UserID  `json:"sender"`
	// Type is "m.room.message" or "m.room.redaction".
	Type string `json:"type"`
	// Content is the message's content; absent for redactions.
	Content *OutboundContent `json:"content,omitempty"`
	// Replaces is set when the message is an edit: the event it replaces. Content is then the
	// new content.
	Replaces id.EventID `json:"replaces,omitempty"`
	// Redacts is set for redactions: the event that was deleted. Receivers should delete their
	// copy of it.
	Redacts        id.EventID `json:"redacts,omitempty"`
	OriginServerTS int64      `json:"origin_server_ts"`
}

// OutboundContent is the part of a message's content outbound hooks receive.
type OutboundContent struct {
	MsgType       event.MessageType `json:"msgtype"`
	Body          string            `json:"body"`
	FormattedBody string            `json:"formatted_body,omitempty"`
}

// handleMessage passes a room message to the room's outbound hooks.
func (br *Bridge) handleMessage(ctx context.Context, evt *event.Event) error {
	if br.isOwnUser(evt.Sender) {
		return nil
	}
	content, ok := evt.Content.Parsed.(*event.MessageEventContent)
	if !ok {
		return nil
	}
	out := &OutboundEvent{
		EventID: evt.ID, RoomID: evt.RoomID, Sender: evt.Sender, Type: event.EventMessage.Type,
		OriginServerTS: evt.Timestamp,
	}
	msg := content
	if replaced := content.RelatesTo.GetReplaceID(); replaced != "" && content.NewContent != nil {
		out.Replaces = replaced
		msg = content.NewContent
	}
	text := msg.Body
	if msg.RelatesTo.GetReplyTo() != "" || content.RelatesTo.GetReplyTo() != "" {
		text = event.TrimReplyFallbackText(text)
	}
	// Commands are not for the room's audience; and whatever carries a secret by the core's one
	// definition (an edit, a formatted body, a later line) is withheld too. The core withholds
	// such messages from bridges already; this is the second line of defence.
	if looksLikeCommand(text) || br.host.CarriesSecret(evt) {
		return nil
	}
	out.Content = &OutboundContent{MsgType: msg.MsgType, Body: msg.Body}
	if msg.Format == event.FormatHTML {
		out.Content.FormattedBody = msg.FormattedBody
	}
	return br.fanOut(ctx, evt, out)
}

// handleRedaction passes a redaction on to the room's outbound hooks as a deletion notice,
// unless it redacted a hook's command. Purging the hooks a redacted command created is the
// core's job (with its permission check); it runs before this handler and calls
// RedactionPurged, and this handler only makes sure nothing the bridge keeps about the room
// outlived the purge.
func (br *Bridge) handleRedaction(ctx context.Context, evt *event.Event) error {
	redacts := appservice.RedactedEventID(evt)
	if redacts == "" || br.isOwnUser(evt.Sender) {
		return nil
	}
	br.reconcileRoom(ctx, evt.RoomID)
	if br.wasPurged(redacts) {
		return nil
	}
	hooks, err := br.db.Hook.GetBySourceEvent(ctx, evt.RoomID, redacts)
	if err != nil {
		return fmt.Errorf("failed to look up hooks created by the redacted event: %w", err)
	} else if len(hooks) > 0 {
		// A hook's command, which the core did not purge (the sender may not): commands are
		// never passed on, so neither is their deletion.
		return nil
	}
	return br.fanOut(ctx, evt, &OutboundEvent{
		EventID: evt.ID, RoomID: evt.RoomID, Sender: evt.Sender, Type: event.EventRedaction.Type,
		Redacts: redacts, OriginServerTS: evt.Timestamp,
	})
}

// maxPurgedRemembered bounds the set of recently purged commands.
const maxPurgedRemembered = 1000

// rememberPurged records that redacting eventID purged hooks, so that the redaction, which
// reaches HandleEvent right after, is not passed on as a deletion notice.
func (br *Bridge) rememberPurged(eventID id.EventID) {
	br.purgedLock.Lock()
	defer br.purgedLock.Unlock()
	if len(br.purged) >= maxPurgedRemembered {
		clear(br.purged)
	}
	br.purged[eventID] = struct{}{}
}

func (br *Bridge) wasPurged(eventID id.EventID) bool {
	br.purgedLock.Lock()
	defer br.purgedLock.Unlock()
	_, ok := br.purged[eventID]
	return ok
}

// fanOut queues out for every outbound hook of the event's room that is not suspended.
func (br *Bridge) fanOut(ctx context.Context, evt *event.Event, out *OutboundEvent) error {
	hooks, err := br.db.Hook.GetDeliveringInRoom(ctx, evt.RoomID)
	if err != nil {
		return fmt.Errorf("failed to get the room's outbound hooks: %w", err)
	} else if len(hooks) == 0 {
		return nil
	}
	body, err := json.Marshal(out)
	if err != nil {
		return fmt.Errorf("failed to encode outbound event: %w", err)
	}
	for _, hook := range hooks {
		br.enqueue(ctx, hook, &delivery{eventID: evt.ID, sender: evt.Sender, body: body})
	}
	zerolog.Ctx(ctx).Debug().Int("outbound_hooks", len(hooks)).Int("bytes", len(body)).Msg("Queued event for outbound webhooks")
	return nil
}

// reconcileRoom stops delivery queues and makes ghosts leave for hooks of roomID that no longer
// exist.
func (br *Bridge) reconcileRoom(ctx context.Context, roomID id.RoomID) {
	hooks, err := br.db.Hook.GetActiveInRoom(ctx, roomID)
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to get the room's hooks to reconcile")
		return
	}
	active := make(map[string]bool, len(hooks))
	for _, hook := range hooks {
		active[hook.ID] = true
	}
	br.queuesLock.Lock()
	var stale []string
	for hookID, q := range br.queues {
		if q.roomID == roomID && !active[hookID] {
			stale = append(stale, hookID)
		}
	}
	br.queuesLock.Unlock()
	for _, hookID := range stale {
		br.forgetHook(hookID)
	}
	members, err := br.host.Bot().StateStore.GetRoomJoinedOrInvitedMembers(ctx, roomID)
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to get the room's members to reconcile")
		return
	}
	for _, member := range members {
		localpart, server, err := member.Parse()
		if err != nil || server != br.host.Domain() {
			continue
		}
		if hookID, ok := webhookid.ParseGhostLocalpart(localpart); ok && !active[hookID] {
			br.forgetHook(hookID)
			br.ghostLeave(ctx, roomID, hookID, "The webhook was removed")
		}
	}
}

// isOwnUser reports whether userID is the bot or one of the bridge's ghosts. The core already
// drops their events; this is a second line, because passing our own posts back out could loop.
func (br *Bridge) isOwnUser(userID id.UserID) bool {
	if userID == br.host.Bot().UserID {
		return true
	}
	localpart, server, err := userID.Parse()
	return err == nil && server == br.host.Domain() && strings.HasPrefix(localpart, webhookid.GhostPrefix)
}

// looksLikeCommand reports whether body is a bot command: its first word is "webhook" after
// any prefix ("!webhook out <url>" carries a URL with a token, whatever the configured prefix),
// or starts with "!" and a letter (the default prefix: other bridges' commands, such as logins,
// may carry secrets too). Commands are addressed to the bot, not to the room's audience, and are
// never passed to outbound hooks.
func looksLikeCommand(body string) bool {
	first := strings.TrimLeftFunc(body, unicode.IsSpace)
	if end := strings.IndexFunc(first, unicode.IsSpace); end >= 0 {
		first = first[:end]
	}
	if rest, ok := strings.CutPrefix(first, "!"); ok && rest != "" {
		if r, _ := utf8.DecodeRuneInString(rest); unicode.IsLetter(r) {
			return true
		}
	}
	first = strings.TrimLeftFunc(first, func(r rune) bool { return !unicode.IsLetter(r) && !unicode.IsDigit(r) })
	return strings.EqualFold(first, "webhook")
}

// hookStatus describes a hook's state for !webhook list.
func hookStatus(hook *webhookdb.Hook) string {
	if hook.Kind == webhookdb.KindInbound {
		if !hook.SecretSent {
			return "URL not delivered yet"
		}
		return "active"
	}
	switch {
	case !hook.SuspendedAt.IsZero():
		return fmt.Sprintf("**suspended** since %s: %s", formatTime(hook.SuspendedAt), hook.SuspendedReason)
	case hook.ConsecutiveFailures > 0:
		return fmt.Sprintf("failing: %d failed attempts in a row", hook.ConsecutiveFailures)
	case !hook.LastSuccessAt.IsZero():
		return "delivering"
	default:
		return "nothing delivered yet"
	}
}

package irc

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/bridges/irc/ircconv"
	"github.com/custodian-matrix/custodian/bridges/irc/ircdb"
)

// textLinkName is the last path segment of a link to a long message's full text.
const textLinkName = "message.txt"

// matrixText returns a text message's content as IRC text: its formatted body if it has one,
// otherwise its plain body without an older client's reply fallback.
func matrixText(content *event.MessageEventContent) string {
	if content.Format == event.FormatHTML && content.FormattedBody != "" {
		return ircconv.HTMLToIRC(content.FormattedBody)
	}
	return ircconv.PlainToIRC(ircconv.StripReplyFallback(content.Body))
}

// previousText returns the IRC text of the version of original that an edit (evt) replaces:
// the last edit of it relayed before, or original itself. It reads the event from the
// homeserver, and only events that went through the bridge (irc_message has rows for them), for
// the same reason as replyInfo. It returns "" when there is none, or on failure; the edit is
// then sent whole.
func (br *Bridge) previousText(ctx context.Context, evt *event.Event, original id.EventID) string {
	rows, err := br.db.Message.GetWithEdits(ctx, original)
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to look up the edited message")
		return ""
	}
	var prev id.EventID
	for _, row := range rows {
		if row.EventID != evt.ID && row.RoomID == evt.RoomID && row.Sender == evt.Sender {
			prev = row.EventID
		}
	}
	if prev == "" {
		return ""
	}
	got, err := br.host.Bot().GetEvent(ctx, evt.RoomID, prev)
	if err != nil || got.Sender != evt.Sender {
		return ""
	}
	_ = got.Content.ParseRaw(got.Type)
	c, ok := got.Content.Parsed.(*event.MessageEventContent)
	if !ok {
		return ""
	}
	if c.NewContent != nil && c.RelatesTo != nil && c.RelatesTo.Type == event.RelReplace {
		c = c.NewContent
	}
	switch c.MsgType {
	case event.MsgText, event.MsgNotice, event.MsgEmote:
		return matrixText(c)
	}
	return ""
}

// shortenLong returns the lines to send for a message rendered as lines (for budget): the lines
// themselves, or, for a long message (messages.long_lines, messages.long_bytes), its first line
// and a link to its full text. Without media_proxy, or when the link cannot be made, the
// message is cut after long_lines lines with a marker instead, and the sender is told once per
// network (a 64 KB paste would otherwise become some 160 lines and get the puppet killed for
// flooding).
func (br *Bridge) shortenLong(ctx context.Context, evt *event.Event, t *target, lines []ircconv.Line, budget int) []ircconv.Line {
	mc := br.cfg.Messages
	if !ircconv.IsLong(lines, mc.LongLines, mc.LongBytes) {
		return lines
	}
	if br.cfg.MediaProxy != nil {
		link, err := br.textLink(ctx, evt)
		if err == nil {
			return ircconv.Condense(lines, budget, link)
		}
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to make a link to a long message")
	}
	if br.truncatedTold.first(evt.Sender, t.net.cfg.ID) {
		br.notifyUser(ctx, evt.Sender, evt.ID, "long-message-truncated", fmt.Sprintf(
			"Your message was too long for %s and was cut after %d lines. Long messages are cut this way on this network; send long texts as a file or a paste link instead.",
			t.net.cfg.Name, mc.LongLines))
	}
	return ircconv.Truncate(lines, budget, mc.LongLines)
}

// maxTold bounds the users a toldSet remembers; when it is full it starts again, so a user may
// be told twice, never unboundedly remembered.
const maxTold = 10000

// toldSet remembers whom the bridge told something once per network, in memory.
type toldSet struct {
	mu   sync.Mutex
	seen map[string]struct{}
}

// first reports whether this is the first time for user on network, and remembers it.
func (ts *toldSet) first(user id.UserID, network string) bool {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	key := network + " " + string(user)
	if _, ok := ts.seen[key]; ok {
		return false
	}
	if ts.seen == nil || len(ts.seen) >= maxTold {
		ts.seen = make(map[string]struct{})
	}
	ts.seen[key] = struct{}{}
	return true
}

// forget drops everything remembered about user (at erasure).
func (ts *toldSet) forget(user id.UserID) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	for key := range ts.seen {
		if strings.HasSuffix(key, " "+string(user)) {
			delete(ts.seen, key)
		}
	}
}

// textLink returns a media_proxy link to the full text of evt, a long message. Like a media
// link it is recorded in irc_media, with its token stored only as a hash and no MXC URI (which
// marks a text link), and stops working when the message is redacted, after message_ttl, or when
// the sender is erased. The text itself is not stored: the listener reads the event from the
// homeserver when the link is opened.
func (br *Bridge) textLink(ctx context.Context, evt *event.Event) (string, error) {
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	token := base64.RawURLEncoding.EncodeToString(raw[:])
	original := evt.Content.AsMessage().RelatesTo.GetReplaceID()
	err := br.db.DoTxn(ctx, nil, func(ctx context.Context) error {
		// A narrow window remains: if the sender's erasure runs between the start of this send
		// and this transaction, EnsureUser brings a users row back (with this irc_media row).
		// The Host offers bridges no cheap "erasure pending" check (IsPaused reads the paused
		// flag only; the core's HasPendingErasure is not exposed), and EraseRemote drops the
		// sender's puppet and outbox first, so this needs a message already being sent at that
		// moment. The row is a users row with no data but this link, which message_ttl expires.
		if err := br.host.EnsureUser(ctx, evt.Sender); err != nil {
			return err
		}
		return br.db.Media.Put(ctx, &ircdb.Media{
			TokenHash: hashMediaToken(token), EventID: evt.ID, RoomID: evt.RoomID,
			Sender: evt.Sender, CreatedAt: br.clock.Now(), Original: original,
		})
	})
	if err != nil {
		return "", fmt.Errorf("failed to record text link: %w", err)
	}
	return strings.TrimSuffix(br.cfg.MediaProxy.PublicURL, "/") + mediaPathPrefix + token + "/" + textLinkName, nil
}

// serveText answers a text link (see textLink) with the message's plain text, read from the
// homeserver as the bot. A message that is gone, redacted or not a text message answers 404.
func (br *Bridge) serveText(w http.ResponseWriter, r *http.Request, m *ircdb.Media) {
	ctx := r.Context()
	evt, err := br.host.Bot().GetEvent(ctx, m.RoomID, m.EventID)
	if err != nil || evt.Sender != m.Sender {
		http.NotFound(w, r)
		return
	}
	_ = evt.Content.ParseRaw(evt.Type)
	c, ok := evt.Content.Parsed.(*event.MessageEventContent)
	if !ok {
		http.NotFound(w, r)
		return
	}
	if c.NewContent != nil && c.RelatesTo != nil && c.RelatesTo.Type == event.RelReplace {
		c = c.NewContent
	}
	text := ircconv.StripReplyFallback(c.Body)
	if strings.TrimSpace(text) == "" {
		http.NotFound(w, r)
		return
	}
	if !strings.HasSuffix(text, "\n") {
		text += "\n"
	}
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "default-src 'none'; sandbox")
	h.Set("Cache-Control", "private, max-age=300")
	h.Set("Content-Disposition", "inline")
	h.Set("Content-Length", strconv.Itoa(len(text)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write([]byte(text))
	}
}

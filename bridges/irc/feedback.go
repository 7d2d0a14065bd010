package irc

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ergochat/irc-go/ircmsg"
	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/format"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/bridges/irc/ircconv"
	"github.com/custodian-matrix/custodian/bridges/irc/ircline"
)

// refusalWindow is how long after a message or topic was sent a refusal from the server is
// taken to be about it. Servers answer at once; a refusal much later is about something else.
const refusalWindow = time.Minute

// maxSentTargets bounds the targets a puppet remembers its last message for.
const maxSentTargets = 64

// Bounds of the delay before a refused TOPIC is sent again (437).
const (
	minTopicRetry = time.Second
	maxTopicRetry = 10 * time.Second
)

// sentRecord is the last message or topic a puppet sent to one target, so that a refusal from the
// server can be told to its sender with the event as the notice's cause. It holds no text, except
// a topic awaiting a retry, until the retry is sent.
type sentRecord struct {
	eventID id.EventID
	at      time.Time
	// topic is the TOPIC text, for one retry after a 437; retried is set once it was retried.
	topic   string
	retried bool
}

// sentLog is what a puppet remembers about its recent sends, by folded target.
type sentLog struct {
	mu     sync.Mutex
	msgs   map[string]sentRecord
	topics map[string]sentRecord
}

func (sl *sentLog) put(m *map[string]sentRecord, target string, r sentRecord) {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	if *m == nil || len(*m) >= maxSentTargets {
		*m = make(map[string]sentRecord)
	}
	(*m)[target] = r
}

// noteSent remembers that the puppet sent evt's message to target (folded).
func (p *puppet) noteSent(target string, eventID id.EventID) {
	p.sent.put(&p.sent.msgs, target, sentRecord{eventID: eventID, at: p.net.br.clock.Now()})
}

// noteTopic remembers that the puppet sent TOPIC text to channel (folded) for eventID.
func (p *puppet) noteTopic(channel string, eventID id.EventID, text string) {
	p.sent.put(&p.sent.topics, channel, sentRecord{eventID: eventID, at: p.net.br.clock.Now(), topic: text})
}

// recent returns the record of target in m if it is within refusalWindow.
func (sl *sentLog) recent(m map[string]sentRecord, target string, now time.Time) (sentRecord, bool) {
	r, ok := m[target]
	if !ok || now.Sub(r.at) > refusalWindow {
		return sentRecord{}, false
	}
	return r, true
}

// refusalNumerics are the numerics by which a server refuses a message, a topic or a join.
var refusalNumerics = map[string]bool{
	"401": true,                                                     // ERR_NOSUCHNICK: the private chat's nick is gone
	"404": true,                                                     // ERR_CANNOTSENDTOCHAN: +m, +n, banned, …
	"417": true,                                                     // ERR_INPUTTOOLONG
	"437": true,                                                     // ERR_UNAVAILRESOURCE: InspIRCd's answer to a TOPIC within a second of another
	"442": true,                                                     // ERR_NOTONCHANNEL
	"477": true,                                                     // ERR_NEEDREGGEDNICK
	"482": true,                                                     // ERR_CHANOPRIVSNEEDED: +t
	"489": true,                                                     // ERR_SECUREONLYCHAN
	"471": true, "473": true, "474": true, "475": true, "403": true, // cannot join
}

// onRefused tells a puppet's user that the server refused what they sent: one notice per
// refused event (its transaction ID is derived from the event, so several refusals of one
// message's lines, or a replay, post one notice), quoting the server's reason. A TOPIC refused
// with 437 is sent again once, after the delay the server names (at least a second).
func (n *network) onRefused(ctx context.Context, p *puppet, msg *ircmsg.Message) {
	target := n.fold(ircline.Param(msg, 1))
	// <me> <target> [...] :<reason>; the server's words, shown to the user as plain text.
	var reason string
	if len(msg.Params) >= 3 {
		reason = ircconv.Strip(ircconv.DecodeText(msg.Params[len(msg.Params)-1]))
	}
	if len(reason) > 200 {
		reason = strings.ToValidUTF8(reason[:200], "") + "…"
	}
	reason = format.EscapeMarkdown(reason)
	now := n.br.clock.Now()
	p.sent.mu.Lock()
	topic, isTopic := p.sent.recent(p.sent.topics, target, now)
	retry := isTopic && msg.Command == "437" && !topic.retried
	if retry {
		topic.retried = true
		p.sent.topics[target] = topic
	} else if isTopic && (msg.Command == "437" || msg.Command == "482") {
		delete(p.sent.topics, target)
	}
	sent, isMsg := p.sent.recent(p.sent.msgs, target, now)
	p.sent.mu.Unlock()
	// The raw name is what a retried TOPIC goes to; the escaped one is for notices only.
	rawName := n.targetName(target)
	name := format.EscapeMarkdown(rawName)
	switch {
	case retry:
		n.retryTopic(p, rawName, topic, reason)
	case isTopic && (msg.Command == "437" || msg.Command == "482"):
		n.br.notifyUser(ctx, p.user, topic.eventID, "topic-refused", fmt.Sprintf(
			"%s refused your topic change in %s: %s", n.cfg.Name, name, orUnknown(reason)))
	case isMsg:
		n.br.notifyUser(ctx, p.user, sent.eventID, "undelivered", fmt.Sprintf(
			"Your message to %s on %s was not delivered: %s", name, n.cfg.Name, orUnknown(reason)))
	default:
		zerolog.Ctx(ctx).Debug().Msg("Refusal from the server matches nothing sent recently")
	}
}

// orUnknown returns reason, or a stand-in when the server gave none.
func orUnknown(reason string) string {
	if strings.TrimSpace(reason) == "" {
		return "the server refused it"
	}
	return reason
}

// retryTopic sends a refused TOPIC again once the delay the server's reason names has passed
// (the first number in it, in seconds; one second if it names none), bounded by minTopicRetry
// and maxTopicRetry. It runs in the background and gives up when the bridge stops.
// name is the channel's name as IRC writes it (never Markdown-escaped).
func (n *network) retryTopic(p *puppet, name string, r sentRecord, reason string) {
	delay := minTopicRetry
	for _, f := range strings.FieldsFunc(reason, func(c rune) bool { return c < '0' || c > '9' }) {
		if secs, err := strconv.Atoi(f); err == nil {
			delay = min(max(time.Duration(secs)*time.Second, minTopicRetry), maxTopicRetry)
			break
		}
	}
	br := n.br
	br.janitor.Add(1)
	go func() {
		defer br.janitor.Done()
		timer := br.clock.NewTimer(delay)
		defer timer.Stop()
		select {
		case <-timer.C():
		case <-br.runCtx.Done():
			return
		}
		c := p.sess.current()
		if c == nil {
			return
		}
		if err := c.Send(br.runCtx, nil, "TOPIC", name, r.topic); err != nil {
			n.log.Debug().Err(err).Msg("Failed to send a refused TOPIC again")
		}
	}()
}

// notifyUndelivered tells the sender of evtID that their message to target could not be sent
// because their puppet has no connection to the network. Nothing is said while the bridge
// shuts down (the message is then not lost for a reason the user can act on).
func (br *Bridge) notifyUndelivered(ctx context.Context, user id.UserID, evtID id.EventID, t *target) {
	if br.runCtx == nil || br.runCtx.Err() != nil {
		return
	}
	// The handler's own context may be what ran out.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	br.notifyUser(ctx, user, evtID, "undelivered", fmt.Sprintf(
		"Your message to %s on %s was not delivered: you are not connected to the network right now.",
		format.EscapeMarkdown(t.name), t.net.cfg.Name))
}

package irc

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/bridges/irc/ircconn"
	"github.com/custodian-matrix/custodian/bridges/irc/ircconv"
	"github.com/custodian-matrix/custodian/bridges/irc/ircdb"
)

// The send path. The core hands a room's events to the bridge strictly in order, so a handler
// that waited for its sender's puppet to register would hold up everyone else in the room for
// one IRC registration (seconds on real networks). Instead, each puppet has an outbox: the
// handler checks and converts the event, queues it in the sender's outbox and returns; a
// goroutine per non-empty outbox waits for the puppet's connection and sends what is queued, in
// order. So a message waits only for its own sender's connection, and each user's messages
// (and their edits, redactions, topic changes and leaves) reach each network in the order they
// were sent.
//
// Delivery is at least once, and exactly once unless the process dies between sending a
// message's lines and recording them. A message is recorded in irc_outbox (its ID, never its
// text) before it is queued, and its row goes once its lines are sent and recorded in
// irc_message, or once it is dropped. So a message still queued when the bridge stops or
// crashes is not lost, although the core does not deliver its event again (its handler had
// returned): at start, replayOutbox fetches each recorded event from the homeserver and queues
// it again. A replayed event (by the core or by replayOutbox) that has irc_message rows sends
// nothing (relayedBefore), nor does one still queued (puppet.has).

const (
	// maxOutbox bounds the events queued per puppet. An event that finds the outbox full is not
	// relayed and its sender is told once per full spell.
	maxOutbox = 100
	// maxOutboxWait is how long a queued event may wait for its sender's connection (the
	// network is down, or refuses the puppet); then the janitor drops it and tells the sender.
	maxOutboxWait = 10 * time.Minute
	// outboxReplayTimeout bounds how long Start spends queueing again what waited when the
	// bridge last stopped.
	outboxReplayTimeout = 30 * time.Second
)

// outKind is what a queued item does.
type outKind int

const (
	// outMessage relays an m.room.message.
	outMessage outKind = iota
	// outTopic sends a portal's new topic.
	outTopic
	// outRedact deletes a message's IRC copy and forgets its IDs.
	outRedact
	// outPart leaves a channel.
	outPart
)

// outItem is one queued event of a puppet.
type outItem struct {
	kind     outKind
	evt      *event.Event
	t        *target
	queuedAt time.Time
	// msg and replaces are an outMessage's converted message and the event it edits.
	msg      ircconv.Message
	replaces id.EventID
	// text is an outTopic's topic or an outPart's reason.
	text string
	// redacts is an outRedact's redacted event.
	redacts id.EventID
}

// needsConn reports whether the item waits for a connection: redactions and leaves do what they
// can without one.
func (it *outItem) needsConn() bool { return it.kind == outMessage || it.kind == outTopic }

var (
	// errOutboxClosed is returned by enqueue once the puppet was dropped; the caller takes the
	// user's new puppet.
	errOutboxClosed = errors.New("irc: puppet was dropped")
	// errOutboxFull is returned by enqueue when maxOutbox events wait.
	errOutboxFull = errors.New("irc: too many messages waiting for the connection")
)

// enqueue queues it in the puppet's outbox and starts draining it. An event already queued or
// being sent is not queued again.
func (p *puppet) enqueue(it *outItem) error {
	p.outMu.Lock()
	defer p.outMu.Unlock()
	if p.outClosed {
		return errOutboxClosed
	}
	if p.hasLocked(it.evt.ID) {
		return nil
	}
	if len(p.outbox) >= maxOutbox {
		return errOutboxFull
	}
	if len(p.outbox) < maxOutbox/2 {
		p.fullNotified = false
	}
	p.outbox = append(p.outbox, it)
	if !p.draining {
		p.draining = true
		p.net.drains.Add(1)
		go p.drain(p.net.br.runCtx)
	}
	return nil
}

// has reports whether eventID is queued or being sent.
func (p *puppet) has(eventID id.EventID) bool {
	p.outMu.Lock()
	defer p.outMu.Unlock()
	return p.hasLocked(eventID)
}

func (p *puppet) hasLocked(eventID id.EventID) bool {
	if p.sending != nil && p.sending.evt.ID == eventID {
		return true
	}
	return slices.ContainsFunc(p.outbox, func(it *outItem) bool { return it.evt.ID == eventID })
}

// busy reports whether anything is queued or being sent.
func (p *puppet) busy() bool {
	p.outMu.Lock()
	defer p.outMu.Unlock()
	return p.sending != nil || len(p.outbox) > 0
}

// unqueue drops the queued messages that are eventID or edits of it (it was redacted before it
// went out, so it never will) and reports whether eventID was queued or is being sent.
func (p *puppet) unqueue(ctx context.Context, eventID id.EventID) (found bool) {
	p.outMu.Lock()
	found = p.sending != nil && p.sending.evt.ID == eventID
	var dropped []*outItem
	p.outbox = slices.DeleteFunc(p.outbox, func(it *outItem) bool {
		found = found || it.evt.ID == eventID
		if it.kind == outMessage && (it.evt.ID == eventID || it.replaces == eventID) {
			dropped = append(dropped, it)
			return true
		}
		return false
	})
	p.outMu.Unlock()
	p.net.br.forgetItems(ctx, dropped)
	return found
}

// forgetQueued deletes the irc_outbox row of eventID: it was sent or dropped.
func (br *Bridge) forgetQueued(ctx context.Context, eventID id.EventID) {
	if err := br.db.Outbox.Delete(ctx, eventID); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to forget a queued message")
	}
}

// forgetItems deletes the irc_outbox rows of the messages among items, which left the outbox
// unsent.
func (br *Bridge) forgetItems(ctx context.Context, items []*outItem) {
	for _, it := range items {
		if it.kind == outMessage {
			br.forgetQueued(ctx, it.evt.ID)
		}
	}
}

// closeOutbox stops the outbox: what is queued is dropped, never sent, and enqueue fails from
// now on. With ifIdle, it closes only an empty outbox and reports whether it did.
func (p *puppet) closeOutbox(ifIdle bool) bool {
	p.outMu.Lock()
	defer p.outMu.Unlock()
	if ifIdle && (p.sending != nil || len(p.outbox) > 0) {
		return false
	}
	p.outClosed = true
	clear(p.outbox)
	p.outbox = nil
	return true
}

// expireOutbox drops the events that waited maxOutboxWait for a connection, and tells the user
// once.
func (p *puppet) expireOutbox(ctx context.Context, now time.Time) {
	if p.sess.current() != nil {
		return
	}
	p.outMu.Lock()
	var expired []*outItem
	p.outbox = slices.DeleteFunc(p.outbox, func(it *outItem) bool {
		if it.needsConn() && now.Sub(it.queuedAt) >= maxOutboxWait {
			expired = append(expired, it)
			return true
		}
		return false
	})
	p.outMu.Unlock()
	p.net.br.forgetItems(ctx, expired)
	if len(expired) > 0 {
		p.notifyUndelivered(ctx, expired, "undelivered-timeout", "the connection to the network could not be made in time")
	}
}

// notifyUndelivered tells the user that items were not relayed, in one notice caused by the
// first of them.
func (p *puppet) notifyUndelivered(ctx context.Context, items []*outItem, purpose, why string) {
	zerolog.Ctx(ctx).Warn().Int("events", len(items)).Str("network", p.net.cfg.ID).Str("reason", purpose).Msg("Dropped queued events")
	p.net.br.notifyUser(ctx, p.user, items[0].evt.ID, purpose+":"+p.net.cfg.ID, fmt.Sprintf(
		"%d of your messages to %s were not relayed: %s.", len(items), p.net.cfg.Name, why))
}

// drain sends the outbox's items in order, waiting for the connection where an item needs one,
// until the outbox is empty or closed. One runs per non-empty outbox.
func (p *puppet) drain(ctx context.Context) {
	defer p.net.drains.Done()
	log := p.sess.log.With().Str("action", "drain outbox").Logger()
	ctx = log.WithContext(ctx)
	for {
		p.outMu.Lock()
		if p.outClosed || len(p.outbox) == 0 {
			p.draining = false
			p.sending = nil
			p.outMu.Unlock()
			return
		}
		head := p.outbox[0]
		p.outMu.Unlock()
		var c *ircconn.Conn
		if head.needsConn() {
			var err error
			if c, err = p.sess.conn(ctx); err != nil {
				p.gaveUp(ctx, err)
				return
			}
		}
		p.outMu.Lock()
		if p.outClosed || len(p.outbox) == 0 || p.outbox[0] != head {
			// Dropped or expired while we waited.
			p.outMu.Unlock()
			continue
		}
		p.outbox[0] = nil
		p.outbox = p.outbox[1:]
		p.sending = head
		p.outMu.Unlock()
		retry := p.send(ctx, c, head)
		if !retry && head.kind == outMessage {
			// Sent and recorded in irc_message, or dropped.
			p.net.br.forgetQueued(ctx, head.evt.ID)
		}
		p.outMu.Lock()
		p.sending = nil
		if retry && !p.outClosed {
			// The connection dropped before any of it went out: again on the next one.
			p.outbox = slices.Insert(p.outbox, 0, head)
		}
		p.outMu.Unlock()
	}
}

// gaveUp empties the outbox after the session stopped without closeOutbox (it gave up
// connecting, or the bridge is stopping), and tells the user unless the bridge is stopping.
func (p *puppet) gaveUp(ctx context.Context, err error) {
	p.outMu.Lock()
	dropped := p.outbox
	p.outbox = nil
	closed := p.outClosed
	p.outClosed = true
	p.draining = false
	p.outMu.Unlock()
	if closed || len(dropped) == 0 || ctx.Err() != nil {
		// Closed: dropped by erasure or pause (closeOutbox's caller forgets the rows), or the
		// bridge is stopping (the rows stay, and the next start sends them).
		return
	}
	p.net.br.forgetItems(ctx, dropped)
	zerolog.Ctx(ctx).Debug().Err(err).Msg("Puppet connection ended with events queued")
	p.notifyUndelivered(ctx, dropped, "undelivered-connection", "the connection to the network failed")
}

// send does one item on c (nil for items that need no connection). It reports true if the
// item should be tried again on the next connection: c dropped before any of it was sent.
func (p *puppet) send(ctx context.Context, c *ircconn.Conn, it *outItem) (retry bool) {
	br := p.net.br
	log := zerolog.Ctx(ctx).With().Stringer("event_id", it.evt.ID).Logger()
	ctx = log.WithContext(ctx)
	if it.needsConn() {
		// Paused since it was queued: the core no longer routes their events, and what waited
		// for the connection must not go out either.
		if paused, err := br.host.IsPaused(ctx, p.user); err != nil {
			log.Warn().Err(err).Msg("Failed to check whether the sender paused Custodian")
		} else if paused {
			log.Debug().Msg("Dropped a queued event of a paused user")
			return false
		}
	}
	if it.needsConn() && it.t.portal != nil && it.t.net.portal(ctx, it.t.folded) == nil {
		// Unlinked since it was queued: joining the channel again would be wrong.
		log.Debug().Msg("Dropped a queued event for a portal that was unlinked")
		return false
	}
	var err error
	switch it.kind {
	case outMessage:
		return br.sendMessage(ctx, p, c, it)
	case outTopic:
		if err = p.sess.join(ctx, it.t.folded, it.t.name); err == nil {
			err = p.sess.ensureJoined(ctx, c, it.t.folded, it.t.name)
		}
		if err == nil {
			p.noteTopic(it.t.folded, it.evt.ID, it.text)
			err = c.Send(ctx, nil, "TOPIC", it.t.name, it.text)
		}
		if errors.Is(err, ircconn.ErrClosed) {
			return true
		}
	case outRedact:
		err = br.redactOnIRC(ctx, it.evt, it.redacts)
	case outPart:
		p.sess.part(ctx, it.t.folded, it.text)
	}
	if err != nil {
		log.Warn().Err(err).Int("kind", int(it.kind)).Msg("Failed to send a queued event to IRC")
	}
	return false
}

// sendMessage relays a queued message on c and records its lines, which is what makes a replay
// of the event send nothing.
func (br *Bridge) sendMessage(ctx context.Context, p *puppet, c *ircconn.Conn, it *outItem) (retry bool) {
	log := zerolog.Ctx(ctx)
	evt, t := it.evt, it.t
	if t.portal != nil && !p.mayJoin(t.folded, br.clock.Now()) {
		// Kicked while the message waited: it stays out until rejoin_delay passed.
		br.notifyKickedWait(ctx, p, evt, t)
		return false
	}
	if t.portal != nil {
		// join again: a leave queued before this message parted the channel.
		if err := p.sess.join(ctx, t.folded, t.name); err != nil && errors.Is(err, ircconn.ErrClosed) {
			return true
		}
		if err := p.sess.ensureJoined(ctx, c, t.folded, t.name); err != nil {
			if errors.Is(err, ircconn.ErrClosed) {
				return true
			}
			log.Warn().Err(err).Msg("Failed to join before relaying a message")
			return false
		}
	}
	if it.msg.Edit && it.replaces != "" {
		// The user's earlier items, the edited message among them, were sent and recorded before
		// this one: the previous version is known now, not when the edit was queued.
		it.msg.Previous = br.previousText(ctx, evt, it.replaces)
	}
	budget := ircconv.Budget(ircconv.ConservativeSource(c.Nick()), "PRIVMSG", t.name)
	lines, err := ircconv.Render(it.msg, budget)
	if err != nil {
		log.Warn().Err(err).Msg("Failed to render message")
		return false
	}
	if len(lines) == 0 {
		return false
	}
	lines = br.shortenLong(ctx, evt, t, lines, budget)
	trackEchoes := wantsEchoes(c)
	// Before sending: the server may refuse the channel's JOIN, queued before, at once.
	p.noteSent(t.folded, evt.ID)
	sent := 0
	for i, line := range lines {
		if trackEchoes {
			p.expectEcho(pendingLine{eventID: evt.ID, part: i, roomID: evt.RoomID, target: t.folded, text: line.Text})
		}
		if err = c.Send(ctx, nil, line.Command, t.name, line.Text); err != nil {
			break
		}
		sent++
	}
	if sent == 0 && errors.Is(err, ircconn.ErrClosed) {
		return true
	} else if err != nil {
		log.Warn().Err(err).Int("sent", sent).Int("lines", len(lines)).Msg("Failed to send message")
		br.notifyUndelivered(ctx, evt.Sender, evt.ID, t)
	}
	if sent == 0 {
		return false
	}
	now := br.clock.Now()
	err = br.db.DoTxn(ctx, nil, func(ctx context.Context) error {
		for i := range sent {
			err := br.db.Message.Put(ctx, &ircdb.Message{
				EventID: evt.ID, Part: i, RoomID: evt.RoomID, Network: t.net.cfg.ID, Target: t.folded,
				Sender: evt.Sender, CreatedAt: now, Original: it.replaces,
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		log.Warn().Err(err).Msg("Failed to record relayed message")
	}
	log.Debug().Int("lines", sent).Str("network", t.net.cfg.ID).Msg("Relayed message to IRC")
	return false
}

// eventGone reports whether a fetch failed because the event no longer exists or is not
// visible to the bot, as opposed to the homeserver being unavailable.
func eventGone(err error) bool {
	return errors.Is(err, mautrix.MNotFound) || errors.Is(err, mautrix.MForbidden)
}

// fetchEvent fetches an event from the homeserver (the bot's GetEvent).
type fetchEvent func(ctx context.Context, roomID id.RoomID, eventID id.EventID) (*event.Event, error)

// replayOutbox queues again the messages that were queued and not sent when the bridge last
// stopped or crashed (irc_outbox), oldest first, fetching each from the homeserver: the bridge
// keeps no message text. A message that went out after all (it has irc_message rows), was
// redacted (the homeserver answers M_NOT_FOUND or M_FORBIDDEN), or is no longer bridged is
// forgotten; one the homeserver could not be asked about (it is restarting too, a timeout) stays
// recorded and is tried at the next start. A paused user's is dropped when its turn comes, as any
// queued message is. It runs once, at start.
func (br *Bridge) replayOutbox(ctx context.Context, fetch fetchEvent) {
	log := br.log.With().Str("action", "replay outbox").Logger()
	ctx = log.WithContext(ctx)
	rows, err := br.db.Outbox.GetAll(ctx)
	if err != nil {
		log.Warn().Err(err).Msg("Failed to read the messages queued before the restart")
		return
	}
	requeued, kept := 0, 0
	for _, row := range rows {
		if ctx.Err() != nil {
			return
		}
		evtLog := log.With().Stringer("event_id", row.EventID).Logger()
		evt, err := fetch(ctx, row.RoomID, row.EventID)
		if err != nil && !eventGone(err) {
			// The homeserver may be restarting too (502, a timeout): the row stays for the next
			// start. Nothing was queued, so nothing is sent or told twice.
			evtLog.Warn().Err(err).Msg("Failed to fetch a message queued before the restart; keeping it for the next start")
			kept++
			continue
		}
		if err == nil {
			if evt.Content.Parsed == nil {
				_ = evt.Content.ParseRaw(evt.Type)
			}
			if evt.Type == event.EventMessage {
				err = br.handleMatrixMessage(evtLog.WithContext(ctx), evt)
			}
		}
		if err != nil {
			evtLog.Warn().Err(err).Msg("Failed to queue a message again after the restart")
		}
		if n := br.network(row.Network); n != nil {
			if p, _ := n.puppetFor(row.Sender, false); p != nil && p.has(row.EventID) {
				requeued++
				continue
			}
		}
		br.forgetQueued(ctx, row.EventID)
	}
	if len(rows) > 0 {
		log.Info().Int("queued", len(rows)).Int("requeued", requeued).Int("kept", kept).
			Msg("Queued messages again after the restart")
	}
}

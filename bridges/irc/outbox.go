package irc

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/rs/zerolog"
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
// Delivery is at most once. A line is recorded in irc_message as soon as it is sent, and a
// replayed event with rows sends nothing (relayedBefore), nor does one still queued
// (outbox.has). A line still queued when the process stops or crashes is not sent; the core
// does not deliver its event again, since its handler had returned. The window is the wait for
// the sender's connection (one registration, or while the network is down).

const (
	// maxOutbox bounds the events queued per puppet. An event that finds the outbox full is not
	// relayed and its sender is told once per full spell.
	maxOutbox = 100
	// maxOutboxWait is how long a queued event may wait for its sender's connection (the
	// network is down, or refuses the puppet); then the janitor drops it and tells the sender.
	maxOutboxWait = 10 * time.Minute
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
func (p *puppet) unqueue(eventID id.EventID) (found bool) {
	p.outMu.Lock()
	defer p.outMu.Unlock()
	found = p.sending != nil && p.sending.evt.ID == eventID
	p.outbox = slices.DeleteFunc(p.outbox, func(it *outItem) bool {
		drop := it.kind == outMessage && (it.evt.ID == eventID || it.replaces == eventID)
		found = found || it.evt.ID == eventID
		return drop
	})
	return found
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
		return
	}
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
	var err error
	switch it.kind {
	case outMessage:
		return br.sendMessage(ctx, p, c, it)
	case outTopic:
		if err = p.sess.join(ctx, it.t.folded, it.t.name); err == nil {
			err = p.sess.ensureJoined(ctx, c, it.t.folded, it.t.name)
		}
		if err == nil {
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
	lines, err := ircconv.Render(it.msg, ircconv.Budget(ircconv.ConservativeSource(c.Nick()), "PRIVMSG", t.name))
	if err != nil {
		log.Warn().Err(err).Msg("Failed to render message")
		return false
	}
	if len(lines) == 0 {
		return false
	}
	trackEchoes := wantsEchoes(c)
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

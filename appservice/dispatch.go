package appservice

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/database"
	"github.com/custodian-matrix/custodian/appservice/vault"
)

// The dispatcher drains the inbox: events of one room strictly in order, different rooms in
// parallel (at most cfg.AppService.Workers at a time). Ingest hands it events only after they
// are committed; at startup it first replays whatever an earlier run left unfinished.
//
// To-device events (end-to-end encryption) have a lane of their own, in the order they came,
// with a worker that takes no slot: room events waiting for a room key hold no slot either
// (see releaseSlot), but a lane of its own also means the keys never queue behind rooms. Each
// to-device event is marked done in the same database transaction that stores what it changed
// (cryptoevents.go), not in the batches below.
//
// A handled event is marked done in batches (one database transaction per batch) to keep the
// write rate independent of the event rate. A crash between handling and marking means the event
// is handled again after restart, which is why handlers must be idempotent on the event ID.
type dispatcher struct {
	svc *Service

	lock     sync.Mutex
	rooms    map[id.RoomID]*roomQueue
	backlog  int
	drained  chan struct{} // closed and replaced whenever the backlog shrinks
	started  bool
	stopping bool

	slots   chan struct{}
	workers sync.WaitGroup

	done        chan database.Done
	flusherDone chan struct{}

	// held are the sequence numbers of inbox rows whose content could not be opened (their
	// inbox key's master key is missing or wrong, or the vault is off). They stay in the inbox;
	// the service retries them (inboxRetryLoop). Guarded by lock.
	held map[int64]struct{}
	// keptBy counts the to-device rows left in the inbox for a later run, by sender, and kept
	// all of them: encryption is enabled, but this run has no olm machine (keepToDevice).
	// left counts the rows left for a later run because their gate check failed
	// (leaveToDevice). Guarded by lock.
	keptBy map[id.UserID]int
	kept   int
	left   int
	// keepPerSender and keepTotal cap what keepToDevice keeps in a run.
	keepPerSender, keepTotal int
	// keptWarned and capWarned are set once keepToDevice has warned in this run, that it keeps
	// rows and that it dropped some over the caps. Guarded by lock.
	keptWarned, capWarned bool
}

const (
	// keepPerSender and keepTotal are the default caps of the to-device rows a run without the
	// olm machine keeps for a later one: per sender and in all.
	keepPerSender = 100
	keepTotal     = 10000
)

type roomQueue struct {
	events  []*database.InboxEvent
	running bool
}

const (
	// handlerTimeout bounds one event's handling, so a stuck handler cannot block its room
	// forever.
	handlerTimeout = 2 * time.Minute
	// doneBatchSize and doneFlushInterval bound how many handled events wait to be marked done,
	// and for how long.
	doneBatchSize     = 256
	doneFlushInterval = 20 * time.Millisecond
	replayPageSize    = 500
)

func newDispatcher(svc *Service) *dispatcher {
	workers := svc.cfg.AppService.Workers
	if workers <= 0 {
		workers = 16
	}
	return &dispatcher{
		svc:         svc,
		rooms:       make(map[id.RoomID]*roomQueue),
		drained:     make(chan struct{}),
		slots:       make(chan struct{}, workers),
		done:        make(chan database.Done, doneBatchSize*4),
		flusherDone: make(chan struct{}),
		held:        make(map[int64]struct{}),
		keptBy:      make(map[id.UserID]int),

		keepPerSender: keepPerSender,
		keepTotal:     keepTotal,
	}
}

// start launches the done-flusher and replays unfinished inbox events. It takes the ingest lock
// before returning and releases it once every unfinished event is queued, so transactions that
// arrive meanwhile wait and cannot overtake older events of the same room.
func (d *dispatcher) start(ctx context.Context) error {
	d.lock.Lock()
	d.started = true
	d.lock.Unlock()
	if m := d.svc.crypto; m != nil {
		// Decryptions keep their message indexes in memory; the done marks write them in
		// their transaction (docs/ARCHITECTURE.md, "Message indexes with the done marks").
		m.DeferMessageIndexes(0)
		d.svc.db.Inbox.SetBeforeDone(m.FlushMessageIndexes)
	}
	go d.flushLoop(ctx)
	n, err := d.svc.db.Inbox.CountPending(ctx)
	if err != nil {
		return fmt.Errorf("failed to read inbox: %w", err)
	}
	if n == 0 {
		return nil
	}
	zerolog.Ctx(ctx).Info().Int("events", n).Msg("Replaying unfinished events from the inbox")
	d.svc.ingestLock.Lock()
	go func() {
		defer d.svc.ingestLock.Unlock()
		var after int64
		for {
			if err := d.waitBacklog(ctx, d.maxBacklog()); err != nil {
				return
			}
			page, err := d.svc.db.Inbox.Pending(ctx, after, replayPageSize)
			if err != nil {
				zerolog.Ctx(ctx).Error().Err(err).Msg("Failed to read inbox for replay; retrying")
				if !d.svc.sleep(ctx, time.Second) {
					return
				}
				continue
			}
			if len(page) == 0 {
				zerolog.Ctx(ctx).Info().Msg("Finished queueing inbox replay")
				return
			}
			after = page[len(page)-1].Seq
			d.enqueue(ctx, d.holdUnopened(ctx, page))
		}
	}()
	return nil
}

// holdUnopened returns the events of page whose content was opened, and records the others as
// held: they stay in the inbox, unhandled, until retryHeld opens them. Events of a room after a
// held one are handled before it; the alternative, stopping the room, would let one lost key
// stop every room it touched.
func (d *dispatcher) holdUnopened(ctx context.Context, page []*database.InboxEvent) []*database.InboxEvent {
	ready := page[:0:0]
	var held int
	for _, evt := range page {
		if evt.OpenErr == nil {
			ready = append(ready, evt)
			continue
		}
		held++
		d.lock.Lock()
		d.held[evt.Seq] = struct{}{}
		d.lock.Unlock()
		if errors.Is(evt.OpenErr, vault.ErrDecrypt) {
			// Tampered with or moved: it will never open. Still kept, for the admin to look at.
			zerolog.Ctx(ctx).Error().Err(evt.OpenErr).Int64("inbox_seq", evt.Seq).Stringer("event_id", evt.EventID).
				Msg("Inbox event fails authentication: it was changed in the database; it stays in the inbox unhandled")
		}
	}
	if held > 0 {
		zerolog.Ctx(ctx).Error().Int("events", held).
			Str("fix", "put back the vault's master key that wraps their inbox key (see 'custodian keys status'); they are retried every minute").
			Msg("Inbox events cannot be opened; they stay in the inbox and are handled once their key is back")
	}
	return ready
}

// heldSeqs returns the sequence numbers of the held inbox events.
func (d *dispatcher) heldSeqs() []int64 {
	d.lock.Lock()
	defer d.lock.Unlock()
	out := make([]int64, 0, len(d.held))
	for seq := range d.held {
		out = append(out, seq)
	}
	slices.Sort(out)
	return out
}

// retryHeld reads the held inbox events seqs again and queues those that open now. Events no
// longer in the inbox (erased) are forgotten.
func (d *dispatcher) retryHeld(ctx context.Context, seqs []int64) {
	events, err := d.svc.db.Inbox.PendingBySeq(ctx, seqs)
	if err != nil {
		zerolog.Ctx(ctx).Error().Err(err).Msg("Failed to read held inbox events; retrying later")
		return
	}
	d.lock.Lock()
	for _, seq := range seqs {
		delete(d.held, seq)
	}
	d.lock.Unlock()
	ready := d.holdUnopened(ctx, events)
	if len(ready) > 0 {
		zerolog.Ctx(ctx).Info().Int("events", len(ready)).Msg("Handling inbox events whose key is back")
		d.enqueue(ctx, ready)
	}
}

// maxBacklog returns cfg.AppService.MaxBacklog, or its default.
func (d *dispatcher) maxBacklog() int {
	if limit := d.svc.cfg.AppService.MaxBacklog; limit > 0 {
		return limit
	}
	return 10000
}

// backlogNow returns how many events are queued and not yet handled.
func (d *dispatcher) backlogNow() int {
	d.lock.Lock()
	defer d.lock.Unlock()
	return d.backlog
}

// waitBacklog blocks while limit or more events are queued. It returns ctx's error if ctx ends
// first.
func (d *dispatcher) waitBacklog(ctx context.Context, limit int) error {
	for {
		d.lock.Lock()
		if d.backlog < limit {
			d.lock.Unlock()
			return nil
		}
		ch := d.drained
		d.lock.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// enqueue queues committed inbox events for handling.
func (d *dispatcher) enqueue(ctx context.Context, events []*database.InboxEvent) {
	d.lock.Lock()
	defer d.lock.Unlock()
	for _, evt := range events {
		lane := evt.RoomID
		if evt.ToDevice {
			lane = toDeviceLane
		}
		rq, ok := d.rooms[lane]
		if !ok {
			rq = &roomQueue{}
			d.rooms[lane] = rq
		}
		rq.events = append(rq.events, evt)
		d.backlog++
		if !rq.running && !d.stopping {
			rq.running = true
			d.workers.Add(1)
			go d.runRoom(ctx, lane, rq)
		}
	}
	d.setDepthLocked()
}

// setDepthLocked sets the inbox depth gauge: the events queued, and the to-device rows left in
// the inbox for a later run, which are as unhandled. d.lock is held.
func (d *dispatcher) setDepthLocked() {
	d.svc.metrics.inboxDepth.Set(float64(d.backlog + d.kept + d.left))
}

// keepToDevice records a to-device row that stays in the inbox, unhandled, for a later run:
// encryption is enabled but this run has no olm machine. The row is not queued again in this
// run (replay and ingest queue each row once), so it costs the to-device lane nothing more; it
// counts in the inbox depth until the run ends or its sender is erased (forgetKept). The first
// one of a run is a Warn. It reports false, keeping nothing, when the row's sender already has
// keepPerSender rows kept in this run, or the run keepTotal: the caller drops the row (a Warn
// the first time in a run), so a flood cannot grow the inbox without bound.
func (d *dispatcher) keepToDevice(ctx context.Context, ie *database.InboxEvent) bool {
	d.lock.Lock()
	if d.keptBy[ie.Sender] >= d.keepPerSender || d.kept >= d.keepTotal {
		first := !d.capWarned
		d.capWarned = true
		d.lock.Unlock()
		if first {
			zerolog.Ctx(ctx).Warn().Int("per_sender", d.keepPerSender).Int("total", d.keepTotal).
				Msg("Dropping to-device events kept for a start with encryption: this run keeps no more")
		}
		return false
	}
	first := !d.keptWarned
	d.keptWarned = true
	d.keptBy[ie.Sender]++
	d.kept++
	d.setDepthLocked()
	d.lock.Unlock()
	if first {
		zerolog.Ctx(ctx).Warn().
			Str("fix", "make encryption start (see the Warn that says why it is off), then restart").
			Msg("To-device events stay in the inbox until a start with encryption: encryption is enabled, but its olm machine is missing, and they may carry room keys")
	}
	return true
}

// leaveToDevice records a to-device row left in the inbox, unhandled, for the next run because
// its erasure gate could not be checked; it counts in the inbox depth until the run ends.
func (d *dispatcher) leaveToDevice(_ *database.InboxEvent) {
	d.lock.Lock()
	defer d.lock.Unlock()
	d.left++
	d.setDepthLocked()
}

// keptToDevice returns how many to-device rows this run keeps for a later one.
func (d *dispatcher) keptToDevice() int {
	d.lock.Lock()
	defer d.lock.Unlock()
	return d.kept
}

// forgetKept stops counting the kept to-device rows of user, which their erasure deleted.
func (d *dispatcher) forgetKept(user id.UserID) {
	d.lock.Lock()
	defer d.lock.Unlock()
	d.kept -= d.keptBy[user]
	delete(d.keptBy, user)
	d.setDepthLocked()
}

// toDeviceLane is the queue key of to-device events: not a room ID (those start with "!"),
// nor the empty one of ephemeral events without a room.
const toDeviceLane = id.RoomID("\x00to-device")

func (d *dispatcher) runRoom(ctx context.Context, roomID id.RoomID, rq *roomQueue) {
	defer d.workers.Done()
	// Shutdown must not cancel a handler halfway: stop lets each room finish its current event
	// (bounded by handlerTimeout and the shutdown deadline) before the done marks are flushed.
	ctx = context.WithoutCancel(ctx)
	if roomID != toDeviceLane {
		s := &slot{d: d}
		s.acquire()
		defer s.release()
		ctx = context.WithValue(ctx, slotKey{}, s)
	}
	for {
		d.lock.Lock()
		if len(rq.events) == 0 || d.stopping {
			rq.running = false
			if len(rq.events) == 0 {
				delete(d.rooms, roomID)
			}
			d.lock.Unlock()
			return
		}
		evt := rq.events[0]
		rq.events[0] = nil
		rq.events = rq.events[1:]
		d.lock.Unlock()

		if evt.ToDevice {
			// Marked done by its own transaction, or left for a later run.
			d.svc.handleToDeviceRow(ctx, evt)
		} else {
			d.svc.handleInboxEvent(ctx, evt)
			d.done <- database.Done{TxnID: evt.TxnID, Index: evt.Index, EventID: evt.EventID}
		}

		d.lock.Lock()
		d.backlog--
		d.setDepthLocked()
		close(d.drained)
		d.drained = make(chan struct{})
		d.lock.Unlock()
	}
}

// slot is a room worker's hold on one of the dispatcher's slots. Only the worker that owns it
// uses it.
type slot struct {
	d    *dispatcher
	held bool
}

func (s *slot) acquire() {
	if !s.held {
		s.d.slots <- struct{}{}
		s.held = true
	}
}

func (s *slot) release() {
	if s.held {
		<-s.d.slots
		s.held = false
	}
}

type slotKey struct{}

// releaseSlot lets other rooms use the slot of the room worker running in ctx while it waits
// for something that does not need one (a room key), and returns the function that takes a
// slot back before the worker goes on. The room's later events wait behind it meanwhile, so
// its order is kept. Outside a room worker it does nothing.
func releaseSlot(ctx context.Context) (reacquire func()) {
	s, ok := ctx.Value(slotKey{}).(*slot)
	if !ok {
		return func() {}
	}
	s.release()
	return s.acquire
}

// flushLoop marks handled events done in batches until the dispatcher stops.
func (d *dispatcher) flushLoop(ctx context.Context) {
	defer close(d.flusherDone)
	batch := make([]database.Done, 0, doneBatchSize)
	// The flush timer alone runs on the wall clock, not the service's: it is a batching latency
	// of doneFlushInterval, invisible to users, and on a fake clock every test would have to
	// advance it after every event before the inbox reflected what was handled.
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	flush := func() {
		if len(batch) == 0 {
			return
		}
		// Keep trying: if the database is down, the events stay in the inbox and would be
		// replayed, which is safe but wasteful; there is nothing better to do with them.
		for attempt := 0; ; attempt++ {
			err := d.svc.db.Inbox.MarkDone(context.WithoutCancel(ctx), batch, d.svc.now())
			if err == nil {
				break
			}
			zerolog.Ctx(ctx).Error().Err(err).Int("events", len(batch)).Msg("Failed to mark events done; retrying")
			if attempt >= 5 {
				zerolog.Ctx(ctx).Error().Int("events", len(batch)).Msg("Giving up marking events done; they will be replayed after restart")
				break
			}
			d.svc.sleep(context.WithoutCancel(ctx), time.Duration(attempt+1)*100*time.Millisecond)
		}
		batch = batch[:0]
	}
	for {
		select {
		case item, ok := <-d.done:
			if !ok {
				flush()
				return
			}
			if len(batch) == 0 {
				timer.Reset(doneFlushInterval)
			}
			batch = append(batch, item)
			if len(batch) >= doneBatchSize {
				timer.Stop()
				flush()
			}
		case <-timer.C:
			flush()
		}
	}
}

// stop lets every room finish the event it is handling, then flushes the done marks. Queued
// events stay in the inbox for the next run.
func (d *dispatcher) stop(ctx context.Context) {
	d.lock.Lock()
	if d.stopping {
		d.lock.Unlock()
		return
	}
	d.stopping = true
	started := d.started
	d.lock.Unlock()
	if !started {
		// start failed before the dispatcher ran: nothing to wait for.
		return
	}
	finished := make(chan struct{})
	go func() {
		d.workers.Wait()
		close(finished)
	}()
	select {
	case <-finished:
		close(d.done)
		<-d.flusherDone
		if m := d.svc.crypto; m != nil {
			// Indexes of events handled but not marked done (a failed flush): not needed,
			// since those events are replayed, but cheaper than decrypting them again.
			if err := m.WriteMessageIndexes(context.WithoutCancel(ctx)); err != nil {
				zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to write pending message indexes at shutdown")
			}
		}
	case <-ctx.Done():
		zerolog.Ctx(ctx).Warn().Msg("Handlers did not finish before the shutdown deadline; their events will be replayed")
	}
}

// handleInboxEvent decodes one inbox event and runs every handler it concerns. It never fails:
// errors are logged once here, with every context field attached, and counted.
func (svc *Service) handleInboxEvent(ctx context.Context, ie *database.InboxEvent) {
	start := time.Now()
	log := zerolog.Ctx(ctx).With().
		Str("transaction_id", ie.TxnID).
		Stringer("event_id", ie.EventID).
		Stringer("room_id", ie.RoomID).
		Stringer("sender", ie.Sender).
		Logger()
	ctx = log.WithContext(ctx)
	defer func() {
		svc.metrics.eventsHandled.Inc()
		svc.metrics.handleLatency.Observe(time.Since(start).Seconds())
	}()

	evt, err := decodeEvent(ie)
	if evt == nil {
		log.Warn().Err(err).Msg("Dropping undecodable event")
		svc.metrics.handlerErrors.WithLabelValues("core").Inc()
		return
	} else if err != nil {
		log.Warn().Err(err).Msg("Event content did not parse; delivering it unparsed")
	}
	if evt.Type == event.EventEncrypted && svc.cryptoOn() && !svc.isOwnUser(evt.Sender) {
		// Before the handler timeout: waiting for the keys is bounded by encryption.key_wait.
		// An event that stays unreadable is handled as it came (handlers ignore it).
		evt = svc.decryptInboxEvent(ctx, evt)
	}
	log = log.With().Str("event_type", evt.Type.Type).Logger()
	ctx = log.WithContext(ctx)
	ctx, cancel := context.WithTimeout(ctx, handlerTimeout)
	defer cancel()

	if evt.Type.IsState() {
		// Our own members' state matters too (the bot's joins), so the cache is updated before
		// echoes are dropped.
		mautrix.UpdateStateStore(ctx, svc.stateStore, evt)
		if evt.Type == event.StateMember {
			svc.cryptoMemberEvent(ctx, evt)
		}
		if evt.Type == event.StateMember && evt.GetStateKey() == svc.as.BotMXID().String() {
			svc.botRooms.Delete(evt.RoomID)
			// Out of the room, the bot hears nothing more from it: drop its cached state, so
			// that power levels and members are read afresh if the bot is invited back.
			if evt.Content.AsMember().Membership.IsLeaveOrBan() {
				if err := svc.forgetRoomState(ctx, evt.RoomID); err != nil {
					log.Error().Err(err).Msg("Failed to drop the cached state of a room the bot left")
				}
			}
		}
	}
	if svc.isOwnUser(evt.Sender) {
		log.Trace().Msg("Dropping echo of our own event")
		return
	}
	log.Debug().Msg("Handling event")

	// Before the bot and the bridges: a redaction purges configuration they would otherwise
	// still see, and a leave may start an erasure.
	svc.runHandler(ctx, "privacy", func(ctx context.Context) error {
		return svc.handlePrivacyEvent(ctx, evt)
	})
	svc.runHandler(ctx, "bot", func(ctx context.Context) error {
		return svc.bot.handleEvent(ctx, evt)
	})
	targets := svc.routeToBridges(ctx, evt)
	if len(targets) > 0 && svc.leaveOfUserBeingErased(ctx, evt) {
		// The privacy handler just queued the erasure of a deactivated user. Their bridges undo
		// their remote presence in the erasure's own remote step (an IRC QUIT, seen by every
		// channel); relaying the leave first would make it a PART, after which nobody on IRC
		// shares a channel with the puppet to see its QUIT.
		log.Debug().Msg("Not routing the leave of a user whose erasure is queued to bridges")
		return
	}
	if len(targets) > 0 && svc.bot.carriesSecret(evt) {
		log.Debug().Msg("Not routing a message that carries a secret to bridges")
		return
	}
	if len(targets) > 0 && evt.Sender != "" {
		// A paused user's events still reach the bot (so !resume works) but no bridge.
		if paused, err := svc.db.User.IsPaused(ctx, evt.Sender); err != nil {
			log.Error().Err(err).Msg("Failed to check whether the sender paused Custodian")
		} else if paused {
			log.Debug().Msg("Not routing event of a paused user to bridges")
			return
		}
	}
	for _, target := range targets {
		br, route := target.bh.br, target.route
		bctx := log.With().Str("bridge", target.bh.id).Logger().WithContext(ctx)
		svc.runHandler(bctx, target.bh.id, func(ctx context.Context) error {
			return br.HandleEvent(ctx, evt, route)
		})
	}
}

// runHandler runs one handler, logging its error or panic once and counting it.
func (svc *Service) runHandler(ctx context.Context, module string, fn func(ctx context.Context) error) {
	defer func() {
		if p := recover(); p != nil {
			svc.metrics.handlerErrors.WithLabelValues(module).Inc()
			zerolog.Ctx(ctx).Error().
				Str("module", module).
				Str("panic", fmt.Sprint(p)).
				Bytes("stack", debug.Stack()).
				Msg("Event handler panicked")
		}
	}()
	if err := fn(ctx); err != nil {
		svc.metrics.handlerErrors.WithLabelValues(module).Inc()
		zerolog.Ctx(ctx).Error().Err(err).Str("module", module).Msg("Event handler failed")
	}
}

// routedEvent is one bridge an event is delivered to, and why.
type routedEvent struct {
	bh    *bridgeHost
	route Route
}

// routeToBridges returns the bridges an event concerns, each with its [Route]: the one whose
// ghost is the target of a membership event, and those that claimed the room.
func (svc *Service) routeToBridges(ctx context.Context, evt *event.Event) []routedEvent {
	if len(svc.bridges) == 0 {
		return nil
	}
	var out []routedEvent
	if evt.Type == event.StateMember && evt.StateKey != nil {
		ghost := id.UserID(*evt.StateKey)
		if bh := svc.bridgeForUser(ghost); bh != nil {
			out = append(out, routedEvent{bh: bh, route: Route{Ghost: ghost}})
		}
	}
	if evt.RoomID != "" {
		claims, err := svc.roomBridges(ctx, evt.RoomID)
		if err != nil {
			zerolog.Ctx(ctx).Error().Err(err).Msg("Failed to look up the room's bridges")
		}
		for _, claim := range claims {
			bh := svc.bridgeByID[claim.BridgeID]
			if bh == nil {
				continue
			}
			prov := &Provenance{Actor: claim.Actor, RoomID: evt.RoomID, EventID: claim.EventID, At: claim.CreatedAt}
			i := slices.IndexFunc(out, func(r routedEvent) bool { return r.bh == bh })
			if i < 0 {
				out = append(out, routedEvent{bh: bh, route: Route{Claim: prov}})
			} else {
				out[i].route.Claim = prov
			}
		}
	}
	return out
}

// decodeEvent parses an inbox event the way mautrix's own appservice handler does, setting the
// type class and parsing the content.
func decodeEvent(ie *database.InboxEvent) (*event.Event, error) {
	var evt event.Event
	if err := json.Unmarshal(ie.JSON, &evt); err != nil {
		return nil, fmt.Errorf("failed to decode event: %w", err)
	}
	switch {
	case ie.ToDevice:
		evt.Mautrix.EventSource = event.SourceToDevice
		evt.Type.Class = event.ToDeviceEventType
	case ie.Ephemeral:
		evt.Mautrix.EventSource = event.SourceEphemeral
		evt.Type.Class = event.EphemeralEventType
		if evt.RoomID == "" {
			evt.RoomID = ie.RoomID
		}
	case evt.StateKey != nil:
		evt.Mautrix.EventSource = event.SourceTimeline
		evt.Type.Class = event.StateEventType
	default:
		evt.Mautrix.EventSource = event.SourceTimeline
		evt.Type.Class = event.MessageEventType
	}
	// Unsupported types keep only their raw content, which bridges may still read; content that
	// fails to parse is reported but the event is still delivered, with Parsed left nil.
	err := evt.Content.ParseRaw(evt.Type)
	if errors.Is(err, event.ErrUnsupportedContentType) {
		err = nil
	}
	return &evt, err
}

// leaveOfUserBeingErased reports whether evt is a user's own leave while an erasure of theirs
// is queued and has not run yet (as after a deactivation the homeserver confirmed).
func (svc *Service) leaveOfUserBeingErased(ctx context.Context, evt *event.Event) bool {
	if evt.Type != event.StateMember || evt.StateKey == nil || *evt.StateKey != evt.Sender.String() {
		return false
	}
	if content, ok := evt.Content.Parsed.(*event.MemberEventContent); !ok || content.Membership != event.MembershipLeave {
		return false
	}
	pending, err := svc.engine.Store().HasPendingErasure(ctx, evt.Sender)
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to check for a pending erasure; routing the leave")
		return false
	}
	return pending
}

package appservice

import (
	"context"
	"maps"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

const (
	// keyRequestWorkers is how many room key requests are answered at once.
	keyRequestWorkers = 2
	// keyRequestQueue bounds the room key requests waiting for a worker; more are dropped
	// (clients ask again).
	keyRequestQueue = 256
)

// keyRequestJob is a room key request taken from the to-device lane, or an olm session to
// unwedge.
type keyRequestJob struct {
	sender id.UserID
	// arrived is when its inbox row was received: the worker's gate check judges by it.
	arrived time.Time
	// content is the room key request; nil for an unwedge.
	content *event.RoomKeyRequestEventContent
	// senderKey is, for an unwedge, the identity key of the sender's device whose olm message
	// could not be decrypted.
	senderKey id.SenderKey
	log       zerolog.Logger
}

// keyRequestPool answers room key requests off the to-device lane, so that a request whose
// device lookup hangs holds up neither room keys nor other requests beyond its worker:
// keyRequestWorkers workers (started with the service, stopped with it) take them from a queue
// of at most keyRequestQueue. The zero value is not ready; see newKeyRequestPool.
type keyRequestPool struct {
	queue chan keyRequestJob

	lock sync.Mutex
	// pending counts the requests queued or being answered; idle is closed and replaced
	// whenever it drops to zero. Guarded by lock.
	pending int
	idle    chan struct{}
}

func newKeyRequestPool() *keyRequestPool {
	return &keyRequestPool{queue: make(chan keyRequestJob, keyRequestQueue), idle: make(chan struct{})}
}

// enqueue queues job, or drops it with a Debug and the events_received metric's
// key_request_dropped label when the queue is full.
func (p *keyRequestPool) enqueue(ctx context.Context, svc *Service, job keyRequestJob) {
	job.log = *zerolog.Ctx(ctx)
	p.lock.Lock()
	p.pending++
	p.lock.Unlock()
	select {
	case p.queue <- job:
	default:
		p.finished()
		svc.metrics.eventsReceived.WithLabelValues("key_request_dropped").Inc()
		zerolog.Ctx(ctx).Debug().Msg("Dropping a room key request or an unwedge: too many are waiting for a worker")
	}
}

// finished records the end of one pending request.
func (p *keyRequestPool) finished() {
	p.lock.Lock()
	defer p.lock.Unlock()
	p.pending--
	if p.pending == 0 {
		close(p.idle)
		p.idle = make(chan struct{})
	}
}

// state returns the requests pending and a channel closed when they next drop to zero.
func (p *keyRequestPool) state() (int, <-chan struct{}) {
	p.lock.Lock()
	defer p.lock.Unlock()
	return p.pending, p.idle
}

// olmSenderEntries bounds the olm senders an olmSenders remembers.
const olmSenderEntries = 256

// olmSenders remembers who sent the last olm messages the lane handled, by sender key: the olm
// machine asks to unwedge a session by sender key alone, from its own goroutine, after the lane
// has moved on. At most olmSenderEntries are kept; the oldest noted is forgotten first (its
// unwedge, if one is asked for, is dropped: the sender's client makes a new session itself
// when the bot's messages fail). Safe for concurrent use; the zero value is ready.
type olmSenders struct {
	lock  sync.Mutex
	items map[id.SenderKey]olmSender
	// order holds the notes, oldest first; a key noted again appears twice, and only the note
	// whose seq its item holds is current.
	order []olmNote
	seq   uint64
}

type olmSender struct {
	sender  id.UserID
	arrived time.Time
	seq     uint64
}

type olmNote struct {
	key id.SenderKey
	seq uint64
}

// note records that an olm message from sender under senderKey, received at arrived, is being
// handled.
func (o *olmSenders) note(senderKey id.SenderKey, sender id.UserID, arrived time.Time) {
	o.lock.Lock()
	defer o.lock.Unlock()
	if o.items == nil {
		o.items = make(map[id.SenderKey]olmSender)
	}
	o.seq++
	o.items[senderKey] = olmSender{sender: sender, arrived: arrived, seq: o.seq}
	o.order = append(o.order, olmNote{key: senderKey, seq: o.seq})
	for len(o.items) > olmSenderEntries || len(o.order) > 2*olmSenderEntries {
		oldest := o.order[0]
		o.order = o.order[1:]
		if item, ok := o.items[oldest.key]; ok && item.seq == oldest.seq {
			delete(o.items, oldest.key)
		}
	}
}

// take returns and forgets who sent the last olm message noted under senderKey.
func (o *olmSenders) take(senderKey id.SenderKey) (olmSender, bool) {
	o.lock.Lock()
	defer o.lock.Unlock()
	s, ok := o.items[senderKey]
	delete(o.items, senderKey)
	return s, ok
}

// forgetUser drops every note of user (after their erasure). Their notes stay in order
// until they leave it, as stale ones do.
func (o *olmSenders) forgetUser(user id.UserID) {
	o.lock.Lock()
	defer o.lock.Unlock()
	maps.DeleteFunc(o.items, func(_ id.SenderKey, s olmSender) bool { return s.sender == user })
}

// requestUnwedge queues the unwedging of the session with the device of senderKey (see
// [e2ee.Machine.SetUnwedgeHandler]; called on a goroutine of the olm machine). The sender is the
// one the lane noted for the key; a key no longer noted is dropped.
func (svc *Service) requestUnwedge(senderKey id.SenderKey) {
	log := svc.log.With().Str("component", "crypto").Logger()
	ctx := log.WithContext(context.Background())
	sender, ok := svc.olmSenders.take(senderKey)
	if !ok {
		log.Debug().Msg("Not unwedging an olm session: its sender is no longer known")
		return
	}
	svc.keyRequests.enqueue(ctx, svc, keyRequestJob{sender: sender.sender, arrived: sender.arrived, senderKey: senderKey})
}

// unwedgeSession runs an unwedge job (see [e2ee.Machine.Unwedge]) within keyRequestTimeout, on
// the service's clock. The sender's device is fetched when missing from the store, unless a
// fetch from their server failed less than a minute ago (as the lane skips it). The core's own
// lines name no user; mautrix's lines of the key claim and the send name the device's owner,
// as on every key share, never next to an erasure's hash.
func (svc *Service) unwedgeSession(ctx context.Context, job keyRequestJob) {
	detached, cancel := context.WithTimeout(job.log.WithContext(context.Background()), keyRequestTimeout)
	defer cancel()
	stop := context.AfterFunc(ctx, cancel)
	defer stop()
	fetch := !svc.senderFetchFailed.skip(job.sender.Homeserver(), svc.now())
	sent, err := svc.crypto.Unwedge(detached, job.sender, job.senderKey, svc.now(), fetch)
	switch {
	case err != nil:
		job.log.Debug().Err(err).Msg("Failed to unwedge an olm session")
	case sent:
		job.log.Debug().Msg("Sent a dummy event over a new olm session to unwedge a broken one")
	}
}

// startKeyRequestWorkers starts the workers answering room key requests; they end when ctx
// ends (stopServing cancels it and waits for them). Requests still queued then are lost,
// which is harmless: clients ask again.
func (svc *Service) startKeyRequestWorkers(ctx context.Context) {
	for range keyRequestWorkers {
		svc.goBackground(ctx, svc.keyRequestWorker)
	}
}

// keyRequestWorker answers queued room key requests, and runs queued unwedges, until ctx ends.
// Each takes the sender's gate stripe and checks the gate again by the request's arrival (an erasure may have been
// recorded since the lane let it through), then answers (handleKeyRequest, within
// keyRequestTimeout) under the stripe; a gated sender or a failed check gets no answer.
func (svc *Service) keyRequestWorker(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case job := <-svc.keyRequests.queue:
			svc.answerKeyRequest(ctx, job)
			svc.keyRequests.finished()
		}
	}
}

// answerKeyRequest answers one queued request, or runs one unwedge, under its sender's gate
// stripe.
func (svc *Service) answerKeyRequest(ctx context.Context, job keyRequestJob) {
	ctx = job.log.WithContext(ctx)
	defer svc.erasureGate.lock(job.sender)()
	gated, err := svc.toDeviceSenderGated(ctx, job.sender, job.arrived)
	if err != nil {
		job.log.Warn().Err(err).Msg("Failed to check the erasure gate; not answering a room key request or unwedging")
		return
	} else if gated {
		job.log.Debug().Msg("Not answering a room key request or unwedging: its sender's erasure is pending or recent")
		return
	}
	if job.content == nil {
		svc.unwedgeSession(ctx, job)
		return
	}
	svc.handleKeyRequest(ctx, job.sender, job.content)
}

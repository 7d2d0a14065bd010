package appservice

import (
	"context"
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

// keyRequestJob is a room key request taken from the to-device lane.
type keyRequestJob struct {
	sender id.UserID
	// arrived is when its inbox row was received: the worker's gate check judges by it.
	arrived time.Time
	content *event.RoomKeyRequestEventContent
	log     zerolog.Logger
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
		zerolog.Ctx(ctx).Debug().Msg("Dropping a room key request: too many are waiting to be answered")
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

// startKeyRequestWorkers starts the workers answering room key requests; they end when ctx
// ends (stopServing cancels it and waits for them). Requests still queued then are lost,
// which is harmless: clients ask again.
func (svc *Service) startKeyRequestWorkers(ctx context.Context) {
	for range keyRequestWorkers {
		svc.goBackground(ctx, svc.keyRequestWorker)
	}
}

// keyRequestWorker answers queued room key requests until ctx ends. Each takes the sender's
// gate stripe and checks the gate again by the request's arrival (an erasure may have been
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

// answerKeyRequest answers one queued request under its sender's gate stripe.
func (svc *Service) answerKeyRequest(ctx context.Context, job keyRequestJob) {
	ctx = job.log.WithContext(ctx)
	defer svc.erasureGate.lock(job.sender)()
	gated, err := svc.toDeviceSenderGated(ctx, job.sender, job.arrived)
	if err != nil {
		job.log.Warn().Err(err).Msg("Failed to check the erasure gate; not answering a room key request")
		return
	} else if gated {
		job.log.Debug().Msg("Not answering a room key request: its sender's erasure is pending or recent")
		return
	}
	svc.handleKeyRequest(ctx, job.sender, job.content)
}

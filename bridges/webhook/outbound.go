package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/format"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice"
	"github.com/custodian-matrix/custodian/appservice/vault"
	"github.com/custodian-matrix/custodian/bridges/webhook/webhookdb"
	"github.com/custodian-matrix/custodian/bridges/webhook/webhookid"
)

// SignatureHeader is the header that carries an outbound delivery's signature:
// "sha256=" followed by the lowercase hex HMAC-SHA256 of the request body, keyed with the hook's
// signing secret (its text, as shown to the hook's creator).
const SignatureHeader = "X-Custodian-Signature"

// Sign returns the SignatureHeader value for body under secret.
func Sign(secret string, body []byte) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// delivery is one message (or deletion notice) waiting to be POSTed to one outbound hook.
type delivery struct {
	eventID id.EventID
	sender  id.UserID
	body    []byte
	// dropped is set when the sender was erased while the delivery was in flight.
	dropped atomic.Bool
}

// deliveryQueue is one outbound hook's bounded queue, drained in order by one worker goroutine.
type deliveryQueue struct {
	hookID string
	roomID id.RoomID

	lock    sync.Mutex
	items   []*delivery
	current *delivery     // being delivered
	wake    chan struct{} // signalled when an item is added
	stop    chan struct{} // closed when the hook is removed
	once    sync.Once
}

func (q *deliveryQueue) pop() *delivery {
	q.lock.Lock()
	defer q.lock.Unlock()
	q.current = nil
	if len(q.items) == 0 {
		return nil
	}
	d := q.items[0]
	q.items[0] = nil
	q.items = q.items[1:]
	q.current = d
	return d
}

func (q *deliveryQueue) close() {
	q.once.Do(func() {
		q.lock.Lock()
		q.items = nil
		q.lock.Unlock()
		close(q.stop)
	})
}

// enqueue queues d for hook and starts the hook's worker if needed. If the queue is full (or the
// bridge is stopping), d is dropped and the drop is recorded on the hook for !webhook list.
func (br *Bridge) enqueue(ctx context.Context, hook *webhookdb.Hook, d *delivery) {
	if br.runCtx.Err() != nil {
		return
	}
	br.queuesLock.Lock()
	q, ok := br.queues[hook.ID]
	if !ok {
		q = &deliveryQueue{hookID: hook.ID, roomID: hook.RoomID, wake: make(chan struct{}, 1), stop: make(chan struct{})}
		br.queues[hook.ID] = q
		br.workers.Add(1)
		go br.runQueue(q)
	}
	br.queuesLock.Unlock()

	q.lock.Lock()
	full := len(q.items) >= br.cfg.Outbound.QueueSize
	if !full {
		q.items = append(q.items, d)
	}
	q.lock.Unlock()
	if full {
		zerolog.Ctx(ctx).Warn().Str("hook_id", hook.ID).Msg("Outbound webhook queue is full; dropping message")
		if err := br.db.Hook.AddDropped(ctx, hook.ID, 1, br.clock.Now(), "queue full: the receiver is too slow or down"); err != nil {
			zerolog.Ctx(ctx).Err(err).Str("hook_id", hook.ID).Msg("Failed to record dropped message")
		}
		return
	}
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// stopQueue stops hookID's worker and drops the messages waiting in its queue.
func (br *Bridge) stopQueue(hookID string) {
	br.queuesLock.Lock()
	q := br.queues[hookID]
	delete(br.queues, hookID)
	br.queuesLock.Unlock()
	if q != nil {
		q.close()
	}
}

// dropQueuedFrom removes every queued message sent by userID, from every queue, stops retrying
// the ones in flight, and returns how many it dropped.
func (br *Bridge) dropQueuedFrom(userID id.UserID) int {
	br.queuesLock.Lock()
	queues := make([]*deliveryQueue, 0, len(br.queues))
	for _, q := range br.queues {
		queues = append(queues, q)
	}
	br.queuesLock.Unlock()
	dropped := 0
	for _, q := range queues {
		q.lock.Lock()
		kept := q.items[:0]
		for _, d := range q.items {
			if d.sender == userID {
				dropped++
				continue
			}
			kept = append(kept, d)
		}
		clear(q.items[len(kept):])
		q.items = kept
		if q.current != nil && q.current.sender == userID {
			q.current.dropped.Store(true)
			dropped++
		}
		q.lock.Unlock()
	}
	return dropped
}

// runQueue is one outbound hook's worker: it delivers queued messages one at a time, in order,
// until the hook is gone or the bridge stops.
func (br *Bridge) runQueue(q *deliveryQueue) {
	defer br.workers.Done()
	ctx := zerolog.Ctx(br.runCtx).With().Str("hook_id", q.hookID).Stringer("room_id", q.roomID).Logger().WithContext(br.runCtx)
	for {
		d := q.pop()
		if d == nil {
			select {
			case <-q.wake:
				continue
			case <-q.stop:
				return
			case <-ctx.Done():
				return
			}
		}
		if !br.deliver(ctx, q, d) {
			br.stopQueue(q.hookID)
			return
		}
	}
}

// attemptResult is the outcome of one delivery attempt. reason is a fixed description, safe to
// store and show: it never holds an error string, which could quote the URL.
type attemptResult struct {
	ok         bool
	status     int
	reason     string
	retry      bool
	retryAfter time.Duration
	// vault says why the hook's secrets could not be opened; vaultOpened if they were.
	vault vaultProblem
}

// vaultProblem is why an outbound hook's sealed URL and signing secret could not be opened.
type vaultProblem int

const (
	vaultOpened vaultProblem = iota
	// vaultDisabled: no master key is configured at all (appservice.ErrVaultDisabled).
	vaultDisabled
	// vaultKeyUnavailable: the master key that wraps the owner's data key is missing or wrong
	// (vault.ErrKeyUnavailable); the values open again if it comes back.
	vaultKeyUnavailable
	// vaultUnopenable: the values are lost (vault.ErrDecrypt, or any other failure).
	vaultUnopenable
)

// deliver POSTs d to q's hook, retrying with backoff up to outbound.max_attempts times. Before
// every attempt it reads the hook again, so a hook removed or suspended meanwhile (a redaction,
// !webhook remove, an erasure, its owner's loss of the right to it) gets nothing more, and
// checks that the owner is still a member with the power level to configure webhooks, or
// suspends the hook. It returns false if the hook is gone or the queue was
// stopped, true when the worker should go on with the next message.
func (br *Bridge) deliver(ctx context.Context, q *deliveryQueue, d *delivery) bool {
	log := zerolog.Ctx(ctx).With().Stringer("event_id", d.eventID).Logger()
	maxAttempts := br.cfg.Outbound.MaxAttempts
	for attempt := 1; ; attempt++ {
		if d.dropped.Load() {
			log.Debug().Msg("Sender was erased; dropping delivery")
			return true
		}
		var result attemptResult
		hook, err := br.db.Hook.GetActive(ctx, q.hookID)
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return false
			}
			log.Err(err).Msg("Failed to read outbound webhook before delivery")
			result = attemptResult{reason: "internal error", retry: true}
		case hook == nil || hook.Kind != webhookdb.KindOutbound:
			log.Debug().Msg("Outbound webhook is gone; dropping its queue")
			return false
		case !hook.SuspendedAt.IsZero():
			log.Debug().Msg("Outbound webhook is suspended; dropping its queue")
			return false
		default:
			// The owner must still be a member with the power level, whatever events the
			// bridge missed: otherwise the hook is suspended and this message not sent.
			allowed, err := br.host.MayConfigureRoom(ctx, hook.RoomID, hook.Actor, outboundCommand)
			if err != nil {
				if ctx.Err() != nil {
					return false
				}
				log.Warn().Err(err).Msg("Failed to check the outbound webhook's owner before delivery")
				result = attemptResult{reason: "could not check that the owner may still receive this room's messages", retry: true}
				break
			} else if !allowed {
				br.suspend(ctx, hook, suspendedNoRights, d.eventID)
				return false
			}
			if paused, err := br.host.IsPaused(ctx, hook.Actor); err == nil && paused {
				log.Debug().Msg("Outbound webhook's owner paused Custodian; not delivering")
				return true
			}
			start := time.Now()
			result = br.attempt(ctx, hook, d)
			if ctx.Err() != nil {
				return false
			}
			br.trackVaultEpisode(ctx, hook, d, result.vault)
			log.Debug().Int("attempt", attempt).Int("status", result.status).Bool("ok", result.ok).
				Str("reason", result.reason).Dur("duration", time.Since(start)).Msg("Outbound webhook delivery attempt")
			now := br.clock.Now()
			if result.ok {
				err = br.db.Hook.RecordSuccess(ctx, hook.ID, now)
			} else {
				err = br.db.Hook.RecordFailure(ctx, hook.ID, now, result.reason)
			}
			if err != nil && ctx.Err() == nil {
				log.Err(err).Msg("Failed to record outbound webhook delivery status")
			}
			if result.ok {
				return true
			}
		}
		if !result.retry || attempt >= maxAttempts {
			log.Warn().Int("attempts", attempt).Int("status", result.status).Str("reason", result.reason).
				Msg("Giving up delivering message to outbound webhook")
			return true
		}
		if !br.wait(ctx, q, br.backoff(attempt, result.retryAfter)) {
			return false
		}
	}
}

// wait waits d on the bridge's clock. It reports false if the queue was stopped or the bridge
// is stopping meanwhile.
func (br *Bridge) wait(ctx context.Context, q *deliveryQueue, d time.Duration) bool {
	timer := br.clock.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C():
		return true
	case <-q.stop:
		return false
	case <-ctx.Done():
		return false
	}
}

// backoff returns the wait after failed attempt number attempt (1-based): min_backoff doubled
// per earlier retry, capped at max_backoff, less a random part of up to half ("equal jitter"),
// but at least what the receiver asked for in Retry-After (itself capped at max_backoff).
func (br *Bridge) backoff(attempt int, retryAfter time.Duration) time.Duration {
	minB, maxB := br.cfg.Outbound.MinBackoff, br.cfg.Outbound.MaxBackoff
	wait := minB
	for i := 1; i < attempt && wait < maxB; i++ {
		wait *= 2
	}
	wait = min(wait, maxB)
	half := wait / 2
	wait = half + time.Duration(float64(wait-half)*br.jitter())
	return max(wait, min(retryAfter, maxB))
}

// attempt makes one delivery attempt. The URL and signing secret are opened from the vault for
// the attempt only and not kept.
func (br *Bridge) attempt(ctx context.Context, hook *webhookdb.Hook, d *delivery) attemptResult {
	store := br.host.Vault()
	target, err := store.Open(ctx, hook.Actor, webhookid.SecretNameOutboundURL(hook.ID), hook.OutboundURL)
	if err != nil {
		return vaultFailure(ctx, err)
	}
	secret, err := store.Open(ctx, hook.Actor, webhookid.SecretNameSigningSecret(hook.ID), hook.SigningSecret)
	if err != nil {
		return vaultFailure(ctx, err)
	}
	attemptCtx, cancel := context.WithTimeout(ctx, br.cfg.Outbound.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(attemptCtx, http.MethodPost, target.Reveal(), bytes.NewReader(d.body))
	if err != nil {
		return attemptResult{reason: "the stored URL is not valid"}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "Custodian-Webhook/1")
	req.Header.Set(SignatureHeader, Sign(secret.Reveal(), d.body))
	req.Header.Set("X-Custodian-Hook-ID", hook.ID)
	req.Header.Set("X-Custodian-Event-ID", string(d.eventID))
	resp, err := br.client.Do(req)
	if err != nil {
		reason, retry := classifyDeliveryError(err)
		return attemptResult{reason: reason, retry: retry}
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, br.cfg.Outbound.MaxResponseBytes))
	result := attemptResult{status: resp.StatusCode}
	switch code := resp.StatusCode; {
	case code >= 200 && code < 300:
		result.ok = true
	case code >= 300 && code < 400:
		result.reason = fmt.Sprintf("HTTP %d (redirects are followed only with 307 and 308)", code)
	case code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500:
		result.reason = fmt.Sprintf("HTTP %d", code)
		result.retry = true
		if seconds, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && seconds > 0 {
			result.retryAfter = time.Duration(seconds) * time.Second
		}
	default:
		result.reason = fmt.Sprintf("HTTP %d", code)
	}
	return result
}

func vaultFailure(ctx context.Context, err error) attemptResult {
	switch {
	case errors.Is(err, appservice.ErrVaultDisabled):
		return attemptResult{reason: "the credential vault is not configured, so the URL cannot be opened", vault: vaultDisabled}
	case errors.Is(err, vault.ErrKeyUnavailable):
		// The vault has logged what the administrator must do; the value opens again once the
		// key is back.
		return attemptResult{reason: "the credential vault's master key is unavailable; ask the administrator", vault: vaultKeyUnavailable}
	default:
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to open outbound webhook secrets")
		return attemptResult{reason: "the stored URL cannot be opened; remove the webhook and set it up again", vault: vaultUnopenable}
	}
}

// trackVaultEpisode tells the hook's owner, once per episode, in their direct chat with the bot,
// that the hook is disabled because its secrets cannot be opened, and what to do. An episode
// starts at the first delivery whose secrets do not open and ends at the first whose secrets
// open again (or when the owner rotates the hook); it is recorded in the hook's row, so neither
// later messages nor a restart bring a second notice. Deliveries of one hook run in one worker,
// so nothing else changes the record meanwhile.
func (br *Bridge) trackVaultEpisode(ctx context.Context, hook *webhookdb.Hook, d *delivery, problem vaultProblem) {
	log := zerolog.Ctx(ctx)
	if problem == vaultOpened {
		if !hook.VaultNoticeAt.IsZero() {
			if err := br.db.Hook.SetVaultNotice(ctx, hook.ID, time.Time{}); err != nil {
				log.Err(err).Msg("Failed to clear the record of the outbound webhook's vault notice")
				return
			}
			log.Info().Msg("Outbound webhook's secrets open again")
		}
		return
	}
	if !hook.VaultNoticeAt.IsZero() {
		return
	}
	// Derived from the first failed delivery's event: if the worker runs it again after a
	// crash, the homeserver posts the notice once.
	if err := br.sendPrivately(ctx, hook.Actor, vaultNoticeMessage(hook, problem), d.eventID, "vault-notice-"+hook.ID); err != nil {
		// Not recorded, so the next message tries again.
		log.Warn().Err(err).Stringer("owner", hook.Actor).
			Msg("Failed to tell the outbound webhook's owner that its secrets cannot be opened")
		return
	}
	if err := br.db.Hook.SetVaultNotice(ctx, hook.ID, br.clock.Now()); err != nil {
		log.Err(err).Msg("Failed to record the outbound webhook's vault notice")
		return
	}
	hook.VaultNoticeAt = br.clock.Now()
	log.Info().Stringer("owner", hook.Actor).Msg("Told the outbound webhook's owner that its secrets cannot be opened")
}

// vaultNoticeMessage is the private notice trackVaultEpisode sends: which hook in which room is
// disabled, why, and what to do.
func vaultNoticeMessage(hook *webhookdb.Hook, problem vaultProblem) string {
	// The bridge does not know the room's command prefix outside a command; "!" is the default.
	relink := fmt.Sprintf("send %s in that room, then %s with the URL",
		format.SafeMarkdownCode("!webhook remove "+hook.Name), format.SafeMarkdownCode("!webhook out <url> "+hook.Name))
	msg := fmt.Sprintf("Your outgoing webhook **%s** (ID %s) in %s is disabled: I cannot open its stored URL and "+
		"signing secret, so I am not sending that room's messages to it.\n\n",
		hook.Name, format.SafeMarkdownCode(hook.ID), roomLink(hook.RoomID))
	switch problem {
	case vaultKeyUnavailable:
		msg += "The master key of Custodian's credential vault is missing or wrong; its administrator has been told. " +
			"If they restore it, deliveries resume by themselves. To use the webhook again without waiting, " +
			"set it up again: " + relink + "."
	case vaultDisabled:
		msg += "This Custodian no longer has a credential vault configured. Ask its administrator to set one up " +
			"(`vault.key_file`), then set the webhook up again: " + relink + "."
	default:
		msg += "The stored values can no longer be opened. To use the webhook again, set it up again: " + relink + "."
	}
	return msg
}

// classifyDeliveryError turns a transport error into a fixed description and whether to retry.
// The error itself is never stored or logged: net/http's errors quote the URL.
func classifyDeliveryError(err error) (reason string, retry bool) {
	var dnsErr *net.DNSError
	var netErr net.Error
	var certErr *tls.CertificateVerificationError
	var unknownAuthority x509.UnknownAuthorityError
	var hostnameErr x509.HostnameError
	switch {
	case errors.Is(err, errTargetNotAllowed):
		return "the target address is not public, and this Custodian does not allow private targets", false
	case errors.Is(err, errTooManyRedirects):
		return "too many redirects", false
	case errors.Is(err, errBadRedirect):
		return "redirected to a URL that is not http or https", false
	case errors.Is(err, context.Canceled):
		return "cancelled", false
	case errors.As(err, &certErr), errors.As(err, &unknownAuthority), errors.As(err, &hostnameErr):
		return "the receiver's TLS certificate was not accepted", false
	case errors.As(err, &dnsErr):
		return "the host name could not be resolved", true
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return "timed out", true
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused", true
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset", true
	default:
		return "connection failed", true
	}
}

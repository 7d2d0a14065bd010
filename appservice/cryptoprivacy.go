package appservice

import (
	"context"
	"fmt"
	"hash/maphash"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/e2ee"
	"github.com/custodian-matrix/custodian/appservice/privacy"
	"github.com/custodian-matrix/custodian/appservice/vault"
)

// cryptoKeyReplacer is the vault's replacement of the crypto key ([vault.Vault.ReplaceCryptoKey]).
type cryptoKeyReplacer interface {
	ReplaceCryptoKey(ctx context.Context, repickle func(ctx context.Context, oldKey, newKey []byte) error) (bool, error)
}

var _ cryptoKeyReplacer = (*vault.Vault)(nil)

// evictOlmSessions drops the olm sessions the bot's crypto store keeps in memory and empties its
// decryption cache, after an erasure deleted some of their rows from the database. It does
// nothing while encryption is off.
func (svc *Service) evictOlmSessions() {
	svc.cryptoKeyLock.Lock()
	defer svc.cryptoKeyLock.Unlock()
	if svc.crypto != nil {
		svc.crypto.EvictOlmSessions()
		svc.crypto.Evict()
	}
}

// evictCryptoCache empties the bot's decryption cache ([e2ee.Machine.Evict]) after a change to
// the crypto tables that did not go through the machine. It does nothing while encryption is
// off.
func (svc *Service) evictCryptoCache() {
	svc.cryptoKeyLock.Lock()
	defer svc.cryptoKeyLock.Unlock()
	if svc.crypto != nil {
		svc.crypto.Evict()
	}
}

// replaceCryptoKey replaces the vault's crypto key (the crypto store's pickle key) after an
// erasure (vault.shred_backups) and re-pickles every pickled crypto row under it, in one
// transaction. With encryption on, the bot's store waits meanwhile and then uses the new key;
// a store being opened (cryptoKeyLock) is waited for.
// Once the shredder retires the old master key, a backup taken before the erasure holds the
// crypto rows under a pickle key that no key Custodian holds unwraps, so the erased user's olm
// and megolm sessions in it stay closed (invariant 2). Without a vault or a crypto key it does
// nothing.
func (svc *Service) replaceCryptoKey(ctx context.Context) error {
	v, ok := svc.vault.(cryptoKeyReplacer)
	if !ok || svc.vault == nil {
		return nil
	}
	svc.cryptoKeyLock.Lock()
	defer svc.cryptoKeyLock.Unlock()
	start := time.Now()
	var res e2ee.RepickleResult
	var replaced bool
	var err error
	if svc.crypto != nil {
		res, err = svc.crypto.ReplacePickleKey(ctx, func(ctx context.Context, repickle func(ctx context.Context, oldKey, newKey []byte) error) error {
			var replaceErr error
			replaced, replaceErr = v.ReplaceCryptoKey(ctx, repickle)
			return replaceErr
		})
	} else {
		replaced, err = v.ReplaceCryptoKey(ctx, func(ctx context.Context, oldKey, newKey []byte) error {
			var repickleErr error
			res, repickleErr = e2ee.Repickle(ctx, svc.rawDB, oldKey, newKey)
			return repickleErr
		})
	}
	if err != nil {
		return err
	}
	if !replaced {
		return nil
	}
	log := zerolog.Ctx(ctx)
	log.Info().Int("repickled", res.Repickled).Int("unreadable", res.Unreadable).Dur("duration", time.Since(start)).
		Msg("Replaced the crypto store's pickle key and re-pickled its rows under it")
	if res.Unreadable > 0 {
		log.Warn().Int("unreadable", res.Unreadable).
			Msg("Some crypto store rows did not open with the old pickle key and were left as they were")
	}
	return nil
}

// erasureQuietPeriod is how long after the cleanup of an erasure of a user ended (its receipt
// sent and its scrub done) their to-device events are still dropped and their key requests
// refused; during the cleanup they are, too (see erasureQuietUntil). An erasure's receipt in an
// encrypted room makes the user's clients ask for its room key and retry, and Synapse retries a
// failed transaction, so to-device traffic caused by the erasure itself keeps coming for a
// while; handled, it would fetch and store the user's devices and olm sessions again. After the
// period, traffic from the user is a new interaction and is handled as any other. The erasure's
// final scrub runs a period after the cleanup's last scrub (see scrubAfterErasure) and deletes
// what a racing goroutine (a device-list fetch, a late key request) wrote about the user
// meanwhile.
const erasureQuietPeriod = 5 * time.Minute

// gateStripes is the number of locks of an [erasureGate]: users share them by hash, so memory
// stays bounded whoever writes.
const gateStripes = 64

// gateSeed keys the stripe hash with a random per-process seed, so nobody can pick user IDs
// that land on a victim's stripe.
var gateSeed = maphash.MakeSeed()

// erasureGate holds one lock per stripe of users. The to-device lane holds a sender's lock from
// its gate check ([Service.toDeviceSenderGated]) through the commit of what the event changed,
// device fetches included; a key request worker holds it from its own gate check through the
// answer; an erasure holds it around the deletion of the user's rows
// ([engineHost.LockForErasure]). So an event either committed before the erasure deleted its
// rows, or checked the gate after the erasure was recorded and was dropped. The zero value is
// ready.
type erasureGate struct {
	stripes [gateStripes]sync.Mutex

	// held, if set, is called while the to-device lane holds a sender's lock, right after its
	// gate check let the event through (tests).
	held func(user id.UserID)
	// waiting, if set, is called when an erasure is about to take a user's lock (tests).
	waiting func(user id.UserID)
	// acquired, if set, is called once an erasure holds a user's lock (tests).
	acquired func(user id.UserID)
	// checkFails, if set, makes the gate check of user fail with the error it returns, if any
	// (tests).
	checkFails func(user id.UserID) error
}

// stripe returns the index of user's stripe.
func (g *erasureGate) stripe(user id.UserID) int {
	return int(maphash.String(gateSeed, string(user)) % gateStripes)
}

// lock takes user's stripe and returns its unlock.
func (g *erasureGate) lock(user id.UserID) (unlock func()) {
	mu := &g.stripes[g.stripe(user)]
	mu.Lock()
	return mu.Unlock
}

var _ privacy.ErasureLocker = engineHost{}

// LockForErasure implements [privacy.ErasureLocker]: the erasure of user waits for a to-device
// event of theirs being handled, and keeps the next out until its transaction ended.
func (h engineHost) LockForErasure(_ context.Context, user id.UserID, _ []string) func() {
	if hook := h.svc.erasureGate.waiting; hook != nil {
		hook(user)
	}
	unlock := h.svc.erasureGate.lock(user)
	if hook := h.svc.erasureGate.acquired; hook != nil {
		hook(user)
	}
	return unlock
}

// gatedForever is the end of the gate of a user whose erasure is unfinished: no time ends it.
var gatedForever = time.Unix(1<<62, 0)

// erasureQuietUntil returns the time until which to-device traffic of user is gated (see
// toDeviceSenderGated), and whether one exists. While an erasure of user is unfinished it is
// gatedForever, a time after every other: one is pending (any scope; the job names the user),
// or one whose scope covers the crypto store is in cleanup (its receipt, leaving the rooms, its
// scrubs; the job is found by the user's keyed hash through its tombstone). Otherwise it is the
// latest end of the cleanup of such an erasure (its job's finish time, or the tombstone's time
// once the job's row is gone) plus erasureQuietPeriod. It may lie in the past: an event that
// arrived before it is still gated. It logs nothing: the caller's logger may name user.
func (svc *Service) erasureQuietUntil(ctx context.Context, user id.UserID) (time.Time, bool, error) {
	if user == "" {
		return time.Time{}, false, nil
	}
	pending, err := svc.engine.Store().HasPendingErasure(ctx, user)
	if err != nil {
		return time.Time{}, false, err
	} else if pending {
		return gatedForever, true, nil
	}
	hash, _, err := svc.engine.UserHash(ctx, user)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("failed to hash the user: %w", err)
	}
	tombstones, err := svc.engine.Store().TombstonesWithJobs(ctx, hash)
	if err != nil {
		return time.Time{}, false, err
	}
	var until time.Time
	found := false
	for _, ts := range tombstones {
		if crypto, _ := scrubScope(ts.Modules); !crypto {
			continue
		}
		var end time.Time
		switch ts.JobState {
		case privacy.ErasureDone:
			end = ts.JobFinishedAt
		case "":
			end = ts.ErasedAt
		default:
			return gatedForever, true, nil
		}
		if end.IsZero() {
			end = ts.ErasedAt
		}
		if end = end.Add(erasureQuietPeriod); !found || end.After(until) {
			until, found = end, true
		}
	}
	return until, found, nil
}

// toDeviceSenderGated reports whether to-device traffic of sender that arrived at arrived is
// dropped: it arrived before the end of sender's gate (erasureQuietUntil), so a pending erasure
// gates everything, and an event that arrived during an erasure's quiet period stays gated when
// handled later (a row kept for a start with the olm machine). Traffic that does not come
// through the inbox (a key share, a device list fetch) passes the current time. A failed check
// is returned as an error: the caller must not handle the event.
func (svc *Service) toDeviceSenderGated(ctx context.Context, sender id.UserID, arrived time.Time) (bool, error) {
	if sender == "" {
		return false, nil
	}
	if hook := svc.erasureGate.checkFails; hook != nil {
		if err := hook(sender); err != nil {
			return false, err
		}
	}
	until, ok, err := svc.erasureQuietUntil(ctx, sender)
	if err != nil {
		return false, fmt.Errorf("failed to check the erasure gate: %w", err)
	}
	return ok && arrived.Before(until), nil
}

// senderGatedNow reports whether sender is gated for traffic arriving now (a key share, a
// device list fetch). A failed check counts as gated: what is refused or skipped is asked for
// again (key requests are retried, an outdated device list stays marked until fetched). It
// logs the failure without the user.
func (svc *Service) senderGatedNow(ctx context.Context, sender id.UserID) bool {
	gated, err := svc.toDeviceSenderGated(ctx, sender, svc.now())
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to check for an erasure; treating the user as gated")
		return true
	}
	return gated
}

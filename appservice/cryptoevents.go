package appservice

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/database"
	"github.com/custodian-matrix/custodian/appservice/e2ee"
)

// Encrypted events through the durable inbox (see docs/ARCHITECTURE.md, "End-to-end
// encryption"):
//
//   - Ingest stores to-device events for the bot's device in the inbox, sealed like room events,
//     in the same transaction as the room events, and marks the users whose device lists
//     changed as outdated in it too. Their keys are fetched, and one-time keys topped up, after
//     the commit.
//   - The dispatcher's to-device lane hands each to-device row to the olm machine inside one
//     database transaction that also deletes the row: the olm session, the olm message hash,
//     the account's spent one-time key and the room key commit together with the row's end, or
//     none of them.
//   - Room events stay encrypted in the inbox; handleInboxEvent decrypts them in memory. A
//     missing room key is waited for with the worker's slot released, asked for from the
//     sender's devices, and when it never comes the sender is told, without any content.

const (
	// firstKeyWait is how long a room key is waited for before it is asked for: it is usually
	// on its way, in a transaction right behind the event.
	firstKeyWait = 3 * time.Second
	// toDeviceAttempts bounds the tries to check the sender's erasure gate of one to-device
	// event, and to commit it, before it is left in the inbox for the next run.
	toDeviceAttempts = 5
)

// encryptedEvents is the service's in-memory state of encrypted events. The zero value is ready.
type encryptedEvents struct {
	lock sync.Mutex
	// keys is closed and replaced whenever a to-device event committed: room keys may have
	// arrived. Nil until first used.
	keys chan struct{}
	// missing are the megolm sessions whose keys were waited for in vain (with the sender who
	// used them); later events of theirs are not waited for again (a key that arrives late is
	// still used). At most recentRefs, the least recently used dropped first.
	missing recentSet[sessionRef]
	// told are the (sender, room, session) the sender was told about; bounded like missing,
	// each sender's and each other server's share too (see recentSet).
	told recentSet[utdRef]

	// otkBusy is set while one-time key counts are being acted on; counts that come meanwhile
	// are dropped (every transaction repeats them).
	otkBusy atomic.Bool
}

type sessionRef struct {
	room    id.RoomID
	session id.SessionID
}

type utdRef struct {
	sender id.UserID
	sessionRef
}

// keysChanged returns a channel closed when the next to-device event commits.
func (cs *encryptedEvents) keysChanged() <-chan struct{} {
	cs.lock.Lock()
	defer cs.lock.Unlock()
	if cs.keys == nil {
		cs.keys = make(chan struct{})
	}
	return cs.keys
}

// toDeviceCommitted wakes everyone waiting in keysChanged.
func (cs *encryptedEvents) toDeviceCommitted() {
	cs.lock.Lock()
	defer cs.lock.Unlock()
	if cs.keys != nil {
		close(cs.keys)
	}
	cs.keys = make(chan struct{})
}

// gaveUp reports whether ref's keys (used by sender) were waited for in vain before; with mark,
// it records that.
func (cs *encryptedEvents) gaveUp(ref sessionRef, sender id.UserID, mark bool) bool {
	cs.lock.Lock()
	defer cs.lock.Unlock()
	ok := cs.missing.has(ref)
	if mark {
		cs.missing.add(ref, sender)
	}
	return ok
}

// setHome makes home the server whose users share no per-server bound in the sets (see
// recentSet): the homeserver's own users, each bounded on their own. Call it before first use.
func (cs *encryptedEvents) setHome(home string) {
	cs.lock.Lock()
	defer cs.lock.Unlock()
	cs.missing.home, cs.told.home = home, home
}

// firstTell records ref and reports whether it is new. Each sender holds at most
// recentPerUser entries, and the senders of any other server recentPerServer together, so one
// remote partner sending under ever new sessions cannot push out the entries of others, who
// would then be told again.
func (cs *encryptedEvents) firstTell(ref utdRef) bool {
	cs.lock.Lock()
	defer cs.lock.Unlock()
	if cs.told.has(ref) {
		return false
	}
	cs.told.add(ref, ref.sender)
	return true
}

// forgetUser drops every entry of user (after their erasure).
func (cs *encryptedEvents) forgetUser(user id.UserID) {
	cs.lock.Lock()
	defer cs.lock.Unlock()
	cs.missing.dropUser(user)
	cs.told.dropUser(user)
}

// cryptoOn reports whether encrypted room events are decrypted: encryption is active (see
// encryptionActive, which implies svc.crypto is set).
func (svc *Service) cryptoOn() bool {
	return svc.encryptionActive()
}

// cryptoPresent reports whether the bot's olm machine exists (svc.crypto, set before the
// listeners start and never changed after). The machine keeps up with to-device events, device
// lists, key counts and membership while it exists, even while the probe has not (yet) seen the
// homeserver deliver to-device events: a probe or room key that arrives late is then still
// used, and the bot becomes able to read encrypted rooms without a restart.
func (svc *Service) cryptoPresent() bool {
	return svc.crypto != nil
}

// deviceListsInTxn returns what ingest runs inside its transaction for pt: marking the users
// whose device lists changed as outdated in the crypto store, so the change survives a crash
// between the acknowledgement and the key fetch (the homeserver reports it once). Nil when
// there is nothing to do.
func (svc *Service) deviceListsInTxn(pt *parsedTransaction) func(ctx context.Context) error {
	if !svc.cryptoPresent() || len(pt.changedDevices) == 0 {
		return nil
	}
	users := pt.changedDevices
	return func(ctx context.Context) error {
		if err := svc.crypto.Store().MarkTrackedUsersOutdated(ctx, users); err != nil {
			return fmt.Errorf("failed to mark changed device lists outdated: %w", err)
		}
		return nil
	}
}

// afterEncryptionData acts on a committed transaction's device lists and one-time key counts,
// in the background: both need the homeserver, which must not hold up the acknowledgement.
// Losing either is harmless: outdated users stay marked until fetched, and every transaction
// repeats the counts.
func (svc *Service) afterEncryptionData(ctx context.Context, pt *parsedTransaction) {
	if !svc.cryptoPresent() {
		return
	}
	log := zerolog.Ctx(ctx)
	if len(pt.changedDevices) > 0 {
		changed := slices.Clone(pt.changedDevices)
		svc.bg.Add(1)
		go func() {
			defer svc.bg.Done()
			ctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			// Fetching the keys of a user whose erasure is pending would store their devices
			// again after (or while) the erasure deletes them.
			users := svc.usersNotBeingErased(ctx, changed)
			if len(users) == 0 {
				return
			}
			svc.crypto.HandleDeviceLists(ctx, &mautrix.DeviceLists{Changed: users})
		}()
	}
	if pt.otkCounts != nil && svc.e2ee.otkBusy.CompareAndSwap(false, true) {
		counts := *pt.otkCounts
		svc.bg.Add(1)
		go func() {
			defer svc.bg.Done()
			defer svc.e2ee.otkBusy.Store(false)
			ctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			svc.crypto.HandleOTKCounts(ctx, &counts)
		}()
	}
	if pt.hasFallback && !slices.Contains(pt.fallbackKeys, id.KeyAlgorithmSignedCurve25519) {
		// mautrix v0.31 uploads no fallback key; with one-time keys topped up, none is needed.
		log.Debug().Int("fallback_key_types", len(pt.fallbackKeys)).Msg("The bot's device has no unused fallback key")
	}
}

// handleToDeviceRow handles one to-device inbox row. An m.room.encrypted one (olm: room keys,
// forwarded keys, secrets) is handed to the olm machine inside one database transaction with
// the row's deletion, after the sender's device keys were fetched (network stays out of the
// transaction, and within senderFetchTimeout). A key request is queued for the key request
// workers (see keyRequestPool) and the row deleted. Other types (withheld notices) change
// nothing that must commit with the row; they are handled, then the row deleted. On a database
// error the transaction rolls back, the machine forgets what it changed in memory, and the row
// is tried again a few times, then left in the inbox for the next run.
//
// The sender's erasure gate is held from the gate check through the end (see erasureGate): a
// row of a gated sender (toDeviceSenderGated, by the row's arrival) is deleted unhandled,
// whatever its type, also in a run without the olm machine, before it could be kept for a
// later one. A gate check that fails is tried again like a commit (checkToDeviceGate); a row
// whose check failed every time is left in the inbox for the next run, unhandled.
// The lane's logs name no user: a drop would tell the log reader who was erased.
func (svc *Service) handleToDeviceRow(ctx context.Context, ie *database.InboxEvent) {
	log := zerolog.Ctx(ctx).With().
		Str("transaction_id", ie.TxnID).
		Int("inbox_index", ie.Index).
		Logger()
	ctx = log.WithContext(ctx)
	start := time.Now()
	defer func() {
		svc.metrics.eventsHandled.Inc()
		svc.metrics.handleLatency.Observe(time.Since(start).Seconds())
	}()
	done := []database.Done{{TxnID: ie.TxnID, Index: ie.Index}}
	markDone := func() {
		if err := svc.db.Inbox.MarkDone(ctx, done, svc.now()); err != nil {
			log.Error().Err(err).Msg("Failed to mark a to-device event done; it is handled again after restart")
		}
	}
	if !svc.cryptoPresent() && !svc.cfg.Encryption.Enabled {
		// Encryption is off in the config: nothing can use the event (a room key without
		// the olm account is unreadable), and left in the inbox it would stay there
		// forever. A missing room key is asked for again when an event needs it.
		log.Debug().Msg("Dropping a to-device event: encryption is off")
		markDone()
		return
	}
	// From the gate check through the commit, an erasure of the sender waits (see erasureGate):
	// whatever this event stores about them is either deleted by the erasure or never stored.
	defer svc.erasureGate.lock(ie.Sender)()
	gated, err := svc.checkToDeviceGate(ctx, ie)
	if err != nil {
		// Never handled ungated: the row stays for the next run, like a commit that failed.
		log.Error().Err(err).Msg("Giving up on the sender's erasure gate check; the to-device event stays in the inbox and is handled after restart")
		svc.dispatcher.leaveToDevice(ie)
		return
	}
	if gated {
		// Handling it would fetch and store the sender's devices and olm sessions again, the
		// data the erasure deletes; every type is dropped, key requests included, and so is a
		// row that would be kept for a later start.
		log.Debug().Msg("Dropping a to-device event: its sender's erasure is pending or recent")
		markDone()
		return
	}
	evt, err := decodeEvent(ie)
	if evt == nil {
		log.Warn().Err(err).Msg("Dropping undecodable to-device event")
		svc.metrics.handlerErrors.WithLabelValues("crypto").Inc()
		markDone()
		return
	}
	log = log.With().Str("event_type", evt.Type.Type).Logger()
	ctx = log.WithContext(ctx)
	if !svc.cryptoPresent() {
		svc.keepOrDropToDevice(ctx, ie, evt, markDone)
		return
	}
	if hook := svc.erasureGate.held; hook != nil {
		hook(ie.Sender)
	}
	if evt.Type != event.ToDeviceEncrypted {
		if content, ok := evt.Content.Parsed.(*event.RoomKeyRequestEventContent); ok {
			// Answered off the lane, under the gate, rather than in the goroutine the olm
			// machine would start: answering fetches the requester's devices, and a request
			// whose lookup hangs must not hold up everyone's room keys.
			svc.keyRequests.enqueue(ctx, svc, keyRequestJob{sender: evt.Sender, arrived: ie.ReceivedAt, content: content})
		} else {
			svc.crypto.HandleToDevice(ctx, evt)
		}
		svc.commitToDevice(ctx, func(ctx context.Context) error {
			return svc.db.Inbox.MarkDone(ctx, done, svc.now())
		})
		return
	}
	if content, ok := evt.Content.Parsed.(*event.EncryptedEventContent); ok && content.Algorithm == id.AlgorithmOlmV1 {
		svc.prefetchSenderDevice(ctx, evt.Sender, content.SenderKey)
		// Should the message not decrypt, the olm machine asks to unwedge the session by its
		// sender key; the unwedge is then a job for the key-request workers, under the gate.
		svc.olmSenders.note(content.SenderKey, evt.Sender, ie.ReceivedAt)
	}
	if svc.commitToDevice(ctx, func(ctx context.Context) error {
		return svc.rawDB.DoTxn(ctx, nil, func(ctx context.Context) error {
			// The crypto store is a child of rawDB: its writes join this transaction through ctx.
			// The olm machine only logs a failed write, and on SQLite a failed statement does
			// not abort the transaction: the write errors recorded through ctx roll it back,
			// so the row never ends without what it carried.
			ctx, failed := withWriteErrors(ctx)
			svc.crypto.HandleToDevice(ctx, evt)
			if err := failed.first(); err != nil {
				return fmt.Errorf("a crypto store write failed while handling a to-device event: %w", err)
			}
			return svc.db.Inbox.MarkDone(ctx, done, svc.now())
		})
	}) {
		svc.e2ee.toDeviceCommitted()
	}
}

// senderFetchTimeout bounds the fetch of an olm message sender's device keys, which runs under
// the sender's gate stripe: an erasure on that stripe waits for it, and so does the lane.
const senderFetchTimeout = 5 * time.Second

// prefetchSenderDevice fetches the device of an olm message's sender by its identity key before
// the lane's transaction (the olm machine would otherwise fetch it while holding it), within
// senderFetchTimeout. A fetch that fails or times out makes the lane skip the fetch for every
// sender of the same server for failedServerPause (svc.senderFetchFailed, on the service's
// clock): anyone can send olm events with fresh sender keys from a server that answers slowly,
// and the lane handles one event at a time. Without the fetch the olm handling goes on as after
// a failed one; the device is fetched later when needed.
func (svc *Service) prefetchSenderDevice(ctx context.Context, sender id.UserID, senderKey id.SenderKey) {
	log := zerolog.Ctx(ctx)
	server := sender.Homeserver()
	if svc.senderFetchFailed.skip(server, svc.now()) {
		log.Debug().Msg("Skipping the sender's device fetch: a fetch from their server failed recently")
		return
	}
	fetchCtx, cancel := context.WithTimeout(ctx, senderFetchTimeout)
	defer cancel()
	device, err := svc.crypto.Olm().GetOrFetchDeviceByKey(fetchCtx, sender, senderKey)
	switch {
	case err != nil:
		// A crypto store error, not the server's.
		log.Debug().Err(err).Msg("Failed to get the sender's device keys")
	case device == nil && fetchCtx.Err() != nil && ctx.Err() == nil:
		// The olm machine only logs a failed key query and returns no device; the deadline
		// tells that the server did not answer in time.
		log.Debug().Err(fetchCtx.Err()).Msg("Failed to fetch the sender's device keys in time; their server is skipped for a while")
		svc.senderFetchFailed.failed(server, svc.now())
	}
}

// keepOrDropToDevice decides, in a run with encryption enabled but without the olm machine
// (its set-up failed), about a to-device row that passed the gate: an olm-encrypted event (it
// may carry a room key nothing else can bring back) stays in the inbox for the next start that
// has the machine, within the dispatcher's caps (keepToDevice); anything else (a key request,
// a probe, a withheld notice, worthless later) and what is over the caps is dropped.
func (svc *Service) keepOrDropToDevice(ctx context.Context, ie *database.InboxEvent, evt *event.Event, markDone func()) {
	log := zerolog.Ctx(ctx)
	content, ok := evt.Content.Parsed.(*event.EncryptedEventContent)
	if evt.Type != event.ToDeviceEncrypted || !ok || content.Algorithm != id.AlgorithmOlmV1 {
		log.Debug().Msg("Dropping a to-device event: its olm machine is missing, and only olm-encrypted events are kept for a later start")
		markDone()
		return
	}
	if !svc.dispatcher.keepToDevice(ctx, ie) {
		markDone()
		return
	}
	log.Debug().Msg("Keeping a to-device event for a start with encryption: its olm machine is missing")
}

// keyRequestTimeout bounds the handling of one room key request: a key query for the
// requester's devices and the answer, under the requester's gate stripe.
const keyRequestTimeout = 5 * time.Second

// handleKeyRequest answers a room key request (see [e2ee.Machine.SetKeyShareGate] for the
// policy) on a context detached from ctx's database transaction and write-error record,
// keeping its logger and cancellation, within keyRequestTimeout: what it stores (the
// requester's devices, the olm session of the answer) commits on its own, and a failure of it
// rolls back nothing else.
func (svc *Service) handleKeyRequest(ctx context.Context, sender id.UserID, content *event.RoomKeyRequestEventContent) {
	detached, cancel := context.WithTimeout(zerolog.Ctx(ctx).WithContext(context.Background()), keyRequestTimeout)
	defer cancel()
	stop := context.AfterFunc(ctx, cancel)
	defer stop()
	svc.crypto.Olm().HandleRoomKeyRequest(detached, sender, content)
}

// usersNotBeingErased returns users without those who are gated now (see
// toDeviceSenderGated; a failed check counts as gated). The key fetch that follows does not
// hold the gate: a fetch racing an erasure can still store a device, which the scrub after
// erasureQuietPeriod deletes.
func (svc *Service) usersNotBeingErased(ctx context.Context, users []id.UserID) []id.UserID {
	return slices.DeleteFunc(users, func(user id.UserID) bool {
		return svc.senderGatedNow(ctx, user)
	})
}

// checkToDeviceGate checks the gate of ie's sender by its arrival (toDeviceSenderGated) until
// the check succeeds, up to toDeviceAttempts times with growing pauses on the service's clock,
// as commitToDevice does, and returns the last error if none did (or ctx ended).
func (svc *Service) checkToDeviceGate(ctx context.Context, ie *database.InboxEvent) (bool, error) {
	log := zerolog.Ctx(ctx)
	for attempt := 1; ; attempt++ {
		gated, err := svc.toDeviceSenderGated(ctx, ie.Sender, ie.ReceivedAt)
		if err == nil {
			return gated, nil
		}
		svc.metrics.handlerErrors.WithLabelValues("crypto").Inc()
		log.Error().Err(err).Int("attempt", attempt).Msg("Failed to check the sender's erasure gate")
		if attempt >= toDeviceAttempts || !svc.sleep(ctx, time.Duration(attempt)*time.Second) {
			return false, err
		}
	}
}

// commitToDevice runs commit until it succeeds, up to toDeviceAttempts times with growing
// pauses, and reports whether it did. After a failure the olm machine drops what it holds in
// memory, which the rolled-back transaction no longer has.
func (svc *Service) commitToDevice(ctx context.Context, commit func(ctx context.Context) error) bool {
	log := zerolog.Ctx(ctx)
	for attempt := 1; ; attempt++ {
		err := commit(ctx)
		if err == nil {
			return true
		}
		svc.metrics.handlerErrors.WithLabelValues("crypto").Inc()
		log.Error().Err(err).Int("attempt", attempt).Msg("Failed to commit a to-device event; rolled back")
		if rerr := svc.crypto.ForgetUncommitted(ctx); rerr != nil {
			log.Error().Err(rerr).Msg("Failed to reload the olm account after a rollback")
		}
		if attempt >= toDeviceAttempts {
			log.Error().Msg("Giving up on a to-device event for now; it stays in the inbox and is handled after restart")
			return false
		}
		if !svc.sleep(ctx, time.Duration(attempt)*time.Second) {
			return false
		}
	}
}

// decryptInboxEvent decrypts an m.room.encrypted room event in memory and returns the plaintext
// event, which keeps the encrypted event's ID, room, sender and time (a redaction of it targets
// the event as stored). If the room key is missing, it waits for it (see waitForRoomKey); if it
// never comes, the sender is told, once per (sender, room, session), and evt is returned as it
// came, as it is for any other failure.
func (svc *Service) decryptInboxEvent(ctx context.Context, evt *event.Event) *event.Event {
	content, ok := evt.Content.Parsed.(*event.EncryptedEventContent)
	if !ok {
		return evt
	}
	log := zerolog.Ctx(ctx).With().Stringer("session_id", content.SessionID).Logger()
	ctx = log.WithContext(ctx)
	plain, err := svc.crypto.Decrypt(ctx, evt)
	if errors.Is(err, e2ee.ErrNoSession) && svc.waitForRoomKey(ctx, evt, content) {
		plain, err = svc.crypto.Decrypt(ctx, evt)
	}
	switch {
	case err == nil:
		svc.metrics.decryption.WithLabelValues("decrypted").Inc()
		return plain
	case errors.Is(err, e2ee.ErrNoSession):
		svc.metrics.decryption.WithLabelValues("missing_keys").Inc()
		log.Warn().Msg("The room key of an encrypted event never came")
		svc.tellUndecryptable(ctx, evt, content)
	default:
		svc.metrics.decryption.WithLabelValues("failed").Inc()
		log.Warn().Err(err).Msg("Failed to decrypt an event")
	}
	return evt
}

// waitForRoomKey waits for the megolm session of evt with the worker's slot released: briefly,
// then, having asked the sender's devices for it, up to encryption.key_wait. It reports whether
// the session is there. A session waited for in vain before is not waited for again.
func (svc *Service) waitForRoomKey(ctx context.Context, evt *event.Event, content *event.EncryptedEventContent) bool {
	ref := sessionRef{room: evt.RoomID, session: content.SessionID}
	if svc.e2ee.gaveUp(ref, evt.Sender, false) {
		return svc.hasRoomKey(ctx, ref)
	}
	reacquire := releaseSlot(ctx)
	defer reacquire()
	keyWait := svc.cfg.Encryption.keyWait()
	if svc.awaitRoomKey(ctx, ref, min(firstKeyWait, keyWait)) {
		return true
	}
	zerolog.Ctx(ctx).Debug().Msg("Asking the sender's devices for a missing room key")
	svc.crypto.RequestSession(ctx, evt.RoomID, content.SenderKey, content.SessionID, evt.Sender, "")
	if svc.awaitRoomKey(ctx, ref, keyWait) {
		return true
	}
	svc.e2ee.gaveUp(ref, evt.Sender, true)
	return false
}

// awaitRoomKey waits up to d for ref's session to be in the crypto store. It looks again each
// time a to-device event commits, rather than on the olm machine's own signal, which comes
// before the transaction storing the key commits.
func (svc *Service) awaitRoomKey(ctx context.Context, ref sessionRef, d time.Duration) bool {
	timer := svc.clock().NewTimer(d)
	defer timer.Stop()
	for {
		changed := svc.e2ee.keysChanged()
		if svc.hasRoomKey(ctx, ref) {
			return true
		}
		select {
		case <-changed:
		case <-timer.C():
			return svc.hasRoomKey(ctx, ref)
		case <-ctx.Done():
			return false
		}
	}
}

// hasRoomKey reports whether the crypto store has ref's session (or knows it was withheld, which
// decrypting then reports).
func (svc *Service) hasRoomKey(ctx context.Context, ref sessionRef) bool {
	// Through the machine's store: it waits while the pickle key is replaced, and it is the
	// one the decryption cache fronts.
	sess, err := svc.crypto.Olm().CryptoStore.GetGroupSession(ctx, ref.room, ref.session)
	if errors.Is(err, crypto.ErrGroupSessionWithheld) {
		return true
	} else if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to look up a room key")
		return false
	}
	return sess != nil
}

// undecryptableText is what the sender of a message the bot could not decrypt is told.
const undecryptableText = "I couldn't read your message%s: it was encrypted with keys your device didn't share with me. " +
	"Try sending it again; if this keeps happening, check that your device is verified and online."

// tellUndecryptable tells evt's sender, in plain words and without any content, that the bot
// could not read their message: in the room itself when it is a direct chat between the two of
// them, else, for a user of this homeserver only, in their management room (both through
// [Service.NotifyUser]). A remote sender in any other room is not told: opening a room per
// federated stranger would be abuse-prone. Once per (sender, room, session) in this run; the
// notice's cause is a keyed hash of (sender, room, session), so a retry or a later event of the
// same session after a restart sends the same transaction ID, which the homeserver
// deduplicates.
func (svc *Service) tellUndecryptable(ctx context.Context, evt *event.Event, content *event.EncryptedEventContent) {
	if !svc.e2ee.firstTell(utdRef{sender: evt.Sender, sessionRef: sessionRef{room: evt.RoomID, session: content.SessionID}}) {
		return
	}
	log := zerolog.Ctx(ctx)
	where := " in " + evt.RoomID.URI().MatrixToURL()
	direct, err := svc.isDirectChat(ctx, evt.RoomID, evt.Sender)
	if err != nil {
		log.Warn().Err(err).Msg("Failed to check whether the room is a direct chat")
	}
	if direct {
		ctx = svc.useAsManagementRoom(ctx, evt.Sender, evt.RoomID)
		where = ""
	} else if _, server, _ := evt.Sender.Parse(); server != svc.cfg.Homeserver.Domain {
		log.Debug().Msg("Not telling a remote sender outside a direct chat about an unreadable message")
		return
	}
	cause, err := svc.undecryptableCause(ctx, evt.Sender, evt.RoomID, content.SessionID)
	if err != nil {
		log.Warn().Err(err).Msg("Failed to derive the cause of an unreadable-message notice")
		return
	}
	msg := &event.MessageEventContent{MsgType: event.MsgNotice, Body: fmt.Sprintf(undecryptableText, where)}
	if _, _, err := svc.NotifyUser(ctx, evt.Sender, Notice{Cause: cause, Purpose: "undecryptable", Content: msg}); err != nil {
		log.Warn().Err(err).Msg("Failed to tell the sender their message could not be decrypted")
	}
}

// undecryptableCause returns the cause of the unreadable-message notice of (sender, room,
// session): a keyed hash, the same across restarts, that names none of them.
func (svc *Service) undecryptableCause(ctx context.Context, sender id.UserID, roomID id.RoomID, session id.SessionID) (string, error) {
	hash, err := svc.engine.ScopedHash(ctx, "undecryptable", sender.String()+"\x00"+roomID.String()+"\x00"+session.String())
	if err != nil {
		return "", err
	}
	return "utd:" + hash, nil
}

// cryptoMemberEvent lets the olm machine see a membership change (the machine ignores those of
// rooms the state cache does not know as encrypted): the room's outbound megolm session is
// dropped, so a member who left gets none of the next keys and one who joined gets them.
func (svc *Service) cryptoMemberEvent(ctx context.Context, evt *event.Event) {
	if svc.cryptoPresent() {
		svc.crypto.HandleMemberEvent(ctx, evt)
	}
}

// writeErrorsKey is the context key of a *writeErrors.
type writeErrorsKey struct{}

// writeErrors records the first failed write of the statements run with its context.
type writeErrors struct {
	lock sync.Mutex
	err  error
}

// withWriteErrors returns ctx recording the database writes that fail under it (through a
// database set up with recordWriteErrors), and the record.
func withWriteErrors(ctx context.Context) (context.Context, *writeErrors) {
	rec := &writeErrors{}
	return context.WithValue(ctx, writeErrorsKey{}, rec), rec
}

func (we *writeErrors) record(err error) {
	we.lock.Lock()
	defer we.lock.Unlock()
	if we.err == nil {
		we.err = err
	}
}

// first returns the first write error recorded, nil if none.
func (we *writeErrors) first() error {
	we.lock.Lock()
	defer we.lock.Unlock()
	return we.err
}

// writeErrorLogger is a database logger that also hands every failed statement to the
// writeErrors of the statement's context, if any. Every statement in a transaction is logged
// by the root database's logger, whichever child database runs it.
//
// dbutil reports a statement under the name of the method that ran it: "Exec", "Query" (a
// write with RETURNING run through Query fails there or at the end of its rows), "EndRows",
// "QueryRow", and "Begin", "Commit", "Rollback" for the transaction itself. A failure is
// recorded whatever the method: a write may run through any of them, and a failed read inside
// the transaction leaves the olm machine acting on what it could not see, which rolls back as
// well. dbutil v0.10 reports every QueryRow without its error (it is only known at Scan); the
// olm machine writes nothing through QueryRow while handling a to-device event.
type writeErrorLogger struct {
	dbutil.DatabaseLogger
}

// QueryTiming logs through the wrapped logger and records a failed statement.
func (l writeErrorLogger) QueryTiming(ctx context.Context, method, query string, args []any, nrows int, duration time.Duration, err error) {
	l.DatabaseLogger.QueryTiming(ctx, method, query, args, nrows, duration, err)
	if err == nil {
		return
	}
	if rec, ok := ctx.Value(writeErrorsKey{}).(*writeErrors); ok {
		rec.record(err)
	}
}

// recordWriteErrors makes db's logger record failed writes for withWriteErrors, once.
func recordWriteErrors(db *dbutil.Database) {
	if _, ok := db.Log.(writeErrorLogger); ok {
		return
	}
	if db.Log == nil {
		db.Log = dbutil.NoopLogger
	}
	db.Log = writeErrorLogger{DatabaseLogger: db.Log}
}

package e2ee

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// Olm unwedging. When an olm message cannot be decrypted (its session is broken, or a pre-key
// message makes no session), mautrix's olm machine starts a goroutine of its own that fetches
// the sender's device and sends it an m.dummy over a new olm session, so the sender's client
// can send room keys again. That goroutine is nobody's: it outlives the service's stop, fetches
// devices from any server without a deadline, and stores the sender's device and a new olm
// session outside the erasure gate the to-device lane holds.
//
// Machine takes that work over. The olm machine's background context (used by nothing else in
// mautrix) carries unwedgeMarker; the first store call of the goroutine, for the newest session
// with the sender key, is answered "now" by lockedStore, so the goroutine logs that a session
// was made recently and ends, having touched neither network nor database. lockedStore hands
// the sender key to the handler set by [Machine.SetUnwedgeHandler], and the core calls
// [Machine.Unwedge] from its own bounded workers, under its gate.

// unwedgeMarker marks the olm machine's background context: a store call made on it comes from
// mautrix's unwedging goroutine.
type unwedgeMarker struct{}

// newSessionFor carries, in a context, the identity key of the device [Machine.Unwedge] sends
// to: the store then reports no olm session with it, so mautrix claims a one-time key and
// makes a new one (the old one is what could not be decrypted).
type newSessionFor struct{}

// unwedgeHandler is the function lockedStore calls with the sender key of an olm message that
// could not be decrypted.
type unwedgeHandler = func(senderKey id.SenderKey)

// wedgedSessions routes mautrix's unwedging requests to the handler; the zero value drops them.
type wedgedSessions struct {
	handler atomic.Pointer[unwedgeHandler]
}

// request passes senderKey to the handler, if one is set.
func (w *wedgedSessions) request(senderKey id.SenderKey) {
	if fn := w.handler.Load(); fn != nil {
		(*fn)(senderKey)
	}
}

// SetUnwedgeHandler sets the function called with the sender key of each olm message the
// machine could not decrypt (at most once an hour per sender key: the olm machine's own limit),
// in place of the olm machine's own unwedging. The function runs on a goroutine of the olm
// machine and must not block; it is expected to queue a call of [Machine.Unwedge]. Without a
// handler the requests are dropped and no session is unwedged.
func (m *Machine) SetUnwedgeHandler(fn func(senderKey id.SenderKey)) {
	m.locked.wedged.handler.Store(&fn)
}

// Unwedge makes a new olm session with sender's device whose identity key is senderKey and
// sends that device an m.dummy over it, which is how the olm machine unwedges a session. It
// reports whether the dummy was sent, and sends nothing (with a Debug line saying why, naming
// no one) when an olm session with the device was made less than [crypto.MinUnwedgeInterval]
// before now, or when the device is not in the store and fetch is false, or when the sender
// key matches none of the sender's devices. With fetch, a device missing from the store is
// fetched from the sender's homeserver. ctx bounds the fetch, the key claim and the send; what
// they store (the device, the new session) commits on its own.
func (m *Machine) Unwedge(ctx context.Context, sender id.UserID, senderKey id.SenderKey, now time.Time, fetch bool) (bool, error) {
	log := zerolog.Ctx(ctx)
	last, err := m.locked.SQLCryptoStore.GetNewestSessionCreationTS(ctx, senderKey)
	if err != nil {
		return false, fmt.Errorf("failed to read the newest olm session's creation time: %w", err)
	}
	if now.Sub(last) < crypto.MinUnwedgeInterval {
		log.Debug().Msg("Not unwedging an olm session: one was made with the device less than an hour ago")
		return false, nil
	}
	var device *id.Device
	if fetch {
		device, err = m.mach.GetOrFetchDeviceByKey(ctx, sender, senderKey)
	} else {
		device, err = m.store.FindDeviceByKey(ctx, sender, senderKey)
	}
	if err != nil {
		return false, fmt.Errorf("failed to find the device of the sender key: %w", err)
	} else if device == nil {
		log.Debug().Bool("fetched", fetch).Msg("Not unwedging an olm session: no device of its sender has the sender key")
		return false, nil
	}
	ctx = context.WithValue(ctx, newSessionFor{}, device.IdentityKey)
	if err = m.mach.SendEncryptedToDevice(ctx, device, event.ToDeviceDummy, event.Content{}); err != nil {
		return false, fmt.Errorf("failed to send the dummy event over a new olm session: %w", err)
	}
	return true, nil
}

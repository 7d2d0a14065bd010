package e2ee

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// Machine is the bot's end-to-end encryption: its device's olm machine on the crypto store.
// Custodian encrypts every message it sends into an encrypted room with this one device (the
// bot's and the ghosts' alike) and decrypts every encrypted event it handles with it.
//
// Machine does not use mautrix's own event processors (crypto.ASEventProcessor, cryptohelper):
// they handle to-device events as they arrive, outside the durable inbox. The core passes each
// event to Machine from the inbox instead (see docs/ARCHITECTURE.md, "End-to-end encryption").
//
// A Machine is safe for concurrent use once [NewMachine] returned.
type Machine struct {
	mach  *crypto.OlmMachine
	store *crypto.SQLCryptoStore
	// locked is the store the olm machine uses: store behind the lock that evicting olm
	// sessions and replacing the pickle key take.
	locked *lockedStore
	states StateStore
	log    zerolog.Logger
	// probes are the delivery probes waiting for their to-device echo (probe.go).
	probes probes
}

// StateStore is what the machine reads of the rooms' state: whether a room is encrypted, its
// history visibility, and who is in it (mautrix's sqlstatestore is one).
type StateStore interface {
	crypto.StateStore
	// GetRoomJoinedOrInvitedMembers returns the joined and invited members of roomID.
	GetRoomJoinedOrInvitedMembers(ctx context.Context, roomID id.RoomID) ([]id.UserID, error)
	// HasFetchedMembers reports whether the store holds roomID's full member list. An erasure
	// deletes the erased user's member rows and clears this flag of their rooms.
	HasFetchedMembers(ctx context.Context, roomID id.RoomID) (bool, error)
	// ReplaceCachedMembers replaces roomID's member rows with the member events evts and, with
	// no onlyMemberships, marks its member list as fetched.
	ReplaceCachedMembers(ctx context.Context, roomID id.RoomID, evts []*event.Event, onlyMemberships ...event.Membership) error
}

// NewMachine wraps an olm machine around store for client (the bot's client, whose Crypto field
// the caller may set to the returned Machine) and stateStore (which says which rooms are
// encrypted and who is in them). It does no I/O: the device is created and the account loaded
// by the caller's start-up.
//
// The settings suit a durable, replaying consumer: keys are not ratcheted or deleted on decrypt
// (a replay after a crash must decrypt again), outbound sessions are not kept as inbound ones
// (a megolm key Custodian sent is no use to it), and the devices of users it shares a room with
// are sent keys whatever their trust, as other clients do by default.
func NewMachine(client *mautrix.Client, store *crypto.SQLCryptoStore, stateStore StateStore, log zerolog.Logger) *Machine {
	mlog := log.With().Str("component", "crypto").Logger()
	locked := &lockedStore{SQLCryptoStore: store, indexes: newPendingIndexes()}
	mach := crypto.NewOlmMachine(client, &mlog, locked, stateStore)
	mach.SendKeysMinTrust = id.TrustStateUnset
	mach.ShareKeysMinTrust = id.TrustStateUnset
	mach.DontStoreOutboundKeys = true
	mach.DeleteKeysOnDeviceDelete = true
	mach.RatchetKeysOnDecrypt = false
	mach.DisableRatchetTracking = true
	// Only the unwedging goroutine uses the background context: marked, it stops at its first
	// store call and hands the work to the core (unwedge.go).
	mach.SetBackgroundCtx(context.WithValue(context.Background(), unwedgeMarker{}, true))
	return &Machine{mach: mach, store: store, locked: locked, states: stateStore, log: mlog}
}

// Device returns the bot's user ID and device ID: where the to-device events, one-time key
// counts and fallback key types the machine handles are addressed. The device ID is empty
// before the device is created.
func (m *Machine) Device() (id.UserID, id.DeviceID) {
	return m.mach.Client.UserID, m.mach.Client.DeviceID
}

// ForgetUncommitted drops what the machine holds in memory of the crypto store, after a database
// transaction in which it handled a to-device event rolled back: it empties the olm session
// cache (whose sessions may have advanced past what is stored) and the store's cached account,
// under the store's lock (taken for writing, as [Machine.EvictOlmSessions] does), empties the
// decryption cache of [Machine.EnableCache] (which fenced, and now forgets, what the
// transaction wrote), then reloads the olm account (whose spent one-time key the rollback
// restored). The core calls it only from the to-device lane, after a failed commit, which is
// rare.
func (m *Machine) ForgetUncommitted(ctx context.Context) error {
	m.locked.forgetCached()
	m.Evict()
	if err := m.mach.Load(ctx); err != nil {
		return fmt.Errorf("failed to reload the olm account: %w", err)
	}
	return nil
}

// Olm returns the underlying olm machine, for start-up (device, account, cross-signing) and
// tests.
func (m *Machine) Olm() *crypto.OlmMachine { return m.mach }

// Store returns the crypto store the machine works on, for its device ID, account and
// database. Olm sessions, megolm sessions and secrets are read and written through the olm
// machine (Olm().CryptoStore), whose store waits while [Machine.EvictOlmSessions] or
// [Machine.ReplacePickleKey] runs; calling those methods on the returned store directly
// bypasses that.
func (m *Machine) Store() *crypto.SQLCryptoStore { return m.store }

// EvictOlmSessions drops the olm sessions the store keeps in memory, so that the ones an
// erasure deleted from the database are no longer used, and empties the decryption cache
// ([Machine.Evict]), which may hold the erased user's devices and inbound megolm sessions. The
// core calls it after every erasure that covered the crypto store. It waits for store calls in
// progress.
func (m *Machine) EvictOlmSessions() {
	m.locked.evictOlmSessions()
	m.Evict()
}

// ErrNoSession is wrapped by [Machine.Decrypt]'s error when the megolm session of the event is
// not (yet) known: its keys may still arrive (see [Machine.WaitForSession]).
var ErrNoSession = crypto.ErrNoSessionFound

// Decrypt decrypts an m.room.encrypted room event. The returned event is the plaintext event
// (its Mautrix.WasEncrypted set); evt is not changed. Decrypting the same event twice succeeds
// (a replay), since message indexes are checked against the event ID and timestamp. Errors
// wrap [ErrNoSession] when the keys are missing; other errors mean the event cannot be
// decrypted at all.
func (m *Machine) Decrypt(ctx context.Context, evt *event.Event) (*event.Event, error) {
	if evt.Type != event.EventEncrypted {
		return nil, fmt.Errorf("not an encrypted event: %s", evt.Type.Type)
	}
	return m.mach.DecryptMegolmEvent(ctx, evt)
}

// Encrypt implements [mautrix.CryptoHelper]: it encrypts content of type evtType for roomID
// with the room's outbound megolm session, first sharing a new session with the devices of the
// room's joined and invited members when there is none, it expired, or it was not yet shared.
// Before sharing, it reads the members from the homeserver if the state store does not hold the
// room's full member list (see fetchMembersIfIncomplete); if that fails (the bot's own user is
// not in the room), it shares with the members the store knows.
func (m *Machine) Encrypt(ctx context.Context, roomID id.RoomID, evtType event.Type, content any) (*event.EncryptedEventContent, error) {
	encrypted, err := m.mach.EncryptMegolmEvent(ctx, roomID, evtType, content)
	if err == nil {
		return encrypted, nil
	}
	if !errors.Is(err, crypto.ErrSessionExpired) && !errors.Is(err, crypto.ErrSessionNotShared) && !errors.Is(err, crypto.ErrNoGroupSession) {
		return nil, err
	}
	if err = m.fetchMembersIfIncomplete(ctx, roomID); err != nil {
		m.log.Warn().Err(err).Stringer("room_id", roomID).Msg("Failed to complete the room's member list; sharing with the members known")
	}
	users, err := m.states.GetRoomJoinedOrInvitedMembers(ctx, roomID)
	if err != nil {
		return nil, fmt.Errorf("failed to get the room's members: %w", err)
	}
	if err = m.mach.ShareGroupSession(ctx, roomID, users); err != nil {
		return nil, fmt.Errorf("failed to share the room key: %w", err)
	}
	encrypted, err = m.mach.EncryptMegolmEvent(ctx, roomID, evtType, content)
	if err != nil {
		return nil, fmt.Errorf("failed to encrypt after sharing the room key: %w", err)
	}
	return encrypted, nil
}

// fetchMembersIfIncomplete reads roomID's members from the homeserver into the state store
// unless the store holds its full member list. An erasure deletes the erased user's member rows
// in every room, also in the rooms the bot stays in with them, and marks those lists as not
// fetched: without this, a room key would not be shared with a member who is still there.
func (m *Machine) fetchMembersIfIncomplete(ctx context.Context, roomID id.RoomID) error {
	fetched, err := m.states.HasFetchedMembers(ctx, roomID)
	if err != nil {
		return fmt.Errorf("failed to check whether the room's members were fetched: %w", err)
	} else if fetched {
		return nil
	}
	var resp mautrix.RespMembers
	cli := m.mach.Client
	url := cli.BuildClientURL("v3", "rooms", roomID, "members")
	if _, err = cli.MakeRequest(ctx, http.MethodGet, url, nil, &resp); err != nil {
		return fmt.Errorf("failed to fetch the room's members: %w", err)
	}
	for _, evt := range resp.Chunk {
		_ = evt.Content.ParseRaw(evt.Type)
	}
	if err = m.states.ReplaceCachedMembers(ctx, roomID, resp.Chunk); err != nil {
		return fmt.Errorf("failed to store the room's members: %w", err)
	}
	return nil
}

// WaitForSession implements [mautrix.CryptoHelper]: it waits up to timeout for the megolm
// session sessionID of roomID to arrive and reports whether it did.
func (m *Machine) WaitForSession(ctx context.Context, roomID id.RoomID, senderKey id.SenderKey, sessionID id.SessionID, timeout time.Duration) bool {
	return m.mach.WaitForSession(ctx, roomID, senderKey, sessionID, timeout)
}

// RequestSession implements [mautrix.CryptoHelper]: it asks userID's device deviceID (all their
// devices when empty) for the megolm session sessionID of roomID. Failures are logged.
func (m *Machine) RequestSession(ctx context.Context, roomID id.RoomID, senderKey id.SenderKey, sessionID id.SessionID, userID id.UserID, deviceID id.DeviceID) {
	if deviceID == "" {
		deviceID = "*"
	}
	err := m.mach.SendRoomKeyRequest(ctx, roomID, senderKey, sessionID, "", map[id.UserID][]id.DeviceID{userID: {deviceID}})
	if err != nil {
		m.log.Warn().Err(err).Stringer("room_id", roomID).Stringer("session_id", sessionID).Msg("Failed to send a room key request")
	}
}

// Init implements [mautrix.CryptoHelper]. It does nothing: start-up happens before the Machine
// is set as any client's Crypto.
func (m *Machine) Init(context.Context) error { return nil }

// HandleToDevice handles one to-device event (m.room.encrypted carrying room keys, key
// requests, m.dummy, …). ctx may carry a database transaction: everything the event changes in
// the crypto store is then written in it.
//
// The service's own delivery probe ([ProbeEventType], see [Machine.NewProbeRun]) is recognised
// here and goes no further.
func (m *Machine) HandleToDevice(ctx context.Context, evt *event.Event) {
	if m.probes.received(m.mach.Client.UserID, evt) {
		return
	}
	m.mach.HandleToDeviceEvent(ctx, evt)
}

// HandleDeviceLists marks the users whose devices changed as outdated and refetches their keys.
func (m *Machine) HandleDeviceLists(ctx context.Context, dl *mautrix.DeviceLists) {
	m.mach.HandleDeviceLists(ctx, dl, "")
}

// HandleOTKCounts uploads new one-time keys when the homeserver's count runs low.
func (m *Machine) HandleOTKCounts(ctx context.Context, counts *mautrix.OTKCount) {
	m.mach.HandleOTKCounts(ctx, counts)
}

// HandleMemberEvent lets the machine react to a membership change in an encrypted room: a
// member who left no longer gets the room's next keys.
func (m *Machine) HandleMemberEvent(ctx context.Context, evt *event.Event) {
	m.mach.HandleMemberEvent(ctx, evt)
}

var _ mautrix.CryptoHelper = (*Machine)(nil)

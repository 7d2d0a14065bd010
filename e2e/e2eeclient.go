//go:build e2e

package e2e

import (
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// E2EEClient is a Matrix client with end-to-end encryption that a test drives as a user would
// drive Element: [JSClient] (matrix-js-sdk with its Rust crypto, what Element uses) and
// [MXClient] (mautrix-go's crypto). The scenarios of encrypted rooms run the same steps with
// each. Every method fails the test on error and must be called from the test's goroutine;
// every wait is bounded by its timeout.
type E2EEClient interface {
	// Kind names the implementation, for subtest names: "js" or "mautrix".
	Kind() string
	// User is the client's user ID.
	User() id.UserID
	// Device is the client's device ID.
	Device() id.DeviceID
	// IdentityKey is the device's Curve25519 identity key, which olm sessions and megolm
	// sessions the device sent are stored under (sender_key).
	IdentityKey() id.IdentityKey
	// CreateDM creates a direct chat with other the way Element does (preset
	// trusted_private_chat, is_direct, other invited) with m.room.encryption in the initial
	// state.
	CreateDM(t testing.TB, other id.UserID) id.RoomID
	// CreateRoom creates an encrypted private room (preset private_chat, m.room.encryption in
	// the initial state), inviting invite, with the given power levels if not nil.
	CreateRoom(t testing.TB, invite []id.UserID, powerLevels *event.PowerLevelsEventContent) id.RoomID
	// Join joins roomID (accepting an invite).
	Join(t testing.TB, roomID id.RoomID)
	// SendText sends body as m.text, encrypted. It first waits (up to timeout) until the client
	// has joined roomID and knows it is encrypted, so the message never goes out in plaintext.
	SendText(t testing.TB, roomID id.RoomID, body string, timeout time.Duration) id.EventID
	// WaitFor waits up to timeout for a message pred matches, seen before or during the call
	// (pred sees every message, in the order the client saw them in clear), and returns it.
	// On timeout the test fails, listing the client's decryption failures.
	WaitFor(t testing.TB, timeout time.Duration, pred func(*Message) bool) *Message
	// TryWaitFor is WaitFor that reports a timeout (nil, false) instead of failing the test.
	TryWaitFor(t testing.TB, timeout time.Duration, pred func(*Message) bool) (*Message, bool)
	// WaitForInvite waits up to timeout for an invite from inviter that no earlier call
	// returned, and returns its room.
	WaitForInvite(t testing.TB, inviter id.UserID, timeout time.Duration) id.RoomID
	// AutoJoin makes the client join every invite from inviter on its own, as it arrives, from
	// now on (and those it has and no WaitForInvite returned): for rooms the bot opens itself.
	AutoJoin(t testing.TB, inviter id.UserID)
	// DecryptionFailures returns the events the client could not decrypt (and has not decrypted
	// since).
	DecryptionFailures(t testing.TB) []DecryptionFailure
	// Download downloads an encrypted attachment through the authenticated media API, checks
	// its SHA-256 and decrypts it with the key in file, and returns the plaintext.
	Download(t testing.TB, file *event.EncryptedFileInfo) []byte
	// DeviceCrossSigned reports whether user's device is signed by user's own self-signing key
	// (itself signed by user's master key), after fetching user's keys from the homeserver:
	// what keeps clients from flagging the device as unverified. It fails the test if the
	// device is unknown. The client must share an encrypted room with user (the js client
	// tracks only those users' devices).
	DeviceCrossSigned(t testing.TB, user id.UserID, device id.DeviceID) bool
}

// Message is an m.room.message event an [E2EEClient] saw in a room timeline, decrypted if it
// was encrypted.
type Message struct {
	EventID       id.EventID               `json:"event_id"`
	RoomID        id.RoomID                `json:"room_id"`
	Sender        id.UserID                `json:"sender"`
	MsgType       event.MessageType        `json:"msgtype"`
	Body          string                   `json:"body"`
	FormattedBody string                   `json:"formatted_body"`
	ReplyTo       id.EventID               `json:"reply_to"`
	File          *event.EncryptedFileInfo `json:"file"` // an encrypted attachment (m.file)
	// Encrypted says the event was encrypted on the wire (m.room.encrypted) and decrypted by
	// the client.
	Encrypted bool `json:"encrypted"`
	// Shield is the js client's verdict on the sender's device of an encrypted message when it
	// decrypted it; nil for the mautrix client and for unencrypted messages.
	Shield *Shield `json:"shield"`
	// SenderTrust is the mautrix client's verdict on the sender's device of an encrypted
	// message when it decrypted it (mautrix's id.TrustState, such as "cross-signed-tofu" or
	// "unknown-device"); "" for the js client and for unencrypted messages.
	SenderTrust string `json:"-"`
}

// SenderVerdict is what the client that decrypted m shows about its sender's device: ok if the
// client does not flag it (the js client: no shield; the mautrix client: a cross-signed or
// verified device), and the client's own words for it.
func (m *Message) SenderVerdict() (ok bool, verdict string) {
	switch {
	case m.Shield != nil:
		return m.Shield.Colour == "NONE", "shield " + m.Shield.Colour + " " + m.Shield.Reason
	case m.SenderTrust != "":
		trust := id.ParseTrustState(m.SenderTrust)
		return trust >= id.TrustStateCrossSignedTOFU, "trust " + m.SenderTrust
	default:
		return false, "no verdict"
	}
}

// Shield is the warning a client shows next to an encrypted message: matrix-js-sdk's
// EventShieldColour and EventShieldReason, by name.
type Shield struct {
	Colour string `json:"colour"`
	Reason string `json:"reason"`
}

// DecryptionFailure is an event an [E2EEClient] could not decrypt (and has not decrypted since).
type DecryptionFailure struct {
	EventID id.EventID `json:"event_id"`
	RoomID  id.RoomID  `json:"room_id"`
	Sender  id.UserID  `json:"sender"`
	Reason  string     `json:"reason"`
}

// InRoom matches messages in roomID; with the others (all must match).
func InRoom(roomID id.RoomID, preds ...func(*Message) bool) func(*Message) bool {
	return func(m *Message) bool {
		if m.RoomID != roomID {
			return false
		}
		for _, pred := range preds {
			if !pred(m) {
				return false
			}
		}
		return true
	}
}

// WithBody matches a message whose body is exactly body.
func WithBody(body string) func(*Message) bool {
	return func(m *Message) bool { return m.Body == body }
}

// FromSender matches a message from sender.
func FromSender(sender id.UserID) func(*Message) bool {
	return func(m *Message) bool { return m.Sender == sender }
}

// ReplyTo matches a message that replies (m.in_reply_to) to eventID.
func ReplyTo(eventID id.EventID) func(*Message) bool {
	return func(m *Message) bool { return m.ReplyTo == eventID }
}

//go:build e2e

package e2e

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/cryptohelper"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// Deadlines of the mautrix client's own steps.
const (
	// mxLoginTimeout bounds a login: the request, the crypto store's set-up, the key upload and
	// the first sync.
	mxLoginTimeout = 60 * time.Second
	// mxSyncStopTimeout bounds how long the end of a test waits for the sync loop to return.
	mxSyncStopTimeout = 30 * time.Second
)

// MXClient is a Matrix client with end-to-end encryption built on mautrix-go's crypto (the
// cryptohelper, pure-Go olm with the goolm build tag): a password login, its own SQLite crypto
// store in the test's temporary directory, and a /sync loop in the background until the test
// ends. It decrypts what it receives as it arrives. Its methods fail the test on any error and
// must be called from the test's goroutine.
type MXClient struct {
	// Client is the underlying mautrix client, logged in; Client.Crypto encrypts what it sends
	// in encrypted rooms.
	Client *mautrix.Client

	name     string
	logPath  string
	password string
	helper   *cryptohelper.CryptoHelper

	mu       sync.Mutex
	changed  chan struct{} // closed and replaced on every change below
	synced   bool          // the first sync went through
	syncErr  error         // why the sync loop stopped, if it did
	messages []*Message
	seen     map[id.EventID]bool
	failures map[id.EventID]DecryptionFailure
	invites  []mxInvite
	autoJoin map[id.UserID]bool
}

type mxInvite struct {
	roomID  id.RoomID
	inviter id.UserID
	taken   bool
}

var _ E2EEClient = (*MXClient)(nil)

// MXLogin logs user (registered by [Env.Register]) in with mautrix-go's crypto on a new device,
// which uploads its keys, and starts syncing; it returns once the first sync went through. The
// sync stops when the test ends; the client's log is printed if the test failed.
func (env *Env) MXLogin(t testing.TB, user id.UserID) *MXClient {
	t.Helper()
	password := env.Password(user)
	if password == "" {
		t.Fatalf("MXLogin: %s was not registered by the harness", user)
	}
	c := &MXClient{
		name:     "mautrix client " + user.Localpart(),
		password: password,
		logPath:  filepath.Join(env.dir, "mxclient-"+user.Localpart()+".log"),
		changed:  make(chan struct{}),
		seen:     map[id.EventID]bool{},
		failures: map[id.EventID]DecryptionFailure{},
	}
	logFile, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatalf("%s: opening its log: %v", c.name, err)
	}
	cli, err := mautrix.NewClient(env.HomeserverURL(), "", "")
	if err != nil {
		_ = logFile.Close()
		t.Fatalf("%s: %v", c.name, err)
	}
	cli.Log = zerolog.New(logFile).With().Timestamp().Logger().Level(zerolog.DebugLevel)
	c.Client = cli

	pickleKey := make([]byte, 32)
	if _, err := rand.Read(pickleKey); err != nil {
		t.Fatal(err)
	}
	helper, err := cryptohelper.NewCryptoHelper(cli, pickleKey, filepath.Join(t.TempDir(), "mxclient-crypto.db"))
	if err != nil {
		_ = logFile.Close()
		t.Fatalf("%s: creating the crypto helper: %v", c.name, err)
	}
	helper.LoginAs = &mautrix.ReqLogin{
		Type:                     mautrix.AuthTypePassword,
		Identifier:               mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: user.Localpart()},
		Password:                 password,
		InitialDeviceDisplayName: "custodian e2e mautrix client",
	}
	helper.DecryptErrorCallback = c.recordFailure
	c.helper = helper

	ctx, cancel := context.WithCancel(context.Background())
	syncDone := make(chan struct{})
	t.Cleanup(func() {
		cancel()
		cli.StopSync()
		select {
		case <-syncDone:
		case <-time.After(mxSyncStopTimeout):
			t.Errorf("%s: the sync loop did not stop within %v", c.name, mxSyncStopTimeout)
		}
		_ = helper.Close()
		_ = logFile.Close()
		if t.Failed() {
			logTail(t, c.name, c.logPath)
		}
	})

	initCtx, initCancel := context.WithTimeout(ctx, mxLoginTimeout)
	defer initCancel()
	if err := helper.Init(initCtx); err != nil {
		close(syncDone)
		t.Fatalf("%s: logging in and setting up the crypto: %v", c.name, err)
	}
	cli.Crypto = helper

	syncer := cli.Syncer.(*mautrix.DefaultSyncer)
	syncer.OnSync(func(context.Context, *mautrix.RespSync, string) bool {
		c.update(func() { c.synced = true })
		return true
	})
	syncer.OnEventType(event.EventMessage, c.recordMessage)
	syncer.OnEventType(event.StateMember, c.recordInvite)
	go func() {
		defer close(syncDone)
		err := cli.SyncWithContext(ctx)
		if err == nil || errors.Is(err, context.Canceled) {
			err = errors.New("the test ended")
		}
		c.update(func() { c.syncErr = err })
	}()

	c.wait(t, mxLoginTimeout, "the first sync", func() bool { return c.synced })
	t.Logf("%s logged in as %s, device %s", c.name, cli.UserID, cli.DeviceID)
	return c
}

// update runs fn under the lock and wakes every waiter.
func (c *MXClient) update(fn func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fn()
	close(c.changed)
	c.changed = make(chan struct{})
}

// wait waits up to timeout until cond (called under the lock) holds, re-checking after every
// change and every 200 ms (for state kept outside the client, such as the state store).
func (c *MXClient) wait(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	ticker := time.NewTicker(200 * time.Millisecond)
	defer ticker.Stop()
	for {
		c.mu.Lock()
		ok, changed, syncErr := cond(), c.changed, c.syncErr
		c.mu.Unlock()
		if ok {
			return
		}
		if syncErr != nil {
			t.Fatalf("%s: waiting for %s: the sync loop stopped: %v", c.name, what, syncErr)
		}
		select {
		case <-changed:
		case <-ticker.C:
		case <-timer.C:
			t.Fatalf("%s: %s did not happen within %v; decryption failures: %+v", c.name, what, timeout, c.DecryptionFailures(t))
		}
	}
}

func (c *MXClient) recordMessage(_ context.Context, evt *event.Event) {
	msg := evt.Content.AsMessage()
	m := &Message{
		EventID:       evt.ID,
		RoomID:        evt.RoomID,
		Sender:        evt.Sender,
		MsgType:       msg.MsgType,
		Body:          msg.Body,
		FormattedBody: msg.FormattedBody,
		ReplyTo:       msg.RelatesTo.GetReplyTo(),
		File:          msg.File,
		Encrypted:     evt.Mautrix.EventSource&event.SourceDecrypted != 0,
	}
	if m.Encrypted {
		m.SenderTrust = evt.Mautrix.TrustState.String()
	}
	c.update(func() {
		delete(c.failures, evt.ID)
		if c.seen[evt.ID] {
			return
		}
		c.seen[evt.ID] = true
		c.messages = append(c.messages, m)
	})
}

func (c *MXClient) recordFailure(evt *event.Event, err error) {
	c.update(func() {
		c.failures[evt.ID] = DecryptionFailure{EventID: evt.ID, RoomID: evt.RoomID, Sender: evt.Sender, Reason: err.Error()}
	})
}

func (c *MXClient) recordInvite(_ context.Context, evt *event.Event) {
	if evt.GetStateKey() != c.Client.UserID.String() || evt.Content.AsMember().Membership != event.MembershipInvite {
		return
	}
	c.update(func() {
		for _, inv := range c.invites {
			if inv.roomID == evt.RoomID {
				return
			}
		}
		inv := mxInvite{roomID: evt.RoomID, inviter: evt.Sender}
		if c.autoJoin[evt.Sender] {
			inv.taken = true
			go c.acceptInvite(evt.RoomID)
		}
		c.invites = append(c.invites, inv)
	})
}

// acceptInvite joins roomID in the background (called from the sync loop, which must not wait
// for it); a failure is logged.
func (c *MXClient) acceptInvite(roomID id.RoomID) {
	ctx, cancel := c.requestContext()
	defer cancel()
	if _, err := c.Client.JoinRoomByID(ctx, roomID); err != nil {
		c.Client.Log.Warn().Err(err).Stringer("room_id", roomID).Msg("Failed to accept an invite")
	}
}

// AutoJoin makes the client join every invite from inviter on its own.
func (c *MXClient) AutoJoin(t testing.TB, inviter id.UserID) {
	t.Helper()
	c.update(func() {
		if c.autoJoin == nil {
			c.autoJoin = map[id.UserID]bool{}
		}
		c.autoJoin[inviter] = true
		for i := range c.invites {
			if inv := &c.invites[i]; !inv.taken && inv.inviter == inviter {
				inv.taken = true
				go c.acceptInvite(inv.roomID)
			}
		}
	})
}

// Kind is "mautrix".
func (c *MXClient) Kind() string { return "mautrix" }

// User is the client's user ID.
func (c *MXClient) User() id.UserID { return c.Client.UserID }

// Device is the client's device ID.
func (c *MXClient) Device() id.DeviceID { return c.Client.DeviceID }

// IdentityKey is the device's Curve25519 identity key.
func (c *MXClient) IdentityKey() id.IdentityKey { return c.helper.Machine().OwnIdentity().IdentityKey }

// Machine is the client's olm machine, for checks beyond the [E2EEClient] methods.
func (c *MXClient) Machine() *crypto.OlmMachine { return c.helper.Machine() }

func (c *MXClient) requestContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), requestTimeout)
}

// CreateDM creates an encrypted direct chat with other the way Element does.
func (c *MXClient) CreateDM(t testing.TB, other id.UserID) id.RoomID {
	t.Helper()
	return c.createRoom(t, &mautrix.ReqCreateRoom{
		Preset:   "trusted_private_chat",
		IsDirect: true,
		Invite:   []id.UserID{other},
	})
}

// CreateRoom creates an encrypted private room inviting invite, with powerLevels if not nil.
func (c *MXClient) CreateRoom(t testing.TB, invite []id.UserID, powerLevels *event.PowerLevelsEventContent) id.RoomID {
	t.Helper()
	return c.createRoom(t, &mautrix.ReqCreateRoom{
		Preset:             "private_chat",
		Invite:             invite,
		PowerLevelOverride: powerLevels,
	})
}

func (c *MXClient) createRoom(t testing.TB, req *mautrix.ReqCreateRoom) id.RoomID {
	t.Helper()
	req.Visibility = "private"
	req.InitialState = append(req.InitialState, &event.Event{
		Type:    event.StateEncryption,
		Content: event.Content{Parsed: &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}},
	})
	ctx, cancel := c.requestContext()
	defer cancel()
	resp, err := c.Client.CreateRoom(ctx, req)
	if err != nil {
		t.Fatalf("%s: creating a room: %v", c.name, err)
	}
	return resp.RoomID
}

// Join joins roomID.
func (c *MXClient) Join(t testing.TB, roomID id.RoomID) {
	t.Helper()
	ctx, cancel := c.requestContext()
	defer cancel()
	if _, err := c.Client.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatalf("%s: joining %s: %v", c.name, roomID, err)
	}
}

// SendText waits until the client's state store knows it joined roomID and that roomID is
// encrypted, then encrypts body (sharing the megolm session with the room's joined and invited
// members' devices if needed) and sends it as m.room.encrypted.
func (c *MXClient) SendText(t testing.TB, roomID id.RoomID, body string, timeout time.Duration) id.EventID {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	store := c.Client.StateStore
	c.wait(t, timeout, "room "+roomID.String()+" joined and known to be encrypted", func() bool {
		encrypted, err := store.IsEncrypted(ctx, roomID)
		return err == nil && encrypted && store.IsMembership(ctx, roomID, c.Client.UserID, event.MembershipJoin)
	})
	encrypted, err := c.helper.Encrypt(ctx, roomID, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: body})
	if err != nil {
		t.Fatalf("%s: encrypting a message for %s: %v", c.name, roomID, err)
	}
	resp, err := c.Client.SendMessageEvent(ctx, roomID, event.EventEncrypted, encrypted)
	if err != nil {
		t.Fatalf("%s: sending a message to %s: %v", c.name, roomID, err)
	}
	return resp.EventID
}

// WaitFor waits up to timeout for a message pred matches (see [E2EEClient]).
func (c *MXClient) WaitFor(t testing.TB, timeout time.Duration, pred func(*Message) bool) *Message {
	t.Helper()
	var found *Message
	next := 0
	c.wait(t, timeout, "a matching message", func() bool {
		found, next = c.find(next, pred)
		return found != nil
	})
	return found
}

// TryWaitFor is [MXClient.WaitFor] that reports a timeout.
func (c *MXClient) TryWaitFor(t testing.TB, timeout time.Duration, pred func(*Message) bool) (*Message, bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	next := 0
	for {
		c.mu.Lock()
		var found *Message
		found, next = c.find(next, pred)
		changed, syncErr := c.changed, c.syncErr
		c.mu.Unlock()
		if found != nil {
			return found, true
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, false
		}
		if syncErr != nil {
			t.Fatalf("%s: the sync loop stopped: %v", c.name, syncErr)
		}
		select {
		case <-changed:
		case <-time.After(left):
		}
	}
}

// find returns the first message from index next on that pred matches, and the index to go on
// from. It must be called under the lock.
func (c *MXClient) find(next int, pred func(*Message) bool) (*Message, int) {
	for ; next < len(c.messages); next++ {
		if pred(c.messages[next]) {
			return c.messages[next], next + 1
		}
	}
	return nil, next
}

// WaitForInvite waits up to timeout for an invite from inviter that no earlier call returned.
func (c *MXClient) WaitForInvite(t testing.TB, inviter id.UserID, timeout time.Duration) id.RoomID {
	t.Helper()
	var roomID id.RoomID
	c.wait(t, timeout, "an invite from "+inviter.String(), func() bool {
		for i := range c.invites {
			if inv := &c.invites[i]; !inv.taken && inv.inviter == inviter {
				inv.taken = true
				roomID = inv.roomID
				return true
			}
		}
		return false
	})
	return roomID
}

// DecryptionFailures returns the events the client gave up decrypting, and has not decrypted
// since. (The crypto helper waits up to 25 s for a missing key before it gives up.)
func (c *MXClient) DecryptionFailures(t testing.TB) []DecryptionFailure {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]DecryptionFailure, 0, len(c.failures))
	for _, f := range c.failures {
		out = append(out, f)
	}
	slices.SortFunc(out, func(a, b DecryptionFailure) int {
		if a.EventID < b.EventID {
			return -1
		} else if a.EventID > b.EventID {
			return 1
		}
		return 0
	})
	return out
}

// Download downloads file through the authenticated media API and decrypts it with mautrix's
// attachment code, which checks the SHA-256 of the ciphertext first.
func (c *MXClient) Download(t testing.TB, file *event.EncryptedFileInfo) []byte {
	t.Helper()
	if file == nil {
		t.Fatalf("%s: Download: no file", c.name)
	}
	uri, err := file.URL.Parse()
	if err != nil {
		t.Fatalf("%s: parsing %q: %v", c.name, file.URL, err)
	}
	ctx, cancel := c.requestContext()
	defer cancel()
	ciphertext, err := c.Client.DownloadBytes(ctx, uri)
	if err != nil {
		t.Fatalf("%s: downloading %s: %v", c.name, file.URL, err)
	}
	if err := file.DecryptInPlace(ciphertext); err != nil {
		t.Fatalf("%s: decrypting %s: %v", c.name, file.URL, err)
	}
	return ciphertext
}

// DeviceCrossSigned fetches user's keys from the homeserver and reports whether the device is
// signed by user's self-signing key, itself signed by user's master key (any cross-signed trust
// state: mautrix's ResolveTrustContext checks both signatures).
func (c *MXClient) DeviceCrossSigned(t testing.TB, user id.UserID, device id.DeviceID) bool {
	t.Helper()
	ctx, cancel := c.requestContext()
	defer cancel()
	mach := c.helper.Machine()
	devices, err := mach.FetchKeys(ctx, []id.UserID{user}, true)
	if err != nil {
		t.Fatalf("%s: fetching the keys of %s: %v", c.name, user, err)
	}
	dev, ok := devices[user][device]
	if !ok {
		if dev, err = mach.GetOrFetchDevice(ctx, user, device); err != nil {
			t.Fatalf("%s: device %s of %s is unknown: %v", c.name, device, user, err)
		}
	}
	trust, err := mach.ResolveTrustContext(ctx, dev)
	if err != nil {
		t.Fatalf("%s: resolving the trust of %s's device %s: %v", c.name, user, device, err)
	}
	switch trust {
	case id.TrustStateCrossSignedUntrusted, id.TrustStateCrossSignedTOFU, id.TrustStateCrossSignedVerified:
		return true
	default:
		return false
	}
}

// CrossSign sets up cross-signing for the client's user, as a client does on first login: it
// generates the master, self-signing and user-signing keys, uploads them (with the user's
// password for user-interactive auth, should the homeserver ask) and signs its own device and
// master key.
func (c *MXClient) CrossSign(t testing.TB) {
	t.Helper()
	ctx, cancel := c.requestContext()
	defer cancel()
	mach := c.helper.Machine()
	if _, _, err := mach.GenerateAndUploadCrossSigningKeysWithPassword(ctx, c.password, ""); err != nil {
		t.Fatalf("%s: uploading cross-signing keys: %v", c.name, err)
	}
	if err := mach.SignOwnDevice(ctx, mach.OwnIdentity()); err != nil {
		t.Fatalf("%s: signing its own device: %v", c.name, err)
	}
	if err := mach.SignOwnMasterKey(ctx); err != nil {
		t.Fatalf("%s: signing its own master key: %v", c.name, err)
	}
}

// String names the client for messages.
func (c *MXClient) String() string { return fmt.Sprintf("%s (%s)", c.name, c.Client.DeviceID) }

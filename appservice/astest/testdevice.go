package astest

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// TestDevice is a Matrix user's end-to-end encryption device on a [FakeHomeserver], with its own
// olm machine and in-memory crypto store: a stand-in for the user's client in tests of what
// Custodian encrypts. It uploads its keys when created, takes the room keys sent to it with
// [TestDevice.Receive] and decrypts room events with [TestDevice.Decrypt]. It is not safe for
// concurrent use.
type TestDevice struct {
	UserID   id.UserID
	DeviceID id.DeviceID
	// Mach is the device's olm machine.
	Mach *crypto.OlmMachine

	hs       *FakeHomeserver
	received int
}

// NewTestDevice creates device deviceID of userID on hs, acting through hs's appservice token
// (as an appservice user), and uploads its device keys and one-time keys.
func NewTestDevice(t testing.TB, hs *FakeHomeserver, userID id.UserID, deviceID id.DeviceID) *TestDevice {
	t.Helper()
	log := zerolog.New(LogWriter(t)).Level(zerolog.InfoLevel).With().Stringer("test_device", userID).Logger()
	ctx := log.WithContext(context.Background())
	cli, err := mautrix.NewClient(hs.URL(), userID, hs.asToken)
	if err != nil {
		t.Fatalf("astest: %v", err)
	}
	cli.SetAppServiceUserID = true
	cli.DeviceID = deviceID
	cli.DefaultHTTPRetries = 0
	cli.Log = log
	states, ok := mautrix.NewMemoryStateStore().(crypto.StateStore)
	if !ok {
		t.Fatal("astest: mautrix's memory state store is no crypto state store")
	}
	mach := crypto.NewOlmMachine(cli, &log, crypto.NewMemoryStore(nil), states)
	if err = mach.Load(ctx); err != nil {
		t.Fatalf("astest: failed to load the test device's account: %v", err)
	}
	if err = mach.ShareKeys(ctx, -1); err != nil {
		t.Fatalf("astest: failed to upload the test device's keys: %v", err)
	}
	return &TestDevice{UserID: userID, DeviceID: deviceID, Mach: mach, hs: hs}
}

// Receive hands the device the to-device messages hs accepted for it since the last call, in
// order, and returns how many there were.
func (d *TestDevice) Receive(ctx context.Context) int {
	n := 0
	msgs := d.hs.ToDevice(d.UserID)
	for _, msg := range msgs[d.received:] {
		if msg.DeviceID != d.DeviceID && msg.DeviceID != "*" {
			continue
		}
		evt := &event.Event{
			Sender:   msg.Sender,
			Type:     event.Type{Type: msg.Type, Class: event.ToDeviceEventType},
			Content:  event.Content{VeryRaw: msg.Content},
			ToUserID: d.UserID, ToDeviceID: d.DeviceID,
		}
		if err := evt.Content.ParseRaw(evt.Type); err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("Test device got an unparsable to-device message")
			continue
		}
		d.Mach.HandleToDeviceEvent(ctx, evt)
		n++
	}
	d.received = len(msgs)
	return n
}

// Decrypt decrypts se, an m.room.encrypted event hs accepted, with the room keys the device
// received.
func (d *TestDevice) Decrypt(ctx context.Context, se *SentEvent) (*event.Event, error) {
	evt := &event.Event{
		ID: se.EventID, RoomID: se.RoomID, Sender: se.Sender, Type: se.Type,
		Timestamp: time.Now().UnixMilli(), Content: event.Content{VeryRaw: se.Content},
	}
	if err := evt.Content.ParseRaw(evt.Type); err != nil {
		return nil, err
	}
	return d.Mach.DecryptMegolmEvent(ctx, evt)
}

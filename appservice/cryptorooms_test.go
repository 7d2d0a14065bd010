package appservice

import (
	"context"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/e2ee"
)

// testBotDevice is the bot's device ID in tests with encryption on.
const testBotDevice = id.DeviceID("CUSTODIANBOT")

// enableTestCrypto turns svc's encryption on as start-up does once the bot's device is set up:
// a real olm machine on a crypto store in svc's database, whose device keys are uploaded to the
// fake homeserver, set as the bot's client's Crypto and as svc.crypto.
func enableTestCrypto(t *testing.T, ctx context.Context, svc *Service) *e2ee.Machine {
	t.Helper()
	log := zerolog.Ctx(ctx).With().Str("component", "crypto").Logger()
	if err := e2ee.Upgrade(ctx, svc.rawDB, log); err != nil {
		t.Fatal(err)
	}
	pickleKey := []byte("test pickle key, 32 bytes long!!")
	store := crypto.NewSQLCryptoStore(svc.rawDB, dbutil.ZeroLogger(log), e2ee.AccountID, testBotDevice, pickleKey)
	cli := svc.as.BotClient()
	cli.DeviceID = testBotDevice
	mach := e2ee.NewMachine(cli, store, svc.stateStore, log)
	if err := mach.Olm().Load(ctx); err != nil {
		t.Fatalf("failed to load the bot's account: %v", err)
	}
	if err := mach.Olm().ShareKeys(ctx, -1); err != nil {
		t.Fatalf("failed to upload the bot's device keys: %v", err)
	}
	cli.Crypto = mach
	svc.crypto = mach
	return mach
}

// encryptedContent returns the body of se, an m.room.encrypted event, as dev decrypts it after
// receiving its room keys; it fails the test when se is not encrypted or dev cannot decrypt it.
func decryptedBody(t *testing.T, ctx context.Context, dev *astest.TestDevice, se *astest.SentEvent) *event.MessageEventContent {
	t.Helper()
	if se.Type != event.EventEncrypted {
		t.Fatalf("event %s on the wire is %s, want m.room.encrypted", se.EventID, se.Type.Type)
	}
	dev.Receive(ctx)
	evt, err := dev.Decrypt(ctx, se)
	if err != nil {
		t.Fatalf("%s's device cannot decrypt %s: %v", dev.UserID, se.EventID, err)
	}
	if evt.Sender != se.Sender || evt.RoomID != se.RoomID {
		t.Errorf("decrypted event from %s in %s, want from %s in %s", evt.Sender, evt.RoomID, se.Sender, se.RoomID)
	}
	content := evt.Content.AsMessage()
	if content == nil {
		t.Fatalf("decrypted %s is %s, not a message", se.EventID, evt.Type.Type)
	}
	return content
}

var testEncryption = map[string]any{"algorithm": "m.megolm.v1.aes-sha2"}

func TestBotWelcomeInEncryptedRoomIsEncrypted(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newBotEnvOn(t, dialect, nil)
			enableTestCrypto(t, env.ctx, env.svc)
			alice := astest.NewTestDevice(t, env.hs, botTestAlice, "ALICEPHONE")
			bob := astest.NewTestDevice(t, env.hs, botTestBob, "BOBLAPTOP")
			// Bob is only invited: he must get the room key all the same, so he can read what
			// was sent before he joins.
			env.hs.SetMembership(botTestRoom, botTestBob, event.MembershipInvite)
			env.hs.SetState(botTestRoom, event.StateEncryption, "", botTestAlice, testEncryption)
			env.setUpRoom(false, botTestAlice)

			sent := env.hs.Events(botTestRoom)
			var welcome *astest.SentEvent
			for _, se := range sent {
				if se.Type.Class == event.MessageEventType && se.Sender == botTestBot {
					if welcome != nil {
						t.Fatalf("bot sent more than one message: %s and %s", welcome.EventID, se.EventID)
					}
					welcome = se
				}
			}
			if welcome == nil {
				t.Fatal("bot sent no welcome")
			}
			if strings.Contains(string(welcome.Content), "Custodian") {
				t.Errorf("welcome on the wire holds plaintext: %s", welcome.Content)
			}
			for _, dev := range []*astest.TestDevice{alice, bob} {
				content := decryptedBody(t, env.ctx, dev, welcome)
				if !strings.Contains(content.Body, "!help") || strings.Contains(content.Body, "can't read encrypted") {
					t.Errorf("welcome %s decrypts = %q, want the welcome without the warning", dev.UserID, content.Body)
				}
			}
		})
	}
}

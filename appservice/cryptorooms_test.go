package appservice

import (
	"context"
	"encoding/json"
	"slices"
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

// decryptedBody returns the content of se, an m.room.encrypted event, as dev decrypts it after
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

func TestManagementRoomEncryptedByDefault(t *testing.T) {
	tests := []struct {
		name             string
		crypto           bool
		defaultEncrypted bool
		wantEncrypted    bool
	}{
		{name: "encryption active, default encrypted", crypto: true, defaultEncrypted: true, wantEncrypted: true},
		{name: "encryption active, default unencrypted", crypto: true, defaultEncrypted: false},
		{name: "encryption off", crypto: false, defaultEncrypted: true},
	}
	for _, dialect := range astest.Dialects(t) {
		for _, tt := range tests {
			t.Run(dialect+"/"+tt.name, func(t *testing.T) {
				env := newBotEnvOn(t, dialect, func(cfg *Config) { cfg.Encryption.DefaultEncrypted = tt.defaultEncrypted })
				env.svc.notifier = NewNotifier(env.svc.as.BotIntent(), env.svc.db.User)
				env.svc.notifier.EncryptRooms(env.svc.encryptOpenedRooms)
				if tt.crypto {
					enableTestCrypto(t, env.ctx, env.svc)
				}
				alice := astest.NewTestDevice(t, env.hs, botTestAlice, "ALICEPHONE")

				roomID, evtID, err := env.svc.NotifyUser(env.ctx, botTestAlice, notice("$cause", "test", "your webhook secret is hunter2"))
				if err != nil {
					t.Fatal(err)
				}
				var create struct {
					InitialState []struct {
						Type    string                       `json:"type"`
						Content event.EncryptionEventContent `json:"content"`
					} `json:"initial_state"`
				}
				reqs := env.hs.RequestsTo(astest.PatternCreateRoom)
				if len(reqs) != 1 {
					t.Fatalf("%d createRoom requests, want 1", len(reqs))
				}
				if err = reqs[0].DecodeBody(&create); err != nil {
					t.Fatal(err)
				}
				var encryption *event.EncryptionEventContent
				for _, st := range create.InitialState {
					if st.Type == event.StateEncryption.Type {
						encryption = &st.Content
					}
				}
				if !tt.wantEncrypted {
					if encryption != nil {
						t.Errorf("management room created with %+v, want no encryption", encryption)
					}
					if msgs := env.hs.Messages(roomID); len(msgs) != 1 || msgs[0].EventID != evtID {
						t.Errorf("messages in the room = %d, want the plaintext notice", len(msgs))
					}
					return
				}
				if encryption == nil || encryption.Algorithm != id.AlgorithmMegolmV1 || encryption.RotationPeriodMillis != 24*60*60*1000 {
					t.Fatalf("management room's initial encryption = %+v, want megolm rotated daily", encryption)
				}
				// The state cache knew at once, without a member event or a state fetch.
				if gets := env.hs.RequestsTo(astest.PatternGetState); len(gets) != 0 {
					t.Errorf("%d state fetches before the first notice, want none", len(gets))
				}
				var sent *astest.SentEvent
				for _, se := range env.hs.Events(roomID) {
					if se.EventID == evtID {
						sent = se
					}
				}
				if sent == nil {
					t.Fatalf("notice %s not in %s", evtID, roomID)
				}
				if strings.Contains(string(sent.Content), "hunter2") {
					t.Errorf("notice on the wire holds plaintext: %s", sent.Content)
				}
				if got := decryptedBody(t, env.ctx, alice, sent).Body; got != "your webhook secret is hunter2" {
					t.Errorf("alice decrypts %q, want the notice", got)
				}
			})
		}
	}
}

func TestExportFileInEncryptedDMIsEncrypted(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newPrivacyEnv(t, dialect, nil)
			enableTestCrypto(t, env.ctx, env.svc)
			env.start()
			alice := astest.NewTestDevice(t, env.hs.FakeHomeserver, pvAlice, "ALICEPHONE")
			env.hs.SetState(pvDM, event.StateEncryption, "", pvAlice, testEncryption)
			env.setUpRoom(pvDM, true, pvAlice)
			env.addHook(env.hooks, "h1", pvAlice, pvRoom, "$add1")
			env.text(pvDM, pvAlice, "export")

			if msgs := env.hs.Messages(pvDM); len(msgs) != 0 {
				t.Errorf("%d plaintext messages in the encrypted direct chat, want none", len(msgs))
			}
			var file *event.MessageEventContent
			for _, se := range env.hs.Events(pvDM) {
				if se.Type.Class != event.MessageEventType || se.Sender != pvBot {
					continue
				}
				if content := decryptedBody(t, env.ctx, alice, se); content.MsgType == event.MsgFile {
					file = content
				}
			}
			if file == nil || file.File == nil {
				t.Fatalf("alice decrypted no m.file with an encrypted attachment (%+v)", file)
			}
			data := slices.Clone(env.hs.upload(0))
			if err := file.File.DecryptInPlace(data); err != nil {
				t.Fatalf("decrypting the upload with the key from the encrypted message: %v", err)
			}
			var export Export
			if err := json.Unmarshal(data, &export); err != nil || export.User != pvAlice {
				t.Errorf("export = user %s (%v), want alice's", export.User, err)
			}
		})
	}
}

// TestBotSendsNoWelcomeWithoutRoomState: when the room's state cannot be loaded after joining,
// the bot cannot tell whether the room is encrypted, so it sends nothing rather than risk a
// plaintext message in an encrypted room; the setup is recorded all the same.
func TestBotSendsNoWelcomeWithoutRoomState(t *testing.T) {
	tests := []struct {
		name    string
		pattern string
	}{
		{name: "members", pattern: astest.PatternMembers},
		{name: "encryption", pattern: astest.PatternGetState},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := newBotEnv(t, nil)
			enableTestCrypto(t, env.ctx, env.svc)
			env.hs.SetState(botTestRoom, event.StateEncryption, "", botTestAlice, testEncryption)
			env.hs.SetMembership(botTestRoom, botTestAlice, event.MembershipJoin)
			env.hs.SetMembership(botTestRoom, botTestBot, event.MembershipInvite)
			env.hs.Fail(tt.pattern, 403, "M_FORBIDDEN")
			invite := env.member(botTestRoom, botTestAlice, botTestBot, event.MembershipInvite, nil)
			if err := env.deliver(invite); err == nil {
				t.Error("handling the invite succeeded, want an error saying the room's state is missing")
			}
			if got := env.hs.Membership(botTestRoom, botTestBot); got != event.MembershipJoin {
				t.Errorf("bot membership = %q, want join", got)
			}
			if env.setup() == nil {
				t.Error("no setup recorded")
			}
			if sends := env.hs.RequestsTo(astest.PatternSend); len(sends) != 0 {
				t.Errorf("bot sent %d messages, want none", len(sends))
			}
		})
	}
}

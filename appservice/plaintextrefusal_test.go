package appservice

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/privacy"
)

// TestSensitiveSendsRefuseEncryptedRoomsWithoutCrypto sends notices with no crypto helper (as
// after a start without the vault's master key): into a room the state cache or only the
// homeserver knows as encrypted, the notifier and SendMessageSensitive refuse with
// ErrNoEncryption and nothing reaches the homeserver; into an unencrypted room the notice goes
// out.
func TestSensitiveSendsRefuseEncryptedRoomsWithoutCrypto(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			tests := []struct {
				name       string
				cached, hs bool
				wantErr    error
			}{
				{name: "encrypted in the state cache", cached: true, wantErr: ErrNoEncryption},
				{name: "encrypted on the homeserver only", hs: true, wantErr: ErrNoEncryption},
				{name: "unencrypted"},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					env := newNotifyEnv(t, dialect)
					bot := env.nf.bot
					if bot.Client.Crypto != nil {
						t.Fatal("the test's client has a crypto helper")
					}
					alice := id.UserID("@alice:" + testDomain)
					roomID := id.RoomID("!mgmt:" + testDomain)
					env.hs.SetMembership(roomID, env.bot, event.MembershipJoin)
					env.hs.SetMembership(roomID, alice, event.MembershipJoin)
					encryption := &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}
					if tt.hs {
						env.hs.SetState(roomID, event.StateEncryption, "", alice, encryption)
					}
					if tt.cached {
						if err := bot.StateStore.SetEncryptionEvent(env.ctx, roomID, encryption); err != nil {
							t.Fatal(err)
						}
					}
					if err := env.db.User.SetManagementRoom(env.ctx, alice, roomID); err != nil {
						t.Fatal(err)
					}
					_, _, err := env.nf.Notify(env.ctx, alice, "webhook", notice("$cause", "secret", "url and signing secret"))
					if !errors.Is(err, tt.wantErr) {
						t.Errorf("Notify error = %v, want %v", err, tt.wantErr)
					}
					_, err = SendMessageSensitive(env.ctx, bot.Client, roomID, event.EventMessage,
						&event.MessageEventContent{MsgType: event.MsgNotice, Body: "secret"}, "txn-direct")
					if !errors.Is(err, tt.wantErr) {
						t.Errorf("SendMessageSensitive error = %v, want %v", err, tt.wantErr)
					}
					sent := len(env.hs.RequestsTo(astest.PatternSend))
					if want := map[bool]int{true: 0, false: 2}[tt.wantErr != nil]; sent != want {
						t.Errorf("%d sends reached the homeserver, want %d", sent, want)
					}
				})
			}
		})
	}
}

// TestCommandReplyRefusedInEncryptedRoomWithoutCrypto has Alice send !help (in plaintext, as a
// client that does not encrypt would) in a room that is encrypted while the bot has no crypto:
// the welcome's warning that the bot can't read the room goes out, the reply does not, and the
// handler reports ErrNoEncryption. In the same room unencrypted, the reply goes out.
func TestCommandReplyRefusedInEncryptedRoomWithoutCrypto(t *testing.T) {
	for _, encrypted := range []bool{true, false} {
		t.Run(map[bool]string{true: "encrypted", false: "unencrypted"}[encrypted], func(t *testing.T) {
			env := newBotEnv(t, nil)
			if encrypted {
				env.hs.SetState(botTestRoom, event.StateEncryption, "", botTestAlice, map[string]any{"algorithm": "m.megolm.v1.aes-sha2"})
			}
			env.setUpRoom(false, botTestAlice)
			before := len(env.messages())
			err := env.deliver(env.text(botTestRoom, botTestAlice, "!help"))
			sent := len(env.messages()) - before
			if encrypted {
				if !errors.Is(err, ErrNoEncryption) {
					t.Errorf("handling !help = %v, want %v", err, ErrNoEncryption)
				}
				if sent != 0 {
					t.Errorf("%d replies sent into the encrypted room without crypto, want 0", sent)
				}
			} else if err != nil || sent != 1 {
				t.Errorf("handling !help = %v with %d replies, want one reply", err, sent)
			}
		})
	}
}

// botMessagesIn returns the message events the bot sent into roomID (encrypted or not), from
// the from'th event on.
func botMessagesIn(hs *astest.FakeHomeserver, roomID id.RoomID, bot id.UserID, from int) []*astest.SentEvent {
	var out []*astest.SentEvent
	for _, se := range hs.Events(roomID)[from:] {
		if se.Type.Class == event.MessageEventType && se.Sender == bot {
			out = append(out, se)
		}
	}
	return out
}

// checkEncryptedOnly checks that sent is one m.room.encrypted event without body in it, that
// reader decrypts to body.
func checkEncryptedOnly(t *testing.T, ctx context.Context, reader *astest.TestDevice, sent []*astest.SentEvent, body string) {
	t.Helper()
	if len(sent) != 1 {
		t.Fatalf("the bot sent %d messages, want 1", len(sent))
	}
	if strings.Contains(string(sent[0].Content), body) {
		t.Errorf("the message on the wire holds its plaintext: %s", sent[0].Content)
	}
	if got := decryptedBody(t, ctx, reader, sent[0]).Body; !strings.Contains(got, body) {
		t.Errorf("the message decrypts to %q, want it to hold %q", got, body)
	}
}

// TestSensitiveSendsTrustNoStaleStateCache turns a room encrypted on the homeserver after the
// bot read its state, so the state cache still holds it unencrypted (as after a restart, a
// scrub of the cache, or an m.room.encryption event not yet delivered): with crypto,
// SendMessageSensitive sends m.room.encrypted, which Alice decrypts; without, it refuses with
// ErrNoEncryption and nothing reaches the room.
func TestSensitiveSendsTrustNoStaleStateCache(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			for _, withCrypto := range []bool{true, false} {
				t.Run(map[bool]string{true: "with crypto", false: "without crypto"}[withCrypto], func(t *testing.T) {
					env := newBotEnvOn(t, dialect, nil)
					var alice *astest.TestDevice
					if withCrypto {
						enableTestCrypto(t, env.ctx, env.svc)
						alice = astest.NewTestDevice(t, env.hs, botTestAlice, "ALICEPHONE")
					}
					env.setUpRoom(false, botTestAlice)
					env.hs.SetState(botTestRoom, event.StateEncryption, "", botTestAlice, testEncryption)
					if cached, err := env.svc.stateStore.IsEncrypted(env.ctx, botTestRoom); err != nil || cached {
						t.Fatalf("state cache says encrypted = %t (%v); the test needs it stale", cached, err)
					}
					before := len(env.hs.Events(botTestRoom))

					const secret = "the hook's signing secret"
					_, err := SendMessageSensitive(env.ctx, env.svc.as.BotClient(), botTestRoom, event.EventMessage,
						&event.MessageEventContent{MsgType: event.MsgNotice, Body: secret}, "txn-stale-cache")
					sent := botMessagesIn(env.hs, botTestRoom, botTestBot, before)
					if !withCrypto {
						if !errors.Is(err, ErrNoEncryption) {
							t.Errorf("SendMessageSensitive = %v, want %v", err, ErrNoEncryption)
						}
						if len(sent) != 0 {
							t.Errorf("%d messages reached the encrypted room without crypto, want 0", len(sent))
						}
						return
					}
					if err != nil {
						t.Fatalf("SendMessageSensitive = %v", err)
					}
					checkEncryptedOnly(t, env.ctx, alice, sent, secret)
				})
			}
		})
	}
}

// TestBotWelcomeEncryptedWhenRoomTurnsEncryptedAfterJoin has the direct chat turn encrypted
// right after the bot read the room's state on joining, before the m.room.encryption event
// reaches it: the welcome is encrypted all the same, and Alice decrypts it.
func TestBotWelcomeEncryptedWhenRoomTurnsEncryptedAfterJoin(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newBotEnvOn(t, dialect, nil)
			enableTestCrypto(t, env.ctx, env.svc)
			alice := astest.NewTestDevice(t, env.hs, botTestAlice, "ALICEPHONE")
			// The direct-chat check reads the joined members after the state was read on joining.
			var turnedOn atomic.Bool
			env.hs.OnRequest(astest.PatternJoinedMembers, func() {
				if !turnedOn.Swap(true) {
					env.hs.SetState(botTestRoom, event.StateEncryption, "", botTestAlice, testEncryption)
				}
			})
			env.setUpRoom(true, botTestAlice)
			if !turnedOn.Load() {
				t.Fatal("the room never turned encrypted during the join; the test would prove nothing")
			}
			checkEncryptedOnly(t, env.ctx, alice, botMessagesIn(env.hs, botTestRoom, botTestBot, 0), "Custodian bot")
		})
	}
}

// TestCoreNoticesTrustNoStaleStateCache sends the core's notices about people's data into a
// room that is encrypted on the homeserver only, while the state cache holds it unencrypted:
// the receipt of a bridge-only erasure (which leaves the state cache and the crypto store
// alone, so nothing reads the room's state before the receipt) and the announcement of what a
// redaction purged. With crypto each goes out encrypted and Alice reads it. Without crypto
// (encryption configured on but its set-up failed, or off) none is sent: the announcement's
// handler fails, and the receipt is given up without an error, so that the rest of the
// erasure's cleanup is not held up.
func TestCoreNoticesTrustNoStaleStateCache(t *testing.T) {
	senders := []struct {
		name string
		// send sends the notice into pvRoom.
		send func(env *privacyEnv) error
		// text is in the notice; givenUp: no error without crypto.
		text    string
		givenUp bool
	}{
		{name: "erasure receipt", text: "erased the hooks", givenUp: true, send: func(env *privacyEnv) error {
			hash, keyID, err := env.svc.engine.UserHash(env.ctx, pvAlice)
			if err != nil {
				return err
			}
			job := &privacy.ErasureJob{
				JobID: "er_hooks", User: pvAlice, UserHash: hash, HashKeyID: keyID, Trigger: TriggerUser,
				Modules: []string{"hooks"}, NotifyRoom: pvRoom, CreatedAt: env.clock.Now(),
			}
			if _, err = env.svc.engine.Store().CreateErasure(env.ctx, job); err != nil {
				return err
			}
			return engineHost{env.svc}.SendErasureReceipt(env.ctx, pvRoom, job.JobID, hash, "Done: I erased the hooks Custodian held about you.")
		}},
		{name: "redaction purge", text: "Removed the configuration", send: func(env *privacyEnv) error {
			redaction := &event.Event{ID: "$redaction", RoomID: pvRoom, Sender: pvAlice, Type: event.EventRedaction}
			return env.svc.announcePurge(env.ctx, redaction, map[string]map[string]int64{"hooks": {"hooks_hook": 1}})
		}},
	}
	modes := []struct {
		name               string
		crypto, configured bool
	}{
		{name: "with crypto", crypto: true, configured: true},
		{name: "configured without crypto", configured: true},
		{name: "encryption off"},
	}
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			for _, sender := range senders {
				for _, mode := range modes {
					t.Run(sender.name+"/"+mode.name, func(t *testing.T) {
						env := newPrivacyEnv(t, dialect, func(cfg *Config) { cfg.Encryption.Enabled = mode.configured })
						var alice *astest.TestDevice
						if mode.crypto {
							enableTestCrypto(t, env.ctx, env.svc)
							alice = astest.NewTestDevice(t, env.hs.FakeHomeserver, pvAlice, "ALICEPHONE")
						}
						for _, member := range []id.UserID{pvBot, pvAlice} {
							env.hs.SetMembership(pvRoom, member, event.MembershipJoin)
							if err := env.svc.stateStore.SetMembership(env.ctx, pvRoom, member, event.MembershipJoin); err != nil {
								t.Fatal(err)
							}
						}
						env.hs.SetState(pvRoom, event.StateEncryption, "", pvAlice, testEncryption)

						err := sender.send(env)
						sent := botMessagesIn(env.hs.FakeHomeserver, pvRoom, pvBot, 0)
						if mode.crypto {
							if err != nil {
								t.Fatalf("sending = %v", err)
							}
							checkEncryptedOnly(t, env.ctx, alice, sent, sender.text)
							return
						}
						if wantErr := !sender.givenUp; (err != nil) != wantErr {
							t.Errorf("sending = %v, want an error: %t", err, wantErr)
						}
						if len(sent) != 0 {
							t.Errorf("%d notices reached the encrypted room without crypto, want 0", len(sent))
						}
					})
				}
			}
		})
	}
}

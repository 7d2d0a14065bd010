package appservice

import (
	"errors"
	"testing"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
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

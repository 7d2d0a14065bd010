package irc

import (
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/astest/fakehost"
	"github.com/custodian-matrix/custodian/bridges/irc/ircdb"
)

func TestPortalEncryption(t *testing.T) {
	tests := []struct {
		name           string
		encryptPortals bool
		crypto         bool
		want           bool
	}{
		{name: "default", crypto: true},
		{name: "encrypt_portals, encryption active", encryptPortals: true, crypto: true, want: true},
		{name: "encrypt_portals, encryption off", encryptPortals: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			br := New()
			br.cfg.EncryptPortals = tt.encryptPortals
			host := fakehost.New(t, astest.SQLite, br)
			if tt.crypto {
				host.EnableCrypto(t)
			}
			br.host = host
			req := br.portalRoomRequest(&network{cfg: &NetworkConfig{ID: testNet}}, testChannel, "")
			var encryption *event.EncryptionEventContent
			for _, st := range req.InitialState {
				if st.Type == event.StateEncryption {
					encryption, _ = st.Content.Parsed.(*event.EncryptionEventContent)
				}
			}
			if got := encryption != nil; got != tt.want {
				t.Fatalf("portal created encrypted = %v (%+v), want %v", got, req.InitialState, tt.want)
			}
			if tt.want && (encryption.Algorithm != id.AlgorithmMegolmV1 || encryption.RotationPeriodMillis != 24*60*60*1000) {
				t.Errorf("portal encryption = %+v, want megolm rotated daily", encryption)
			}
		})
	}
}

// TestPrivateChatEncryption: with encrypt_portals and the core's encryption active, the
// private chat an IRC user opens is created encrypted, and the ghost's messages there are
// encrypted for the Matrix user's devices; without encrypt_portals it stays in plaintext.
func TestPrivateChatEncryption(t *testing.T) {
	for _, encryptPortals := range []bool{false, true} {
		t.Run(map[bool]string{false: "default", true: "encrypt_portals"}[encryptPortals], func(t *testing.T) {
			ec := envConfig{crypto: true, configure: func(cfg *Config) { cfg.EncryptPortals = encryptPortals }}
			forEachDialect(t, ec, func(t *testing.T, env *testEnv) {
				alice := astest.NewTestDevice(t, env.host.HS, testAlice, "ALICEPHONE")
				carol := env.srv.Client(t, "carol")
				env.say(testAlice, "i am here")
				env.waitMembers(testChannel, "alice[m]")
				if err := carol.Privmsg("alice[m]", "psst, alice"); err != nil {
					t.Fatal(err)
				}
				ghost := ghostID(t, "carol")
				sent := env.waitEvent("", "the private message", func(evt *astest.SentEvent) bool {
					return (evt.Type == event.EventEncrypted || evt.Type == event.EventMessage) && evt.Sender == ghost
				})
				created := env.host.CreatedRooms()
				if len(created) != 1 || created[0].RoomID != sent.RoomID {
					t.Fatalf("created rooms = %+v, want the private chat", created)
				}
				if !encryptPortals {
					if created[0].Encryption != nil || sent.Type != event.EventMessage {
						t.Errorf("private chat encryption %+v, message %s; want an unencrypted room", created[0].Encryption, sent.Type.Type)
					}
					return
				}
				if created[0].Encryption == nil || sent.Type != event.EventEncrypted {
					t.Fatalf("private chat encryption %+v, message %s; want an encrypted room and message", created[0].Encryption, sent.Type.Type)
				}
				if strings.Contains(string(sent.Content), "psst") {
					t.Errorf("ciphertext holds the message: %s", sent.Content)
				}
				alice.Receive(env.ctx)
				evt, err := alice.Decrypt(env.ctx, sent)
				if err != nil {
					t.Fatalf("alice cannot decrypt the private message: %v", err)
				}
				if body := evt.Content.AsMessage().Body; body != "psst, alice" {
					t.Errorf("alice decrypts %q, want the private message", body)
				}
			})
		})
	}
}

// TestPrivateMessageIntoEncryptedChatWithoutEncryption: a private chat made encrypted earlier,
// while the core's encryption is now off (as after a start without the vault's master key).
// Two private messages from an IRC user are dropped, not sent in plaintext, whether the state
// cache knows the chat as encrypted or only the homeserver does; the drop is a Warn, once, that
// holds no text. Into the same chat unencrypted, the message goes out.
func TestPrivateMessageIntoEncryptedChatWithoutEncryption(t *testing.T) {
	tests := []struct {
		name       string
		cached, hs bool
	}{
		{name: "encrypted in the state cache", cached: true},
		{name: "encrypted on the homeserver only", hs: true},
		{name: "unencrypted"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ec := envConfig{configure: func(cfg *Config) { cfg.EncryptPortals = true }}
			forEachDialect(t, ec, func(t *testing.T, env *testEnv) {
				pmRoom := id.RoomID("!pm:example.org")
				ghost := ghostID(t, "carol")
				if err := env.br.recordPM(env.ctx, &ircdb.PM{UserID: testAlice, Network: testNet, Nick: "carol", RoomID: pmRoom, CreatedAt: time.Now()}); err != nil {
					t.Fatal(err)
				}
				for _, userID := range []id.UserID{ghost, testAlice} {
					env.host.HS.SetMembership(pmRoom, userID, event.MembershipJoin)
					if err := env.host.AS.StateStore.SetMembership(env.ctx, pmRoom, userID, event.MembershipJoin); err != nil {
						t.Fatal(err)
					}
				}
				encryption := &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}
				if tt.hs {
					env.host.HS.SetState(pmRoom, event.StateEncryption, "", testAlice, encryption)
				}
				if tt.cached {
					if err := env.host.AS.StateStore.SetEncryptionEvent(env.ctx, pmRoom, encryption); err != nil {
						t.Fatal(err)
					}
				}
				env.say(testAlice, "i am here")
				env.waitMembers(testChannel, "alice[m]")
				carol := env.srv.Client(t, "carol")
				if !tt.cached && !tt.hs {
					if err := carol.Privmsg("alice[m]", "psst, alice"); err != nil {
						t.Fatal(err)
					}
					env.waitMessage(pmRoom, ghost, "psst, alice")
					return
				}
				for _, text := range []string{"psst, alice", "psst again"} {
					if err := carol.Privmsg("alice[m]", text); err != nil {
						t.Fatal(err)
					}
				}
				const dropped = "Dropped an IRC message for an encrypted private chat"
				env.eventually("both private messages are dropped", func() bool {
					return strings.Contains(env.logs.String(), dropped)
				})
				logs := env.logs.String()
				if n := strings.Count(logs, "Dropping IRC messages for an encrypted private chat"); n != 1 {
					t.Errorf("the drop was warned about %d times, want once", n)
				}
				if strings.Contains(logs, "psst") {
					t.Error("the logs hold the private message")
				}
				for _, evt := range env.host.HS.Events(pmRoom) {
					if evt.Type == event.EventMessage || strings.Contains(string(evt.Content), "psst") {
						t.Errorf("the private chat got %s in plaintext: %s", evt.Type.Type, evt.Content)
					}
				}
			})
		})
	}
}

// TestRedactionReasonNeverPlaintextWherePrivate: a message deleted on IRC (REDACT with a free
// text) is redacted on Matrix, and the text becomes the redaction's reason, which nothing
// encrypts. It is passed on only into an unencrypted channel room: a private chat, or a channel
// room the state cache holds encrypted, gets a redaction without it.
func TestRedactionReasonNeverPlaintextWherePrivate(t *testing.T) {
	const secret = "deleted because it held my home address"
	tests := []struct {
		name       string
		room       id.RoomID
		target     string
		encrypted  bool
		wantReason bool
	}{
		{name: "unencrypted channel", room: testPortalRoom, target: testChannel, wantReason: true},
		{name: "encrypted channel", room: testPortalRoom, target: testChannel, encrypted: true},
		{name: "private chat", room: "!pm:example.org", target: "carol"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
				if tt.encrypted {
					encryption := &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}
					if err := env.host.AS.StateStore.SetEncryptionEvent(env.ctx, tt.room, encryption); err != nil {
						t.Fatal(err)
					}
				}
				for _, userID := range []id.UserID{ghostID(t, "carol"), env.host.BotID(), testAlice} {
					env.host.HS.SetMembership(tt.room, userID, event.MembershipJoin)
				}
				env.say(testAlice, "i am here")
				env.waitMembers(testChannel, "alice[m]")
				eventID := env.newEventID()
				if err := env.br.db.Message.Put(env.ctx, &ircdb.Message{
					EventID: eventID, RoomID: tt.room, Network: testNet, Target: tt.target,
					MsgID: "msg-1", CreatedAt: time.Now(),
				}); err != nil {
					t.Fatal(err)
				}
				// The bridge's own connection reads the channel; alice's puppet her private chats.
				to, line := "custodian", ":carol!carol@irc.example REDACT "+tt.target+" msg-1 :"+secret+"\r\n"
				if tt.target == "carol" {
					to, line = "alice[m]", ":carol!carol@irc.example REDACT alice[m] msg-1 :"+secret+"\r\n"
				}
				if err := env.srv.SendRaw(to, line); err != nil {
					t.Fatal(err)
				}
				var reasons []string
				env.eventually("the message is redacted on Matrix", func() bool {
					reasons = reasons[:0]
					for _, req := range env.host.HS.RequestsTo(astest.PatternRedact) {
						var body struct {
							Reason string `json:"reason"`
						}
						if err := req.DecodeBody(&body); err != nil {
							t.Fatal(err)
						}
						reasons = append(reasons, body.Reason)
					}
					return len(reasons) > 0
				})
				for _, reason := range reasons {
					if got := strings.Contains(reason, secret); got != tt.wantReason {
						t.Errorf("redaction reason %q: carries the IRC text = %v, want %v", reason, got, tt.wantReason)
					}
				}
			})
		})
	}
}

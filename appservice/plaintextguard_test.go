package appservice

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
	"maunium.net/go/mautrix/sqlstatestore"

	"github.com/custodian-matrix/custodian/appservice/astest"
)

// TestPlaintextGuard sends, through a bridge's ghost's intent and the bot's client, by
// mautrix's own SendMessageEvent (no SendMessageSensitive), into a room only the state cache
// knows as encrypted. Without crypto (no vault key, so encryption is off) every such send is
// refused with ErrPlaintextRefused and nothing reaches the homeserver's /send, reactions and
// sends that ask not to be encrypted included, while state events and a room the cache knows
// as unencrypted still go out. With crypto the same sends go out as m.room.encrypted and the
// guard never fires.
func TestPlaintextGuard(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		for _, crypto := range []bool{false, true} {
			t.Run(dialect+map[bool]string{false: "/no crypto", true: "/crypto"}[crypto], func(t *testing.T) {
				env := startCryptoService(t, cryptoSetup{dialect: dialect, vault: crypto, before: echoToDevice})
				if got := env.svc.crypto != nil; got != crypto {
					t.Fatalf("encryption set up = %v, want %v; the log says:\n%s", got, crypto, env.logs.String())
				}
				ghost, err := env.br.host.Intent("irc_alice")
				if err != nil {
					t.Fatal(err)
				}
				bot := env.svc.as.BotIntent()
				encryptedRoom := id.RoomID("!encrypted:" + testDomain)
				plainRoom := id.RoomID("!plain:" + testDomain)
				for _, roomID := range []id.RoomID{encryptedRoom, plainRoom} {
					for _, userID := range []id.UserID{ghost.UserID, bot.UserID} {
						env.hs.SetMembership(roomID, userID, event.MembershipJoin)
						if err = env.svc.stateStore.SetMembership(env.ctx, roomID, userID, event.MembershipJoin); err != nil {
							t.Fatal(err)
						}
					}
				}
				// The homeserver does not say the room is encrypted: only the state cache does.
				if err = env.svc.stateStore.SetEncryptionEvent(env.ctx, encryptedRoom, &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}); err != nil {
					t.Fatal(err)
				}
				text := &event.MessageEventContent{MsgType: event.MsgText, Body: "private words"}
				reaction := &event.ReactionEventContent{RelatesTo: event.RelatesTo{Type: event.RelAnnotation, EventID: "$target", Key: "private words"}}
				sends := []struct {
					name    string
					cli     *mautrix.Client
					evtType event.Type
					content any
					extra   mautrix.ReqSendEvent
					// refused: refused without crypto; with crypto nothing is.
					refused bool
				}{
					{name: "ghost message", cli: ghost.Client, evtType: event.EventMessage, content: text},
					{name: "bot message", cli: bot.Client, evtType: event.EventMessage, content: text},
					{name: "ghost message asked not to be encrypted", cli: ghost.Client, evtType: event.EventMessage, content: text, extra: mautrix.ReqSendEvent{DontEncrypt: true}, refused: true},
					{name: "ghost reaction", cli: ghost.Client, evtType: event.EventReaction, content: reaction, refused: true},
				}
				for _, s := range sends {
					wantRefused := s.refused || !crypto
					// mautrix sends reactions and DontEncrypt in plaintext even with crypto:
					// the guard refuses them then too.
					before := len(env.hs.RequestsTo(astest.PatternSend))
					_, err := s.cli.SendMessageEvent(env.ctx, encryptedRoom, s.evtType, s.content, s.extra)
					sent := env.hs.RequestsTo(astest.PatternSend)[before:]
					if wantRefused {
						if !errors.Is(err, ErrPlaintextRefused) {
							t.Errorf("%s into the encrypted room: error = %v, want ErrPlaintextRefused", s.name, err)
						}
						if len(sent) != 0 {
							t.Errorf("%s into the encrypted room reached the homeserver's /send %d times, want none", s.name, len(sent))
						}
						continue
					}
					if err != nil {
						t.Errorf("%s into the encrypted room with crypto: %v", s.name, err)
						continue
					}
					if len(sent) != 1 || !sentAs(sent[0], event.EventEncrypted) {
						t.Errorf("%s into the encrypted room with crypto reached /send as %v, want one m.room.encrypted", s.name, sendPaths(sent))
					}
				}
				// A reaction through SendMessageSensitive is encrypted with crypto, and refused
				// before the guard without.
				before := len(env.hs.RequestsTo(astest.PatternSend))
				_, err = SendMessageSensitive(env.ctx, ghost.Client, encryptedRoom, event.EventReaction, reaction, "txn-reaction")
				sent := env.hs.RequestsTo(astest.PatternSend)[before:]
				if !crypto {
					if !errors.Is(err, ErrNoEncryption) || len(sent) != 0 {
						t.Errorf("sensitive reaction without crypto: error = %v, %d sends; want ErrNoEncryption and none", err, len(sent))
					}
				} else if err != nil || len(sent) != 1 || !sentAs(sent[0], event.EventEncrypted) {
					t.Errorf("sensitive reaction with crypto: error = %v, sent as %v; want one m.room.encrypted", err, sendPaths(sent))
				}
				// What is not a message in an encrypted room goes out without crypto too.
				before = len(env.hs.RequestsTo(astest.PatternSend))
				if _, err = ghost.Client.SendMessageEvent(env.ctx, plainRoom, event.EventMessage, text); err != nil {
					t.Errorf("message into the unencrypted room: %v", err)
				}
				if sent = env.hs.RequestsTo(astest.PatternSend)[before:]; len(sent) != 1 || !sentAs(sent[0], event.EventMessage) {
					t.Errorf("message into the unencrypted room reached /send as %v, want one m.room.message", sendPaths(sent))
				}
				if _, err = bot.Client.SendStateEvent(env.ctx, encryptedRoom, event.StateTopic, "", &event.TopicEventContent{Topic: "topic"}); err != nil {
					t.Errorf("state event into the encrypted room: %v", err)
				}
			})
		}
	}
}

// sentAs reports whether req was a send of an event of type evtType.
func sentAs(req astest.Request, evtType event.Type) bool {
	return req.PathValues["eventType"] == evtType.Type
}

// sendPaths lists the paths of reqs, for failure messages.
func sendPaths(reqs []astest.Request) []string {
	paths := make([]string, len(reqs))
	for i, req := range reqs {
		paths[i] = req.Path
	}
	return paths
}

// TestParseSendPath checks which request paths the guard takes for room event sends.
func TestParseSendPath(t *testing.T) {
	tests := []struct {
		path     string
		wantRoom id.RoomID
		wantType string
		wantOK   bool
	}{
		{path: "/_matrix/client/v3/rooms/%21a:hs/send/m.room.message/txn1", wantRoom: "!a:hs", wantType: "m.room.message", wantOK: true},
		{path: "/prefix/_matrix/client/r0/rooms/!a:hs/send/m.reaction/t", wantRoom: "!a:hs", wantType: "m.reaction", wantOK: true},
		{path: "/_matrix/client/v3/rooms/!a:hs/send/org.example%2Fodd/t", wantRoom: "!a:hs", wantType: "org.example/odd", wantOK: true},
		{path: "/_matrix/client/v3/rooms/!a:hs/state/m.room.topic/"},
		{path: "/_matrix/client/v3/rooms/!a:hs/redact/$e/t"},
		{path: "/_matrix/client/v3/sendToDevice/m.room.encrypted/t"},
		{path: "/_matrix/client/v3/rooms/!a:hs/send/m.room.message"},
	}
	for _, tt := range tests {
		u, err := url.Parse("http://hs" + tt.path)
		if err != nil {
			t.Fatal(err)
		}
		room, typ, ok := parseSendPath(u)
		if room != tt.wantRoom || typ != tt.wantType || ok != tt.wantOK {
			t.Errorf("parseSendPath(%q) = %q, %q, %v; want %q, %q, %v", tt.path, room, typ, ok, tt.wantRoom, tt.wantType, tt.wantOK)
		}
	}
}

// cannedTransport answers every request with 200 and a send's response, without I/O.
type cannedTransport struct{}

func (cannedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
	return &http.Response{StatusCode: http.StatusOK, Body: io.NopCloser(strings.NewReader(`{"event_id":"$e"}`)), Request: req}, nil
}

// BenchmarkPlaintextGuard measures what the guard adds to a send into an unencrypted room (the
// case that goes out, one state-store read): a PUT /send through a loopback HTTP server,
// without and with the guard, on the state store of each dialect.
func BenchmarkPlaintextGuard(b *testing.B) {
	for _, dialect := range astest.Dialects(b) {
		b.Run(dialect, func(b *testing.B) { benchmarkPlaintextGuard(b, dialect) })
	}
}

func benchmarkPlaintextGuard(b *testing.B, dialect string) {
	db := astest.TestDB(b, dialect)
	store := sqlstatestore.NewSQLStateStore(db, dbutil.ZeroLogger(zerolog.Nop()), false)
	ctx := context.Background()
	if err := store.Upgrade(ctx); err != nil {
		b.Fatal(err)
	}
	roomID := id.RoomID("!plain:" + testDomain)
	if err := store.SetMembership(ctx, roomID, "@custodian:"+testDomain, event.MembershipJoin); err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(`{"event_id":"$e"}`))
	}))
	b.Cleanup(srv.Close)
	base := srv.Client().Transport
	canned := cannedTransport{}
	for _, bc := range []struct {
		name string
		rt   http.RoundTripper
	}{
		// The guard's own cost: a transport that answers without any I/O.
		{name: "no I/O/unguarded", rt: canned},
		{name: "no I/O/guarded", rt: GuardPlaintext(canned, store)},
		// Next to a loopback HTTP round trip, the floor of a real send.
		{name: "loopback/unguarded", rt: base},
		{name: "loopback/guarded", rt: GuardPlaintext(base, store)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			cli := &http.Client{Transport: bc.rt}
			url := srv.URL + "/_matrix/client/v3/rooms/" + url.PathEscape(roomID.String()) + "/send/m.room.message/txn"
			for b.Loop() {
				req, err := http.NewRequestWithContext(ctx, http.MethodPut, url, strings.NewReader(`{"msgtype":"m.text","body":"x"}`))
				if err != nil {
					b.Fatal(err)
				}
				resp, err := cli.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Fatalf("status %d", resp.StatusCode)
				}
			}
		})
	}
}

// TestPlaintextGuardOnAdminClient: the homeserver admin client made from
// privacy.deactivation.admin_token_file, the one client the core builds outside the appservice's
// shared HTTP client, is guarded too.
func TestPlaintextGuardOnAdminClient(t *testing.T) {
	cfg := testConfig(deadHomeserver(t).URL)
	withAdminToken(t)(cfg)
	svc, err := newService(cfg, testRegistration(), nil, testLogger(t), astest.TestDB(t, astest.SQLite))
	if err != nil {
		t.Fatal(err)
	}
	ctx := testLogger(t).WithContext(context.Background())
	if err = svc.stateStore.Upgrade(ctx); err != nil {
		t.Fatal(err)
	}
	if err = svc.setUpDeactivation(ctx); err != nil {
		t.Fatal(err)
	}
	roomID := id.RoomID("!encrypted:" + testDomain)
	if err = svc.stateStore.SetEncryptionEvent(ctx, roomID, &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}); err != nil {
		t.Fatal(err)
	}
	svc.privacy.hsAdmin.DefaultHTTPRetries = 0
	_, err = svc.privacy.hsAdmin.SendMessageEvent(ctx, roomID, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: "x"})
	if !errors.Is(err, ErrPlaintextRefused) {
		t.Errorf("admin client's plaintext send into an encrypted room: error = %v, want ErrPlaintextRefused", err)
	}
}

package webhook

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/bridges/webhook/webhookid"
)

func TestAddDeliversURLPrivately(t *testing.T) {
	forEachDialect(t, nil, func(t *testing.T, env *testEnv) {
		res := env.mustRun(testAlice, "add CI", "I sent you its URL in a direct chat")
		if !strings.Contains(res.replies[0], "**ci**") {
			t.Errorf("reply %q does not name the (lowercased) hook", res.replies[0])
		}
		path, hookID := env.lastURL(testAlice)
		token := path[strings.LastIndex(path, "/")+1:]

		// The room sees no URL or token: not in the reply, not in any event the bot sent there.
		for _, reply := range res.replies {
			if strings.Contains(reply, token) || strings.Contains(reply, "/hooks/") {
				t.Errorf("room reply %q holds the URL", reply)
			}
		}
		for _, evt := range env.host.HS.Events(testRoom) {
			if strings.Contains(string(evt.Content), token) {
				t.Errorf("event %s in the room holds the token", evt.EventID)
			}
		}
		// The direct chat was created for alice alone, as a direct chat.
		created := env.host.CreatedRooms()
		if len(created) != 1 || !created[0].IsDirect || len(created[0].Invite) != 1 || created[0].Invite[0] != testAlice ||
			created[0].Creator != env.host.BotID() {
			t.Errorf("created rooms = %+v, want one direct chat from the bot inviting alice", created)
		}
		if created[0].RoomID != env.dmRoom(testAlice) {
			t.Errorf("recorded direct chat %s, created %s", env.dmRoom(testAlice), created[0].RoomID)
		}

		hooks := env.hooks()
		if len(hooks) != 1 {
			t.Fatalf("hooks = %d, want 1", len(hooks))
		}
		hook := hooks[0]
		if hook.ID != hookID || hook.Name != "ci" || hook.Actor != testAlice || hook.SourceEventID != res.evt.ID ||
			hook.RoomID != testRoom || !hook.SecretSent || hook.TokenHash != webhookid.HashToken(token) {
			t.Errorf("hook row = %+v, want alice's hook %s with provenance %s and the token's hash", hook, hookID, res.evt.ID)
		}
		if !env.host.Claimed(t, testRoom) {
			t.Error("the bridge did not claim the room")
		}

		// A second hook of the same name is refused; a second hook reuses the direct chat.
		env.mustRun(testBob, "add ci", "already has a webhook named **ci**")
		env.mustRun(testAlice, "add other", "I sent you its URL")
		if n := len(env.host.CreatedRooms()); n != 1 {
			t.Errorf("created %d rooms, want the direct chat reused", n)
		}
		if bodies := env.dmBodies(testAlice); len(bodies) != 2 {
			t.Errorf("direct chat has %d messages, want 2", len(bodies))
		}
	})
}

func TestAddUsage(t *testing.T) {
	env := newTestEnv(t, "sqlite", nil)
	tests := []struct {
		body string
		want string
	}{
		{"add", "Usage"},
		{"add a b", "Usage"},
		{"add **bold**", "Webhook names are"},
		{"add " + strings.Repeat("x", 40), "Webhook names are"},
		{"remove nothing", "no webhook named"},
		{"rotate nothing", "no webhook named"},
		{"out", "Usage"},
		{"out not-a-url", "not an absolute"},
		{"out ftp://example.org/", "not an absolute"},
	}
	for _, tt := range tests {
		env.mustRun(testAlice, tt.body, tt.want)
	}
	if hooks := env.hooks(); len(hooks) != 0 {
		t.Errorf("hooks = %d after refused commands, want 0", len(hooks))
	}
}

func TestAddFailsWithoutDirectChat(t *testing.T) {
	env := newTestEnv(t, "sqlite", nil)
	env.host.HS.Fail("PUT /_matrix/client/v3/rooms/{roomID}/send/{eventType}/{txnID}", http.StatusForbidden, "M_FORBIDDEN")
	env.mustRun(testAlice, "add ci", "could not send you a direct message")
	if hooks := env.hooks(); len(hooks) != 0 {
		t.Errorf("hooks = %d, want the undeliverable hook removed", len(hooks))
	}
	if env.host.Claimed(t, testRoom) {
		t.Error("room still claimed without hooks")
	}
}

func TestInboundPost(t *testing.T) {
	forEachDialect(t, func(cfg *Config) { cfg.MaxBodyBytes = 2048 }, func(t *testing.T, env *testEnv) {
		env.mustRun(testAlice, "add ci", "Created")
		path, hookID := env.lastURL(testAlice)
		ghost := id.NewUserID(webhookid.GhostLocalpart(hookID), "example.org")
		otherToken := webhookid.NewToken()
		tests := []struct {
			name          string
			path          string
			contentType   string
			body          string
			wantStatus    int
			wantBody      string
			wantFormatted string
			wantName      string
			wantAvatar    string
		}{
			{name: "plain text", path: path, contentType: "text/plain", body: "build passed\n", wantStatus: 200, wantBody: "build passed", wantName: "ci"},
			{
				name: "json with html, username and avatar", path: path, contentType: "application/json",
				body:       `{"text": "build *failed*", "html": "build <b>failed</b><script>alert(1)</script><img src=x onerror=y>", "username": "Jenkins", "avatar_url": "mxc://example.org/jenkins"}`,
				wantStatus: 200, wantBody: "build *failed*", wantFormatted: "build <b>failed</b>", wantName: "Jenkins", wantAvatar: "mxc://example.org/jenkins",
			},
			{name: "html only", path: path, contentType: "application/json", body: `{"html": "<p>deploy <em>done</em></p>"}`, wantStatus: 200, wantBody: "deploy _done_", wantFormatted: "<p>deploy <em>done</em></p>", wantName: "ci"},
			{name: "malformed json", path: path, contentType: "application/json", body: `{"text": `, wantStatus: 400},
			{name: "wrong field type", path: path, contentType: "application/json", body: `{"text": 1}`, wantStatus: 400},
			{name: "empty", path: path, contentType: "text/plain", body: " ", wantStatus: 400},
			{name: "unsupported type", path: path, contentType: "application/octet-stream", body: "x", wantStatus: 415},
			{name: "oversized", path: path, contentType: "text/plain", body: strings.Repeat("x", 3000), wantStatus: 413},
			{name: "wrong token", path: "/custodian/hooks/" + hookID + "/" + otherToken, contentType: "text/plain", body: "x", wantStatus: 404},
			{name: "unknown hook", path: "/custodian/hooks/" + webhookid.NewHookID() + "/" + otherToken, contentType: "text/plain", body: "x", wantStatus: 404},
			{name: "malformed token", path: "/custodian/hooks/" + hookID + "/short", contentType: "text/plain", body: "x", wantStatus: 404},
			{name: "no token", path: "/custodian/hooks/" + hookID, contentType: "text/plain", body: "x", wantStatus: 404},
			{name: "without public path prefix", path: strings.TrimPrefix(path, "/custodian"), contentType: "text/plain", body: "short path", wantStatus: 200, wantBody: "short path", wantName: "ci"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				before := len(env.roomMessages())
				status, answer := env.post(tt.path, tt.contentType, tt.body, nil)
				if status != tt.wantStatus {
					t.Fatalf("POST = %d %v, want %d", status, answer, tt.wantStatus)
				}
				msgs := env.roomMessages()
				if tt.wantStatus != 200 {
					if reason, _ := answer["error"].(string); reason == "" {
						t.Errorf("error answer %v has no reason", answer)
					}
					if len(msgs) != before {
						t.Errorf("a refused post sent %d messages", len(msgs)-before)
					}
					return
				}
				if len(msgs) != before+1 {
					t.Fatalf("room has %d new messages, want 1", len(msgs)-before)
				}
				sent := msgs[len(msgs)-1]
				if sent.Sender != ghost || string(sent.EventID) != answer["event_id"] {
					t.Errorf("message %s from %s, answer %v; want from %s with its event ID", sent.EventID, sent.Sender, answer, ghost)
				}
				var content event.MessageEventContent
				if err := sent.Decode(&content); err != nil {
					t.Fatal(err)
				}
				if content.Body != tt.wantBody || content.FormattedBody != tt.wantFormatted || content.MsgType != event.MsgText {
					t.Errorf("content = %q / %q (%s), want %q / %q", content.Body, content.FormattedBody, content.MsgType, tt.wantBody, tt.wantFormatted)
				}
				if content.Mentions == nil || content.Mentions.Room {
					t.Errorf("mentions = %+v, want none", content.Mentions)
				}
				profile := env.host.HS.Profile(ghost)
				if profile["displayname"] != tt.wantName {
					t.Errorf("ghost displayname = %v, want %q", profile["displayname"], tt.wantName)
				}
				if tt.wantAvatar != "" && profile["avatar_url"] != tt.wantAvatar {
					t.Errorf("ghost avatar = %v, want %q", profile["avatar_url"], tt.wantAvatar)
				}
			})
		}
		// The ghost was invited by the bot (the room needs an invite) and joined.
		invited := false
		for _, inv := range env.host.Invites() {
			invited = invited || (inv.Invitee == ghost && inv.Inviter == env.host.BotID() && inv.RoomID == testRoom)
		}
		if !invited || env.host.HS.Membership(testRoom, ghost) != event.MembershipJoin {
			t.Errorf("ghost invited=%v, membership %q; want invited by the bot and joined", invited, env.host.HS.Membership(testRoom, ghost))
		}
	})
}

func TestInboundMethodNotAllowed(t *testing.T) {
	env := newTestEnv(t, "sqlite", nil)
	env.mustRun(testAlice, "add ci", "Created")
	path, _ := env.lastURL(testAlice)
	for _, method := range []string{http.MethodGet, http.MethodPut, http.MethodDelete} {
		req, _ := http.NewRequest(method, env.base+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != http.MethodPost {
			t.Errorf("%s = %d (Allow %q), want 405 with Allow: POST", method, resp.StatusCode, resp.Header.Get("Allow"))
		}
	}
	req, _ := http.NewRequest(http.MethodGet, env.base+"/elsewhere", nil)
	if status, _ := env.do(req); status != http.StatusNotFound {
		t.Errorf("GET /elsewhere = %d, want 404", status)
	}
}

func TestInboundRateLimit(t *testing.T) {
	env := newTestEnv(t, "sqlite", func(cfg *Config) {
		cfg.RateLimit.PerSecond = 0.5
		cfg.RateLimit.Burst = 2
	})
	env.mustRun(testAlice, "add ci", "Created")
	path, _ := env.lastURL(testAlice)
	wantStatuses := []int{200, 200, 429}
	for i, want := range wantStatuses {
		if status, answer := env.post(path, "text/plain", "hello", nil); status != want {
			t.Fatalf("post %d = %d %v, want %d", i, status, answer, want)
		}
	}
	// The bucket refills at the configured rate, on the bridge's clock.
	env.clock.Advance(2 * time.Second)
	if status, _ := env.post(path, "text/plain", "hello", nil); status != 200 {
		t.Errorf("post after refill = %d, want 200", status)
	}
	if status, _ := env.post(path, "text/plain", "hello", nil); status != 429 {
		t.Errorf("post after the refilled token = %d, want 429", status)
	}
}

func TestInboundPausedOwner(t *testing.T) {
	env := newTestEnv(t, "sqlite", nil)
	env.mustRun(testAlice, "add ci", "Created")
	path, _ := env.lastURL(testAlice)
	env.host.SetPaused(t, testAlice, true)
	if status, _ := env.post(path, "text/plain", "x", nil); status != http.StatusForbidden {
		t.Errorf("post while the owner paused = %d, want 403", status)
	}
	env.host.SetPaused(t, testAlice, false)
	if status, _ := env.post(path, "text/plain", "x", nil); status != http.StatusOK {
		t.Errorf("post after resume = %d, want 200", status)
	}
}

func TestInboundIdempotencyKey(t *testing.T) {
	env := newTestEnv(t, "sqlite", nil)
	env.mustRun(testAlice, "add ci", "Created")
	path, _ := env.lastURL(testAlice)
	header := http.Header{"Idempotency-Key": {"delivery-42"}}
	_, first := env.post(path, "text/plain", "once", header)
	_, second := env.post(path, "text/plain", "once", header)
	_, third := env.post(path, "text/plain", "twice", nil)
	if first["event_id"] == nil || first["event_id"] != second["event_id"] || third["event_id"] == first["event_id"] {
		t.Errorf("event IDs %v, %v, %v; want the keyed retry to return the first event", first["event_id"], second["event_id"], third["event_id"])
	}
	if n := len(env.roomMessages()); n != 2 {
		t.Errorf("room has %d messages, want 2", n)
	}
}

func TestInboundMatrixFailure(t *testing.T) {
	env := newTestEnv(t, "sqlite", nil)
	env.mustRun(testAlice, "add ci", "Created")
	path, _ := env.lastURL(testAlice)
	env.host.HS.Fail("PUT /_matrix/client/v3/rooms/{roomID}/send/{eventType}/{txnID}", http.StatusForbidden, "M_FORBIDDEN")
	if status, answer := env.post(path, "text/plain", "x", nil); status != http.StatusBadGateway {
		t.Errorf("post with the homeserver refusing = %d %v, want 502", status, answer)
	}
}

func TestInboundPostIntoEncryptedRoomIsEncrypted(t *testing.T) {
	forEachDialect(t, nil, func(t *testing.T, env *testEnv) {
		env.mustRun(testAlice, "add ci", "Created")
		path, hookID := env.lastURL(testAlice)
		ghost := id.NewUserID(webhookid.GhostLocalpart(hookID), "example.org")
		env.host.EnableCrypto(t)
		alice := astest.NewTestDevice(t, env.host.HS, testAlice, "ALICEPHONE")
		encryption := &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}
		env.host.HS.SetState(testRoom, event.StateEncryption, "", testAlice, encryption)
		// As the core's state cache knows it from the room's state.
		if err := env.host.AS.StateStore.SetEncryptionEvent(env.ctx, testRoom, encryption); err != nil {
			t.Fatal(err)
		}

		before := len(env.roomMessages())
		if status, answer := env.post(path, "text/plain", "build passed", nil); status != 200 {
			t.Fatalf("POST = %d %v, want 200", status, answer)
		}
		if n := len(env.roomMessages()) - before; n != 0 {
			t.Errorf("%d plaintext messages in the encrypted room, want none", n)
		}
		var sent *astest.SentEvent
		for _, se := range env.host.HS.Events(testRoom) {
			if se.Sender == ghost && se.Type.Class == event.MessageEventType {
				sent = se
			}
		}
		if sent == nil || sent.Type != event.EventEncrypted {
			t.Fatalf("ghost's message = %+v, want m.room.encrypted", sent)
		}
		if strings.Contains(string(sent.Content), "build passed") {
			t.Errorf("ciphertext holds the post: %s", sent.Content)
		}
		alice.Receive(env.ctx)
		evt, err := alice.Decrypt(env.ctx, sent)
		if err != nil {
			t.Fatalf("alice cannot decrypt the post: %v", err)
		}
		if content := evt.Content.AsMessage(); content.Body != "build passed" || evt.Sender != ghost {
			t.Errorf("alice decrypts %q from %s, want the post from the hook's ghost", content.Body, evt.Sender)
		}
	})
}

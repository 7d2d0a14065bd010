package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice"
	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/astest/fakehost"
	"github.com/custodian-matrix/custodian/appservice/clock"
	"github.com/custodian-matrix/custodian/bridges/webhook/webhookdb"
)

// testPublicURL is the public_url of test bridges; requests go to the listener directly.
const testPublicURL = "https://hooks.example.org/custodian"

var (
	testRoom  = id.RoomID("!room:example.org")
	testAlice = id.UserID("@alice:example.org")
	testBob   = id.UserID("@bob:example.org")
)

// waitForRetry waits until n delivery workers wait on the clock for their backoff. Call it only
// after the attempt before the wait was seen by the receiver, so that the earlier wait's ticker
// is already stopped.
func (env *testEnv) waitForRetry(n int) {
	env.t.Helper()
	if env.clock.BlockUntil(astest.Within(env.t, 10*time.Second), n) != nil {
		env.t.Fatalf("timed out waiting for %d delivery workers to wait for a retry", n)
	}
}

// testEnv is a started bridge on a fake host, with a room where the bot, alice and bob are
// joined.
type testEnv struct {
	t     testing.TB
	ctx   context.Context
	br    *Bridge
	host  *fakehost.Host
	clock *clock.Fake
	base  string // the listener's base URL, standing in for testPublicURL's scheme and host

	lock    sync.Mutex
	eventNo int
}

func newTestEnv(t testing.TB, dialect string, configure func(cfg *Config)) *testEnv {
	t.Helper()
	br := New()
	clock := clock.NewFake(time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC))
	br.SetClock(clock)
	// The middle of the jitter range, so waits are predictable.
	br.jitter = func() float64 { return 0.5 }
	br.cfg.Listen = "127.0.0.1:0"
	br.cfg.PublicURL = testPublicURL
	br.cfg.AllowPrivateTargets = true
	if configure != nil {
		configure(&br.cfg)
	}
	if err := br.ValidateConfig(); err != nil {
		t.Fatalf("test config does not validate: %v", err)
	}
	host := fakehost.New(t, dialect, br)
	if err := br.Init(host); err != nil {
		t.Fatal(err)
	}
	ctx := host.Logger().WithContext(context.Background())
	if err := br.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := br.Stop(stopCtx); err != nil {
			t.Errorf("Stop = %v", err)
		}
	})
	host.SetUpRoom(t, testRoom, testAlice, testBob)
	return &testEnv{t: t, ctx: ctx, br: br, host: host, clock: clock, base: "http://" + br.Addr().String()}
}

// forEachDialect runs fn with a fresh environment per database dialect.
func forEachDialect(t *testing.T, configure func(cfg *Config), fn func(t *testing.T, env *testEnv)) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			fn(t, newTestEnv(t, dialect, configure))
		})
	}
}

func (env *testEnv) newEventID() id.EventID {
	env.lock.Lock()
	defer env.lock.Unlock()
	env.eventNo++
	return id.EventID(fmt.Sprintf("$test%d:example.org", env.eventNo))
}

// deliver hands evt to the bridge as the core would, with the route the core would compute.
func (env *testEnv) deliver(ctx context.Context, evt *event.Event) error {
	return env.br.HandleEvent(ctx, evt, env.host.Route(evt))
}

// message returns an m.room.message event from sender in the test room.
func (env *testEnv) message(sender id.UserID, body string) *event.Event {
	content := &event.MessageEventContent{MsgType: event.MsgText, Body: body}
	return &event.Event{
		ID: env.newEventID(), RoomID: testRoom, Sender: sender, Type: event.EventMessage,
		Timestamp: env.clock.Now().UnixMilli(),
		Content:   event.Content{Parsed: content},
	}
}

// redaction returns an m.room.redaction of target by sender.
func (env *testEnv) redaction(sender id.UserID, target id.EventID) *event.Event {
	return &event.Event{
		ID: env.newEventID(), RoomID: testRoom, Sender: sender, Type: event.EventRedaction, Redacts: target,
		Timestamp: env.clock.Now().UnixMilli(),
		Content:   event.Content{Parsed: &event.RedactionEventContent{Redacts: target}},
	}
}

// commandResult is what one command did.
type commandResult struct {
	evt     *event.Event
	replies []string
	err     error // a non-UserError failure
}

// run runs "!webhook <body>" as sender through the handler, like the core's bot would: a
// UserError becomes a reply.
func (env *testEnv) run(sender id.UserID, body string) *commandResult {
	env.t.Helper()
	return env.runEvent(env.message(sender, "!webhook "+body))
}

// runEvent runs the webhook command in evt (again, for replay tests).
func (env *testEnv) runEvent(evt *event.Event) *commandResult {
	env.t.Helper()
	words := strings.Fields(strings.TrimPrefix(evt.Content.AsMessage().Body, "!webhook "))
	res := &commandResult{evt: evt}
	c := &cmdCall{
		evt: evt, roomID: evt.RoomID, sender: evt.Sender, args: words[1:], prefix: "!",
		reply: func(_ context.Context, markdown string) error {
			res.replies = append(res.replies, markdown)
			return nil
		},
	}
	handlers := map[string]func(context.Context, *cmdCall) error{
		"add": env.br.cmdAdd, "out": env.br.cmdOut, "list": env.br.cmdList, "remove": env.br.cmdRemove, "delete": env.br.cmdRemove,
		"rotate": env.br.cmdRotate, "resume": env.br.cmdResume,
	}
	handler, ok := handlers[words[0]]
	if !ok {
		env.t.Fatalf("unknown command %q", words[0])
	}
	err := handler(env.ctx, c)
	var userErr *appservice.UserError
	if errors.As(err, &userErr) {
		res.replies = append(res.replies, userErr.Message)
	} else if err != nil {
		res.err = err
	}
	return res
}

// mustRun runs a command that must succeed with one reply containing want.
func (env *testEnv) mustRun(sender id.UserID, body, want string) *commandResult {
	env.t.Helper()
	res := env.run(sender, body)
	if res.err != nil {
		env.t.Fatalf("!webhook %s failed: %v", body, res.err)
	}
	if len(res.replies) != 1 || !strings.Contains(res.replies[0], want) {
		env.t.Fatalf("!webhook %s replied %q, want one reply containing %q", body, res.replies, want)
	}
	return res
}

// dmRoom returns user's management room (where the bot sends secrets), failing if there is none.
func (env *testEnv) dmRoom(user id.UserID) id.RoomID {
	env.t.Helper()
	roomID := env.host.ManagementRoom(env.t, user)
	if roomID == "" {
		env.t.Fatalf("no management room recorded for %s", user)
	}
	return roomID
}

// dmBodies returns the bodies of the bot's messages in user's direct chat.
func (env *testEnv) dmBodies(user id.UserID) []string {
	env.t.Helper()
	var out []string
	for _, evt := range env.host.HS.Messages(env.dmRoom(user)) {
		var content event.MessageEventContent
		if err := evt.Decode(&content); err != nil {
			env.t.Fatal(err)
		}
		out = append(out, content.Body)
	}
	return out
}

var (
	hookURLPattern      = regexp.MustCompile(regexp.QuoteMeta(testPublicURL) + `/hooks/([0-9a-f]{16})/([A-Za-z0-9_-]{43})`)
	signingSecretFormat = regexp.MustCompile(`\b[0-9a-f]{64}\b`)
)

// lastURL returns the path of the last inbound URL sent to user ("/custodian/hooks/<id>/<token>")
// and the hook ID.
func (env *testEnv) lastURL(user id.UserID) (path, hookID string) {
	env.t.Helper()
	bodies := env.dmBodies(user)
	for i := len(bodies) - 1; i >= 0; i-- {
		if m := hookURLPattern.FindStringSubmatch(bodies[i]); m != nil {
			return strings.TrimPrefix(m[0], "https://hooks.example.org"), m[1]
		}
	}
	env.t.Fatalf("no webhook URL in %s's direct chat: %q", user, bodies)
	return "", ""
}

// lastSigningSecret returns the last signing secret sent to user.
func (env *testEnv) lastSigningSecret(user id.UserID) string {
	env.t.Helper()
	bodies := env.dmBodies(user)
	for i := len(bodies) - 1; i >= 0; i-- {
		if m := signingSecretFormat.FindString(bodies[i]); m != "" {
			return m
		}
	}
	env.t.Fatalf("no signing secret in %s's direct chat", user)
	return ""
}

// post POSTs body to path on the listener and returns the status and decoded JSON answer.
func (env *testEnv) post(path, contentType, body string, header http.Header) (int, map[string]any) {
	env.t.Helper()
	req, err := http.NewRequest(http.MethodPost, env.base+path, strings.NewReader(body))
	if err != nil {
		env.t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	return env.do(req)
}

func (env *testEnv) do(req *http.Request) (int, map[string]any) {
	env.t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		env.t.Fatal(err)
	}
	defer resp.Body.Close()
	var answer map[string]any
	data, _ := io.ReadAll(resp.Body)
	if err = json.Unmarshal(data, &answer); err != nil {
		env.t.Fatalf("answer %d is not JSON: %q", resp.StatusCode, data)
	}
	return resp.StatusCode, answer
}

// hooks returns every hook row of the test room, revoked or not.
func (env *testEnv) hooks() []*webhookdb.Hook {
	env.t.Helper()
	hooks, err := env.br.db.Hook.GetAllInRoom(env.ctx, testRoom)
	if err != nil {
		env.t.Fatal(err)
	}
	return hooks
}

// roomMessages returns the contents of the messages sent in the test room.
func (env *testEnv) roomMessages() []*astest.SentEvent {
	return env.host.HS.Messages(testRoom)
}

// receiver is an HTTP server standing in for an outbound hook's target. It answers with the
// queued statuses (200 once they run out) and hands every request to the test.
type receiver struct {
	srv      *httptest.Server
	requests chan receivedRequest

	lock     sync.Mutex
	statuses []int
}

type receivedRequest struct {
	header http.Header
	body   []byte
}

func newReceiver(t testing.TB, statuses ...int) *receiver {
	rc := &receiver{requests: make(chan receivedRequest, 100), statuses: statuses}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.lock.Lock()
		status := http.StatusOK
		if len(rc.statuses) > 0 {
			status, rc.statuses = rc.statuses[0], rc.statuses[1:]
		}
		rc.lock.Unlock()
		rc.requests <- receivedRequest{header: r.Header.Clone(), body: body}
		w.WriteHeader(status)
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

// URL returns a target URL with a token in it, as real outbound URLs have.
func (rc *receiver) URL() string {
	return rc.srv.URL + "/incoming?token=sekrit-receiver-token-1234"
}

func (rc *receiver) next(t testing.TB) receivedRequest {
	t.Helper()
	select {
	case req := <-rc.requests:
		return req
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for an outbound delivery")
		return receivedRequest{}
	}
}

// none fails if a request arrives within a short grace period.
func (rc *receiver) none(t testing.TB) {
	t.Helper()
	select {
	case req := <-rc.requests:
		t.Fatalf("unexpected outbound delivery: %s", req.body)
	case <-time.After(200 * time.Millisecond):
	}
}

// verify checks req's signature under secret and decodes its body.
func verify(t testing.TB, req receivedRequest, secret string) OutboundEvent {
	t.Helper()
	want := Sign(secret, req.body)
	if got := req.header.Get(SignatureHeader); !hmac.Equal([]byte(got), []byte(want)) {
		t.Fatalf("%s = %q, want %q", SignatureHeader, got, want)
	}
	var out OutboundEvent
	dec := json.NewDecoder(bytes.NewReader(req.body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&out); err != nil {
		t.Fatalf("delivery body %s: %v", req.body, err)
	}
	return out
}

package irc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"gopkg.in/yaml.v3"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice"
	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/astest/fakehost"
	"github.com/custodian-matrix/custodian/bridges/irc/ircdb"
	"github.com/custodian-matrix/custodian/bridges/irc/ircid"
	"github.com/custodian-matrix/custodian/bridges/irc/irctest"
)

// The test network, its portal and the Matrix users of the tests.
const (
	testNet     = "testnet"
	testChannel = "#test"
	testBotNick = "custodian"
)

var (
	testPortalRoom = id.RoomID("!portal:example.org")
	testAlice      = id.UserID("@alice:example.org")
	testBob        = id.UserID("@bob:example.org")
)

// testWait bounds every wait of the bridge tests: connecting, relaying, reconnecting.
const testWait = 20 * time.Second

// testConfigYAML is the bridges.irc section of the tests: the example's defaults, with fast
// reconnects, no connection-rate or flood limits to speak of, and the irctest server as
// network testnet. %s is the server's address.
const testConfigYAML = `
reconnect:
    initial: 10ms
    max: 200ms
connect_rate:
    per_second: 1000
    burst: 100
networks:
    testnet:
        name: Test Net
        address: %s
        tls: false
        line_rate:
            per_second: 1000
            burst: 100
`

// envConfig adjusts a test environment before it starts.
type envConfig struct {
	// yaml overrides testConfigYAML (with the same %s).
	yaml string
	// srvOpts are passed to irctest.NewServer.
	srvOpts []irctest.Option
	// configure edits the decoded config before validation.
	configure func(cfg *Config)
	// portalActor, if set, links the portal as this user's !irc link (otherwise the portal is
	// one made through its alias, owned by nobody).
	portalActor id.UserID
	// noPortal leaves the portal out.
	noPortal bool
	// quiet logs warnings and errors only (benchmarks).
	quiet bool
	// crypto turns the host's end-to-end encryption on before the bridge starts.
	crypto bool
}

// gatedHost is the fake host with the test environment's logger.
type gatedHost struct {
	*fakehost.Host
	log zerolog.Logger
}

// Log returns the bridge's logger, which writes to the test until it ends.
func (h *gatedHost) Log() *zerolog.Logger { return &h.log }

// logGate passes log lines to the test until close, and keeps all of them for checks of what
// the logs hold. Lines written after close are counted, not passed on: writing to a finished
// test is a data race.
type logGate struct {
	t testing.TB
	// quiet passes nothing to the test and keeps only the first lines (benchmarks, where
	// every b.Log is printed and a buffer would count as memory).
	quiet bool

	mu     sync.Mutex
	all    bytes.Buffer
	lines  int
	closed bool
	late   int
}

func (g *logGate) Write(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.lines++
	if g.quiet {
		if g.lines <= 5 {
			g.all.Write(p)
		}
		return len(p), nil
	}
	g.all.Write(p)
	if g.closed {
		g.late++
	} else {
		g.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

func (g *logGate) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
}

// String returns everything logged so far.
func (g *logGate) String() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.all.String()
}

// count returns how many lines were logged so far, and all of them.
func (g *logGate) count() (int, string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.lines, g.all.String()
}

// testEnv is a started IRC bridge on a fake host, connected to an irctest server as network
// testnet, with a portal room for #test where the bot, alice and bob are joined.
type testEnv struct {
	t      testing.TB
	ctx    context.Context
	br     *Bridge
	host   *fakehost.Host
	logs   *logGate
	srv    *irctest.Server
	portal *ircdb.Portal
	// hsTraffic is closed and replaced after every request the intents make.
	hsTraffic *trafficSignal

	stopOnce sync.Once

	lock    sync.Mutex
	eventNo int
}

// stop stops the bridge, once; the cleanup calls it too.
func (env *testEnv) stop() {
	env.stopOnce.Do(func() {
		stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := env.br.Stop(stopCtx); err != nil {
			env.t.Errorf("Stop = %v", err)
		}
	})
}

// trafficSignal wakes waiters whenever an HTTP request to the homeserver completed; it lets
// tests wait for the fake homeserver without polling.
type trafficSignal struct {
	mu      sync.Mutex
	changed chan struct{}
	// onSend, if set, is called with the body of each completed send of an m.room.message and
	// when it completed (benchmarks). Set it before the traffic it is for.
	onSend atomic.Pointer[func(body []byte, at time.Time)]
}

func (ts *trafficSignal) wait() <-chan struct{} {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.changed
}

func (ts *trafficSignal) bump() {
	ts.mu.Lock()
	close(ts.changed)
	ts.changed = make(chan struct{})
	ts.mu.Unlock()
}

// signalTransport is the intents' HTTP transport: it passes requests on and signals completion.
type signalTransport struct {
	base http.RoundTripper
	sig  *trafficSignal
}

func (st signalTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := st.base.RoundTrip(req)
	if fn := st.sig.onSend.Load(); fn != nil && err == nil && req.Method == http.MethodPut &&
		strings.Contains(req.URL.Path, "/send/m.room.message/") && req.GetBody != nil {
		at := time.Now()
		if body, bodyErr := req.GetBody(); bodyErr == nil {
			data, _ := io.ReadAll(body)
			(*fn)(data, at)
		}
	}
	st.sig.bump()
	return resp, err
}

func newTestEnv(t testing.TB, dialect string, ec envConfig) *testEnv {
	t.Helper()
	srv := irctest.NewServer(t, ec.srvOpts...)
	br := New()
	raw := testConfigYAML
	if ec.yaml != "" {
		raw = ec.yaml
	}
	// Decoded strictly over the defaults, as the core decodes a bridge's section.
	_, target := br.Config()
	dec := yaml.NewDecoder(strings.NewReader(fmt.Sprintf(raw, srv.Addr())))
	dec.KnownFields(true)
	if err := dec.Decode(target); err != nil {
		t.Fatalf("test config does not decode: %v", err)
	}
	if ec.configure != nil {
		ec.configure(&br.cfg)
	}
	if err := br.ValidateConfig(); err != nil {
		t.Fatalf("test config does not validate: %v", err)
	}
	host := fakehost.New(t, dialect, br)
	sig := &trafficSignal{changed: make(chan struct{})}
	// Every intent shares this client; nothing has used it yet. The signal goes under the
	// host's plaintext guard, which stays.
	host.AS.HTTPClient.Transport = signalTransport{base: host.AS.HTTPClient.Transport, sig: sig}
	if ec.crypto {
		host.EnableCrypto(t)
	}
	logs := &logGate{t: t, quiet: ec.quiet}
	log := zerolog.New(logs).Level(zerolog.DebugLevel)
	if ec.quiet {
		log = log.Level(zerolog.WarnLevel)
	}
	host.AS.Log = log.With().Str("component", "mautrix").Logger()
	if err := br.Init(&gatedHost{Host: host, log: log.With().Str("bridge", BridgeID).Logger()}); err != nil {
		t.Fatal(err)
	}
	ctx := log.WithContext(context.Background())
	if err := br.Start(ctx); err != nil {
		t.Fatal(err)
	}
	env := &testEnv{t: t, ctx: ctx, br: br, host: host, logs: logs, srv: srv, hsTraffic: sig}
	t.Cleanup(func() {
		env.stop()
		// Stop does not wait for every goroutine it started (see TestStopWaitsForGoroutines):
		// what they log later must not reach the finished test.
		logs.close()
	})
	host.SetUpRoom(t, testPortalRoom, testAlice, testBob)
	if !ec.noPortal {
		prov := appservice.Provenance{}
		if ec.portalActor != "" {
			prov = appservice.Provenance{Actor: ec.portalActor, RoomID: testPortalRoom, EventID: env.newEventID(), At: time.Now()}
		}
		p, err := br.recordPortal(ctx, br.network(testNet), &ircdb.Portal{
			Network: testNet, Channel: testChannel, ChannelName: testChannel, RoomID: testPortalRoom, CreatedAt: time.Now(),
		}, prov)
		if err != nil {
			t.Fatalf("recordPortal = %v", err)
		}
		env.portal = p
		env.waitMembers(testChannel, testBotNick)
	}
	return env
}

// forEachDialect runs fn with a fresh environment per database dialect.
func forEachDialect(t *testing.T, ec envConfig, fn func(t *testing.T, env *testEnv)) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			fn(t, newTestEnv(t, dialect, ec))
		})
	}
}

func (env *testEnv) newEventID() id.EventID {
	env.lock.Lock()
	defer env.lock.Unlock()
	env.eventNo++
	return id.EventID(fmt.Sprintf("$irctest%d:example.org", env.eventNo))
}

// deliver hands evt to the bridge as the core would, with the route the core would compute.
func (env *testEnv) deliver(ctx context.Context, evt *event.Event) error {
	return env.br.HandleEvent(ctx, evt, env.host.Route(evt))
}

// message returns an m.room.message event from sender in roomID.
func (env *testEnv) message(roomID id.RoomID, sender id.UserID, msgType event.MessageType, body string) *event.Event {
	return env.event(roomID, sender, &event.MessageEventContent{MsgType: msgType, Body: body})
}

// event returns an m.room.message event with content.
func (env *testEnv) event(roomID id.RoomID, sender id.UserID, content *event.MessageEventContent) *event.Event {
	return &event.Event{
		ID: env.newEventID(), RoomID: roomID, Sender: sender, Type: event.EventMessage,
		Timestamp: time.Now().UnixMilli(), Content: event.Content{Parsed: content},
	}
}

// handle hands evt to the bridge, as the core does, and fails the test if it returns an error.
func (env *testEnv) handle(evt *event.Event) {
	env.t.Helper()
	ctx, cancel := context.WithTimeout(env.ctx, testWait)
	defer cancel()
	if err := env.deliver(ctx, evt); err != nil {
		env.t.Fatalf("HandleEvent(%s) = %v", evt.ID, err)
	}
}

// say sends a text message from sender into the portal.
func (env *testEnv) say(sender id.UserID, body string) {
	env.t.Helper()
	env.handle(env.message(testPortalRoom, sender, event.MsgText, body))
}

// waitMembers waits until every nick is in channel on the server.
func (env *testEnv) waitMembers(channel string, nicks ...string) {
	env.t.Helper()
	env.srv.WaitUntil(env.t, fmt.Sprintf("%v are in %s", nicks, channel), func() bool {
		members := env.srv.Members(channel)
		for _, nick := range nicks {
			if !containsFold(members, nick) {
				return false
			}
		}
		return true
	})
}

func containsFold(list []string, s string) bool {
	for _, v := range list {
		if ircid.RFC1459.Equal(v, s) {
			return true
		}
	}
	return false
}

// ircUser connects a raw IRC client with nick and joins it to the portal's channel; the bot
// sees it join before this returns.
func (env *testEnv) ircUser(nick string) *irctest.Client {
	env.t.Helper()
	c := env.srv.Client(env.t, nick)
	if err := c.Join(testChannel); err != nil {
		env.t.Fatal(err)
	}
	return c
}

// ghostID returns the user ID of nick's ghost on testnet.
func ghostID(t testing.TB, nick string) id.UserID {
	t.Helper()
	localpart, err := ircid.GhostLocalpart(testNet, ircid.RFC1459, nick)
	if err != nil {
		t.Fatal(err)
	}
	return id.NewUserID(localpart, fakehost.Domain)
}

// waitEvent waits until the fake homeserver has an event in roomID (any room if "") that
// satisfies pred and returns it.
func (env *testEnv) waitEvent(roomID id.RoomID, what string, pred func(*astest.SentEvent) bool) *astest.SentEvent {
	env.t.Helper()
	deadline := time.NewTimer(testWait)
	defer deadline.Stop()
	for {
		changed := env.hsTraffic.wait()
		for _, evt := range env.host.HS.Events(roomID) {
			if pred(evt) {
				return evt
			}
		}
		select {
		case <-changed:
		case <-deadline.C:
			env.t.Fatalf("timed out waiting for %s", what)
			return nil
		}
	}
}

// waitMessage waits for an m.room.message from sender in roomID whose body contains body.
func (env *testEnv) waitMessage(roomID id.RoomID, sender id.UserID, body string) (*astest.SentEvent, *event.MessageEventContent) {
	env.t.Helper()
	var content event.MessageEventContent
	evt := env.waitEvent(roomID, fmt.Sprintf("a message %q from %s", body, sender), func(evt *astest.SentEvent) bool {
		if evt.Type != event.EventMessage || evt.Sender != sender {
			return false
		}
		var c event.MessageEventContent
		if err := evt.Decode(&c); err != nil || !strings.Contains(c.Body, body) {
			return false
		}
		content = c
		return true
	})
	return evt, &content
}

// eventually waits until cond holds, checking it whenever the fake homeserver answered a
// request and every 10 ms, for state the bridge writes after a request (its database).
func (env *testEnv) eventually(what string, cond func() bool) {
	env.t.Helper()
	deadline := time.NewTimer(testWait)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-env.hsTraffic.wait():
		case <-tick.C:
		case <-deadline.C:
			env.t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// messagesWith returns the bodies of the m.room.message events in roomID containing body.
func (env *testEnv) messagesWith(roomID id.RoomID, body string) []*astest.SentEvent {
	var out []*astest.SentEvent
	for _, evt := range env.host.HS.Messages(roomID) {
		var c event.MessageEventContent
		if evt.Decode(&c) == nil && strings.Contains(c.Body, body) {
			out = append(out, evt)
		}
	}
	return out
}

// puppet returns userID's puppet on testnet, or nil.
func (env *testEnv) puppet(userID id.UserID) *puppet {
	p, _ := env.br.network(testNet).puppetFor(userID, false)
	return p
}

// commandResult is what running a command through its handler did.
type commandResult struct {
	// userError is the message of a UserError the handler returned.
	userError string
	// err is any other error.
	err error
	// replied reports that the handler got as far as CommandEvent.Reply, which cannot work
	// without the core's bot (see runCommand).
	replied bool
}

// runCommand runs "!irc <name> <args…>" from sender in a direct chat with the bot, through
// the handler of br.Commands(), the way the core's bot would after its own checks.
//
// CommandEvent.Reply needs the core's bot, which a CommandEvent built outside package
// appservice cannot have: it panics with a nil dereference. The IRC handlers reply last, after
// all their effects, so a panic from inside Reply is recorded as replied and the effects are
// checked on the server, the database and the vault.
func (env *testEnv) runCommand(sender id.UserID, name string, args ...string) (res commandResult) {
	env.t.Helper()
	var cmd *appservice.Command
	for _, c := range env.br.Commands() {
		if c.Name == name {
			cmd = c
		}
	}
	if cmd == nil {
		env.t.Fatalf("no command %q", name)
	}
	body := strings.TrimSpace("!irc " + name + " " + strings.Join(args, " "))
	evt := env.message("!dm:example.org", sender, event.MsgText, body)
	ce := &appservice.CommandEvent{
		Event: evt, RoomID: evt.RoomID, Sender: sender, Group: BridgeID, Command: name,
		Args: args, RawArgs: strings.Join(args, " "), IsDM: true,
	}
	ctx, cancel := context.WithTimeout(env.ctx, testWait)
	defer cancel()
	defer func() {
		if r := recover(); r != nil {
			if !replyPanic(r) {
				panic(r)
			}
			res.replied = true
		}
	}()
	err := cmd.Handler(ctx, ce)
	var userErr *appservice.UserError
	if errors.As(err, &userErr) {
		res.userError = userErr.Message
	} else {
		res.err = err
	}
	return res
}

// replyPanic reports whether r, being recovered, is the nil dereference of CommandEvent.Reply
// without a bot (and not some other nil dereference).
func replyPanic(r any) bool {
	err, ok := r.(error)
	return ok && strings.Contains(err.Error(), "nil pointer dereference") &&
		strings.Contains(string(debug.Stack()), "appservice.(*CommandEvent).Reply(")
}

// purgeRedacted runs the core's real redaction purge for sender redacting eventID in roomID, and
// returns the bridge's rows purged per table.
func (env *testEnv) purgeRedacted(sender id.UserID, roomID id.RoomID, eventID id.EventID) map[string]int64 {
	env.t.Helper()
	return env.host.PurgeRedacted(env.t, &event.Event{
		ID: env.newEventID(), RoomID: roomID, Sender: sender, Type: event.EventRedaction, Redacts: eventID,
	})
}

package appservice

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	mxas "maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/httpjson"
)

const (
	testHSToken = "hs-token-for-tests"
	testASToken = "as-token-for-tests"
	testDomain  = "example.org"
)

// recordingBridge is a minimal bridge that owns rooms it is told to and reports every event it
// is given.
type recordingBridge struct {
	id     string
	host   Host
	events chan *event.Event

	lock   sync.Mutex
	routes map[id.EventID]Route // the route each event came with
}

var _ Bridge = (*recordingBridge)(nil)

func newRecordingBridge(id string) *recordingBridge {
	return &recordingBridge{id: id, events: make(chan *event.Event, 1000)}
}

func (rb *recordingBridge) ID() string                      { return rb.id }
func (rb *recordingBridge) Namespaces() Namespaces          { return Namespaces{UserPrefix: rb.id + "_"} }
func (rb *recordingBridge) Config() (string, any)           { return "", nil }
func (rb *recordingBridge) Migrations() dbutil.UpgradeTable { return dbutil.UpgradeTable{} }
func (rb *recordingBridge) PersonalData() []UserTable       { return nil }
func (rb *recordingBridge) Init(host Host) error            { rb.host = host; return nil }
func (rb *recordingBridge) Start(ctx context.Context) error { return nil }
func (rb *recordingBridge) Stop(ctx context.Context) error  { return nil }
func (rb *recordingBridge) HandleEvent(ctx context.Context, evt *event.Event, route Route) error {
	rb.lock.Lock()
	if rb.routes == nil {
		rb.routes = make(map[id.EventID]Route)
	}
	rb.routes[evt.ID] = route
	rb.lock.Unlock()
	rb.events <- evt
	return nil
}

// routeOf returns the route the event with evtID came with, and whether it came.
func (rb *recordingBridge) routeOf(evtID id.EventID) (Route, bool) {
	rb.lock.Lock()
	defer rb.lock.Unlock()
	route, ok := rb.routes[evtID]
	return route, ok
}

// next returns the next event the bridge handled, failing the test after a deadline.
func (rb *recordingBridge) next(t testing.TB) *event.Event {
	t.Helper()
	select {
	case evt := <-rb.events:
		return evt
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for the bridge to handle an event")
		return nil
	}
}

// assertNoEvent fails if the bridge handles another event within a short grace period.
func (rb *recordingBridge) assertNoEvent(t testing.TB, grace time.Duration) {
	t.Helper()
	select {
	case evt := <-rb.events:
		t.Fatalf("bridge unexpectedly handled %s (%s)", evt.ID, evt.Type.Type)
	case <-time.After(grace):
	}
}

func testConfig(hsURL string) *Config {
	return &Config{
		Homeserver: HomeserverConfig{Address: hsURL, Domain: testDomain},
		AppService: AppServiceConfig{
			ID: "custodian", Hostname: "127.0.0.1", Port: 0, BotUsername: "custodian",
			MaxBodyBytes: 1 << 20, MaxBacklog: 10000, Workers: 8,
		},
		Bot: BotConfig{CommandPrefix: "!"},
	}
}

func testRegistration() *mxas.Registration {
	return &mxas.Registration{
		ID: "custodian", AppToken: testASToken, ServerToken: testHSToken, SenderLocalpart: "custodian",
	}
}

// deadHomeserver answers every request with M_UNRECOGNIZED, so the service runs without a
// homeserver.
func deadHomeserver(t testing.TB) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		httpjson.WriteError(w, http.StatusNotFound, "M_UNRECOGNIZED", "not here")
	}))
	t.Cleanup(srv.Close)
	return srv
}

// startTestService starts a service on db with the given bridges and a homeserver that does
// nothing; it is stopped when the test ends. It returns the appservice listener's base URL.
func startTestService(t testing.TB, db *dbutil.Database, cfg *Config, bridges ...Bridge) (*Service, string) {
	t.Helper()
	log := testLogger(t)
	svc, err := newService(cfg, testRegistration(), bridges, log, db)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(log.WithContext(context.Background()))
	if err = svc.start(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		svc.stopServing()
	})
	return svc, "http://" + svc.listenAddr.String()
}

func newTestDB(t testing.TB, dialect string) *dbutil.Database {
	return astest.TestDB(t, dialect)
}

func testLogger(t testing.TB) zerolog.Logger {
	level := zerolog.InfoLevel
	if _, isBenchmark := t.(*testing.B); isBenchmark {
		// The homeserver-ping retries against the dead homeserver would drown the results.
		level = zerolog.ErrorLevel
	}
	return zerolog.New(astest.LogWriter(t)).Level(level)
}

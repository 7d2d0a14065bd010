package appservice

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/clock"
	"github.com/custodian-matrix/custodian/appservice/database"
)

// watchedLog collects log output from several goroutines and lets a test wait for a line.
type watchedLog struct {
	lock    sync.Mutex
	buf     bytes.Buffer
	changed chan struct{} // closed and replaced on every write
}

func newWatchedLog() *watchedLog { return &watchedLog{changed: make(chan struct{})} }

func (wl *watchedLog) Write(p []byte) (int, error) {
	wl.lock.Lock()
	defer wl.lock.Unlock()
	close(wl.changed)
	wl.changed = make(chan struct{})
	return wl.buf.Write(p)
}

func (wl *watchedLog) String() string {
	wl.lock.Lock()
	defer wl.lock.Unlock()
	return wl.buf.String()
}

// waitFor waits until the log holds substr, failing the test after a deadline.
func (wl *watchedLog) waitFor(t testing.TB, substr string) {
	t.Helper()
	wl.waitForCount(t, substr, 1)
}

// waitForLine waits until n lines of the log hold substr, failing the test after a deadline,
// and returns the nth.
func (wl *watchedLog) waitForLine(t testing.TB, substr string, n int) string {
	t.Helper()
	wl.waitForCount(t, substr, n)
	seen := 0
	for _, line := range strings.Split(wl.String(), "\n") {
		if strings.Contains(line, substr) {
			if seen++; seen == n {
				return line
			}
		}
	}
	t.Fatalf("the log lost line %d holding %q", n, substr)
	return ""
}

// waitForCount waits until the log holds substr at least n times, failing the test after a
// deadline.
func (wl *watchedLog) waitForCount(t testing.TB, substr string, n int) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		wl.lock.Lock()
		found := strings.Count(wl.buf.String(), substr) >= n
		changed := wl.changed
		wl.lock.Unlock()
		if found {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("the log never said %q; it holds:\n%s", substr, wl.String())
		}
	}
}

// startClockedService starts a service on a fresh SQLite database with the homeserver at hsURL
// and the fake clock, logging to logs; it is stopped when the test ends.
func startClockedService(t *testing.T, hsURL string, clock *clock.Fake, logs io.Writer, configure func(svc *Service)) *Service {
	t.Helper()
	// Only to logs: a test writer does not accept lines after the test ended.
	log := zerolog.New(logs).Level(zerolog.DebugLevel)
	svc, err := newService(testConfig(hsURL), testRegistration(), nil, log, astest.TestDB(t, astest.SQLite))
	if err != nil {
		t.Fatal(err)
	}
	svc.clk = clock
	if configure != nil {
		configure(svc)
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
	return svc
}

func TestConnectHomeserverRetriesWithBackoffOnTheClock(t *testing.T) {
	hs := astest.NewFakeHomeserver(t, testDomain, testASToken)
	// A homeserver that does not take the appservice yet: every ping fails until it does.
	hs.Fail(astest.PatternPing, http.StatusForbidden, "M_FORBIDDEN")
	clock := clock.NewFake(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
	logs := newWatchedLog()
	startClockedService(t, hs.URL(), clock, logs, nil)
	pings := func() int { return len(hs.RequestsTo(astest.PatternPing)) }

	// Doubling from one second, capped at two minutes.
	backoffs := []time.Duration{
		time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second,
		32 * time.Second, 64 * time.Second, 2 * time.Minute, 2 * time.Minute,
	}
	for i, backoff := range backoffs {
		// The failure is logged after the previous wait's ticker stopped and before the next
		// one starts, so BlockUntilInterval cannot mistake the previous one for it.
		logs.waitFor(t, fmt.Sprintf(`"attempt":%d,"retry_in":%d,"message":"Homeserver ping failed"`, i+1, backoff.Milliseconds()))
		if clock.BlockUntilInterval(astest.Within(t, 10*time.Second), backoff) != nil {
			t.Fatalf("after failed ping %d the service does not wait %s on its clock", i+1, backoff)
		}
		if got := pings(); got != i+1 {
			t.Fatalf("pings before retry %d = %d, want %d", i+1, got, i+1)
		}
		if i == len(backoffs)-1 {
			// The homeserver comes up.
			hs.Unfail(astest.PatternPing)
		}
		clock.Advance(backoff)
	}
	logs.waitFor(t, `"attempts":10,"message":"Homeserver ping succeeded"`)
	if got := pings(); got != len(backoffs)+1 {
		t.Errorf("pings = %d, want %d", got, len(backoffs)+1)
	}
	if !strings.Contains(logs.String(), `"level":"warn","error":"M_FORBIDDEN`) {
		t.Errorf("the failed pings are not reported as warnings with the homeserver's error:\n%s", logs.String())
	}
	// Connected: no more retries.
	if clock.BlockUntilInterval(astest.Within(t, 50*time.Millisecond), 2*time.Minute) == nil {
		t.Error("the service still waits to retry after the ping succeeded")
	}
}

func TestPruneLoopRunsOnTheClock(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := clock.NewFake(t0)
	logs := newWatchedLog()
	svc := startClockedService(t, deadHomeserver(t).URL, clk, logs, func(svc *Service) {
		// Pruned every min(ttl/4, 10m): every 5 minutes, unlike the retention sweep's 10.
		svc.cfg.Database.ProcessedTTL = 20 * time.Minute
	})
	ctx := context.Background()
	// record stores a handled transaction with one event at the clock's time, as ingest and the
	// dispatcher do.
	record := func(txnID, eventID string) {
		t.Helper()
		evt := &database.InboxEvent{TxnID: txnID, EventID: id.EventID("$" + eventID), RoomID: "!r:example.org", Sender: "@a:example.org", JSON: []byte("{}")}
		added, _, err := svc.db.Inbox.Accept(ctx, txnID, []*database.InboxEvent{evt}, clk.Now())
		if err != nil || len(added) != 1 {
			t.Fatalf("Accept(%s) = %d added, %v", txnID, len(added), err)
		}
		if err = svc.db.Inbox.MarkDone(ctx, []database.Done{{TxnID: txnID, Index: 0, EventID: evt.EventID}}, clk.Now()); err != nil {
			t.Fatal(err)
		}
	}
	const round = `"message":"Pruned processed IDs"`

	record("old", "old")
	if clk.BlockUntilInterval(astest.Within(t, 10*time.Second), 5*time.Minute) != nil {
		t.Fatal("the prune loop did not start a 5-minute ticker on the service's clock")
	}
	clk.Advance(4 * time.Minute)
	if strings.Contains(logs.String(), round) {
		t.Fatal("pruned before the interval passed")
	}
	clk.Advance(time.Minute)
	// The first round prunes nothing: the IDs are 5 minutes old, the TTL 20.
	logs.waitFor(t, `"transactions":0,"events":0,`+round)
	record("new", "new")
	// 25 minutes after "old", 20 after "new": only "old" is past the TTL.
	clk.Advance(20 * time.Minute)
	logs.waitFor(t, `"transactions":1,"events":1,`+round)
	for table, want := range map[string]int{"as_txn": 1, "as_event_done": 1} {
		if n := countRows(t, svc.rawDB, table); n != want {
			t.Errorf("%s has %d rows, want %d", table, n, want)
		}
	}
}

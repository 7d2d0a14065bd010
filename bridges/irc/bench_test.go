package irc

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/bridges/irc/irctest"
)

// The benchmarks run the bridge against the in-process irctest server and the fake
// homeserver, which answers in well under a millisecond: they measure the bridge (and
// irctest, which shares the process), not a homeserver or a network. Run them with
//
//	go test -run '^$' -bench . -benchtime 1x ./bridges/irc/
//
// Each does its work once, whatever b.N is, and reports its own metrics; ns/op means nothing.

// benchPuppets is how many puppets the memory and reconnect benchmarks connect.
const benchPuppets = 1000

// benchWait bounds every wait of the benchmarks.
const benchWait = 60 * time.Second

// benchConfigYAML is testConfigYAML with connect_rate and reconnect delays as parameters
// (%s: per_second, burst, then the address).
const benchConfigYAML = `
reconnect:
    initial: 10ms
    max: 200ms
connect_rate:
    per_second: %s
    burst: %s
networks:
    testnet:
        name: Test Net
        address: %%s
        tls: false
        max_puppets: 1000
        line_rate:
            per_second: 1000
            burst: 100
`

func newBenchEnv(b *testing.B, perSecond, burst int) *testEnv {
	b.Helper()
	return newTestEnv(b, astest.SQLite, envConfig{
		yaml:    fmt.Sprintf(benchConfigYAML, strconv.Itoa(perSecond), strconv.Itoa(burst)),
		srvOpts: []irctest.Option{irctest.WithHistory(0)},
		quiet:   true,
	})
}

func benchUser(i int) id.UserID {
	return id.UserID(fmt.Sprintf("@user%04d:example.org", i))
}

// connectPuppets makes n users each send one message into the portal, from workers
// goroutines (the core handles rooms in parallel; one room's events in order, but the bridge
// allows concurrent calls), and waits until the server has every message.
func (env *testEnv) connectPuppets(b *testing.B, n, workers int) {
	b.Helper()
	var spoke atomic.Int64
	all := make(chan struct{})
	stop := env.srv.Observe(func(l irctest.Line) {
		if l.Command() == "PRIVMSG" && l.Param(1) == "warm-up" && spoke.Add(1) == int64(n) {
			close(all)
		}
	})
	defer stop()
	jobs := make(chan int)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				ctx, cancel := context.WithTimeout(env.ctx, benchWait)
				if err := env.deliver(ctx, env.message(testPortalRoom, benchUser(i), event.MsgText, "warm-up")); err != nil {
					errs <- err
				}
				cancel()
			}
		}()
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatalf("HandleEvent = %v", err)
	}
	select {
	case <-all:
	case <-time.After(benchWait):
		b.Fatalf("only %d of %d puppets spoke", spoke.Load(), n)
	}
}

// settle waits until the bridge's inbound queue stayed empty for 100 ms (the JOIN and NAMES
// storm of many puppets in one channel is bridged), at most d.
func (env *testEnv) settle(d time.Duration) {
	n := env.br.network(testNet)
	deadline := time.Now().Add(d)
	for quiet := 0; quiet < 5 && time.Now().Before(deadline); {
		if len(n.queue) == 0 {
			quiet++
		} else {
			quiet = 0
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// heapAndStack returns the bytes of live heap and goroutine stacks, after collecting garbage.
func heapAndStack() uint64 {
	heap, stack := memStats()
	return heap + stack
}

// memStats returns the bytes of live heap and of goroutine stacks, after collecting garbage.
func memStats() (heap, stack uint64) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc, m.StackInuse
}

// serverShare measures what irctest itself holds per registered, joined connection (its side
// of the socket, state, reader goroutine), with bare connections that never read. The bridge's
// puppets share the process with irctest, so this part of their measurement is not the
// bridge's.
func serverShare(b *testing.B, n int) float64 {
	b.Helper()
	srv := irctest.NewServer(b, irctest.WithHistory(0))
	before := heapAndStack()
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
		srv.Restart()
	}()
	for i := range n {
		c, err := net.Dial("tcp", srv.Addr())
		if err != nil {
			b.Fatal(err)
		}
		conns = append(conns, c)
		if _, err = fmt.Fprintf(c, "NICK bare%d\r\nUSER bare 0 * :bare\r\nJOIN #bare%d\r\n", i, i); err != nil {
			b.Fatal(err)
		}
	}
	if !srv.Until(func() bool { return len(srv.Members(fmt.Sprintf("#bare%d", n-1))) == 1 && srv.Registered() == n }, benchWait) {
		b.Fatal("the bare connections did not register")
	}
	after := heapAndStack()
	return float64(after-before) / float64(n)
}

// BenchmarkPuppetMemory connects 1,000 puppets to one channel (1,000 users each send one
// message into a portal) and reports the heap and stack bytes per connected puppet: B/puppet
// is everything in the process (the bridge, and irctest's side of each connection), and
// bridge-B/puppet subtracts irctest's share, measured with bare connections. The budget is
// 40 KB per puppet. The fake homeserver answers at once.
func BenchmarkPuppetMemory(b *testing.B) {
	share := serverShare(b, benchPuppets)
	env := newBenchEnv(b, 1000, 100)
	env.settle(5 * time.Second)
	goroutines := runtime.NumGoroutine()
	heap0, stack0 := memStats()
	start := time.Now()
	env.connectPuppets(b, benchPuppets, 32)
	connected := time.Since(start)
	env.waitMembers(testChannel, benchUser(benchPuppets-1).Localpart()+"[m]")
	env.settle(benchWait)
	heap1, stack1 := memStats()
	perPuppet := float64(heap1+stack1-heap0-stack0) / benchPuppets
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(perPuppet, "B/puppet")
	b.ReportMetric(perPuppet-share, "bridge-B/puppet")
	b.ReportMetric(share, "irctest-B/conn")
	b.ReportMetric(float64(stack1-stack0)/benchPuppets, "stack-B/puppet")
	b.ReportMetric(float64(runtime.NumGoroutine()-goroutines)/benchPuppets, "goroutines/puppet")
	b.ReportMetric(connected.Seconds(), "s-to-connect")
	if got := env.srv.Registered(); got != benchPuppets+1 {
		b.Errorf("Registered() = %d, want %d", got, benchPuppets+1)
	}
	env.reportWarnings(b)
	runtime.KeepAlive(env)
}

// reportWarnings reports how many warnings and errors the bridge logged, and logs the first.
func (env *testEnv) reportWarnings(b *testing.B) {
	n, first := env.logs.count()
	b.ReportMetric(float64(n), "warnings")
	if first, _, _ = strings.Cut(first, "\n"); first != "" {
		b.Logf("the bridge logged %d warnings or errors; the first: %s", n, first)
	}
}

// latencies collects per-message latencies by sequence number.
type latencies struct {
	mu    sync.Mutex
	start map[int]time.Time
	took  []time.Duration
}

func newLatencies() *latencies { return &latencies{start: make(map[int]time.Time)} }

func (l *latencies) sent(seq int, at time.Time) {
	l.mu.Lock()
	l.start[seq] = at
	l.mu.Unlock()
}

func (l *latencies) arrived(seq int, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if t0, ok := l.start[seq]; ok {
		l.took = append(l.took, at.Sub(t0))
		delete(l.start, seq)
	}
}

func (l *latencies) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.took)
}

// percentile returns the p-th percentile in milliseconds.
func (l *latencies) percentile(p float64) float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.took) == 0 {
		return 0
	}
	sorted := slices.Clone(l.took)
	slices.Sort(sorted)
	i := int(p / 100 * float64(len(sorted)-1))
	return float64(sorted[i].Microseconds()) / 1000
}

// pace waits until message seq of a steady rate per second that started at start is due, and
// returns when it was due; it returns at once for a message already late, so that a slow
// sender's backlog counts in the latencies.
func pace(start time.Time, seq, rate int) time.Time {
	due := start.Add(time.Duration(seq) * time.Second / time.Duration(rate))
	if d := time.Until(due); d > 0 {
		time.Sleep(d)
	}
	return due
}

// seqOf parses the number after prefix in text, or -1.
func seqOf(text, prefix string) int {
	rest, ok := strings.CutPrefix(text, prefix)
	if !ok {
		return -1
	}
	n, err := strconv.Atoi(rest)
	if err != nil {
		return -1
	}
	return n
}

// BenchmarkRelayLatency relays 200 messages a second for 3 seconds each way through one
// portal, with 20 Matrix users (puppets) and 5 IRC users in the channel, and reports the
// latency percentiles: Matrix→IRC from the moment the message is due to the core handing it to
// HandleEvent (one room's events are handled in order, so a slow HandleEvent delays the next)
// until the server reads the PRIVMSG; IRC→Matrix from the IRC client's write until the fake
// homeserver (which answers at once, so this is the bridge's own latency) accepted the send.
// Flood control is set high (line_rate 1000/s): the defaults would throttle each user to 2
// lines a second.
func BenchmarkRelayLatency(b *testing.B) {
	const (
		rate     = 200
		duration = 3 * time.Second
		matrix   = 20
		irc      = 5
	)
	env := newBenchEnv(b, 1000, 100)
	env.connectPuppets(b, matrix, 4)
	clients := make([]*irctest.Client, irc)
	for i := range clients {
		nick := fmt.Sprintf("ircer%d", i)
		// As Synapse does on registration; mautrix reads the display name before setting it.
		ghost := ghostID(b, nick)
		env.host.HS.SetProfileField(ghost, "displayname", ghost.Localpart())
		clients[i] = env.srv.Client(b, nick)
		if err := clients[i].Join(testChannel); err != nil {
			b.Fatal(err)
		}
	}
	env.settle(5 * time.Second)
	total := int(rate * duration / time.Second)

	// Matrix → IRC.
	m2i := newLatencies()
	stop := env.srv.Observe(func(l irctest.Line) {
		if seq := seqOf(l.Param(1), "m2i "); seq >= 0 && l.Command() == "PRIVMSG" {
			m2i.arrived(seq, l.Time)
		}
	})
	handled := newLatencies()
	start := time.Now()
	for seq := range total {
		due := pace(start, seq, rate)
		m2i.sent(seq, due)
		evt := env.message(testPortalRoom, benchUser(seq%matrix), event.MsgText, fmt.Sprintf("m2i %d", seq))
		ctx, cancel := context.WithTimeout(env.ctx, benchWait)
		handled.sent(seq, time.Now())
		if err := env.deliver(ctx, evt); err != nil {
			b.Fatalf("HandleEvent = %v", err)
		}
		handled.arrived(seq, time.Now())
		cancel()
	}
	if !env.srv.Until(func() bool { return m2i.count() == total }, benchWait) {
		b.Fatalf("%d of %d Matrix messages reached IRC", m2i.count(), total)
	}
	stop()

	// IRC → Matrix.
	i2m := newLatencies()
	arrived := make(chan struct{}, total)
	onSend := func(body []byte, at time.Time) {
		var c event.MessageEventContent
		if json.Unmarshal(body, &c) == nil {
			if seq := seqOf(c.Body, "i2m "); seq >= 0 {
				i2m.arrived(seq, at)
				arrived <- struct{}{}
			}
		}
	}
	env.hsTraffic.onSend.Store(&onSend)
	start = time.Now()
	for seq := range total {
		i2m.sent(seq, pace(start, seq, rate))
		if err := clients[seq%irc].Privmsg(testChannel, fmt.Sprintf("i2m %d", seq)); err != nil {
			b.Fatal(err)
		}
	}
	timeout := time.After(benchWait)
	for range total {
		select {
		case <-arrived:
		case <-timeout:
			b.Fatalf("%d of %d IRC messages reached Matrix", i2m.count(), total)
		}
	}
	env.hsTraffic.onSend.Store(nil)

	b.ReportMetric(0, "ns/op")
	b.ReportMetric(m2i.percentile(50), "m2i-p50-ms")
	b.ReportMetric(m2i.percentile(99), "m2i-p99-ms")
	b.ReportMetric(handled.percentile(50), "m2i-handle-p50-ms")
	b.ReportMetric(handled.percentile(99), "m2i-handle-p99-ms")
	b.ReportMetric(i2m.percentile(50), "i2m-p50-ms")
	b.ReportMetric(i2m.percentile(99), "i2m-p99-ms")
	env.reportWarnings(b)
}

// BenchmarkReconnect1000 connects 1,000 puppets, restarts the server (every connection drops)
// and measures how long until all of them and the bridge's own connection are registered
// again, and until all are back in the channel, with connect_rate 500 a second (burst 100)
// and reconnect delays from 10 ms to 200 ms; it reports the peak goroutines and heap while
// they return. The rate limit alone needs (1,001 − 100) / 500 ≈ 1.8 s.
func BenchmarkReconnect1000(b *testing.B) {
	env := newBenchEnv(b, 500, 100)
	env.connectPuppets(b, benchPuppets, 32)
	env.settle(benchWait)
	heapAndStack()

	var peakG, peakHeap atomic.Uint64
	sampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		var m runtime.MemStats
		for {
			select {
			case <-sampling:
				return
			case <-tick.C:
			}
			if g := uint64(runtime.NumGoroutine()); g > peakG.Load() {
				peakG.Store(g)
			}
			runtime.ReadMemStats(&m)
			if m.HeapAlloc > peakHeap.Load() {
				peakHeap.Store(m.HeapAlloc)
			}
		}
	}()
	start := time.Now()
	env.srv.Restart()
	if !env.srv.Until(func() bool { return env.srv.Registered() == benchPuppets+1 }, benchWait) {
		b.Fatalf("%d of %d connections registered again", env.srv.Registered(), benchPuppets+1)
	}
	registered := time.Since(start)
	if !env.srv.Until(func() bool { return len(env.srv.Members(testChannel)) == benchPuppets+1 }, benchWait) {
		b.Fatalf("%d of %d connections rejoined %s", len(env.srv.Members(testChannel)), benchPuppets+1, testChannel)
	}
	rejoined := time.Since(start)
	close(sampling)
	<-sampled

	b.ReportMetric(0, "ns/op")
	b.ReportMetric(registered.Seconds(), "s/1000-puppets")
	b.ReportMetric(rejoined.Seconds(), "s-rejoined")
	b.ReportMetric(float64(peakG.Load()), "peak-goroutines")
	b.ReportMetric(float64(peakHeap.Load())/(1<<20), "peak-heap-MB")
	env.reportWarnings(b)
}

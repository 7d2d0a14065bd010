package appservice

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/vault"
)

// BenchmarkIngestEncrypted measures encrypted events through the whole service, as
// BenchmarkIngest does for plain ones: transactions of 100 m.room.encrypted events from one
// sender's device in 10 rooms (a new megolm session every 100 messages per room, as Element
// does), sent one at a time, with the vault, the sealed inbox, the decryption cache and the
// dispatcher's 16 workers on. It reports acknowledged and handled events per second (handled:
// decrypted, routed and marked done) and the process's CPU time per handled event, which the
// machine's load moves less. mode=plain sends the same number of unencrypted events (the
// reference line); mode=encrypted the encrypted ones.
//
//	go test -tags goolm -run '^$' -bench BenchmarkIngestEncrypted -benchtime 100x ./appservice/
func BenchmarkIngestEncrypted(b *testing.B) {
	for _, dialect := range astest.Dialects(b) {
		for _, mode := range []string{"plain", "encrypted"} {
			b.Run(fmt.Sprintf("%s/mode=%s", dialect, mode), func(b *testing.B) {
				benchmarkIngestEncrypted(b, dialect, mode == "plain")
			})
		}
	}
}

func benchmarkIngestEncrypted(b *testing.B, dialect string, plain bool) {
	db := astest.TestDB(b, dialect)
	// The service's default pool on SQLite (database.max_open_conns 5, max_idle_conns 5); on
	// PostgreSQL, where 16 workers each wait for the server, the recommended 20 open and as many
	// idle: with fewer idle, every burst opens connections again (a server process each), which
	// cut the handled rate to a quarter. BENCH_IDLE_CONNS overrides max_idle_conns.
	open, idle := 5, 5
	if dialect == astest.Postgres {
		open, idle = 20, 20
	}
	if v, err := strconv.Atoi(os.Getenv("BENCH_IDLE_CONNS")); err == nil {
		idle = v
	}
	db.RawDB.SetMaxOpenConns(open)
	db.RawDB.SetMaxIdleConns(idle)
	// BENCH_QUERIES=1 counts the statements run per handled event (=v also lists them by
	// count), to see where the round trips to the database go.
	var qc *queryCounter
	if os.Getenv("BENCH_QUERIES") != "" {
		qc = &queryCounter{DatabaseLogger: db.Log}
		db.Log = qc
	}

	hs := astest.NewFakeHomeserver(b, testDomain, testASToken)
	cfg := testConfig(hs.URL())
	keyFile := filepath.Join(b.TempDir(), "custodian.key")
	key, err := vault.GenerateKey()
	if err != nil {
		b.Fatal(err)
	}
	if err = vault.ReplaceKeyFile(keyFile, key); err != nil {
		b.Fatal(err)
	}
	cfg.Vault = VaultConfig{KeyFile: &keyFile}
	cfg.Encryption.Enabled = true
	// The probe's echo (echoToDevice) sends to the configured port, which must be known before
	// the listener starts.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	cfg.AppService.Port = uint16(ln.Addr().(*net.TCPAddr).Port)
	if err = ln.Close(); err != nil {
		b.Fatal(err)
	}
	cfg.AppService.MaxBacklog = 1000000
	// The start-up's probe must have come back before the load starts: encryptionActive is
	// true while the probe is still out, and a probe that has not come back after its timeout
	// (on PostgreSQL under this load it may not) turns encryption off for the rest of the run.
	probed := make(chan struct{})
	var probeBack sync.Once
	hook := zerolog.HookFunc(func(_ *zerolog.Event, level zerolog.Level, msg string) {
		if level == zerolog.InfoLevel && msg == probeBackMessage {
			probeBack.Do(func() { close(probed) })
		}
	})
	log := zerolog.New(io.Discard).Level(zerolog.InfoLevel).Hook(hook)
	if os.Getenv("BENCH_LOG") != "" {
		log = zerolog.New(astest.LogWriter(b)).Level(zerolog.InfoLevel).Hook(hook)
	}
	svc, err := newService(cfg, testRegistration(), nil, log, db)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(log.WithContext(context.Background()))
	started := false
	b.Cleanup(func() {
		cancel()
		if started {
			svc.stopServing()
		} else {
			svc.bg.Wait()
		}
	})
	// The start-up's probe: the fake homeserver hands the bot's to-device messages back.
	echoToDevice(hs, svc)
	if err = svc.start(ctx); err != nil {
		b.Fatal(err)
	}
	started = true
	if svc.crypto == nil || !svc.crypto.CacheEnabled() {
		b.Fatal("encryption is not on after start-up")
	}
	select {
	case <-probed:
	case <-time.After(20 * time.Second):
		b.Fatal("the to-device probe did not come back")
	}
	if !svc.encryptionActive() {
		b.Fatal("encryption is not active after the probe came back")
	}
	base := "http://" + svc.listenAddr.String()

	// Alice's device, known to the bot as after a key query.
	alice := crypto.NewOlmAccount()
	signing, identity := alice.Keys()
	store := svc.crypto.Store()
	if err = store.PutDevice(ctx, e2eeAlice, &id.Device{UserID: e2eeAlice, DeviceID: e2eeAliceDevice, IdentityKey: identity, SigningKey: signing}); err != nil {
		b.Fatal(err)
	}
	const rooms = 10
	bob := id.UserID("@bob:" + testDomain)
	groups := make([]id.RoomID, rooms)
	ogss := make([]*crypto.OutboundGroupSession, rooms)
	sent := make([]int, rooms)
	rotate := func(r int) {
		ogss[r], err = crypto.NewOutboundGroupSession(groups[r], nil, nil)
		if err != nil {
			b.Fatal(err)
		}
		ogss[r].Shared = true
		igs, err := crypto.NewInboundGroupSession(identity, signing, groups[r], ogss[r].Internal.Key(), 0, 0, nil, false)
		if err != nil {
			b.Fatal(err)
		}
		if err = store.PutGroupSession(ctx, igs); err != nil {
			b.Fatal(err)
		}
		sent[r] = 0
	}
	for r := range groups {
		groups[r] = id.RoomID(fmt.Sprintf("!group%d:%s", r, testDomain))
		for _, user := range []id.UserID{svc.as.BotMXID(), e2eeAlice, bob} {
			hs.SetMembership(groups[r], user, event.MembershipJoin)
			if err = svc.stateStore.SetMembership(ctx, groups[r], user, event.MembershipJoin); err != nil {
				b.Fatal(err)
			}
		}
		if err = svc.stateStore.SetEncryptionEvent(ctx, groups[r], &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}); err != nil {
			b.Fatal(err)
		}
		rotate(r)
	}
	const perTxn = 100
	const body = "A typical chat message of a few dozen characters, nothing special."
	seq := 0
	bodies := make([][]byte, b.N)
	for n := range bodies {
		events := make([]map[string]any, perTxn)
		for i := range events {
			r := i % rooms
			seq++
			if plain {
				events[i] = messageEvent(fmt.Sprintf("$plain%d", seq), string(groups[r]), string(e2eeAlice), body)
				continue
			}
			if sent[r] == 100 {
				rotate(r)
			}
			sent[r]++
			plaintext, _ := json.Marshal(map[string]any{
				"room_id": groups[r], "type": event.EventMessage.Type,
				"content": map[string]any{"msgtype": event.MsgText, "body": body},
			})
			ciphertext, err := ogss[r].Encrypt(plaintext)
			if err != nil {
				b.Fatal(err)
			}
			events[i] = map[string]any{
				"event_id": fmt.Sprintf("$enc%d", seq), "room_id": groups[r], "sender": e2eeAlice,
				"type": event.EventEncrypted.Type, "origin_server_ts": 1700000000000 + seq,
				"content": map[string]any{
					"algorithm": id.AlgorithmMegolmV1, "sender_key": identity, "device_id": e2eeAliceDevice,
					"session_id": ogss[r].ID(), "ciphertext": string(ciphertext),
				},
			}
		}
		bodies[n], _ = json.Marshal(map[string]any{"events": events})
	}
	handledBefore := counterValue(b, svc.metrics.eventsHandled)
	queriesBefore := 0
	if qc != nil {
		queriesBefore = len(qc.ran())
	}
	client := &http.Client{}
	b.ResetTimer()
	cpuStart := processCPUTime()
	start := time.Now()
	for n := 0; n < b.N; n++ {
		req, _ := http.NewRequest(http.MethodPut, fmt.Sprintf("%s/_matrix/app/v1/transactions/bench%d", base, n), bytes.NewReader(bodies[n]))
		req.Header.Set("Authorization", "Bearer "+testHSToken)
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	acked := time.Since(start)
	want := handledBefore + float64(b.N*perTxn)
	deadline := time.Now().Add(5 * time.Minute)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for counterValue(b, svc.metrics.eventsHandled) < want {
		if time.Now().After(deadline) {
			b.Fatal("not handled in time")
		}
		<-tick.C
	}
	handled := time.Since(start)
	cpu := processCPUTime() - cpuStart
	b.StopTimer()
	if f := counterValue(b, svc.metrics.decryption.WithLabelValues("failed")); f > 0 {
		b.Fatalf("%v decryptions failed", f)
	}
	events := float64(b.N * perTxn)
	if !plain && !svc.encryptionActive() {
		b.Fatal("encryption was turned off during the run")
	}
	if d := counterValue(b, svc.metrics.decryption.WithLabelValues("decrypted")); !plain && d < events {
		b.Fatalf("%v of %v events decrypted", d, events)
	}
	b.ReportMetric(events/acked.Seconds(), "acked-events/s")
	b.ReportMetric(events/handled.Seconds(), "handled-events/s")
	b.ReportMetric(float64(cpu.Microseconds())/events, "cpu-µs/event")
	if qc != nil {
		ran := qc.ran()[queriesBefore:]
		b.ReportMetric(float64(len(ran))/events, "queries/event")
		// Only the first run's log is shown (b.N = 1, where the reads made once per room
		// weigh 0.1 per event), so the listing waits for a run of more transactions.
		if os.Getenv("BENCH_QUERIES") == "v" && b.N > 1 {
			counts := map[string]int{}
			for _, q := range ran {
				counts[q]++
			}
			keys := slices.SortedFunc(maps.Keys(counts), func(a, b string) int { return counts[b] - counts[a] })
			for _, q := range keys {
				b.Logf("%8.3f per event, %8.1f µs each: %.160s", float64(counts[q])/events,
					float64(qc.tookTotal(q).Microseconds())/float64(counts[q]), strings.Join(strings.Fields(q), " "))
			}
		}
	}
}

// probeBackMessage is what the service logs when its to-device probe came back.
const probeBackMessage = "The homeserver delivers to-device events to the appservice: encryption is active"

// processCPUTime returns the CPU time (user and system) the process has used so far.
func processCPUTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// counterValue returns the value of a counter.
func counterValue(b *testing.B, c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		b.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

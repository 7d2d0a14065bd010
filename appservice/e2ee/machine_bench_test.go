package e2ee

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
	"maunium.net/go/mautrix/sqlstatestore"

	"github.com/custodian-matrix/custodian/appservice/astest"
)

// The benchmarks of this file measure what end-to-end encryption costs per event on the real
// SQL crypto store, on SQLite and (with POSTGRES_TEST_URI) PostgreSQL:
//
//	go test -tags goolm -run '^$' -bench 'BenchmarkDecrypt|BenchmarkEncrypt' ./appservice/e2ee/
//
// No homeserver is involved: the senders' devices and cross-signing keys are in the store (as
// after a key query), the inbound megolm sessions are stored (as after their room keys arrived),
// and the bot's outbound sessions are marked shared. A request to the homeserver fails the
// benchmark.

const benchBody = "A typical chat message of a few dozen characters, nothing special."

// benchWorkers is the number of events handled at once in the parallel variants: the
// dispatcher's default worker count (appservice.workers).
const benchWorkers = 16

// benchMachine is a Machine on a migrated database, with the bot's account loaded.
type benchMachine struct {
	mach  *Machine
	store *crypto.SQLCryptoStore
	db    *dbutil.Database
	ctx   context.Context
}

// noHomeserver returns the URL of a server that fails b on any request: the benchmarks must
// not touch the network.
func noHomeserver(b testing.TB) string {
	var once sync.Once
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		once.Do(func() { b.Errorf("unexpected request to the homeserver: %s %s", r.Method, r.URL.Path) })
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusInternalServerError)
	}))
	b.Cleanup(srv.Close)
	return srv.URL
}

func newBenchMachine(b testing.TB, ctx context.Context, dialect string) *benchMachine {
	b.Helper()
	db := migratedDB(b, ctx, dialect)
	log := zerolog.New(io.Discard).Level(zerolog.InfoLevel)
	states := sqlstatestore.NewSQLStateStore(db, dbutil.ZeroLogger(log), false)
	if err := states.Upgrade(ctx); err != nil {
		b.Fatal(err)
	}
	store, err := OpenStore(ctx, db, newVault(b, ctx, db, mustKey(b)), log)
	if err != nil {
		b.Fatal(err)
	}
	store.DeviceID = "CUSTODIANDEV"
	client, err := mautrix.NewClient(noHomeserver(b), "@custodian:example.org", "as-token")
	if err != nil {
		b.Fatal(err)
	}
	client.DeviceID = store.DeviceID
	m := NewMachine(client, store, states, log)
	if err = m.Olm().Load(ctx); err != nil {
		b.Fatal(err)
	}
	// The bot's own cross-signing keys, in memory as after start-up (no network): the trust of
	// every sender's device is resolved against them.
	if m.Olm().CrossSigningKeys, err = m.Olm().GenerateCrossSigningKeys(); err != nil {
		b.Fatal(err)
	}
	return &benchMachine{mach: m, store: store, db: db, ctx: ctx}
}

// benchSender is one sending device of a cross-signed user, with its megolm session in one
// room: outbound here (in the sender's hands), inbound in the bot's store.
type benchSender struct {
	bm     *benchMachine
	user   id.UserID
	room   id.RoomID
	device *id.Device
	out    *crypto.OutboundGroupSession
	// rotateEvery, if not 0, is after how many messages the sender starts a new session, as
	// Element does after 100 (rotation_period_msgs); sent counts the current session's.
	rotateEvery int
	sent        int
}

// elementRotation is the number of messages after which Element starts a new megolm session.
const elementRotation = 100

// addSender stores a device of user (cross-signed by the user's self-signing key, itself signed
// by their master key, as Element's users are) and the inbound megolm session it shared in
// room, and returns the sender with its outbound session.
func (bm *benchMachine) addSender(b testing.TB, ctx context.Context, user id.UserID, deviceID id.DeviceID, room id.RoomID) *benchSender {
	b.Helper()
	acc := crypto.NewOlmAccount()
	device := &id.Device{
		UserID: user, DeviceID: deviceID, IdentityKey: acc.IdentityKey(), SigningKey: acc.SigningKey(), Name: "Element",
	}
	devices, err := bm.store.GetDevices(ctx, user)
	if err != nil {
		b.Fatal(err)
	}
	if devices == nil {
		devices = map[id.DeviceID]*id.Device{}
	}
	devices[deviceID] = device
	if err = bm.store.PutDevices(ctx, user, devices); err != nil {
		b.Fatal(err)
	}
	keys, err := bm.store.GetCrossSigningKeys(ctx, user)
	if err != nil {
		b.Fatal(err)
	}
	if _, ok := keys[id.XSUsageMaster]; !ok {
		master, selfSigning := crypto.NewOlmAccount().SigningKey(), crypto.NewOlmAccount().SigningKey()
		for usage, key := range map[id.CrossSigningUsage]id.Ed25519{id.XSUsageMaster: master, id.XSUsageSelfSigning: selfSigning} {
			if err = bm.store.PutCrossSigningKey(ctx, user, usage, key); err != nil {
				b.Fatal(err)
			}
		}
		if err = bm.store.PutSignature(ctx, user, selfSigning, user, master, "sig"); err != nil {
			b.Fatal(err)
		}
		keys = map[id.CrossSigningUsage]id.CrossSigningKey{id.XSUsageSelfSigning: {Key: selfSigning}}
	}
	if err = bm.store.PutSignature(ctx, user, device.SigningKey, user, keys[id.XSUsageSelfSigning].Key, "sig"); err != nil {
		b.Fatal(err)
	}
	s := &benchSender{bm: bm, user: user, room: room, device: device}
	s.newSession(b)
	return s
}

// newSession starts a new megolm session of s and stores its inbound side in the bot's store,
// as if its room key had arrived.
func (s *benchSender) newSession(b testing.TB) {
	b.Helper()
	out, err := crypto.NewOutboundGroupSession(s.room, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	in, err := crypto.NewInboundGroupSession(s.device.IdentityKey, s.device.SigningKey, s.room, out.Internal.Key(), 0, 0, nil, false)
	if err != nil {
		b.Fatal(err)
	}
	in.KeySource = id.KeySourceDirect
	in.SourceUser = s.user
	in.ReceivedAt = time.Now()
	if err = s.bm.store.PutGroupSession(s.bm.ctx, in); err != nil {
		b.Fatal(err)
	}
	s.out, s.sent = out, 0
}

// encryptedEvent returns the n-th event s sends: an m.room.message encrypted with its megolm
// session, as the inbox hands it to the handler (content parsed).
func (s *benchSender) encryptedEvent(b testing.TB, n int) *event.Event {
	if s.rotateEvery > 0 && s.sent == s.rotateEvery {
		s.newSession(b)
	}
	s.sent++
	plaintext, err := json.Marshal(map[string]any{
		"room_id": s.room,
		"type":    event.EventMessage.Type,
		"content": map[string]any{"msgtype": event.MsgText, "body": benchBody},
	})
	if err != nil {
		b.Fatal(err)
	}
	ciphertext, err := s.out.Internal.Encrypt(plaintext)
	if err != nil {
		b.Fatal(err)
	}
	return &event.Event{
		Type:      event.EventEncrypted,
		ID:        id.EventID(fmt.Sprintf("$bench-%s-%d", s.device.DeviceID, n)),
		RoomID:    s.room,
		Sender:    s.user,
		Timestamp: time.Now().UnixMilli(),
		Content: event.Content{Parsed: &event.EncryptedEventContent{
			Algorithm:        id.AlgorithmMegolmV1,
			SenderKey:        s.device.IdentityKey,
			SessionID:        s.out.ID(),
			MegolmCiphertext: ciphertext,
		}},
	}
}

// benchDialects names the databases the benchmarks run on.
func benchDialects(b *testing.B) []string {
	return astest.Dialects(b)
}

// BenchmarkDecrypt measures [Machine.Decrypt] per megolm event: the events of one sending
// device, or spread round-robin over 50 (devices of 10 users in 10 rooms); each device starts a
// new session every 100 messages as Element does, whose key is stored beforehand. One at a
// time, or 16 at once as the dispatcher's workers handle rooms. replay=yes decrypts events whose message
// indexes are already recorded, as a replay after a crash does. cache=on runs with
// [Machine.EnableCache], cache=off reads everything from the store.
func BenchmarkDecrypt(b *testing.B) {
	variants := []struct {
		name    string
		senders int
		workers int
		replay  bool
	}{
		{"senders=1", 1, 1, false},
		{"senders=50", 50, 1, false},
		{"senders=50/workers=16", 50, benchWorkers, false},
		{"senders=50/replay=yes", 50, 1, true},
	}
	for _, dialect := range benchDialects(b) {
		for _, v := range variants {
			for _, cache := range []bool{true, false} {
				b.Run(fmt.Sprintf("%s/cache=%s/%s", dialect, onOff(cache), v.name), func(b *testing.B) {
					benchmarkDecrypt(b, dialect, cache, v.senders, v.workers, v.replay)
				})
			}
		}
	}
}

func onOff(on bool) string {
	if on {
		return "on"
	}
	return "off"
}

func benchmarkDecrypt(b *testing.B, dialect string, cache bool, count, workers int, replay bool) {
	ctx := astest.Within(b, 10*time.Minute)
	bm := newBenchMachine(b, ctx, dialect)
	if cache {
		bm.mach.EnableCache(0)
	}
	senders := make([]*benchSender, count)
	for i := range senders {
		user := id.UserID(fmt.Sprintf("@user%d:example.org", i%10))
		room := id.RoomID(fmt.Sprintf("!room%d:example.org", i%10))
		senders[i] = bm.addSender(b, ctx, user, id.DeviceID(fmt.Sprintf("DEVICE%d", i)), room)
		senders[i].rotateEvery = elementRotation
	}
	events := make([]*event.Event, b.N)
	for n := range events {
		events[n] = senders[n%len(senders)].encryptedEvent(b, n)
	}
	if replay {
		for _, evt := range events {
			if _, err := bm.mach.Decrypt(ctx, evt); err != nil {
				b.Fatal(err)
			}
		}
	}
	decrypt := func(evt *event.Event) {
		got, err := bm.mach.Decrypt(ctx, evt)
		if err != nil {
			b.Errorf("Decrypt(%s) = %v", evt.ID, err)
			return
		}
		if msg := got.Content.AsMessage(); msg.Body != benchBody {
			b.Errorf("Decrypt(%s) body = %q, want %q", evt.ID, msg.Body, benchBody)
		}
		if got.Mautrix.TrustState != id.TrustStateCrossSignedTOFU {
			b.Errorf("Decrypt(%s) trust = %s, want %s", evt.ID, got.Mautrix.TrustState, id.TrustStateCrossSignedTOFU)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	start, cpu := time.Now(), cpuTime()
	runWorkers(b.N, workers, func(n int) { decrypt(events[n]) })
	reportRates(b, start, cpu)
}

// cpuTime returns the CPU time (user and system) the process has used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportRates reports events per second of wall time since start and the process's CPU time
// per event since cpu. On a shared machine the second varies much less with the load than the
// first; with SQLite it covers the database too, with PostgreSQL only the client's side.
func reportRates(b *testing.B, start time.Time, cpu time.Duration) {
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	b.ReportMetric(float64((cpuTime()-cpu).Microseconds())/float64(b.N), "cpu-µs/event")
}

// BenchmarkEncrypt measures [Machine.Encrypt] per m.room.message in rooms whose outbound
// session is already shared (so no key is sent): one room at a time, or 50 rooms, 16 at once.
// A session rotates after rotation_period_msgs messages (100 by default); that sharing, which
// needs the homeserver, is not measured here.
func BenchmarkEncrypt(b *testing.B) {
	variants := []struct {
		name    string
		rooms   int
		workers int
	}{
		{"rooms=1", 1, 1},
		{"rooms=50/workers=16", 50, benchWorkers},
	}
	for _, dialect := range benchDialects(b) {
		for _, v := range variants {
			b.Run(dialect+"/"+v.name, func(b *testing.B) {
				ctx := astest.Within(b, 10*time.Minute)
				bm := newBenchMachine(b, ctx, dialect)
				rooms := make([]id.RoomID, v.rooms)
				for i := range rooms {
					rooms[i] = id.RoomID(fmt.Sprintf("!room%d:example.org", i))
					out, err := crypto.NewOutboundGroupSession(rooms[i], nil, nil)
					if err != nil {
						b.Fatal(err)
					}
					// Never expires during the run: rotation is not what is measured.
					out.MaxMessages = b.N + 1
					out.Shared = true
					if err = bm.store.AddOutboundGroupSession(ctx, out); err != nil {
						b.Fatal(err)
					}
				}
				content := &event.MessageEventContent{MsgType: event.MsgNotice, Body: benchBody}
				var failed atomic.Bool
				b.ReportAllocs()
				b.ResetTimer()
				start, cpu := time.Now(), cpuTime()
				runWorkers(b.N, v.workers, func(n int) {
					enc, err := bm.mach.Encrypt(ctx, rooms[n%len(rooms)], event.EventMessage, content)
					if err != nil || len(enc.MegolmCiphertext) == 0 {
						if failed.CompareAndSwap(false, true) {
							b.Errorf("Encrypt() = %v, %v", enc, err)
						}
					}
				})
				reportRates(b, start, cpu)
			})
		}
	}
}

// runWorkers calls fn(n) for every n in [0, count), from workers goroutines at once.
func runWorkers(count, workers int, fn func(n int)) {
	if workers <= 1 {
		for n := 0; n < count; n++ {
			fn(n)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := int(next.Add(1)) - 1; n < count; n = int(next.Add(1)) - 1 {
				fn(n)
			}
		}()
	}
	wg.Wait()
}

package webhook

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/bridges/webhook/webhookdb"
	"github.com/custodian-matrix/custodian/bridges/webhook/webhookid"
)

func TestSign(t *testing.T) {
	// HMAC-SHA256 test vector (RFC 4231, test case 2).
	got := Sign("Jefe", []byte("what do ya want for nothing?"))
	want := "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
	if got != want {
		t.Errorf("Sign = %q, want %q", got, want)
	}
}

func TestBackoff(t *testing.T) {
	br := New()
	br.cfg.Outbound.MinBackoff = 2 * time.Second
	br.cfg.Outbound.MaxBackoff = 30 * time.Second
	tests := []struct {
		name       string
		attempt    int
		jitter     float64
		retryAfter time.Duration
		want       time.Duration
	}{
		{name: "first retry, no jitter", attempt: 1, jitter: 1 - 1e-9, want: 2 * time.Second},
		{name: "first retry, most jitter", attempt: 1, jitter: 0, want: time.Second},
		{name: "second retry doubles", attempt: 2, jitter: 0.5, want: 3 * time.Second},
		{name: "third retry doubles again", attempt: 3, jitter: 0.5, want: 6 * time.Second},
		{name: "capped", attempt: 10, jitter: 0.5, want: 22500 * time.Millisecond},
		{name: "huge attempt does not overflow", attempt: 1000, jitter: 0, want: 15 * time.Second},
		{name: "retry-after wins when longer", attempt: 1, jitter: 0.5, retryAfter: 20 * time.Second, want: 20 * time.Second},
		{name: "retry-after capped", attempt: 1, jitter: 0.5, retryAfter: time.Hour, want: 30 * time.Second},
	}
	for _, tt := range tests {
		br.jitter = func() float64 { return tt.jitter }
		got := br.backoff(tt.attempt, tt.retryAfter)
		if got < tt.want-time.Millisecond || got > tt.want+time.Millisecond {
			t.Errorf("%s: backoff(%d, %s) = %s, want %s", tt.name, tt.attempt, tt.retryAfter, got, tt.want)
		}
	}
}

// setUpOutbound creates an outbound hook to rc as alice and returns its row and signing secret.
func setUpOutbound(t *testing.T, env *testEnv, rc *receiver) (*webhookdb.Hook, string) {
	t.Helper()
	res := env.mustRun(testAlice, "out "+rc.URL()+" relay", "Created the outgoing webhook **relay**")
	for _, reply := range res.replies {
		if strings.Contains(reply, "sekrit") {
			t.Fatalf("room reply %q holds the URL", reply)
		}
	}
	hook, err := env.br.db.Hook.GetByName(env.ctx, testRoom, "relay")
	if err != nil || hook == nil {
		t.Fatalf("no relay hook: %v", err)
	}
	return hook, env.lastSigningSecret(testAlice)
}

func TestOutboundDelivery(t *testing.T) {
	forEachDialect(t, nil, func(t *testing.T, env *testEnv) {
		rc := newReceiver(t)
		hook, secret := setUpOutbound(t, env, rc)
		if !strings.Contains(strings.Join(env.dmBodies(testAlice), "\n"), hook.ID) {
			t.Error("the direct chat does not name the hook ID")
		}

		msg := env.message(testBob, "hello world")
		msg.Content.Parsed.(*event.MessageEventContent).Format = event.FormatHTML
		msg.Content.Parsed.(*event.MessageEventContent).FormattedBody = "hello <b>world</b>"
		if err := env.deliver(env.ctx, msg); err != nil {
			t.Fatal(err)
		}
		got := verify(t, rc.next(t), secret)
		want := OutboundEvent{
			EventID: msg.ID, RoomID: testRoom, Sender: testBob, Type: "m.room.message",
			Content:        &OutboundContent{MsgType: event.MsgText, Body: "hello world", FormattedBody: "hello <b>world</b>"},
			OriginServerTS: msg.Timestamp,
		}
		if got.EventID != want.EventID || got.RoomID != want.RoomID || got.Sender != want.Sender || got.Type != want.Type ||
			got.Content == nil || *got.Content != *want.Content || got.OriginServerTS != want.OriginServerTS {
			t.Errorf("delivered %+v (content %+v), want %+v (content %+v)", got, got.Content, want, want.Content)
		}

		// Commands, the bot's and our ghosts' messages are not passed on.
		for _, evt := range []*event.Event{
			env.message(testBob, "!webhook out https://example.org/?token=abc"),
			env.message(testBob, "  .webhook list"),
			env.message(testBob, "!irc login hunter2"),
			env.message(env.host.BotID(), "bot notice"),
			env.message(id.NewUserID(webhookid.GhostLocalpart(hook.ID), "example.org"), "ghost post"),
		} {
			if err := env.deliver(env.ctx, evt); err != nil {
				t.Fatal(err)
			}
		}
		// Edits carry the new content and what they replace.
		edit := env.message(testBob, "* hello there")
		edit.Content.Parsed.(*event.MessageEventContent).RelatesTo = (&event.RelatesTo{}).SetReplace(msg.ID)
		edit.Content.Parsed.(*event.MessageEventContent).NewContent = &event.MessageEventContent{MsgType: event.MsgText, Body: "hello there"}
		if err := env.deliver(env.ctx, edit); err != nil {
			t.Fatal(err)
		}
		got = verify(t, rc.next(t), secret)
		if got.EventID != edit.ID || got.Replaces != msg.ID || got.Content.Body != "hello there" {
			t.Errorf("edit delivered as %+v, want the new content replacing %s", got, msg.ID)
		}

		// A redaction of a message becomes a deletion notice.
		redaction := env.redaction(testBob, msg.ID)
		if err := env.deliver(env.ctx, redaction); err != nil {
			t.Fatal(err)
		}
		got = verify(t, rc.next(t), secret)
		if got.Type != "m.room.redaction" || got.Redacts != msg.ID || got.EventID != redaction.ID || got.Content != nil {
			t.Errorf("redaction delivered as %+v, want a deletion notice for %s", got, msg.ID)
		}
		rc.none(t)

		hook, _ = env.br.db.Hook.GetActive(env.ctx, hook.ID)
		if hook.LastSuccessAt.IsZero() || hook.ConsecutiveFailures != 0 {
			t.Errorf("status after deliveries = %+v, want a success recorded", hook)
		}
	})
}

func TestOutboundRetriesWithBackoff(t *testing.T) {
	env := newTestEnv(t, "sqlite", func(cfg *Config) {
		cfg.Outbound.MaxAttempts = 3
		cfg.Outbound.MinBackoff = 2 * time.Second
		cfg.Outbound.MaxBackoff = time.Minute
	})
	rc := newReceiver(t, 500, 503, 200, 500, 500, 500, 404)
	hook, secret := setUpOutbound(t, env, rc)

	// retryAfter checks that the next attempt comes exactly d after the failed one, on the
	// bridge's clock, and returns it.
	retryAfter := func(d time.Duration) receivedRequest {
		t.Helper()
		env.waitForRetry(1)
		env.clock.Advance(d - time.Millisecond)
		rc.none(t)
		env.clock.Advance(time.Millisecond)
		return rc.next(t)
	}

	first := env.message(testBob, "first")
	if err := env.deliver(env.ctx, first); err != nil {
		t.Fatal(err)
	}
	verify(t, rc.next(t), secret) // attempt 1: 500
	status := env.waitStatus(hook.ID, func(h *webhookdb.Hook) bool { return h.ConsecutiveFailures == 1 })
	if status.LastError != "HTTP 500" || status.LastFailureAt.IsZero() {
		t.Errorf("status after one failure = %q at %s; want HTTP 500", status.LastError, status.LastFailureAt)
	}
	// min_backoff 2s, less the jitter (fixed at half of the allowed half): 1.5s; then 3s.
	verify(t, retryAfter(1500*time.Millisecond), secret)                              // attempt 2: 503
	if got := verify(t, retryAfter(3*time.Second), secret); got.EventID != first.ID { // attempt 3: 200
		t.Errorf("retry delivered %s, want %s", got.EventID, first.ID)
	}
	env.waitStatus(hook.ID, func(h *webhookdb.Hook) bool { return h.ConsecutiveFailures == 0 && h.LastError == "" })

	// The next message fails all three attempts and is given up; the one after still goes out,
	// in order.
	second := env.message(testBob, "second")
	third := env.message(testBob, "third")
	for _, evt := range []*event.Event{second, third} {
		if err := env.deliver(env.ctx, evt); err != nil {
			t.Fatal(err)
		}
	}
	for i, req := range []receivedRequest{rc.next(t), retryAfter(1500 * time.Millisecond), retryAfter(3 * time.Second)} {
		if got := verify(t, req, secret); got.EventID != second.ID {
			t.Fatalf("attempt %d delivered %s, want %s", i+1, got.EventID, second.ID)
		}
	}
	// third gets 404: not retried.
	if got := verify(t, rc.next(t), secret); got.EventID != third.ID {
		t.Fatalf("delivered %s, want %s", got.EventID, third.ID)
	}
	status = env.waitStatus(hook.ID, func(h *webhookdb.Hook) bool { return h.LastError == "HTTP 404" })
	if status.ConsecutiveFailures != 4 {
		t.Errorf("consecutive failures = %d, want 4", status.ConsecutiveFailures)
	}
	if env.clock.BlockUntil(astest.Within(t, 100*time.Millisecond), 1) == nil {
		t.Error("the worker waits to retry a 404")
	}
	rc.none(t)

	// !webhook list shows the failure, never the URL.
	res := env.mustRun(testBob, "list", "relay")
	if !strings.Contains(res.replies[0], "HTTP 404") || !strings.Contains(res.replies[0], "4 failed attempts in a row") ||
		strings.Contains(res.replies[0], "sekrit") || strings.Contains(res.replies[0], "127.0.0.1") {
		t.Errorf("list = %q, want the failure shown and no URL", res.replies[0])
	}
}

func TestOutboundQueueBoundedAndDropsCounted(t *testing.T) {
	env := newTestEnv(t, "sqlite", func(cfg *Config) {
		cfg.Outbound.QueueSize = 2
		cfg.Outbound.MaxAttempts = 2
	})
	rc := newReceiver(t, 500)
	hook, _ := setUpOutbound(t, env, rc)
	// The first message is in flight (waiting to retry); two more fill the queue; two are dropped.
	for i := range 5 {
		if err := env.deliver(env.ctx, env.message(testBob, "msg")); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			rc.next(t)
			env.waitForRetry(1)
		}
	}
	status := env.waitStatus(hook.ID, func(h *webhookdb.Hook) bool { return h.DroppedCount == 2 })
	if !strings.Contains(status.LastError, "queue full") {
		t.Errorf("last error = %q, want the drop explained", status.LastError)
	}
	if res := env.mustRun(testBob, "list", "relay"); !strings.Contains(res.replies[0], "2 messages dropped") {
		t.Errorf("list = %q, want the drops counted", res.replies[0])
	}
}

func TestOutboundStopsWhenHookRemovedDuringBackoff(t *testing.T) {
	env := newTestEnv(t, "sqlite", nil)
	rc := newReceiver(t, 500)
	hook, _ := setUpOutbound(t, env, rc)
	if err := env.deliver(env.ctx, env.message(testBob, "x")); err != nil {
		t.Fatal(err)
	}
	rc.next(t)
	env.waitForRetry(1)
	// The row is deleted behind the bridge's back (as by a purge the bridge was not told of).
	if _, err := env.br.db.Hook.Delete(env.ctx, hook.ID); err != nil {
		t.Fatal(err)
	}
	env.clock.Advance(time.Hour)
	rc.none(t)
	env.waitQueueGone(hook.ID)
}

func TestOutboundRefusesPrivateTargetsByDefault(t *testing.T) {
	env := newTestEnv(t, "sqlite", func(cfg *Config) { cfg.AllowPrivateTargets = false })
	rc := newReceiver(t)
	port := rc.srv.URL[strings.LastIndex(rc.srv.URL, ":")+1:]
	// IP literals and localhost names are refused when the command runs.
	env.mustRun(testAlice, "out "+rc.URL(), "non-public address")
	env.mustRun(testAlice, "out http://localhost:"+port+"/x", "non-public address")
	env.mustRun(testAlice, "out http://[::ffff:127.0.0.1]:"+port+"/x", "non-public address")

	// A name that looked public when the command ran but resolves to a private address when
	// connecting (DNS rebinding) is refused by the dialer: let the command through, as if.
	env.br.cfg.AllowPrivateTargets = true
	hook, _ := setUpOutbound(t, env, rc)
	if err := env.deliver(env.ctx, env.message(testBob, "x")); err != nil {
		t.Fatal(err)
	}
	status := env.waitStatus(hook.ID, func(h *webhookdb.Hook) bool { return h.ConsecutiveFailures > 0 })
	if !strings.Contains(status.LastError, "not public") {
		t.Errorf("last error = %q, want the private target named as the cause", status.LastError)
	}
	rc.none(t)
	if env.clock.BlockUntil(astest.Within(t, 100*time.Millisecond), 1) == nil {
		t.Error("the worker waits to retry a refused target")
	}
}

func TestOutboundVaultDisabled(t *testing.T) {
	env := newTestEnv(t, "sqlite", nil)
	env.host.Secrets.SetDisabled(true)
	env.mustRun(testAlice, "out https://example.org/hook", "no credential vault configured")
	if hooks := env.hooks(); len(hooks) != 0 {
		t.Errorf("hooks = %d, want none stored without a vault", len(hooks))
	}
}

func TestOutboundVaultKeyUnavailable(t *testing.T) {
	env := newTestEnv(t, "sqlite", nil)
	rc := newReceiver(t)
	hook, _ := setUpOutbound(t, env, rc)
	env.host.Secrets.SetKeyUnavailable(true)
	// Deliveries cannot open the URL: recorded, not retried.
	if err := env.deliver(env.ctx, env.message(testBob, "x")); err != nil {
		t.Fatal(err)
	}
	status := env.waitStatus(hook.ID, func(h *webhookdb.Hook) bool { return h.ConsecutiveFailures == 1 })
	if !strings.Contains(status.LastError, "master key is unavailable") {
		t.Errorf("last error = %q, want the vault named", status.LastError)
	}
	rc.none(t)
	// New outbound hooks cannot be sealed, and rotation cannot open the URL.
	env.mustRun(testAlice, "out https://example.org/hook", "cannot store credentials right now")
	env.mustRun(testAlice, "rotate relay", "master key is unavailable")
	env.host.Secrets.SetKeyUnavailable(false)
	msg := env.message(testBob, "y")
	if err := env.deliver(env.ctx, msg); err != nil {
		t.Fatal(err)
	}
	if got := rc.next(t); !strings.Contains(string(got.body), string(msg.ID)) {
		t.Errorf("delivered %s, want %s once the key is back", got.body, msg.ID)
	}
}

func TestOutboundSkipsPausedOwner(t *testing.T) {
	env := newTestEnv(t, "sqlite", nil)
	rc := newReceiver(t)
	_, secret := setUpOutbound(t, env, rc)
	env.host.SetPaused(t, testAlice, true)
	if err := env.deliver(env.ctx, env.message(testBob, "while paused")); err != nil {
		t.Fatal(err)
	}
	rc.none(t)
	env.host.SetPaused(t, testAlice, false)
	msg := env.message(testBob, "after")
	if err := env.deliver(env.ctx, msg); err != nil {
		t.Fatal(err)
	}
	if got := verify(t, rc.next(t), secret); got.EventID != msg.ID {
		t.Errorf("delivered %s, want %s", got.EventID, msg.ID)
	}
}

// status returns a hook's row.
func (env *testEnv) status(hookID string) *webhookdb.Hook {
	env.t.Helper()
	hook, err := env.br.db.Hook.GetActive(env.ctx, hookID)
	if err != nil || hook == nil {
		env.t.Fatalf("hook %s: %v", hookID, err)
	}
	return hook
}

// waitStatus waits until the hook's row satisfies ok: the worker records status after the
// receiver answered, so the test cannot know the exact moment.
func (env *testEnv) waitStatus(hookID string, ok func(*webhookdb.Hook) bool) *webhookdb.Hook {
	env.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		hook := env.status(hookID)
		if ok(hook) {
			return hook
		} else if time.Now().After(deadline) {
			env.t.Fatalf("hook status never reached the expected state: %+v", hook)
		}
		<-time.After(5 * time.Millisecond)
	}
}

// waitQueueGone waits until the bridge dropped the hook's delivery queue.
func (env *testEnv) waitQueueGone(hookID string) {
	env.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		env.br.queuesLock.Lock()
		_, ok := env.br.queues[hookID]
		env.br.queuesLock.Unlock()
		if !ok {
			return
		} else if time.Now().After(deadline) {
			env.t.Fatalf("queue of hook %s still exists", hookID)
		}
		<-time.After(5 * time.Millisecond)
	}
}

// vaultNotices returns the notices in owner's direct chat that say a hook is disabled.
func (env *testEnv) vaultNotices(owner id.UserID) []string {
	env.t.Helper()
	var out []string
	for _, body := range env.dmBodies(owner) {
		if strings.Contains(body, "is disabled") {
			out = append(out, body)
		}
	}
	return out
}

// failDeliveries has bob send n messages and waits until the hook recorded n more failures.
func (env *testEnv) failDeliveries(hookID string, n int) {
	env.t.Helper()
	want := env.status(hookID).ConsecutiveFailures + n
	for range n {
		if err := env.deliver(env.ctx, env.message(testBob, "x")); err != nil {
			env.t.Fatal(err)
		}
	}
	env.waitStatus(hookID, func(h *webhookdb.Hook) bool { return h.ConsecutiveFailures == want })
}

func TestOutboundVaultFailureNotifiesOwnerOnce(t *testing.T) {
	tests := []struct {
		name       string
		breakVault func(env *testEnv)
		want       string
	}{
		{"key unavailable", func(env *testEnv) { env.host.Secrets.SetKeyUnavailable(true) }, "master key of Custodian's credential vault is missing or wrong"},
		{"values lost", func(env *testEnv) { env.host.Secrets.Forget(testAlice) }, "can no longer be opened"},
		{"vault disabled", func(env *testEnv) { env.host.Secrets.SetDisabled(true) }, "no longer has a credential vault"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := newTestEnv(t, "sqlite", nil)
			rc := newReceiver(t)
			hook, _ := setUpOutbound(t, env, rc)
			tt.breakVault(env)
			env.failDeliveries(hook.ID, 3)
			rc.none(t)

			notices := env.vaultNotices(testAlice)
			if len(notices) != 1 {
				t.Fatalf("owner got %d notices after 3 failed deliveries, want 1: %q", len(notices), notices)
			}
			for _, want := range []string{"**relay**", hook.ID, tt.want, "!webhook remove relay", "!webhook out <url> relay"} {
				if !strings.Contains(notices[0], want) {
					t.Errorf("notice %q does not contain %q", notices[0], want)
				}
			}
			// It names the room with a link, and it is private: nothing about it in the room.
			dm := env.host.HS.Messages(env.dmRoom(testAlice))
			var content event.MessageEventContent
			if err := dm[len(dm)-1].Decode(&content); err != nil {
				t.Fatal(err)
			}
			if content.MsgType != event.MsgNotice || !strings.Contains(content.FormattedBody, "https://matrix.to/#/") ||
				!strings.Contains(content.FormattedBody, testRoom.String()[1:]) {
				t.Errorf("notice is %s %q, want an m.notice linking to %s", content.MsgType, content.FormattedBody, testRoom)
			}
			for _, evt := range env.roomMessages() {
				var c event.MessageEventContent
				if err := evt.Decode(&c); err == nil && strings.Contains(c.Body, "disabled") {
					t.Errorf("the room got %q; the notice belongs in the owner's direct chat", c.Body)
				}
			}
			if env.status(hook.ID).VaultNoticeAt.IsZero() {
				t.Error("the notice is not recorded on the hook, so a restart would send it again")
			}
		})
	}
}

func TestOutboundVaultNoticeEpisodeEndsWhenSecretsOpen(t *testing.T) {
	env := newTestEnv(t, "sqlite", nil)
	rc := newReceiver(t)
	hook, secret := setUpOutbound(t, env, rc)

	env.host.Secrets.SetKeyUnavailable(true)
	env.failDeliveries(hook.ID, 2)
	if n := len(env.vaultNotices(testAlice)); n != 1 {
		t.Fatalf("notices in the first episode = %d, want 1", n)
	}

	// The key is back: the next message is delivered, and the episode is over.
	env.host.Secrets.SetKeyUnavailable(false)
	msg := env.message(testBob, "key is back")
	if err := env.deliver(env.ctx, msg); err != nil {
		t.Fatal(err)
	}
	if got := verify(t, rc.next(t), secret); got.EventID != msg.ID {
		t.Fatalf("delivered %s, want %s", got.EventID, msg.ID)
	}
	env.waitStatus(hook.ID, func(h *webhookdb.Hook) bool { return h.VaultNoticeAt.IsZero() && h.ConsecutiveFailures == 0 })
	if n := len(env.vaultNotices(testAlice)); n != 1 {
		t.Fatalf("notices after the key came back = %d, want still 1", n)
	}

	// A second episode brings a second notice, once.
	env.host.Secrets.SetKeyUnavailable(true)
	env.failDeliveries(hook.ID, 2)
	if n := len(env.vaultNotices(testAlice)); n != 2 {
		t.Fatalf("notices after a second episode = %d, want 2", n)
	}
}

func TestOutboundVaultNoticeRetriedWhenDirectChatFails(t *testing.T) {
	env := newTestEnv(t, "sqlite", nil)
	rc := newReceiver(t)
	hook, _ := setUpOutbound(t, env, rc)
	env.host.Secrets.SetKeyUnavailable(true)

	// The homeserver refuses the notice: nothing is recorded, so the next failure tries again.
	env.host.HS.Fail(astest.PatternSend, http.StatusBadRequest, "M_UNKNOWN")
	env.failDeliveries(hook.ID, 1)
	if !env.status(hook.ID).VaultNoticeAt.IsZero() {
		t.Fatal("a notice that was not sent is recorded as sent")
	}
	env.host.HS.Unfail(astest.PatternSend)
	env.failDeliveries(hook.ID, 2)
	if n := len(env.vaultNotices(testAlice)); n != 1 {
		t.Fatalf("notices = %d, want 1 once the homeserver accepts it", n)
	}
}

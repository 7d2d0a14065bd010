package irc

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/bridges/irc/ircdb"
	"github.com/custodian-matrix/custodian/bridges/irc/irctest"
)

// handoffWait bounds how long the bridge may take to hand one event over: it must not wait for
// an IRC registration, which these tests hold back far longer.
const handoffWait = 5 * time.Second

// regHolds holds the IRC registrations of chosen nicks until the test releases them.
type regHolds struct {
	mu    sync.Mutex
	holds map[string]chan struct{}
}

// option returns the irctest option that applies the holds.
func (h *regHolds) option() irctest.Option {
	return irctest.WithRegistrationHold(func(nick string) <-chan struct{} {
		h.mu.Lock()
		defer h.mu.Unlock()
		if ch, ok := h.holds[nick]; ok {
			return ch
		}
		return nil
	})
}

// hold makes nick's registrations from now on wait until release.
func (h *regHolds) hold(nick string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.holds == nil {
		h.holds = make(map[string]chan struct{})
	}
	h.holds[nick] = make(chan struct{})
}

// release lets nick's held registration (and later ones) complete.
func (h *regHolds) release(nick string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ch := h.holds[nick]; ch != nil {
		close(ch)
		delete(h.holds, nick)
	}
}

// handoff hands evt to the bridge as the core does and fails the test unless HandleEvent
// returned nil within handoffWait.
func (env *testEnv) handoff(evt *event.Event) {
	env.t.Helper()
	ctx, cancel := context.WithTimeout(env.ctx, handoffWait)
	defer cancel()
	if err := env.deliver(ctx, evt); err != nil {
		env.t.Fatalf("HandleEvent(%s) = %v, want nil without waiting for the sender's connection", evt.ID, err)
	}
}

// privmsgs returns the texts of nick's PRIVMSGs to the test channel the server has, in order.
func (env *testEnv) privmsgs(nick string) []string {
	var out []string
	for _, l := range env.srv.Lines(irctest.Match(nick, "PRIVMSG", testChannel)) {
		out = append(out, l.Param(1))
	}
	return out
}

// TestNoHeadOfLineBlocking: a message waits only for its own sender's connection. While
// alice's registration is held back (her first message, or her first after an idle
// disconnect), bob's messages in the same room reach IRC, and alice's, with an edit of the
// first, follow in order once she is registered.
func TestNoHeadOfLineBlocking(t *testing.T) {
	for _, tt := range []struct {
		name string
		// idle gives alice a puppet that the janitor then disconnects as idle.
		idle bool
	}{
		{name: "first message"},
		{name: "after idle disconnect", idle: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			holds := &regHolds{}
			forEachDialect(t, envConfig{srvOpts: []irctest.Option{holds.option()}}, func(t *testing.T, env *testEnv) {
				if tt.idle {
					env.say(testAlice, "earlier")
					env.srv.WaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "earlier"))
					env.eventually("alice's outbox is empty", func() bool { return !env.puppet(testAlice).busy() })
					if !env.br.network(testNet).dropIdlePuppet(env.ctx, testAlice, "Idle") {
						t.Fatal("alice's idle puppet was not dropped")
					}
					env.srv.WaitUntil(t, "alice's puppet quit", func() bool { return !containsFold(env.srv.Nicks(), "alice[m]") })
				}
				holds.hold("alice[m]")
				a1 := env.message(testPortalRoom, testAlice, event.MsgText, "a1")
				env.handoff(a1)
				env.handoff(env.message(testPortalRoom, testBob, event.MsgText, "b1"))
				env.handoff(env.event(testPortalRoom, testAlice, &event.MessageEventContent{
					MsgType: event.MsgText, Body: "* a1 fixed",
					NewContent: &event.MessageEventContent{MsgType: event.MsgText, Body: "a1 fixed"},
					RelatesTo:  (&event.RelatesTo{}).SetReplace(a1.ID),
				}))
				env.handoff(env.message(testPortalRoom, testAlice, event.MsgText, "a2"))
				env.handoff(env.message(testPortalRoom, testBob, event.MsgText, "b2"))
				env.srv.WaitFor(t, irctest.Match("bob[m]", "PRIVMSG", testChannel, "b2"))
				if got := strings.Join(env.privmsgs("bob[m]"), "|"); got != "b1|b2" {
					t.Errorf("bob's lines = %q, want b1|b2", got)
				}
				want := 0
				if tt.idle {
					want = 1
				}
				if got := env.privmsgs("alice[m]"); len(got) != want {
					t.Errorf("alice's lines before her registration = %q, want %d", got, want)
				}
				holds.release("alice[m]")
				env.srv.WaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "a2"))
				got := env.privmsgs("alice[m]")[want:]
				if len(got) != 3 || got[0] != "a1" || !strings.Contains(got[1], "a1 fixed") || got[2] != "a2" {
					t.Errorf("alice's lines after her registration = %q, want a1, its edit, a2", got)
				}
			})
		})
	}
}

// TestOutboxDropped: what waits in the outbox of a user who is erased or pauses Custodian is
// never sent.
func TestOutboxDropped(t *testing.T) {
	for _, tt := range []struct {
		name string
		drop func(t *testing.T, env *testEnv)
		undo func(t *testing.T, env *testEnv)
	}{
		{
			name: "erasure",
			drop: func(t *testing.T, env *testEnv) {
				if err := env.br.EraseRemote(env.ctx, testAlice); err != nil {
					t.Fatalf("EraseRemote = %v", err)
				}
			},
			undo: func(*testing.T, *testEnv) {},
		},
		{
			name: "pause",
			drop: func(t *testing.T, env *testEnv) { env.host.SetPaused(t, testAlice, true) },
			undo: func(t *testing.T, env *testEnv) { env.host.SetPaused(t, testAlice, false) },
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			holds := &regHolds{}
			forEachDialect(t, envConfig{srvOpts: []irctest.Option{holds.option()}}, func(t *testing.T, env *testEnv) {
				holds.hold("alice[m]")
				env.handoff(env.message(testPortalRoom, testAlice, event.MsgText, "queued"))
				p := env.puppet(testAlice)
				if p == nil || !p.busy() {
					t.Fatal("alice's message is not queued")
				}
				tt.drop(t, env)
				holds.release("alice[m]")
				env.eventually("alice's outbox is empty", func() bool { return !p.busy() })
				tt.undo(t, env)
				env.say(testAlice, "marker")
				env.srv.WaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "marker"))
				if got := env.privmsgs("alice[m]"); len(got) != 1 {
					t.Errorf("alice's lines = %q, want only the marker", got)
				}
			})
		})
	}
}

// TestOutboxReplayAndRedaction: an event handled again while it waits in the outbox is sent
// once, and a message redacted before it went out is never sent, nor are its edits.
func TestOutboxReplayAndRedaction(t *testing.T) {
	holds := &regHolds{}
	forEachDialect(t, envConfig{srvOpts: []irctest.Option{holds.option()}}, func(t *testing.T, env *testEnv) {
		holds.hold("alice[m]")
		once := env.message(testPortalRoom, testAlice, event.MsgText, "once")
		env.handoff(once)
		env.handoff(once)
		oops := env.message(testPortalRoom, testAlice, event.MsgText, "oops")
		env.handoff(oops)
		env.handoff(env.event(testPortalRoom, testAlice, &event.MessageEventContent{
			MsgType: event.MsgText, Body: "* oops again",
			NewContent: &event.MessageEventContent{MsgType: event.MsgText, Body: "oops again"},
			RelatesTo:  (&event.RelatesTo{}).SetReplace(oops.ID),
		}))
		env.handoff(&event.Event{
			ID: env.newEventID(), RoomID: testPortalRoom, Sender: testBob, Type: event.EventRedaction,
			Redacts: oops.ID, Content: event.Content{Parsed: &event.RedactionEventContent{Redacts: oops.ID}},
		})
		env.handoff(env.message(testPortalRoom, testAlice, event.MsgText, "marker"))
		env.handoff(once)
		holds.release("alice[m]")
		env.srv.WaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "marker"))
		env.handoff(once)
		if got := strings.Join(env.privmsgs("alice[m]"), "|"); got != "once|marker" {
			t.Errorf("alice's lines = %q, want once|marker", got)
		}
	})
}

// TestOutboxFullAndExpired: an event that finds its sender's outbox full is not relayed and the
// sender is told once for the spell; queued events that waited too long for the connection are
// dropped with one notice.
func TestOutboxFullAndExpired(t *testing.T) {
	holds := &regHolds{}
	forEachDialect(t, envConfig{srvOpts: []irctest.Option{holds.option()}}, func(t *testing.T, env *testEnv) {
		holds.hold("alice[m]")
		for i := range maxOutbox + 2 {
			env.handoff(env.message(testPortalRoom, testAlice, event.MsgText, fmt.Sprintf("line %d", i)))
		}
		const full = "arriving faster than"
		env.waitEvent("", "the outbox-full notice", func(evt *astest.SentEvent) bool {
			var c event.MessageEventContent
			return evt.Type == event.EventMessage && evt.Decode(&c) == nil && strings.Contains(c.Body, full)
		})
		p := env.puppet(testAlice)
		p.expireOutbox(env.ctx, env.br.clock.Now().Add(maxOutboxWait))
		expired := fmt.Sprintf("%d of your messages", maxOutbox)
		env.waitEvent("", "the notice of expired messages", func(evt *astest.SentEvent) bool {
			var c event.MessageEventContent
			return evt.Type == event.EventMessage && evt.Decode(&c) == nil && strings.Contains(c.Body, expired)
		})
		holds.release("alice[m]")
		env.say(testAlice, "marker")
		env.srv.WaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "marker"))
		if got := env.privmsgs("alice[m]"); len(got) != 1 {
			t.Errorf("alice's lines = %d, want only the marker", len(got))
		}
		var fullNotices int
		for _, room := range env.host.CreatedRooms() {
			fullNotices += len(env.messagesWith(room.RoomID, full))
		}
		if fullNotices != 1 {
			t.Errorf("alice got %d outbox-full notices, want 1", fullNotices)
		}
	})
}

// TestOutboxKeptAcrossStop: Stop waits for the outboxes' goroutines, and a message still
// waiting for its sender's connection when the bridge stops stays recorded in irc_outbox (by
// ID), for the next start to send.
func TestOutboxKeptAcrossStop(t *testing.T) {
	holds := &regHolds{}
	forEachDialect(t, envConfig{srvOpts: []irctest.Option{holds.option()}}, func(t *testing.T, env *testEnv) {
		holds.hold("alice[m]")
		evt := env.message(testPortalRoom, testAlice, event.MsgText, "waiting")
		env.handoff(evt)
		p := env.puppet(testAlice)
		env.stop()
		p.outMu.Lock()
		draining := p.draining
		p.outMu.Unlock()
		if draining {
			t.Error("alice's outbox goroutine still runs after Stop returned")
		}
		rows, err := env.br.db.Outbox.GetAll(env.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) != 1 || rows[0].EventID != evt.ID || rows[0].Sender != testAlice || rows[0].Network != testNet {
			t.Errorf("irc_outbox after Stop = %+v, want alice's queued message", rows)
		}
	})
}

// TestReplayOutbox: at start, the messages irc_outbox still lists are fetched and sent, once: a
// message that went out before the crash is not sent again, one the homeserver no longer
// returns (M_NOT_FOUND) is forgotten, one it could not be asked about (502 while it restarts)
// is kept and sent at the next replay, and a later replay sends nothing.
func TestReplayOutbox(t *testing.T) {
	forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
		sent := env.message(testPortalRoom, testAlice, event.MsgText, "sent before the crash")
		env.handle(sent)
		env.srv.WaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "sent before the crash"))
		env.eventually("alice's outbox is empty", func() bool { return !env.puppet(testAlice).busy() })
		lost := env.message(testPortalRoom, testAlice, event.MsgText, "queued at the crash")
		gone := env.message(testPortalRoom, testAlice, event.MsgText, "redacted since")
		unavailable := env.message(testPortalRoom, testAlice, event.MsgText, "fetched while the homeserver restarts")
		events := map[id.EventID]*event.Event{sent.ID: sent, lost.ID: lost}
		for i, evt := range []*event.Event{sent, lost, gone, unavailable} {
			if err := env.br.db.Outbox.Put(env.ctx, &ircdb.Outbox{
				EventID: evt.ID, RoomID: evt.RoomID, Network: testNet, Sender: evt.Sender, QueuedAt: time.Unix(0, int64(i+1)),
			}); err != nil {
				t.Fatal(err)
			}
		}
		fetches := 0
		fetch := func(_ context.Context, roomID id.RoomID, eventID id.EventID) (*event.Event, error) {
			fetches++
			if evt := events[eventID]; evt != nil && evt.RoomID == roomID {
				return evt, nil
			}
			if eventID == unavailable.ID {
				return nil, fmt.Errorf("failed to get event: %w", mautrix.HTTPError{Message: "bad gateway", Response: &http.Response{StatusCode: http.StatusBadGateway}})
			}
			return nil, fmt.Errorf("failed to get event: %w", mautrix.MNotFound)
		}
		env.br.replayOutbox(env.ctx, fetch)
		env.srv.WaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "queued at the crash"))
		outboxHolds := func(want ...id.EventID) func() bool {
			return func() bool {
				rows, err := env.br.db.Outbox.GetAll(env.ctx)
				if err != nil || len(rows) != len(want) {
					return false
				}
				for i, row := range rows {
					if row.EventID != want[i] {
						return false
					}
				}
				return true
			}
		}
		env.eventually("irc_outbox keeps only the message the homeserver could not return", outboxHolds(unavailable.ID))
		if fetches != 4 {
			t.Errorf("fetched %d events, want 4", fetches)
		}
		// At the next start the homeserver answers again.
		events[unavailable.ID] = unavailable
		env.br.replayOutbox(env.ctx, fetch)
		env.srv.WaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "fetched while the homeserver restarts"))
		env.eventually("irc_outbox is empty", outboxHolds())
		if fetches != 5 {
			t.Errorf("the second replay fetched %d events, want 1", fetches-4)
		}
		env.br.replayOutbox(env.ctx, fetch)
		if fetches != 5 {
			t.Errorf("a third replay fetched %d events, want none", fetches-5)
		}
		env.say(testAlice, "marker")
		env.srv.WaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "marker"))
		if got := strings.Join(env.privmsgs("alice[m]"), "|"); got != "sent before the crash|queued at the crash|fetched while the homeserver restarts|marker" {
			t.Errorf("alice's lines = %q, want each message once", got)
		}
	})
}

// TestOutboxDroppedOnUnlink: a message queued for a portal that is unlinked before it went out
// is not sent, and the puppet does not join the channel again for it.
func TestOutboxDroppedOnUnlink(t *testing.T) {
	holds := &regHolds{}
	forEachDialect(t, envConfig{srvOpts: []irctest.Option{holds.option()}}, func(t *testing.T, env *testEnv) {
		holds.hold("alice[m]")
		env.handoff(env.message(testPortalRoom, testAlice, event.MsgText, "after the unlink"))
		p := env.puppet(testAlice)
		if err := env.br.PurgeRoom(env.ctx, testPortalRoom); err != nil {
			t.Fatalf("PurgeRoom = %v", err)
		}
		holds.release("alice[m]")
		env.srv.WaitUntil(t, "alice's puppet registered", func() bool { return containsFold(env.srv.Nicks(), "alice[m]") })
		env.eventually("alice's outbox is empty", func() bool { return !p.busy() })
		// A line from alice's puppet after the dropped message, to know the server read all.
		if c := p.sess.current(); c == nil || c.Send(env.ctx, nil, "PRIVMSG", "custodian", "marker") != nil {
			t.Fatal("alice's puppet is not connected")
		}
		env.srv.WaitFor(t, irctest.Match("alice[m]", "PRIVMSG", "custodian", "marker"))
		if got := env.srv.Lines(irctest.Match("alice[m]", "JOIN")); len(got) != 0 {
			t.Errorf("alice's puppet joined the unlinked channel: %v", got)
		}
		if got := env.privmsgs("alice[m]"); len(got) != 0 {
			t.Errorf("alice's lines to the unlinked channel = %q, want none", got)
		}
	})
}

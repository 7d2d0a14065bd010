package irc

import (
	"fmt"
	"net"
	"testing"

	"go.mau.fi/util/ptr"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/bridges/irc/ircdb"
	"github.com/custodian-matrix/custodian/bridges/irc/irctest"
)

// TestDeadNetworkDoesNotStopOthers configures a second network whose server refuses every
// connection: Start still returns, and the first network bridges as usual while the second
// keeps retrying in the background.
func TestDeadNetworkDoesNotStopOthers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := ln.Addr().String()
	ln.Close() // nothing listens there any more: connections are refused
	ec := envConfig{configure: func(cfg *Config) {
		dead := defaultNetwork()
		dead.Address, dead.TLS = deadAddr, false
		cfg.Networks["deadnet"] = &dead
	}}
	forEachDialect(t, ec, func(t *testing.T, env *testEnv) {
		watcher := env.ircUser("watcher")
		env.say(testAlice, "still bridged")
		watcher.MustWaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "still bridged"))
		if n := env.br.network("deadnet"); n == nil || n.bot.current() != nil {
			t.Errorf("the dead network has a connection")
		}
	})
}

// TestMaxPuppets: beyond a network's max_puppets, a user's messages are not relayed (they are
// told so), while the users within it go on.
func TestMaxPuppets(t *testing.T) {
	ec := envConfig{configure: func(cfg *Config) { cfg.Networks[testNet].MaxPuppets = 1 }}
	forEachDialect(t, ec, func(t *testing.T, env *testEnv) {
		watcher := env.ircUser("watcher")
		env.say(testAlice, "first")
		watcher.MustWaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "first"))
		seq := env.srv.Seq()
		env.say(testBob, "over the limit")
		env.say(testAlice, "second")
		watcher.MustWaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "second"))
		if lines := env.srv.Lines(irctest.After(seq, irctest.Match("bob[m]", "PRIVMSG"))); len(lines) != 0 {
			t.Errorf("bob's message went to IRC beyond max_puppets: %v", lines)
		}
		if p := env.puppet(testBob); p != nil {
			t.Errorf("bob has a puppet beyond max_puppets")
		}
	})
}

// TestTopicFromFreshPuppet: a room topic set by a user without a connection yet connects their
// puppet, which joins the channel before it sends TOPIC (a TOPIC before the JOIN is refused).
func TestTopicFromFreshPuppet(t *testing.T) {
	forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
		for i := range 3 {
			topic := fmt.Sprintf("topic number %d", i)
			user := id.UserID(fmt.Sprintf("@topicsetter%d:example.org", i))
			env.handle(&event.Event{
				ID: env.newEventID(), RoomID: testPortalRoom, Sender: user, Type: event.StateTopic,
				StateKey: ptr.Ptr(""), Content: event.Content{Parsed: &event.TopicEventContent{Topic: topic}},
			})
			env.srv.WaitUntil(t, "the channel's topic is "+topic, func() bool { return env.srv.Topic(testChannel) == topic })
		}
	})
}

// TestRedactionSendsREDACT: where the server offers draft/message-redaction and echo-message,
// the puppet learns its lines' message IDs from their echoes, and redacting the Matrix message
// sends REDACT for each; the ID mapping is gone afterwards.
func TestRedactionSendsREDACT(t *testing.T) {
	ec := envConfig{srvOpts: []irctest.Option{irctest.WithCaps(
		"sasl=PLAIN", "server-time", "message-tags", "echo-message", "draft/message-redaction",
	)}}
	forEachDialect(t, ec, func(t *testing.T, env *testEnv) {
		watcher := env.ircUser("watcher")
		msg := env.message(testPortalRoom, testAlice, event.MsgText, "one\ntwo")
		env.handle(msg)
		watcher.MustWaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "two"))
		var rows []*ircdb.Message
		env.eventually("both lines' message IDs are recorded", func() bool {
			var err error
			rows, err = env.br.db.Message.Get(env.ctx, msg.ID)
			return err == nil && len(rows) == 2 && rows[0].MsgID != "" && rows[1].MsgID != ""
		})
		seq := env.srv.Seq()
		env.handle(&event.Event{
			ID: env.newEventID(), RoomID: testPortalRoom, Sender: testAlice, Type: event.EventRedaction,
			Redacts: msg.ID, Content: event.Content{Parsed: &event.RedactionEventContent{Redacts: msg.ID}},
		})
		for _, row := range rows {
			env.srv.WaitFor(t, irctest.After(seq, irctest.Match("alice[m]", "REDACT", testChannel, row.MsgID)))
		}
		// The redaction may wait in alice's outbox behind the message's own bookkeeping.
		env.eventually("the message-ID rows are gone", func() bool {
			left, err := env.br.db.Message.Get(env.ctx, msg.ID)
			return err == nil && len(left) == 0
		})
	})
}

// TestRedactionWithoutServerSupport: without draft/message-redaction, a redaction only drops
// the message's ID mapping; nothing is sent.
func TestRedactionWithoutServerSupport(t *testing.T) {
	forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
		watcher := env.ircUser("watcher")
		msg := env.message(testPortalRoom, testAlice, event.MsgText, "stays on IRC")
		env.handle(msg)
		watcher.MustWaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "stays on IRC"))
		seq := env.srv.Seq()
		env.handle(&event.Event{
			ID: env.newEventID(), RoomID: testPortalRoom, Sender: testAlice, Type: event.EventRedaction,
			Redacts: msg.ID, Content: event.Content{Parsed: &event.RedactionEventContent{Redacts: msg.ID}},
		})
		// The redaction may wait in alice's outbox behind the message's own bookkeeping.
		env.eventually("the message-ID rows are gone", func() bool {
			left, err := env.br.db.Message.Get(env.ctx, msg.ID)
			return err == nil && len(left) == 0
		})
		env.say(testAlice, "marker")
		watcher.MustWaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "marker"))
		if lines := env.srv.Lines(irctest.After(seq, irctest.Match("alice[m]", "REDACT"))); len(lines) != 0 {
			t.Errorf("REDACT sent to a server without draft/message-redaction: %v", lines)
		}
	})
}

// TestReplayedMessageSentOnce: the core delivers an event again after a crash if its handler
// had not returned; a message that already went to IRC is not sent a second time.
func TestReplayedMessageSentOnce(t *testing.T) {
	forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
		watcher := env.ircUser("watcher")
		seq := env.srv.Seq()
		msg := env.message(testPortalRoom, testAlice, event.MsgText, "only once")
		env.handle(msg)
		env.handle(msg)
		env.say(testAlice, "marker")
		watcher.MustWaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "marker"))
		if lines := env.srv.Lines(irctest.After(seq, irctest.Match("alice[m]", "PRIVMSG", testChannel, "only once"))); len(lines) != 1 {
			t.Errorf("a message handled twice reached IRC %d times, want once", len(lines))
		}
	})
}

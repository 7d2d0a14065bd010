package irc

import (
	"fmt"
	"net"
	"testing"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

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
				StateKey: ptr(""), Content: event.Content{Parsed: &event.TopicEventContent{Topic: topic}},
			})
			env.srv.WaitUntil(t, "the channel's topic is "+topic, func() bool { return env.srv.Topic(testChannel) == topic })
		}
	})
}

package irc

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/bridges/irc/irctest"
)

// linkRoom is the room runCommand runs commands in, which the link tests link.
const linkRoom = id.RoomID("!dm:example.org")

// consentOff turns link_consent off for tests of what linking does once agreed.
func consentOff(cfg *Config) { cfg.Networks[testNet].LinkConsent = LinkConsentOff }

// waitNotice waits for a message of the bot, in any room, whose body contains text, and returns
// the body.
func (env *testEnv) waitNotice(text string) string {
	env.t.Helper()
	var body string
	env.waitEvent("", "a notice containing "+text, func(evt *astest.SentEvent) bool {
		var c event.MessageEventContent
		if evt.Type != event.EventMessage || evt.Sender != env.host.BotID() || evt.Decode(&c) != nil {
			return false
		}
		body = c.Body
		return strings.Contains(c.Body, text)
	})
	return body
}

// noticesWith counts the bot's messages, in every room, that contain text.
func (env *testEnv) noticesWith(text string) int {
	n := 0
	for _, evt := range env.host.HS.Events("") {
		var c event.MessageEventContent
		if evt.Type == event.EventMessage && evt.Sender == env.host.BotID() && evt.Decode(&c) == nil && strings.Contains(c.Body, text) {
			n++
		}
	}
	return n
}

// TestLinkKeyedChannel: "!irc link <net> <#chan> <key>" makes the bridge's connection and a
// puppet join a channel with a key (+k), keeps the key only sealed under the linker's key, and
// is Sensitive (the core redacts it at once); a wrong key keeps the portal, tells the linker, and
// "!irc key" with the right one makes the bridge join.
func TestLinkKeyedChannel(t *testing.T) {
	const channel, key = "#keyed", "s3cret-key"
	forEachDialect(t, envConfig{configure: consentOff}, func(t *testing.T, env *testEnv) {
		owner := env.srv.Client(t, "owner")
		if err := owner.Join(channel); err != nil {
			t.Fatal(err)
		}
		if err := env.srv.Mode(channel, "+k", key); err != nil {
			t.Fatal(err)
		}
		for _, cmd := range env.br.Commands() {
			if (cmd.Name == "link" || cmd.Name == "key") && !cmd.Sensitive {
				t.Errorf("!irc %s carries a channel key but is not Sensitive", cmd.Name)
			}
		}

		// A wrong key: the server refuses the join, the linker is told, the portal stays.
		res := env.runCommand(testAlice, "link", testNet, channel, "wrong-key")
		if res.err != nil || res.userError != "" || !res.replied {
			t.Fatalf("link = %+v, want a reply", res)
		}
		env.srv.WaitFor(t, irctest.Match(testBotNick, "JOIN", channel, "wrong-key"))
		env.waitNotice("refused the key")
		if p, err := env.br.db.Portal.GetByRoom(env.ctx, linkRoom); err != nil || p == nil {
			t.Fatalf("after a refused key the portal is %v (%v), want it kept", p, err)
		}
		if containsFold(env.srv.Members(channel), testBotNick) {
			t.Fatal("the bridge is in the channel with a wrong key")
		}

		// The right key.
		res = env.runCommand(testAlice, "key", key)
		if res.err != nil || res.userError != "" || !res.replied {
			t.Fatalf("key = %+v, want a reply", res)
		}
		env.waitMembers(channel, testBotNick)
		row, err := env.br.db.ChannelKey.Get(env.ctx, testNet, channel)
		if err != nil || row == nil {
			t.Fatalf("stored key = %v, %v", row, err)
		}
		if bytes.Contains(row.Key, []byte(key)) || row.Actor != testAlice {
			t.Errorf("stored key row holds the plaintext or names %s, want sealed under alice", row.Actor)
		}
		opened, err := env.host.Vault().Open(env.ctx, testAlice, channelKeyName(testNet, channel), row.Key)
		if err != nil || opened.Reveal() != key {
			t.Errorf("the sealed key does not open to the key: %v", err)
		}

		// A puppet joins with the key and relays.
		env.handle(env.message(linkRoom, testBob, event.MsgText, "hello keyed channel"))
		owner.MustWaitFor(t, irctest.Match("bob[m]", "PRIVMSG", channel, "hello keyed channel"))
		env.srv.WaitFor(t, irctest.Match("bob[m]", "JOIN", channel, key))
		if strings.Contains(env.logs.String(), key) {
			t.Error("the logs hold the channel key")
		}
	})
}

// TestLinkConsent: with link_consent required, !irc link asks a channel operator on IRC and
// links only on their "yes"; "no", a non-operator's answer, the timeout and a stop do not link,
// and the linker is told each outcome.
func TestLinkConsent(t *testing.T) {
	tests := []struct {
		name string
		// answer is what the operator (or, with fromNonOp, a plain member) says; "" says nothing.
		answer    string
		fromNonOp bool
		// expire runs the timeout; stop stops the bridge.
		expire, stop bool
		wantLinked   bool
		wantNotice   string
	}{
		{name: "yes", answer: "yes", wantLinked: true, wantNotice: "agreed"},
		{name: "yes naming the channel", answer: "Yes #consent", wantLinked: true, wantNotice: "agreed"},
		{name: "no", answer: "no", wantNotice: "refused to bridge"},
		{name: "timeout", expire: true, wantNotice: "did not answer"},
		{name: "stop", stop: true, wantNotice: "restarted"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
				const channel = "#consent"
				op := env.srv.Client(t, "chanop") // first in: operator
				if err := op.Join(channel); err != nil {
					t.Fatal(err)
				}
				member := env.srv.Client(t, "member")
				if err := member.Join(channel); err != nil {
					t.Fatal(err)
				}
				res := env.runCommand(testAlice, "link", testNet, channel)
				if res.err != nil || res.userError != "" || !res.replied {
					t.Fatalf("link = %+v, want a reply", res)
				}
				ask := op.MustWaitFor(t, irctest.Match(testBotNick, "PRIVMSG", "chanop"))
				if text := ask.Param(1); !strings.Contains(text, string(testAlice)) || !strings.Contains(text, channel) ||
					!strings.Contains(text, string(linkRoom)) || !strings.Contains(text, "yes") {
					t.Errorf("the request says %q, want the linker, channel, room and how to answer", text)
				}
				if p, _ := env.br.db.Portal.GetByRoom(env.ctx, linkRoom); p != nil {
					t.Fatal("the room was linked before the operator answered")
				}
				// Somebody who is not an operator cannot agree.
				if err := member.Privmsg(testBotNick, "yes"); err != nil {
					t.Fatal(err)
				}
				member.MustWaitFor(t, irctest.Match(testBotNick, "NOTICE", "member"))
				switch {
				case tt.answer != "":
					if err := op.Privmsg(testBotNick, tt.answer); err != nil {
						t.Fatal(err)
					}
				case tt.expire:
					env.br.expireConsents(env.ctx, time.Now().Add(env.br.cfg.Networks[testNet].ConsentTimeout-time.Second))
					if env.noticesWith("did not answer") != 0 {
						t.Fatal("the request expired before its timeout")
					}
					env.br.expireConsents(env.ctx, time.Now().Add(env.br.cfg.Networks[testNet].ConsentTimeout+time.Second))
				case tt.stop:
					env.stop()
				}
				env.waitNotice(tt.wantNotice)
				if tt.wantLinked {
					env.waitMembers(channel, testBotNick)
				}
				p, err := env.br.db.Portal.GetByRoom(env.ctx, linkRoom)
				if err != nil {
					t.Fatal(err)
				}
				if (p != nil) != tt.wantLinked {
					t.Fatalf("linked = %v, want %v", p != nil, tt.wantLinked)
				}
				if p != nil && (p.Actor != testAlice || p.ChannelName != channel) {
					t.Errorf("portal = %+v, want linked by alice to %s", p, channel)
				}
				if !tt.stop {
					// The request is settled: a late answer finds nothing.
					if err := op.Privmsg(testBotNick, "yes"); err != nil {
						t.Fatal(err)
					}
					op.MustWaitFor(t, func(l irctest.Line) bool {
						return l.Command() == "NOTICE" && strings.Contains(l.Param(1), "no link request waiting")
					})
				}
			})
		})
	}
}

// TestLinkConsentNoOperator: a channel without a visible operator (it does not exist) is
// refused at once.
func TestLinkConsentNoOperator(t *testing.T) {
	forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
		res := env.runCommand(testAlice, "link", testNet, "#nobody-here")
		if !strings.Contains(res.userError, "no operator") {
			t.Fatalf("link = %+v, want a user error about no operator", res)
		}
		// A named operator must be one.
		op := env.srv.Client(t, "chanop")
		if err := op.Join("#owned"); err != nil {
			t.Fatal(err)
		}
		res = env.runCommand(testAlice, "link", testNet, "#owned", "op=someoneelse")
		if !strings.Contains(res.userError, "not an operator") {
			t.Fatalf("link naming a non-operator = %+v, want a user error", res)
		}
	})
}

// TestOperatorUnlinkFromIRC: "/msg <bridge> unlink #chan" from an operator of the channel
// unlinks its portal and tells the room; from anybody else it is refused.
func TestOperatorUnlinkFromIRC(t *testing.T) {
	forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
		user := env.ircUser("ircuser") // the bridge joined first and is the operator
		if err := user.Privmsg(testBotNick, "unlink "+testChannel); err != nil {
			t.Fatal(err)
		}
		user.MustWaitFor(t, func(l irctest.Line) bool {
			return l.Command() == "NOTICE" && strings.Contains(l.Param(1), "Only an operator")
		})
		if p, _ := env.br.db.Portal.GetByRoom(env.ctx, testPortalRoom); p == nil {
			t.Fatal("a non-operator unlinked the portal")
		}
		if err := env.srv.Mode(testChannel, "+o", "ircuser"); err != nil {
			t.Fatal(err)
		}
		if err := user.Privmsg(testBotNick, "unlink "+testChannel); err != nil {
			t.Fatal(err)
		}
		user.MustWaitFor(t, irctest.Match(testBotNick, "PART", testChannel))
		env.waitMessage(testPortalRoom, env.host.BotID(), "unlinked this room")
		env.eventually("the portal row is gone", func() bool {
			p, err := env.br.db.Portal.GetByRoom(env.ctx, testPortalRoom)
			return err == nil && p == nil
		})
	})
}

// TestLinkConsentWithdrawn: a link request waiting for an operator is dropped, without telling
// anyone, when its linker is erased or its command redacted; a later "yes" links nothing and
// brings no users row back.
func TestLinkConsentWithdrawn(t *testing.T) {
	for _, how := range []string{"erased", "redacted"} {
		t.Run(how, func(t *testing.T) {
			forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
				const channel = "#consent"
				op := env.srv.Client(t, "chanop")
				if err := op.Join(channel); err != nil {
					t.Fatal(err)
				}
				if res := env.runCommand(testAlice, "link", testNet, channel, "key=sekrit"); res.err != nil || res.userError != "" {
					t.Fatalf("link = %+v", res)
				}
				op.MustWaitFor(t, irctest.Match(testBotNick, "PRIVMSG", "chanop"))
				n := env.br.network(testNet)
				n.mu.Lock()
				req := n.consents[n.fold(channel)]
				n.mu.Unlock()
				if req == nil || req.key.IsZero() {
					t.Fatalf("pending request = %+v, want one holding the key", req)
				}
				switch how {
				case "erased":
					if err := env.br.EraseRemote(env.ctx, testAlice); err != nil {
						t.Fatal(err)
					}
					env.host.EraseUser(t, testAlice)
				case "redacted":
					env.handle(&event.Event{
						ID: env.newEventID(), RoomID: linkRoom, Sender: testAlice, Type: event.EventRedaction, Redacts: req.eventID,
						Content: event.Content{Parsed: &event.RedactionEventContent{Redacts: req.eventID}},
					})
				}
				if !req.key.IsZero() {
					t.Error("the withdrawn request still holds the channel key")
				}
				if err := op.Privmsg(testBotNick, "yes"); err != nil {
					t.Fatal(err)
				}
				op.MustWaitFor(t, func(l irctest.Line) bool {
					return l.Command() == "NOTICE" && strings.Contains(l.Param(1), "no link request waiting")
				})
				if p, err := env.br.db.Portal.GetByRoom(env.ctx, linkRoom); err != nil || p != nil {
					t.Errorf("portal after the withdrawn request = %+v, %v; want none", p, err)
				}
				if k, err := env.br.db.ChannelKey.Get(env.ctx, testNet, n.fold(channel)); err != nil || k != nil {
					t.Errorf("channel key after the withdrawn request = %+v, %v; want none", k, err)
				}
				env.br.expireConsents(env.ctx, time.Now().Add(time.Hour))
				env.stop()
				if got := env.noticesWith(channel); got != 0 {
					t.Errorf("%d notices about the withdrawn request, want none", got)
				}
				if how == "erased" {
					var n int
					if err := env.host.RawDB.QueryRow(env.ctx, "SELECT COUNT(*) FROM users WHERE mxid=$1", testAlice).Scan(&n); err != nil || n != 0 {
						t.Errorf("users rows of the erased user = %d, %v; want 0", n, err)
					}
				}
			})
		})
	}
}

// TestLinkConsentLimits: a linker and a room have one request waiting at a time, and a network
// at most maxPendingConsents, each refused with a user error before any operator is messaged.
func TestLinkConsentLimits(t *testing.T) {
	forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
		op := env.srv.Client(t, "chanop")
		for _, c := range []string{"#one", "#two", "#three"} {
			if err := op.Join(c); err != nil {
				t.Fatal(err)
			}
		}
		if res := env.runCommand(testAlice, "link", testNet, "#one"); res.err != nil || res.userError != "" {
			t.Fatalf("first link = %+v", res)
		}
		op.MustWaitFor(t, irctest.Match(testBotNick, "PRIVMSG", "chanop"))
		seq := env.srv.Seq()
		if res := env.runCommand(testAlice, "link", testNet, "#two"); !strings.Contains(res.userError, "one request waiting at a time") {
			t.Errorf("second link by the same user = %+v, want a user error", res)
		}
		if res := env.runCommand(testBob, "link", testNet, "#two"); !strings.Contains(res.userError, "link this room") {
			t.Errorf("second link in the same room = %+v, want a user error", res)
		}
		n := env.br.network(testNet)
		n.dropConsentsWhere(func(req *linkRequest) bool { return req.linker == testAlice })
		n.mu.Lock()
		for i := len(n.consents); i < maxPendingConsents; i++ {
			n.consents[fmt.Sprintf("#filler%d", i)] = &linkRequest{
				channel: fmt.Sprintf("#filler%d", i), linker: id.UserID(fmt.Sprintf("@u%d:example.org", i)),
				roomID: id.RoomID(fmt.Sprintf("!r%d:example.org", i)), deadline: time.Now().Add(time.Hour),
			}
		}
		n.mu.Unlock()
		if res := env.runCommand(testBob, "link", testNet, "#three"); !strings.Contains(res.userError, "Too many link requests") {
			t.Errorf("link over the network's cap = %+v, want a user error", res)
		}
		n.mu.Lock()
		delete(n.consents, "#filler1")
		n.mu.Unlock()
		if res := env.runCommand(testBob, "link", testNet, "#three"); res.err != nil || res.userError != "" {
			t.Errorf("link under the cap = %+v, want it asked", res)
		}
		op.MustWaitFor(t, irctest.After(seq, irctest.Match(testBotNick, "PRIVMSG", "chanop")))
		if got := env.srv.Lines(irctest.After(seq, irctest.Match(testBotNick, "PRIVMSG", "chanop"))); len(got) != 1 {
			t.Errorf("operator asked %d times after the first request, want once", len(got))
		}
	})
}

// TestBadKeyWithNobodyToTell: when the channel refuses the bridge's key and nobody gave it or
// linked the room (a portal made through its alias, or the giver was erased), the portal room
// gets one notice asking a room admin for !irc key, however often the refusal repeats.
func TestBadKeyWithNobodyToTell(t *testing.T) {
	forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
		n := env.br.network(testNet)
		for range 3 {
			n.onBadKey(env.ctx, testChannel)
		}
		var got int
		for _, evt := range env.host.HS.Events(testPortalRoom) {
			var c event.MessageEventContent
			if evt.Sender == env.host.BotID() && evt.Decode(&c) == nil && strings.Contains(c.Body, "!irc key") {
				got++
			}
		}
		if got != 1 {
			t.Errorf("portal got %d notices about the key, want 1", got)
		}
	})
}

package irc

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/bridges/irc/irctest"
)

// rejoinHour keeps kicked and killed puppets out for an hour, longer than any test.
func rejoinHour(cfg *Config) { cfg.Networks[testNet].RejoinDelay = time.Hour }

// TestPuppetKicked: an IRC KICK of a puppet tells its user, and their messages are not relayed
// (they are told so) while rejoin_delay lasts.
func TestPuppetKicked(t *testing.T) {
	forEachDialect(t, envConfig{configure: rejoinHour}, func(t *testing.T, env *testEnv) {
		watcher := env.ircUser("watcher")
		env.say(testAlice, "before the kick")
		watcher.MustWaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "before the kick"))
		if err := env.srv.Kick(testChannel, "alice[m]", "behave"); err != nil {
			t.Fatal(err)
		}
		body := env.waitNotice("kicked you from " + testChannel)
		if !strings.Contains(body, "behave") {
			t.Errorf("the kick notice says %q, want the reason", body)
		}
		seq := env.srv.Seq()
		env.say(testAlice, "while kicked")
		env.waitNotice("was not relayed")
		// bob speaks after alice: once his line is on IRC, alice's would be too.
		env.say(testBob, "bob after the kick")
		watcher.MustWaitFor(t, irctest.Match("bob[m]", "PRIVMSG", testChannel, "bob after the kick"))
		if lines := env.srv.Lines(irctest.After(seq, irctest.Match("alice[m]", "", testChannel))); len(lines) != 0 {
			t.Errorf("the kicked puppet sent %v within rejoin_delay", lines)
		}
	})
}

// TestMayJoin: a kick keeps the puppet out until its delay passed, then is forgotten.
func TestMayJoin(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		kicked time.Time // zero: never kicked
		at     time.Time
		want   bool
	}{
		{"never kicked", time.Time{}, now, true},
		{"within the delay", now.Add(5 * time.Minute), now, false},
		{"at the end of the delay", now, now, true},
		{"after the delay", now.Add(-time.Second), now, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &puppet{}
			if !tt.kicked.IsZero() {
				p.setKicked("#chan", tt.kicked)
			}
			if got := p.mayJoin("#chan", tt.at); got != tt.want {
				t.Errorf("mayJoin = %v, want %v", got, tt.want)
			}
			if tt.want && !p.kickedUntil("#chan").IsZero() {
				t.Error("an expired kick was not forgotten")
			}
		})
	}
}

// TestPuppetKilled: a KILL of a puppet tells its user once, and the puppet does not reconnect
// within rejoin_delay.
func TestPuppetKilled(t *testing.T) {
	forEachDialect(t, envConfig{configure: rejoinHour}, func(t *testing.T, env *testEnv) {
		env.say(testAlice, "before the kill")
		env.waitMembers(testChannel, "alice[m]")
		if err := env.srv.Kill("alice[m]", "flooding"); err != nil {
			t.Fatal(err)
		}
		env.waitNotice("disconnected you")
		p := env.puppet(testAlice)
		if held := p.sess.heldFor(); held < 59*time.Minute {
			t.Errorf("the killed puppet may reconnect in %s, want about rejoin_delay (1h)", held)
		}
		// The test's reconnect backoff is at most 200 ms: without the hold it would be back.
		if env.srv.Until(func() bool { return containsFold(env.srv.Nicks(), "alice[m]") }, time.Second) {
			t.Error("the killed puppet reconnected within rejoin_delay")
		}
		if n := env.noticesWith("disconnected you"); n != 1 {
			t.Errorf("alice got %d kill notices, want 1", n)
		}
	})
}

// banRequests returns the bodies of the bot's ban (or unban) requests for roomID.
func banRequests(env *testEnv, roomID id.RoomID, action string) []string {
	var out []string
	for _, req := range env.host.HS.Requests() {
		if req.Method == "POST" && req.Path == "/_matrix/client/v3/rooms/"+string(roomID)+"/"+action {
			var body struct {
				UserID id.UserID `json:"user_id"`
				Reason string    `json:"reason"`
			}
			if json.Unmarshal(req.Body, &body) == nil {
				out = append(out, string(body.UserID)+" "+body.Reason)
			}
		}
	}
	return out
}

// TestIRCBanShowsInMatrix: a ban mask that matches a puppet bans its user from the portal room,
// lifting it lifts the Matrix ban; a JOIN refused as banned (474) bans too.
func TestIRCBanShowsInMatrix(t *testing.T) {
	forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
		env.say(testAlice, "hello")
		env.waitMembers(testChannel, "alice[m]")
		env.eventually("the bridge saw alice's puppet join", func() bool { return env.puppet(testAlice).source.Load() != nil })
		if err := env.srv.Mode(testChannel, "+b", "alice[m]!*@*"); err != nil {
			t.Fatal(err)
		}
		env.eventually("alice is banned in Matrix", func() bool {
			bans := banRequests(env, testPortalRoom, "ban")
			return len(bans) == 1 && strings.HasPrefix(bans[0], string(testAlice)+" ")
		})
		if err := env.srv.Mode(testChannel, "-b", "alice[m]!*@*"); err != nil {
			t.Fatal(err)
		}
		env.eventually("alice's Matrix ban is lifted", func() bool {
			unbans := banRequests(env, testPortalRoom, "unban")
			return len(unbans) == 1 && strings.HasPrefix(unbans[0], string(testAlice)+" ")
		})

		// bob is banned before his puppet joins: the server refuses the JOIN with 474.
		if err := env.srv.Mode(testChannel, "+b", "bob[m]!*@*"); err != nil {
			t.Fatal(err)
		}
		env.say(testBob, "let me in")
		env.eventually("bob is banned in Matrix", func() bool {
			for _, b := range banRequests(env, testPortalRoom, "ban") {
				if strings.HasPrefix(b, string(testBob)+" ") {
					return true
				}
			}
			return false
		})
	})
}

// TestMatrixKickWithoutOperatorStatus: a Matrix user kicking an IRC user's ghost without being
// a channel operator is told the kick did not reach IRC, and the IRC user's ghost is kept out
// of the room (their lines are not relayed) until they are invited again.
func TestMatrixKickWithoutOperatorStatus(t *testing.T) {
	forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
		dan := env.ircUser("dan")
		eve := env.ircUser("eve")
		env.say(testAlice, "hi")
		env.waitMembers(testChannel, "alice[m]")
		if err := dan.Privmsg(testChannel, "dan speaks"); err != nil {
			t.Fatal(err)
		}
		env.waitMessage(testPortalRoom, ghostID(t, "dan"), "dan speaks")
		danGhost := string(ghostID(t, "dan"))
		env.handle(&event.Event{
			ID: env.newEventID(), RoomID: testPortalRoom, Sender: testAlice, Type: event.StateMember, StateKey: &danGhost,
			Content: event.Content{Parsed: &event.MemberEventContent{Membership: event.MembershipLeave, Reason: "spam"}},
		})
		env.waitNotice("could not kick")
		if got := env.srv.Lines(irctest.Match("alice[m]", "KICK")); len(got) != 0 {
			t.Errorf("alice's puppet, not an operator, sent %v", got)
		}
		if err := dan.Privmsg(testChannel, "dan again"); err != nil {
			t.Fatal(err)
		}
		if err := eve.Privmsg(testChannel, "eve after dan"); err != nil {
			t.Fatal(err)
		}
		env.waitMessage(testPortalRoom, ghostID(t, "eve"), "eve after dan")
		if got := env.messagesWith(testPortalRoom, "dan again"); len(got) != 0 {
			t.Error("a kicked IRC user's line was relayed into the room")
		}
		// An invite lets them back.
		env.handle(&event.Event{
			ID: env.newEventID(), RoomID: testPortalRoom, Sender: testAlice, Type: event.StateMember, StateKey: &danGhost,
			Content: event.Content{Parsed: &event.MemberEventContent{Membership: event.MembershipInvite}},
		})
		if err := dan.Privmsg(testChannel, "dan is back"); err != nil {
			t.Fatal(err)
		}
		env.waitMessage(testPortalRoom, ghostID(t, "dan"), "dan is back")
	})
}

// TestMatrixKickAsOperator: a Matrix user whose connection is an operator of the channel kicks
// an IRC user's ghost, and the kick reaches IRC with its reason; nobody is kept out.
func TestMatrixKickAsOperator(t *testing.T) {
	forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
		dan := env.ircUser("dan")
		env.say(testAlice, "hi")
		env.waitMembers(testChannel, "alice[m]")
		if err := env.srv.Mode(testChannel, "+o", "alice[m]"); err != nil {
			t.Fatal(err)
		}
		dan.MustWaitFor(t, irctest.Match("", "MODE", testChannel, "+o", "alice[m]"))
		danGhost := string(ghostID(t, "dan"))
		env.handle(&event.Event{
			ID: env.newEventID(), RoomID: testPortalRoom, Sender: testAlice, Type: event.StateMember, StateKey: &danGhost,
			Content: event.Content{Parsed: &event.MemberEventContent{Membership: event.MembershipBan, Reason: "spam"}},
		})
		env.srv.WaitFor(t, irctest.Match("alice[m]", "KICK", testChannel, "dan", "spam"))
		if env.br.network(testNet).isKeptOut(testChannel, "dan") {
			t.Error("an IRC user kicked on IRC is also kept out by the bridge")
		}
		if n := env.noticesWith("could not kick"); n != 0 {
			t.Errorf("the kicker got %d failure notices for a kick that worked", n)
		}
	})
}

// TestIRCBansForgetErasedUsers: a +b repeated by the server records its victim once, and an
// erased user is dropped from the bans to lift (never unbanned, nor named, later).
func TestIRCBansForgetErasedUsers(t *testing.T) {
	forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
		n := env.br.network(testNet)
		n.rememberBan(testChannel, "Alice[m]!*@*", testAlice)
		n.rememberBan(testChannel, "alice[m]!*@*", testAlice)
		n.rememberBan(testChannel, "alice[m]!*@*", testBob)
		n.mu.Lock()
		got := len(n.ircBans[testChannel][n.fold("alice[m]!*@*")])
		n.mu.Unlock()
		if got != 2 {
			t.Errorf("ban mask records %d users, want 2 (alice once, bob)", got)
		}
		if err := env.br.EraseRemote(env.ctx, testAlice); err != nil {
			t.Fatal(err)
		}
		n.mu.Lock()
		defer n.mu.Unlock()
		for _, byMask := range n.ircBans {
			for mask, users := range byMask {
				if slices.Contains(users, testAlice) {
					t.Errorf("erased user still recorded under ban %s", mask)
				}
			}
		}
		if users := n.ircBans[testChannel][n.fold("alice[m]!*@*")]; len(users) != 1 || users[0] != testBob {
			t.Errorf("bans after erasure = %v, want bob's kept", users)
		}
	})
}

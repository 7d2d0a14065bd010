package irc

import (
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/bridges/irc/ircdb"
	"github.com/custodian-matrix/custodian/bridges/irc/irctest"
)

// TestSecretsAreNotRelayed: the bridge's second line of defence. Whatever the core lets through,
// a message that parses as a sensitive command in any of its forms (an edit, a reply under its
// fallback, leading white space, only in the formatted body) does not reach IRC.
func TestSecretsAreNotRelayed(t *testing.T) {
	const password = "hunter2-secret"
	login := "!irc login " + testNet + " acct " + password
	tests := []struct {
		name    string
		content *event.MessageEventContent
	}{
		{"plain", &event.MessageEventContent{MsgType: event.MsgText, Body: login}},
		{"leading white space", &event.MessageEventContent{MsgType: event.MsgText, Body: " \u00a0" + login}},
		{"upper case", &event.MessageEventContent{MsgType: event.MsgText, Body: strings.ToUpper(login)}},
		{"reply", &event.MessageEventContent{
			MsgType: event.MsgText, Body: "> <@bob:example.org> what now?\n\n" + login,
			RelatesTo: &event.RelatesTo{InReplyTo: &event.InReplyTo{EventID: "$earlier"}},
		}},
		{"edit", &event.MessageEventContent{
			MsgType: event.MsgText, Body: "* " + login,
			NewContent: &event.MessageEventContent{MsgType: event.MsgText, Body: login},
			RelatesTo:  &event.RelatesTo{Type: event.RelReplace, EventID: "$earlier"},
		}},
		{"formatted only", &event.MessageEventContent{
			MsgType: event.MsgText, Body: "look", Format: event.FormatHTML, FormattedBody: "<p><code>" + login + "</code></p>",
		}},
		{"emote", &event.MessageEventContent{MsgType: event.MsgEmote, Body: login}},
	}
	forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
		watcher := env.ircUser("watcher")
		seq := env.srv.Seq()
		var handled []id.EventID
		for _, tt := range tests {
			evt := env.event(testPortalRoom, testAlice, tt.content)
			env.handle(evt)
			handled = append(handled, evt.ID)
		}
		// The control goes the same way and arrives, so the lines above had their chance.
		env.say(testAlice, "control message")
		watcher.MustWaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "control message"))
		for _, l := range env.srv.Lines(irctest.After(seq, func(irctest.Line) bool { return true })) {
			if strings.Contains(l.Raw, password) || strings.Contains(strings.ToLower(l.Raw), strings.ToLower(password)) {
				t.Errorf("the IRC server received a line with the password: %q", l.Raw)
			}
		}
		for _, evtID := range handled {
			if rows, err := env.br.db.Message.Get(env.ctx, evtID); err != nil || len(rows) != 0 {
				t.Errorf("irc_message rows of withheld %s = %d, %v; want none", evtID, len(rows), err)
			}
		}
	})
}

// TestReplyQuotesOnlyRelayedEvents: a reply quotes the replied-to event on IRC only when the
// bridge relayed it or received it from IRC. Events the core withheld (a command carrying a
// secret, a paused user's message) go unquoted, though the homeserver would serve them.
func TestReplyQuotesOnlyRelayedEvents(t *testing.T) {
	forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
		watcher := env.ircUser("watcher")
		// Withheld by the core: never handed to the bridge, but in the room's history.
		login := env.message(testPortalRoom, testAlice, event.MsgText, "!irc login "+testNet+" acct hunter2-secret")
		env.host.AddEvent(t, login)
		paused := env.message(testPortalRoom, testBob, event.MsgText, "bob's paused words")
		env.host.AddEvent(t, paused)
		// Relayed: quoted as before (a Matrix sender's nick in a quote is their localpart).
		relayed := env.message(testPortalRoom, testBob, event.MsgText, "bob's relayed words")
		env.host.AddEvent(t, relayed)
		env.handle(relayed)
		watcher.MustWaitFor(t, irctest.Match("bob[m]", "PRIVMSG", testChannel, "bob's relayed words"))
		// The relay's row is written after the line went out; a reply handled before it would
		// (rightly) not quote what the bridge does not yet know it relayed.
		env.eventually("the relayed message is recorded", func() bool {
			rows, err := env.br.db.Message.Get(env.ctx, relayed.ID)
			return err == nil && len(rows) > 0
		})

		reply := func(to id.EventID, body string) {
			env.handle(env.event(testPortalRoom, testAlice, &event.MessageEventContent{
				MsgType: event.MsgText, Body: body,
				RelatesTo: &event.RelatesTo{InReplyTo: &event.InReplyTo{EventID: to}},
			}))
		}
		seq := env.srv.Seq()
		reply(login.ID, "answer to the login")
		reply(paused.ID, "answer to the paused")
		reply(relayed.ID, "answer to the relayed")
		watcher.MustWaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, `bob: "bob's relayed words" <- answer to the relayed`))
		var quotedRelayed bool
		for _, l := range env.srv.Lines(irctest.After(seq, irctest.Match("alice[m]", "PRIVMSG", testChannel))) {
			text := l.Param(1)
			if strings.Contains(text, "hunter2") || strings.Contains(text, "login") && !strings.Contains(text, "answer") ||
				strings.Contains(text, "paused words") {
				t.Errorf("a reply quoted a withheld event: %q", text)
			}
			if strings.HasPrefix(text, `bob: "bob's relayed words" <- `) {
				quotedRelayed = true
			}
		}
		if !quotedRelayed {
			t.Error("the reply to a relayed message did not quote it")
		}
		for _, want := range []string{"answer to the login", "answer to the paused"} {
			if lines := env.srv.Lines(irctest.After(seq, irctest.Match("alice[m]", "PRIVMSG", testChannel, want))); len(lines) != 1 {
				t.Errorf("%q arrived %d times, want once and unquoted", want, len(lines))
			}
		}
	})
}

// TestNotifyUserOnceForReplayedEvent: the bridge's notices to users are sent with a
// transaction ID derived from the event that caused them, so handling the same event twice
// (a replay after a crash) posts one notice.
func TestNotifyUserOnceForReplayedEvent(t *testing.T) {
	ec := envConfig{configure: func(cfg *Config) { cfg.Networks[testNet].MaxPuppets = 1 }}
	forEachDialect(t, ec, func(t *testing.T, env *testEnv) {
		watcher := env.ircUser("watcher")
		env.say(testAlice, "first")
		watcher.MustWaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "first"))
		over := env.message(testPortalRoom, testBob, event.MsgText, "over the limit")
		env.handle(over)
		env.handle(over)
		const notice = "as many bridged users as it may"
		env.waitEvent("", "the notice to bob", func(evt *astest.SentEvent) bool {
			var c event.MessageEventContent
			return evt.Type == event.EventMessage && evt.Decode(&c) == nil && strings.Contains(c.Body, notice)
		})
		var n int
		for _, room := range env.host.CreatedRooms() {
			n += len(env.messagesWith(room.RoomID, notice))
		}
		if n != 1 {
			t.Errorf("bob got %d notices for one event handled twice, want 1", n)
		}
		// The notice went through the core's one path, into bob's recorded management room.
		notices := env.host.Notices(testBob)
		if len(notices) != 1 || notices[0].Notice.Cause != over.ID.String() || notices[0].RoomID != env.host.ManagementRoom(t, testBob) {
			t.Errorf("notices through Host.NotifyUser = %+v, want one caused by %s in bob's management room", notices, over.ID)
		}
	})
}

// TestNickRefusesOtherUsersPuppetNicks: !irc nick refuses a nick of the form the nick template
// gives puppets ("bob[m]"), unless it is the sender's own, and a nick another user's puppet
// holds; other nicks are accepted.
func TestNickRefusesOtherUsersPuppetNicks(t *testing.T) {
	forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
		watcher := env.ircUser("watcher")
		env.say(testBob, "bob is here")
		watcher.MustWaitFor(t, irctest.Match("bob[m]", "PRIVMSG", testChannel, "bob is here"))
		if res := env.runCommand(testBob, "nick", testNet, "bobby"); !res.replied || res.userError != "" || res.err != nil {
			t.Fatalf("bob's !irc nick bobby = %+v, want it accepted", res)
		}
		tests := []struct {
			nick    string
			refused string // part of the user error; "" if accepted
		}{
			{"bob[m]", "looks like the nick of another Matrix user's connection"},
			{"BOB[M]", "looks like the nick of another Matrix user's connection"},
			{"carol[m]", "looks like the nick of another Matrix user's connection"},
			{"bobby", "is the nick of another Matrix user's connection"},
			{"BobBy", "is the nick of another Matrix user's connection"},
			{"alice[m]", ""},
			{"alice_away", ""},
		}
		for _, tt := range tests {
			res := env.runCommand(testAlice, "nick", testNet, tt.nick)
			switch {
			case res.err != nil:
				t.Errorf("!irc nick %s failed: %v", tt.nick, res.err)
			case tt.refused == "" && (!res.replied || res.userError != ""):
				t.Errorf("!irc nick %s = %+v, want it accepted", tt.nick, res)
			case tt.refused != "" && !strings.Contains(res.userError, tt.refused):
				t.Errorf("!irc nick %s = %+v, want it refused with %q", tt.nick, res, tt.refused)
			}
			if tt.refused != "" {
				if chosen, err := env.br.db.Nick.Get(env.ctx, testAlice, testNet); err != nil || chosen != nil && strings.EqualFold(chosen.Nick, tt.nick) {
					t.Errorf("after the refused %s, alice's recorded nick = %+v, %v", tt.nick, chosen, err)
				}
			}
		}
		// A nick recorded before this check (say, by an older version) is not used either.
		if err := env.br.db.Nick.Put(env.ctx, &ircdb.Nick{
			UserID: testAlice, Network: testNet, Nick: "bob[m]", RoomID: "!dm:example.org", SourceEventID: "$old", UpdatedAt: time.Now(),
		}); err != nil {
			t.Fatal(err)
		}
		if nick, _, err := env.br.puppetNick(env.ctx, env.br.network(testNet), testAlice); err != nil || nick != "alice[m]" {
			t.Errorf("puppetNick with a recorded bob[m] = %q, %v; want the template's alice[m]", nick, err)
		}
	})
}

func TestPuppetNickPattern(t *testing.T) {
	fold := strings.ToLower
	tests := []struct {
		template string
		match    []string
		noMatch  []string
	}{
		{"{localpart}[m]", []string{"bob[m]", "_1bob[m]", "x[m]"}, []string{"[m]", "bob", "bob[m]_", "bob[n]"}},
		{"mx-{displayname}", []string{"mx-bob", "mx-a"}, []string{"mx-", "bob", "xmx-bob"}},
		{"{localpart}|{displayname}", []string{"a|b"}, []string{"a|", "ab"}},
		{"{localpart}", nil, []string{"bob", "bob[m]"}},
	}
	for _, tt := range tests {
		re := puppetNickPattern(tt.template, fold)
		for _, nick := range tt.match {
			if !re.MatchString(nick) {
				t.Errorf("pattern of %q does not match %q", tt.template, nick)
			}
		}
		for _, nick := range tt.noMatch {
			if re.MatchString(nick) {
				t.Errorf("pattern of %q matches %q", tt.template, nick)
			}
		}
	}
}

// TestNoticeRoomOthersJoinedIsNotReused: the bridge keeps the room it told a user something in,
// but once anyone else joined it, the next notice goes to a new room.
func TestNoticeRoomOthersJoinedIsNotReused(t *testing.T) {
	ec := envConfig{configure: func(cfg *Config) { cfg.Networks[testNet].MaxPuppets = 1 }}
	forEachDialect(t, ec, func(t *testing.T, env *testEnv) {
		watcher := env.ircUser("watcher")
		env.say(testAlice, "first")
		watcher.MustWaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "first"))
		const notice = "as many bridged users as it may"
		isNotice := func(evt *astest.SentEvent) bool {
			var c event.MessageEventContent
			return evt.Type == event.EventMessage && evt.Decode(&c) == nil && strings.Contains(c.Body, notice)
		}
		env.handle(env.message(testPortalRoom, testBob, event.MsgText, "over the limit"))
		env.waitEvent("", "the first notice to bob", isNotice)
		created := env.host.CreatedRooms()
		if len(created) != 1 {
			t.Fatalf("created rooms = %d after the first notice, want 1", len(created))
		}
		first := created[0].RoomID
		env.host.SetMembership(t, first, id.UserID("@carol:example.org"), event.MembershipJoin)

		env.handle(env.message(testPortalRoom, testBob, event.MsgText, "over the limit again"))
		if created = env.host.CreatedRooms(); len(created) != 2 {
			t.Fatalf("created rooms = %d after carol joined the notice room, want 2", len(created))
		}
		if n := len(env.messagesWith(first, notice)); n != 1 {
			t.Errorf("%d notices in the room carol joined, want only the first", n)
		}
		if n := len(env.messagesWith(created[1].RoomID, notice)); n != 1 {
			t.Errorf("%d notices in the new room, want 1", n)
		}
	})
}

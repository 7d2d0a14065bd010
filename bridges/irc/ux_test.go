package irc

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.mau.fi/util/ptr"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/bridges/irc/ircconv"
	"github.com/custodian-matrix/custodian/bridges/irc/irctest"
)

// TestEditsSendChangedWords: an edit that changes a few words reaches IRC as a correction of
// those words against the version it replaces (the original, then the last edit), and a large
// change as the whole new text.
func TestEditsSendChangedWords(t *testing.T) {
	forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
		watcher := env.ircUser("watcher")
		original := env.message(testPortalRoom, testAlice, event.MsgText, "the quick brwn fox jumps over the lazy dog")
		env.host.AddEvent(t, original)
		env.handle(original)
		watcher.MustWaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, original.Content.AsMessage().Body))
		edit := func(body string) {
			t.Helper()
			evt := env.event(testPortalRoom, testAlice, &event.MessageEventContent{
				MsgType: event.MsgText, Body: "* " + body,
				NewContent: &event.MessageEventContent{MsgType: event.MsgText, Body: body},
				RelatesTo:  &event.RelatesTo{Type: event.RelReplace, EventID: original.ID},
			})
			env.host.AddEvent(t, evt)
			env.handle(evt)
		}
		edit("the quick brown fox jumps over the lazy dog")
		watcher.MustWaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "s/brwn/brown/"))
		edit("the quick brown cat jumps over the lazy dog")
		watcher.MustWaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "s/fox/cat/"))
		edit("something else entirely, said differently")
		watcher.MustWaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "* something else entirely, said differently"))
	})
}

// longBody is a message of ten lines.
func longBody() string {
	var b strings.Builder
	for i := range 10 {
		fmt.Fprintf(&b, "line %d of a long paste\n", i+1)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// TestLongMessageLink: with media_proxy, a long message reaches IRC as its first line and a link
// to the full text, which the listener serves until the message is redacted.
func TestLongMessageLink(t *testing.T) {
	ec := envConfig{configure: func(cfg *Config) {
		cfg.MediaProxy = &MediaProxyConfig{Listen: "127.0.0.1:0", PublicURL: "https://m.example.org/irc", MaxBytes: defaultMediaMaxBytes}
	}}
	linkRe := regexp.MustCompile(`^line 1 of a long paste\x0f… \(full message: https://m\.example\.org/irc(/media/[A-Za-z0-9_-]{22}/message\.txt)\)$`)
	forEachDialect(t, ec, func(t *testing.T, env *testEnv) {
		watcher := env.ircUser("watcher")
		body := longBody()
		evt := env.message(testPortalRoom, testAlice, event.MsgText, body)
		env.host.AddEvent(t, evt)
		seq := env.srv.Seq()
		env.handle(evt)
		l := watcher.MustWaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel))
		m := linkRe.FindStringSubmatch(l.Param(1))
		if m == nil {
			t.Fatalf("long message relayed as %q, want its first line and a link", l.Param(1))
		}
		env.say(testAlice, "after")
		watcher.MustWaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "after"))
		if sent := env.srv.Lines(irctest.After(seq, irctest.Match("alice[m]", "PRIVMSG", testChannel))); len(sent) != 2 {
			t.Errorf("%d lines sent for a long message and a short one, want 2", len(sent))
		}
		rec := httptest.NewRecorder()
		env.br.serveMedia(rec, httptest.NewRequest(http.MethodGet, m[1], nil))
		got, _ := io.ReadAll(rec.Body)
		if rec.Code != http.StatusOK || string(got) != body+"\n" || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/plain") {
			t.Errorf("the link answers %d %q (%s), want 200 and the full text", rec.Code, got, rec.Header().Get("Content-Type"))
		}
		var hashes int
		token := strings.Split(m[1], "/")[2]
		if err := env.host.RawDB.QueryRow(env.ctx, "SELECT COUNT(*) FROM irc_media WHERE token_hash=$1", hashMediaToken(token)).Scan(&hashes); err != nil || hashes != 1 {
			t.Errorf("irc_media rows with the token's hash = %d, %v; want 1", hashes, err)
		}
		env.handle(&event.Event{
			ID: env.newEventID(), RoomID: testPortalRoom, Sender: testAlice, Type: event.EventRedaction,
			Redacts: evt.ID, Content: event.Content{Parsed: &event.RedactionEventContent{Redacts: evt.ID}},
		})
		rec = httptest.NewRecorder()
		env.br.serveMedia(rec, httptest.NewRequest(http.MethodGet, m[1], nil))
		if rec.Code != http.StatusNotFound {
			t.Errorf("the link answers %d after the message was redacted, want 404", rec.Code)
		}
	})
}

// TestLongMessageTruncatedWithoutProxy: without media_proxy, a long message is cut after
// long_lines lines with a marker, and its sender is told once.
func TestLongMessageTruncatedWithoutProxy(t *testing.T) {
	forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
		watcher := env.ircUser("watcher")
		seq := env.srv.Seq()
		env.say(testAlice, longBody())
		lines := relayedLines(t, watcher, "alice[m]", "PRIVMSG", 3)
		if got := lines[2].Param(1); got != "line 3 of a long paste\x0f"+ircconv.TruncatedMarker {
			t.Errorf("last line = %q, want the third line with the marker", got)
		}
		env.say(testAlice, longBody())
		relayedLines(t, watcher, "alice[m]", "PRIVMSG", 3)
		env.say(testAlice, "after")
		watcher.MustWaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "after"))
		if sent := env.srv.Lines(irctest.After(seq, irctest.Match("alice[m]", "PRIVMSG", testChannel))); len(sent) != 7 {
			t.Errorf("%d lines sent, want 3 + 3 + 1", len(sent))
		}
		const notice = "was cut after 3 lines"
		env.waitEvent("", "the notice to alice", func(evt *astest.SentEvent) bool {
			var c event.MessageEventContent
			return evt.Type == event.EventMessage && evt.Decode(&c) == nil && strings.Contains(c.Body, notice)
		})
		var n int
		for _, room := range env.host.CreatedRooms() {
			n += len(env.messagesWith(room.RoomID, notice))
		}
		if n != 1 {
			t.Errorf("alice got %d notices for two cut messages, want 1", n)
		}
	})
}

// TestMentions: an IRC line that names a Matrix user's puppet nick as a word mentions that user
// (m.mentions, and a pill when the line addresses them), under the network's casemapping;
// users who are not in the room, and nicks inside words, are not mentioned.
func TestMentions(t *testing.T) {
	forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
		ghost := ghostID(t, "carol")
		carol := env.ircUser("carol")
		// alice's and bob's puppets join the channel when they speak.
		env.say(testAlice, "hi")
		carol.MustWaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "hi"))
		env.say(testBob, "hello")
		carol.MustWaitFor(t, irctest.Match("bob[m]", "PRIVMSG", testChannel, "hello"))
		// bob left the room on Matrix, but the bridge has not seen it yet: his puppet is still in
		// the channel. He is not mentioned.
		env.host.SetMembership(t, testPortalRoom, testBob, event.MembershipLeave)
		tests := []struct {
			name, line   string
			wantMentions []id.UserID
			wantHTML     string
		}{
			{"addressed", "ALICE{m}: look at this", []id.UserID{testAlice},
				`<a href="https://matrix.to/#/@alice:example.org">ALICE{m}</a>: look at this`},
			{"mid-line", "thanks, alice[m]!", []id.UserID{testAlice}, ""},
			{"inside a word", "malice[m] is not a nick here", nil, ""},
			{"not in the room", "bob[m]: are you there?", nil, ""},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				if err := carol.Privmsg(testChannel, tt.line); err != nil {
					t.Fatal(err)
				}
				_, content := env.waitMessage(testPortalRoom, ghost, tt.line)
				var got []id.UserID
				if content.Mentions != nil {
					got = content.Mentions.UserIDs
				}
				if fmt.Sprint(got) != fmt.Sprint(tt.wantMentions) {
					t.Errorf("m.mentions.user_ids = %v, want %v", got, tt.wantMentions)
				}
				if content.Mentions == nil {
					t.Error("no m.mentions: clients would fall back to matching the body")
				}
				if tt.wantHTML != "" && content.FormattedBody != tt.wantHTML {
					t.Errorf("formatted body = %q, want %q", content.FormattedBody, tt.wantHTML)
				}
			})
		}
	})
}

// TestNetsplitDamping: a user who quits in a netsplit and is back within quit_debounce keeps
// their ghost in the room, with no leave and no second join; one who does not come back leaves
// after it; an ordinary quit leaves at once.
func TestNetsplitDamping(t *testing.T) {
	ec := envConfig{configure: func(cfg *Config) { cfg.QuitDebounce = 2 * time.Second }}
	forEachDialect(t, ec, func(t *testing.T, env *testEnv) {
		memberships := func(ghost id.UserID, membership event.Membership) int {
			n := 0
			for _, evt := range env.host.HS.Events(testPortalRoom) {
				var c event.MemberEventContent
				if evt.Type == event.StateMember && evt.StateKey != nil && *evt.StateKey == ghost.String() &&
					evt.Decode(&c) == nil && c.Membership == membership {
					n++
				}
			}
			return n
		}
		carol, dave, erin := ghostID(t, "carol"), ghostID(t, "dave"), ghostID(t, "erin")
		clients := map[string]*irctest.Client{}
		for _, nick := range []string{"carol", "dave", "erin"} {
			c := env.ircUser(nick)
			clients[nick] = c
			if err := c.Privmsg(testChannel, "here "+nick); err != nil {
				t.Fatal(err)
			}
		}
		env.waitMessage(testPortalRoom, erin, "here erin")
		for _, nick := range []string{"carol", "dave"} {
			if !env.srv.Netsplit(nick, "hub.example.net leaf.example.net") {
				t.Fatalf("%s was not connected", nick)
			}
		}
		back := env.ircUser("carol")
		if err := back.Privmsg(testChannel, "back again"); err != nil {
			t.Fatal(err)
		}
		env.waitMessage(testPortalRoom, carol, "back again")
		// A client's own quit is "Quit: …" on the server, never taken for a netsplit.
		if err := clients["erin"].Quit("hub.example.net leaf.example.net"); err != nil {
			t.Fatal(err)
		}
		env.waitEvent(testPortalRoom, "erin's leave", func(evt *astest.SentEvent) bool {
			return evt.Type == event.StateMember && evt.StateKey != nil && *evt.StateKey == erin.String() && memberships(erin, event.MembershipLeave) == 1
		})
		if got := memberships(dave, event.MembershipLeave); got != 0 {
			t.Errorf("dave's ghost left %d times within quit_debounce, want 0", got)
		}
		env.waitEvent(testPortalRoom, "dave's leave after quit_debounce", func(evt *astest.SentEvent) bool {
			return evt.Type == event.StateMember && evt.StateKey != nil && *evt.StateKey == dave.String() && memberships(dave, event.MembershipLeave) == 1
		})
		if got := memberships(carol, event.MembershipLeave); got != 0 {
			t.Errorf("carol's ghost left %d times though she was back within quit_debounce, want 0", got)
		}
		if got := memberships(carol, event.MembershipJoin); got != 1 {
			t.Errorf("carol's ghost joined %d times, want once", got)
		}
	})
}

func TestLooksLikeNetsplit(t *testing.T) {
	for reason, want := range map[string]bool{
		"hub.example.net leaf.example.net": true,
		"*.net *.split":                    true,
		"Quit: hub.example.net leaf.net":   false,
		"Quit: bye":                        false,
		"hub.example.net hub.example.net":  false,
		"Ping timeout: 240 seconds":        false,
		"a.b c.d e.f":                      false,
		"hub. leaf.net":                    false,
		"":                                 false,
	} {
		if got := looksLikeNetsplit(reason); got != want {
			t.Errorf("looksLikeNetsplit(%q) = %v, want %v", reason, got, want)
		}
	}
}

// noticesWith returns how many messages holding text the bot posted in the rooms it created
// (the users' private chats with it).
func noticesWith(env *testEnv, text string) int {
	n := 0
	for _, room := range env.host.CreatedRooms() {
		n += len(env.messagesWith(room.RoomID, text))
	}
	return n
}

// TestRefusalFeedback: when the server refuses a message (404, here for +m), its sender gets
// one notice quoting the server's reason, however many refusals the message got; a TOPIC
// refused with 437 is sent again once, and a second refusal is told to the sender.
func TestRefusalFeedback(t *testing.T) {
	forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
		watcher := env.ircUser("watcher")
		env.say(testAlice, "hello")
		watcher.MustWaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "hello"))
		// The puppet's worker handles these in order; the private message after them shows
		// when they were handled.
		refusal := ":irctest.local 404 alice[m] #test :Cannot send to channel (+m)\r\n"
		if err := env.srv.SendRaw("alice[m]", refusal+refusal+":watcher!w@h PRIVMSG alice[m] :marker\r\n"); err != nil {
			t.Fatal(err)
		}
		env.waitEvent("", "the private message after the refusals", func(evt *astest.SentEvent) bool {
			var c event.MessageEventContent
			return evt.Sender == ghostID(t, "watcher") && evt.Decode(&c) == nil && c.Body == "marker"
		})
		const notice = "Your message to #test on Test Net was not delivered: Cannot send to channel (+m)"
		env.eventually("the notice to alice", func() bool { return noticesWith(env, notice) > 0 })
		if got := noticesWith(env, notice); got != 1 {
			t.Errorf("alice got %d notices for one refused message, want 1", got)
		}

		seq := env.srv.Seq()
		env.handle(&event.Event{
			ID: env.newEventID(), RoomID: testPortalRoom, Sender: testAlice, Type: event.StateTopic,
			StateKey: ptr.Ptr(""), Content: event.Content{Parsed: &event.TopicEventContent{Topic: "new topic"}},
		})
		topicSent := irctest.After(seq, irctest.Match("alice[m]", "TOPIC", testChannel, "new topic"))
		env.srv.WaitFor(t, topicSent)
		tooSoon := ":irctest.local 437 alice[m] #test :You may not change the topic again for 1 second\r\n"
		if err := env.srv.SendRaw("alice[m]", tooSoon); err != nil {
			t.Fatal(err)
		}
		env.srv.WaitUntil(t, "the TOPIC sent again", func() bool { return len(env.srv.Lines(topicSent)) == 2 })
		if err := env.srv.SendRaw("alice[m]", tooSoon); err != nil {
			t.Fatal(err)
		}
		env.eventually("the notice about the topic", func() bool {
			return noticesWith(env, "Test Net refused your topic change in #test: You may not change the topic again") == 1
		})
		if got := len(env.srv.Lines(topicSent)); got != 2 {
			t.Errorf("TOPIC sent %d times, want twice (one retry)", got)
		}
	})
}

// TestNotConnectedFeedback: a message that cannot be sent because the sender's puppet gets no
// connection before the handler gives up is told to the sender, once.

// TestTopicRetryRawChannelName: a TOPIC refused with 437 is sent again to the channel as IRC
// names it, not to its Markdown-escaped form (#foo_bar, not #foo\_bar).
func TestTopicRetryRawChannelName(t *testing.T) {
	forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
		watcher := env.ircUser("watcher")
		env.say(testAlice, "hello")
		watcher.MustWaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "hello"))
		p := env.puppet(testAlice)
		p.noteTopic("#foo_bar", env.newEventID(), "new topic")
		seq := env.srv.Seq()
		tooSoon := ":irctest.local 437 alice[m] #foo_bar :You may not change the topic again for 1 second\r\n"
		if err := env.srv.SendRaw("alice[m]", tooSoon); err != nil {
			t.Fatal(err)
		}
		env.srv.WaitFor(t, irctest.After(seq, irctest.Match("alice[m]", "TOPIC", "#foo_bar", "new topic")))
	})
}

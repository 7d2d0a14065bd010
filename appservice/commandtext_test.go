package appservice

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/database"
)

// secretTestDetector is a detector for a "test" group whose login is sensitive, as the IRC
// bridge's is.
func secretTestDetector(t testing.TB) *SecretDetector {
	t.Helper()
	noop := func(context.Context, *CommandEvent) error { return nil }
	return NewSecretDetector("!", []*Command{{Name: "help", Handler: noop}}, map[string][]*Command{
		"test": {
			{Name: "login", Sensitive: true, Handler: noop},
			{Name: "configure", Handler: noop},
		},
	})
}

// secretTestEvent decodes content as the dispatcher does: from JSON, with the content parsed.
func secretTestEvent(t testing.TB, content map[string]any) *event.Event {
	t.Helper()
	data, err := json.Marshal(map[string]any{
		"type": "m.room.message", "event_id": "$secret", "room_id": "!room:example.org",
		"sender": "@alice:example.org", "origin_server_ts": 1, "content": content,
	})
	if err != nil {
		t.Fatal(err)
	}
	var evt event.Event
	if err = json.Unmarshal(data, &evt); err != nil {
		t.Fatal(err)
	}
	evt.Type.Class = event.MessageEventType
	_ = evt.Content.ParseRaw(evt.Type)
	return &evt
}

func TestCarriesSecret(t *testing.T) {
	replyTo := map[string]any{"m.in_reply_to": map[string]any{"event_id": "$original"}}
	edit := func(outer string, newContent map[string]any) map[string]any {
		return map[string]any{
			"msgtype": "m.text", "body": outer, "m.new_content": newContent,
			"m.relates_to": map[string]any{"rel_type": "m.replace", "event_id": "$original"},
		}
	}
	text := func(body string) map[string]any { return map[string]any{"msgtype": "m.text", "body": body} }
	tests := []struct {
		name    string
		content map[string]any
		want    bool
	}{
		{"plain", text("!test login net acct hunter2"), true},
		{"without prefix", text("test login net acct hunter2"), true},
		{"leading space", text(" !test login net acct hunter2"), true},
		{"leading tab and newline", text("\t\n!test login net acct hunter2"), true},
		{"no-break space", text("\u00a0!test login net acct hunter2"), true},
		{"ideographic space between words", text("!test\u3000login net acct hunter2"), true},
		{"zero-width space in front", text("\u200b!test login net acct hunter2"), true},
		{"zero-width space between words", text("!test\u200blogin net acct hunter2"), true},
		{"zero-width joiner inside the name", text("!test lo\u200dgin net acct hunter2"), true},
		{"byte order mark", text("\ufeff!test login net acct hunter2"), true},
		{"upper case", text("!TEST LOGIN net acct hunter2"), true},
		{"mixed case", text("!Test Login net acct hunter2"), true},
		{"typo", text("!test lgoin net acct hunter2"), true},
		{"space after prefix", text("! test login net acct hunter2"), true},
		{"second line", text("hello\n!test login net acct hunter2"), true},
		{"split over lines", text("!test\nlogin net acct hunter2"), true},
		{"one word per line after blank lines", text("hi\n!test\n\n\nlogin\nnet\n\nacct\nhunter2"), true},
		{"split over paragraphs", map[string]any{
			"msgtype": "m.text", "body": "see below", "format": "org.matrix.custom.html",
			"formatted_body": "<p>!test</p><p>login net acct hunter2</p>",
		}, true},
		{"markdown code", text("`!test login net acct hunter2`"), true},
		{"quoted", text("> !test login net acct hunter2"), true},
		{"reply fallback", map[string]any{
			"msgtype": "m.text", "body": "> <@bob:example.org> hello there\n\n!test login net acct hunter2",
			"format":         "org.matrix.custom.html",
			"formatted_body": "<mx-reply><blockquote>hello there</blockquote></mx-reply>!test login net acct hunter2",
			"m.relates_to":   replyTo,
		}, true},
		{"formatted body only", map[string]any{
			"msgtype": "m.text", "body": "see below", "format": "org.matrix.custom.html",
			"formatted_body": "<p>!test login net acct hunter2</p>",
		}, true},
		{"formatted code", map[string]any{
			"msgtype": "m.text", "body": "see below", "format": "org.matrix.custom.html",
			"formatted_body": "<code>!test login net acct hunter2</code>",
		}, true},
		{"formatted without format", map[string]any{
			"msgtype": "m.text", "body": "see below", "formatted_body": "<b>!test</b> login net acct hunter2",
		}, true},
		{"formatted with entities and bold", map[string]any{
			"msgtype": "m.text", "body": "see below", "format": "org.matrix.custom.html",
			"formatted_body": "<p>&nbsp;<b>!test</b> <em>login</em> net acct hunter2</p>",
		}, true},
		{"edit", edit("* !test login net acct hunter2", text("!test login net acct hunter2")), true},
		{"edit with innocent outer body", edit("* fixed a typo", text("!test login net acct hunter2")), true},
		{"edit with formatted new content", edit("* fixed", map[string]any{
			"msgtype": "m.text", "body": "fixed", "format": "org.matrix.custom.html",
			"formatted_body": "<p>!test login net acct hunter2</p>",
		}), true},
		{"notice", map[string]any{"msgtype": "m.notice", "body": "!test login net acct hunter2"}, true},
		{"emote", map[string]any{"msgtype": "m.emote", "body": "!test login net acct hunter2"}, true},
		{"image caption", map[string]any{
			"msgtype": "m.image", "body": "!test login net acct hunter2", "filename": "cat.png", "url": "mxc://example.org/cat",
		}, true},
		{"unknown msgtype", map[string]any{"msgtype": "org.example.custom", "body": "!test login net acct hunter2"}, true},

		{"ordinary text", text("hello, world"), false},
		{"other command", text("!test configure libera"), false},
		{"core command", text("!help"), false},
		{"command word later in a line", text("I typed !test login yesterday"), false},
		{"innocent edit", edit("* hello", text("hello")), false},
		{"innocent reply", map[string]any{
			"msgtype": "m.text", "body": "> <@bob:example.org> !test login net acct hunter2\n\nplease don't",
			"m.relates_to": replyTo,
		}, true}, // the fallback quotes a secret: still a secret, wherever it stands
		{"empty", text(""), false},
		{"white space only", text(" \u00a0\u200b\n"), false},
	}
	sd := secretTestDetector(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := sd.CarriesSecret(secretTestEvent(t, tt.content)); got != tt.want {
				t.Errorf("CarriesSecret(%v) = %v, want %v", tt.content, got, tt.want)
			}
		})
	}

	t.Run("not a message", func(t *testing.T) {
		evt := secretTestEvent(t, text("!test login net acct hunter2"))
		evt.Type = event.StateTopic
		if sd.CarriesSecret(evt) || sd.CarriesSecret(nil) {
			t.Error("CarriesSecret = true for an event that is not a message")
		}
	})
	t.Run("unparsed content", func(t *testing.T) {
		evt := secretTestEvent(t, text("!test login net acct hunter2"))
		evt.Content.Parsed = nil
		if !sd.CarriesSecret(evt) {
			t.Error("CarriesSecret = false for a message whose content was not parsed yet")
		}
	})
}

func TestNormalizeCommandText(t *testing.T) {
	tests := []struct {
		in       string
		formatAs rune
		want     string
	}{
		{"  !irc login  ", ' ', "!irc login"},
		{"\u00a0\u2003!irc\u00a0login\u3000", ' ', "!irc login"},
		{"\u200b!irc\u200blogin", ' ', "!irc login"},
		{"\u200b!irc\u200blogin", -1, "!irclogin"},
		{"lo\u200dgin", -1, "login"},
		{"* !irc login", ' ', "!irc login"},
		{"> `!irc login`", ' ', "!irc login"},
		{"_~|!IRC LOGIN|~_", ' ', "!IRC LOGIN"},
		{"", ' ', ""},
	}
	for _, tt := range tests {
		if got := normalizeCommandText(tt.in, tt.formatAs); got != tt.want {
			t.Errorf("normalizeCommandText(%q, %q) = %q, want %q", tt.in, tt.formatAs, got, tt.want)
		}
	}
}

// FuzzCommandCandidates checks the normaliser's promises on any input: it never panics, its
// candidates are normalised (normalising again changes nothing) and valid UTF-8 where the input
// was, and a sensitive command behind any mix of white space, invisible characters, quote marks
// and a reply fallback is always found.
func FuzzCommandCandidates(f *testing.F) {
	for _, seed := range [][2]string{
		{"", "net acct hunter2"},
		{" ", "x"},
		{"\u00a0\u200b", "pw"},
		{"> <@bob:example.org> hi\n\n", "net acct pw"},
		{"* ", "net acct pw"},
		{"\ufeff`", "a b c"},
		{"hello\n", "x y z"},
		{"\xff", "\xfe"},
	} {
		f.Add(seed[0], seed[1])
	}
	sd := secretTestDetector(f)
	f.Fuzz(func(t *testing.T, junk, args string) {
		for _, c := range commandCandidates(&event.MessageEventContent{Body: junk + args, FormattedBody: args}) {
			if again := normalizeCommandText(c, ' '); again != c {
				t.Errorf("candidate %q normalises again to %q", c, again)
			}
			if utf8.ValidString(junk+args) && !utf8.ValidString(c) {
				t.Errorf("candidate %q of valid input is not valid UTF-8", c)
			}
		}
		// junk made of separators only: the command after it must be found.
		padding := strings.Map(func(r rune) rune {
			switch r % 6 {
			case 0:
				return ' '
			case 1:
				return '\u00a0'
			case 2:
				return '\u200b'
			case 3:
				return '\n'
			case 4:
				return '>'
			}
			return '\t'
		}, junk)
		cmd := "!test login " + strings.ReplaceAll(args, "\n", " ")
		for _, body := range []string{padding + cmd, "> <@bob:example.org> " + junk + "\n\n" + padding + cmd} {
			evt := &event.Event{Type: event.EventMessage, ID: id.EventID("$fuzz"), Content: event.Content{
				Parsed: &event.MessageEventContent{MsgType: event.MsgText, Body: body},
			}}
			if !sd.CarriesSecret(evt) {
				t.Errorf("CarriesSecret(%q) = false", body)
			}
		}
	})
}

func TestBotWithholdsSecretsItDoesNotRun(t *testing.T) {
	edit := func(env *botEnv, room id.RoomID, body string) *event.Event {
		return env.event(room, event.EventMessage, botTestAlice, nil, map[string]any{
			"msgtype": "m.text", "body": "* " + body,
			"m.new_content": map[string]any{"msgtype": "m.text", "body": body},
			"m.relates_to":  map[string]any{"rel_type": "m.replace", "event_id": "$original"},
		})
	}
	tests := []struct {
		name      string
		direct    bool
		evt       func(env *botEnv) *event.Event
		wantRun   []string
		wantReply string
	}{
		{
			name: "edit in a direct chat", direct: true,
			evt:       func(env *botEnv) *event.Event { return edit(env, botTestRoom, "test login hunter2") },
			wantReply: "send the command again as a new message",
		},
		{
			name: "edit in a group room",
			evt:  func(env *botEnv) *event.Event { return edit(env, botTestRoom, "!test login hunter2") },
			// The edit of a typo does not run either.
			wantReply: "send the command again as a new message",
		},
		{
			name: "notice", direct: true,
			evt: func(env *botEnv) *event.Event {
				return env.event(botTestRoom, event.EventMessage, botTestAlice, nil, map[string]any{"msgtype": "m.notice", "body": "test login hunter2"})
			},
			wantReply: "I removed your message",
		},
		{
			name: "second line under another command", direct: true,
			evt: func(env *botEnv) *event.Event {
				return env.text(botTestRoom, botTestAlice, "help\n!test login hunter2")
			},
			wantReply: "I removed your message",
		},
		{
			name: "leading white space in a group room",
			evt: func(env *botEnv) *event.Event {
				return env.text(botTestRoom, botTestAlice, "\u00a0 !test login hunter2")
			},
			wantRun: []string{"test login hunter2"},
		},
		{
			name: "reply in a direct chat", direct: true,
			evt: func(env *botEnv) *event.Event {
				return env.event(botTestRoom, event.EventMessage, botTestAlice, nil, map[string]any{
					"msgtype": "m.text", "body": "> <@custodian:example.org> Done\n\ntest login hunter2",
					"m.relates_to": map[string]any{"m.in_reply_to": map[string]any{"event_id": "$done"}},
				})
			},
			wantRun: []string{"test login hunter2"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := newBotEnv(t, nil)
			members := []id.UserID{botTestAlice}
			if !tt.direct {
				members = append(members, botTestBob)
			}
			env.setUpRoom(tt.direct, members...)
			env.hs.Reset()
			evt := tt.evt(env)
			env.mustDeliver(evt)
			events := env.hs.Events(botTestRoom)
			if len(events) == 0 || events[0].Type != event.EventRedaction || events[0].Redacts != evt.ID {
				t.Fatalf("bot's events = %+v, want a redaction of the message first", events)
			}
			if !slices.Equal(env.bridge.ran, tt.wantRun) {
				t.Errorf("commands run = %q, want %q", env.bridge.ran, tt.wantRun)
			}
			if tt.wantReply != "" {
				if body := env.onlyReply(evt); !strings.Contains(body, tt.wantReply) {
					t.Errorf("reply = %q, want one saying %q", body, tt.wantReply)
				}
			}
			// Handled again (a replay after a crash), nothing new is sent.
			before := len(env.hs.Events(botTestRoom))
			env.mustDeliver(evt)
			if after := len(env.hs.Events(botTestRoom)); after != before {
				t.Errorf("a replay sent %d more events, want none", after-before)
			}
		})
	}
}

// secretRecordingBridge is botTestBridge recording the message events the dispatcher hands it.
type secretRecordingBridge struct {
	*botTestBridge
	lock     sync.Mutex
	messages []id.EventID
}

func (br *secretRecordingBridge) HandleEvent(_ context.Context, evt *event.Event, _ Route) error {
	if evt.Type == event.EventMessage {
		br.lock.Lock()
		br.messages = append(br.messages, evt.ID)
		br.lock.Unlock()
	}
	return nil
}

// TestDispatcherWithholdsSecretsFromBridges: the dispatcher hands a bridge that owns the room
// none of the shapes of a message carrying a secret, only the ordinary message.
func TestDispatcherWithholdsSecretsFromBridges(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newBotEnvOn(t, dialect, nil)
			env.setUpRoom(false, botTestAlice, botTestBob)
			rec := &secretRecordingBridge{botTestBridge: env.bridge}
			bh := env.svc.bridgeByID["test"]
			bh.br = rec
			if err := bh.ClaimRoom(env.ctx, botTestRoom, Provenance{Actor: botTestAlice, EventID: "$claim"}); err != nil {
				t.Fatal(err)
			}
			deliver := func(content map[string]any) id.EventID {
				env.seq++
				evtID := id.EventID(fmt.Sprintf("$dispatch%d", env.seq))
				data, err := json.Marshal(map[string]any{
					"type": "m.room.message", "event_id": evtID, "room_id": botTestRoom, "sender": botTestBob,
					"origin_server_ts": 1700000000000 + env.seq, "content": content,
				})
				if err != nil {
					t.Fatal(err)
				}
				env.svc.handleInboxEvent(env.ctx, &database.InboxEvent{TxnID: "t", EventID: evtID, RoomID: botTestRoom, Sender: botTestBob, JSON: data})
				return evtID
			}
			login := "!test login hunter2"
			ordinary := deliver(map[string]any{"msgtype": "m.text", "body": "just talking"})
			for _, content := range []map[string]any{
				{"msgtype": "m.text", "body": login},
				{"msgtype": "m.text", "body": "  \u00a0" + login},
				{"msgtype": "m.text", "body": "> <@alice:example.org> hi\n\n" + login,
					"m.relates_to": map[string]any{"m.in_reply_to": map[string]any{"event_id": ordinary}}},
				{"msgtype": "m.text", "body": "* " + login, "m.new_content": map[string]any{"msgtype": "m.text", "body": login},
					"m.relates_to": map[string]any{"rel_type": "m.replace", "event_id": ordinary}},
				{"msgtype": "m.text", "body": "look", "format": "org.matrix.custom.html", "formatted_body": "<p>" + login + "</p>"},
				{"msgtype": "m.notice", "body": login},
			} {
				deliver(content)
			}
			rec.lock.Lock()
			defer rec.lock.Unlock()
			if !slices.Equal(rec.messages, []id.EventID{ordinary}) {
				t.Errorf("the bridge received %v, want only the ordinary message %s", rec.messages, ordinary)
			}
		})
	}
}

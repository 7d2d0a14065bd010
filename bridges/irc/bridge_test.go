package irc

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice"
	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/bridges/irc/ircconv"
	"github.com/custodian-matrix/custodian/bridges/irc/ircdb"
	"github.com/custodian-matrix/custodian/bridges/irc/irctest"
)

// relayedLines waits for n lines of command to the test channel from nick on a raw client and
// returns them in the order they arrived.
func relayedLines(t *testing.T, c *irctest.Client, nick, command string, n int) []irctest.Line {
	t.Helper()
	out := make([]irctest.Line, 0, n)
	for range n {
		out = append(out, c.MustWaitFor(t, irctest.Match(nick, command, testChannel)))
	}
	return out
}

func TestMatrixToIRC(t *testing.T) {
	long := strings.Repeat("The quick brown fox jumps over the lazy dog. ", 40) // 1,800 bytes
	tests := []struct {
		name    string
		content *event.MessageEventContent
		command string
		want    []string // the lines' texts, as IRC users receive them
	}{
		{
			name:    "text",
			content: &event.MessageEventContent{MsgType: event.MsgText, Body: "hello from matrix"},
			command: "PRIVMSG", want: []string{"hello from matrix"},
		},
		{
			name:    "emote",
			content: &event.MessageEventContent{MsgType: event.MsgEmote, Body: "waves"},
			command: "PRIVMSG", want: []string{"\x01ACTION waves\x01"},
		},
		{
			name:    "notice",
			content: &event.MessageEventContent{MsgType: event.MsgNotice, Body: "for your information"},
			command: "NOTICE", want: []string{"for your information"},
		},
		{
			name:    "multi-line",
			content: &event.MessageEventContent{MsgType: event.MsgText, Body: "one\ntwo\n\nthree"},
			command: "PRIVMSG", want: []string{"one", "two", "three"},
		},
		{
			name: "formatted",
			content: &event.MessageEventContent{MsgType: event.MsgText, Body: "bold move",
				Format: event.FormatHTML, FormattedBody: "<b>bold</b> move"},
			command: "PRIVMSG", want: []string{"\x02bold\x02 move"},
		},
		{
			name:    "long",
			content: &event.MessageEventContent{MsgType: event.MsgText, Body: strings.TrimSpace(long)},
			command: "PRIVMSG", want: nil, // checked below: several lines that join to the text
		},
	}
	// Splitting is tested here; long messages are shortened otherwise (TestLongMessage…).
	ec := envConfig{configure: func(cfg *Config) { cfg.Messages.LongLines, cfg.Messages.LongBytes = 100, 100000 }}
	forEachDialect(t, ec, func(t *testing.T, env *testEnv) {
		watcher := env.ircUser("watcher")
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				seq := env.srv.Seq()
				env.handle(env.event(testPortalRoom, testAlice, tt.content))
				if tt.want != nil {
					lines := relayedLines(t, watcher, "alice[m]", tt.command, len(tt.want))
					for i, l := range lines {
						if got := l.Param(1); got != tt.want[i] {
							t.Errorf("line %d = %q, want %q", i, got, tt.want[i])
						}
					}
				} else {
					// The bridge's own budget: every line fits 512 bytes as the server relays it,
					// and the lines join to the message.
					var joined strings.Builder
					for joined.Len() < len(tt.content.Body) {
						l := watcher.MustWaitFor(t, irctest.Match("alice[m]", tt.command, testChannel))
						joined.WriteString(l.Param(1))
					}
					if got := joined.String(); got != tt.content.Body {
						t.Errorf("long message arrived as %q, want %q", got, tt.content.Body)
					}
					sent := env.srv.Lines(irctest.After(seq, irctest.Match("alice[m]", tt.command, testChannel)))
					if len(sent) < 4 {
						t.Errorf("long message sent in %d lines, want at least 4", len(sent))
					}
					for _, l := range sent {
						if len(l.Raw)+2 > ircconv.MaxLine || l.TooLong {
							t.Errorf("line of %d bytes sent", len(l.Raw)+2)
						}
					}
				}
				if n := env.srv.Truncations(); n != 0 {
					t.Errorf("the server truncated %d relayed lines", n)
				}
			})
		}
		if got := env.srv.Nicks(); strings.Join(got, ",") != "alice[m],custodian,watcher" {
			t.Errorf("Nicks() = %v, want one puppet for alice", got)
		}
		// A second user gets a second puppet; the first is reused.
		env.say(testBob, "bob here")
		watcher.MustWaitFor(t, irctest.Match("bob[m]", "PRIVMSG", testChannel, "bob here"))
		env.say(testAlice, "alice again")
		watcher.MustWaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "alice again"))
		if got, want := strings.Join(env.srv.Nicks(), ","), "alice[m],bob[m],custodian,watcher"; got != want {
			t.Errorf("Nicks() = %s, want %s", got, want)
		}
		if got := env.srv.ConnCount(); got != 4 {
			t.Errorf("ConnCount() = %d, want 4 (bot, two puppets, watcher)", got)
		}
		for _, l := range env.srv.Lines(irctest.Match("alice[m]", "USER")) {
			if l.Param(0) != identHash(env.br.identKey, testAlice) || l.Param(3) != string(testAlice) {
				t.Errorf("alice's puppet registered with %q, want her ident hash and her user ID", l.Raw)
			}
		}
		// Message text never reaches the logs.
		if logs := env.logs.String(); strings.Contains(logs, "hello from matrix") || strings.Contains(logs, "quick brown fox") {
			t.Error("the logs hold a message body")
		}
	})
}

func TestIRCToMatrix(t *testing.T) {
	at := time.Date(2025, 3, 1, 12, 34, 56, 789e6, time.UTC)
	tests := []struct {
		name, line  string
		wantType    event.MessageType
		wantBody    string
		wantHTML    string
		wantRelayed bool
	}{
		{name: "privmsg", line: "PRIVMSG #test :hello from irc", wantType: event.MsgText, wantBody: "hello from irc", wantRelayed: true},
		{name: "action", line: "PRIVMSG #test :\x01ACTION dances\x01", wantType: event.MsgEmote, wantBody: "dances", wantRelayed: true},
		{name: "notice", line: "NOTICE #test :server going down", wantType: event.MsgNotice, wantBody: "server going down", wantRelayed: true},
		{name: "formatting", line: "PRIVMSG #test :\x02loud\x02 words", wantType: event.MsgText, wantBody: "loud words",
			wantHTML: "<b>loud</b> words", wantRelayed: true},
		{name: "ctcp version", line: "PRIVMSG #test :\x01VERSION\x01"},
	}
	forEachDialect(t, envConfig{srvOpts: []irctest.Option{irctest.WithClock(func() time.Time { return at })}}, func(t *testing.T, env *testEnv) {
		ghost := ghostID(t, "carol")
		// Synapse gives a new user its localpart as display name; mautrix's SetDisplayName
		// reads the current one first and gives up on a 404.
		env.host.HS.SetProfileField(ghost, "displayname", ghost.Localpart())
		carol := env.ircUser("Carol")
		// The ghost joins the portal when Carol joins the channel.
		env.waitEvent(testPortalRoom, "the ghost's join", func(evt *astest.SentEvent) bool {
			return evt.Type == event.StateMember && evt.StateKey != nil && *evt.StateKey == ghost.String()
		})
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				before := len(env.host.HS.Messages(testPortalRoom))
				if err := carol.Send(tt.line); err != nil {
					t.Fatal(err)
				}
				if !tt.wantRelayed {
					// Bridged in order: a later message shows the earlier one was dropped.
					if err := carol.Privmsg(testChannel, "after "+tt.name); err != nil {
						t.Fatal(err)
					}
					env.waitMessage(testPortalRoom, ghost, "after "+tt.name)
					if got := len(env.host.HS.Messages(testPortalRoom)); got != before+1 {
						t.Errorf("%d messages bridged, want only the one after", got-before)
					}
					return
				}
				evt, content := env.waitMessage(testPortalRoom, ghost, tt.wantBody)
				if content.MsgType != tt.wantType || content.Body != tt.wantBody {
					t.Errorf("bridged as %s %q, want %s %q", content.MsgType, content.Body, tt.wantType, tt.wantBody)
				}
				if tt.wantHTML != "" && (content.Format != event.FormatHTML || content.FormattedBody != tt.wantHTML) {
					t.Errorf("formatted body = %q (%s), want %q", content.FormattedBody, content.Format, tt.wantHTML)
				}
				if ts := sendTS(env, evt); ts != at.UnixMilli() {
					t.Errorf("sent with ts %d, want the server time %d", ts, at.UnixMilli())
				}
				// Recorded after the send returns.
				env.eventually("the message ID map of "+evt.EventID.String(), func() bool {
					rows, err := env.br.db.Message.Get(env.ctx, evt.EventID)
					return err == nil && len(rows) == 1 && strings.HasPrefix(rows[0].MsgID, "irctest-") && rows[0].Sender == ""
				})
			})
		}
		// Display name of the ghost is the nick as written.
		if name := env.host.HS.Profile(ghost)["displayname"]; name != "Carol" {
			t.Errorf("ghost display name = %v, want Carol", name)
		}
	})
}

// sendTS returns the ts query parameter of the send that made evt, or 0.
func sendTS(env *testEnv, evt *astest.SentEvent) int64 {
	for _, req := range env.host.HS.RequestsTo(astest.PatternSend) {
		if req.PathValues["txnID"] == evt.TxnID && req.UserID == evt.Sender {
			var ts int64
			for _, c := range req.Query.Get("ts") {
				ts = ts*10 + int64(c-'0')
			}
			return ts
		}
	}
	return 0
}

func TestPuppetMessagesNotEchoed(t *testing.T) {
	tests := []struct {
		name string
		caps []string
	}{
		{name: "default caps", caps: irctest.DefaultCaps()},
		{name: "echo-message", caps: append(irctest.DefaultCaps(), "echo-message")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			forEachDialect(t, envConfig{srvOpts: []irctest.Option{irctest.WithCaps(tt.caps...)}}, func(t *testing.T, env *testEnv) {
				carol := env.ircUser("carol")
				env.say(testAlice, "from matrix, once")
				carol.MustWaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "from matrix, once"))
				// The bridge handles what its connections see in order: once carol's later
				// message is in the room, alice's would have been too, if it were echoed.
				if err := carol.Privmsg(testChannel, "marker"); err != nil {
					t.Fatal(err)
				}
				env.waitMessage(testPortalRoom, ghostID(t, "carol"), "marker")
				if echoed := env.messagesWith(testPortalRoom, "from matrix, once"); len(echoed) != 0 {
					t.Errorf("alice's own message came back to Matrix from %s", echoed[0].Sender)
				}
			})
		})
	}
}

func TestNickCollision(t *testing.T) {
	forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
		squatter := env.ircUser("alice[m]")
		env.say(testAlice, "who am i")
		l := squatter.MustWaitFor(t, irctest.Match("", "PRIVMSG", testChannel, "who am i"))
		if l.Nick != "alice[m]_" {
			t.Errorf("alice's puppet spoke as %q, want the fallback alice[m]_", l.Nick)
		}
		if err := squatter.Privmsg(testChannel, "marker"); err != nil {
			t.Fatal(err)
		}
		env.waitMessage(testPortalRoom, ghostID(t, "alice[m]"), "marker")
		if echoed := env.messagesWith(testPortalRoom, "who am i"); len(echoed) != 0 {
			t.Errorf("the renamed puppet's message came back from %s", echoed[0].Sender)
		}
	})
}

func TestGhostMembershipAndTopic(t *testing.T) {
	forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
		dave := env.ircUser("dave")
		ghost := ghostID(t, "dave")
		env.waitEvent(testPortalRoom, "dave's ghost joining", func(evt *astest.SentEvent) bool {
			return evt.Type == event.StateMember && evt.Sender == ghost
		})
		if err := dave.Send("TOPIC #test :a fresh topic"); err != nil {
			t.Fatal(err)
		}
		env.waitEvent(testPortalRoom, "the topic", func(evt *astest.SentEvent) bool {
			var c event.TopicEventContent
			return evt.Type == event.StateTopic && evt.Decode(&c) == nil && c.Topic == "a fresh topic"
		})
		if err := dave.Send("PART #test :bye"); err != nil {
			t.Fatal(err)
		}
		env.waitEvent(testPortalRoom, "dave's ghost leaving", func(evt *astest.SentEvent) bool {
			var c event.MemberEventContent
			return evt.Type == event.StateMember && evt.Sender == ghost && evt.Decode(&c) == nil && c.Membership == event.MembershipLeave
		})
	})
}

func TestPrivateChat(t *testing.T) {
	forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
		carol := env.srv.Client(t, "carol") // not in the channel
		env.say(testAlice, "i am here")     // connects alice's puppet
		env.waitMembers(testChannel, "alice[m]")
		if err := carol.Privmsg("alice[m]", "psst, alice"); err != nil {
			t.Fatal(err)
		}
		ghost := ghostID(t, "carol")
		var room id.RoomID
		env.waitEvent("", "the private message", func(evt *astest.SentEvent) bool {
			var c event.MessageEventContent
			if evt.Type == event.EventMessage && evt.Sender == ghost && evt.Decode(&c) == nil && c.Body == "psst, alice" {
				room = evt.RoomID
				return true
			}
			return false
		})
		if room == testPortalRoom {
			t.Fatal("the private message went to the portal")
		}
		created := env.host.CreatedRooms()
		if len(created) != 1 || created[0].RoomID != room || created[0].Creator != ghost || !created[0].IsDirect ||
			len(created[0].Invite) != 1 || created[0].Invite[0] != testAlice {
			t.Fatalf("created rooms = %+v, want one direct chat by %s inviting alice", created, ghost)
		}
		if !env.host.Claimed(t, room) {
			t.Error("the private chat is not claimed by the bridge")
		}
		// A second message goes to the same room.
		if err := carol.Privmsg("alice[m]", "second"); err != nil {
			t.Fatal(err)
		}
		if evt, _ := env.waitMessage("", ghost, "second"); evt.RoomID != room {
			t.Errorf("second private message went to %s, want %s", evt.RoomID, room)
		}
		// Alice answers in the private chat: her puppet messages carol.
		env.host.SetMembership(t, room, testAlice, event.MembershipJoin)
		env.handle(env.message(room, testAlice, event.MsgText, "hi carol"))
		l := carol.MustWaitFor(t, irctest.Match("alice[m]", "PRIVMSG", "carol", "hi carol"))
		if l.Param(1) != "hi carol" {
			t.Errorf("carol got %q", l.Raw)
		}
		// Someone else's message in the private chat does not go to IRC.
		env.handle(env.message(room, testBob, event.MsgText, "bob butts in"))
		env.say(testAlice, "marker")
		env.srv.WaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "marker"))
		if got := env.srv.Lines(irctest.Match("", "PRIVMSG", "carol", "bob butts in")); len(got) != 0 {
			t.Errorf("bob's message in alice's private chat went to IRC: %q", got[0].Raw)
		}
		// Erasing alice (the core's real erasure, which calls EraseRemote) closes the private
		// chat: the ghost leaves and the room is released.
		env.host.EraseUser(t, testAlice)
		if got := env.host.HS.Membership(room, ghost); got != event.MembershipLeave {
			t.Errorf("ghost's membership in the private chat after erasure = %q, want leave", got)
		}
		if env.host.Claimed(t, room) {
			t.Error("the private chat is still claimed after erasure")
		}
	})
}

func TestLogin(t *testing.T) {
	const password = "hunter2-is-secret"
	tests := []struct {
		name          string
		args          []string
		vaultDisabled bool
		wantUserError string // part of the reply; "" for success
	}{
		{name: "wrong password", args: []string{testNet, "alice", "not-the-password"}, wantUserError: "refused"},
		{name: "unknown account", args: []string{testNet, "nobody", password}, wantUserError: "refused"},
		{name: "unknown network", args: []string{"othernet", "alice", password}, wantUserError: "no network"},
		{name: "usage", args: []string{testNet, "alice"}, wantUserError: "Usage"},
		{name: "no vault", args: []string{testNet, "alice", password}, vaultDisabled: true, wantUserError: "vault"},
		{name: "ok", args: []string{testNet, "alice", password}},
	}
	forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
		env.srv.AddAccount("alice", password)
		// Alice's puppet is connected, not logged in; a successful login reconnects it.
		env.say(testAlice, "before logging in")
		env.waitMembers(testChannel, "alice[m]")
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				env.host.Secrets.SetDisabled(tt.vaultDisabled)
				defer env.host.Secrets.SetDisabled(false)
				res := env.runCommand(testAlice, "login", tt.args...)
				if res.err != nil {
					t.Fatalf("login failed: %v", res.err)
				}
				acct, err := env.br.db.Account.Get(env.ctx, testAlice, testNet)
				if err != nil {
					t.Fatal(err)
				}
				if tt.wantUserError != "" {
					if !strings.Contains(res.userError, tt.wantUserError) || res.replied {
						t.Errorf("login replied %q (replied=%v), want a user error containing %q", res.userError, res.replied, tt.wantUserError)
					}
					if acct != nil {
						t.Error("a failed login stored an account")
					}
					if seals, _ := env.host.Secrets.Counts(); seals != 0 {
						t.Errorf("a failed login sealed %d secrets", seals)
					}
					if got := env.srv.Account("alice[m]"); got != "" {
						t.Errorf("alice's puppet is logged in as %q after a failed login", got)
					}
					return
				}
				if res.userError != "" || !res.replied {
					t.Fatalf("login replied %q (replied=%v), want success", res.userError, res.replied)
				}
				if acct == nil || acct.Account != "alice" {
					t.Fatalf("stored account = %+v, want alice", acct)
				}
				if bytes.Contains(acct.Password, []byte(password)) || bytes.Contains(acct.Password, []byte("hunter2")) {
					t.Error("the sealed password row holds the plaintext")
				}
				opened, err := env.host.Vault().Open(env.ctx, testAlice, secretName(testNet), acct.Password)
				if err != nil || opened.Reveal() != password {
					t.Errorf("the sealed password does not open to the password: %v", err)
				}
				// The puppet reconnects logged in, and rejoins.
				env.srv.WaitUntil(t, "alice's puppet is logged in", func() bool { return env.srv.Account("alice[m]") == "alice" })
				env.waitMembers(testChannel, "alice[m]")
				if logs := env.logs.String(); strings.Contains(logs, password) {
					t.Error("the logs hold the password")
				}
			})
		}
		// The check connections quit again.
		env.srv.WaitUntil(t, "the check connections are gone", func() bool {
			for _, nick := range env.srv.Nicks() {
				if strings.HasSuffix(nick, "-chk") {
					return false
				}
			}
			return true
		})
	})
}

func TestEraseRemote(t *testing.T) {
	tests := []struct {
		name  string
		actor id.UserID
	}{
		{name: "portal made through its alias", actor: ""},
		// The portal outlives its creator: others may still use the room, and only an explicit
		// unlink removes a portal.
		{name: "portal linked by the user", actor: testAlice},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			forEachDialect(t, envConfig{portalActor: tt.actor}, func(t *testing.T, env *testEnv) {
				env.say(testAlice, "soon forgotten")
				env.say(testBob, "staying")
				env.waitMembers(testChannel, "alice[m]", "bob[m]")
				seq := env.srv.Seq()
				// The core's real erasure: EraseRemote, then the transaction.
				receipt := env.host.EraseUser(t, testAlice)
				if len(receipt.RemoteFailures) != 0 {
					t.Errorf("remote erasure failed: %v", receipt.RemoteFailures)
				}
				for _, ut := range env.br.PersonalData() {
					var n int
					query := fmt.Sprintf(`SELECT COUNT(*) FROM %s WHERE %s=$1`, ut.Table, ut.UserColumn)
					if err := env.host.RawDB.QueryRow(env.ctx, query, testAlice).Scan(&n); err != nil || n != 0 {
						t.Errorf("%s: %d rows naming alice after erasure (%v)", ut.Table, n, err)
					}
				}
				env.srv.WaitFor(t, irctest.After(seq, irctest.Match("alice[m]", "QUIT")))
				env.srv.WaitUntil(t, "alice's puppet is gone", func() bool { return !containsFold(env.srv.Nicks(), "alice[m]") })
				if env.puppet(testAlice) != nil {
					t.Error("the bridge still has alice's puppet")
				}
				if got := env.srv.Lines(irctest.After(seq, irctest.Match("bob[m]", "QUIT"))); len(got) != 0 {
					t.Error("bob's puppet quit too")
				}
				if err := env.br.EraseRemote(env.ctx, testAlice); err != nil {
					t.Errorf("EraseRemote again = %v, want nil (idempotent)", err)
				}
				env.host.EraseUser(t, testAlice)
				parted := irctest.After(seq, irctest.Match(testBotNick, "PART", testChannel))
				if _, err := env.srv.Find(parted, 300*time.Millisecond); err == nil {
					t.Errorf("the bridge parted %s at the erasure of one of its users", testChannel)
				}
				p, err := env.br.db.Portal.GetByRoom(env.ctx, testPortalRoom)
				if err != nil || p == nil {
					t.Fatalf("portal after the erasure = %v, %v; want it kept", p, err)
				}
				if p.Actor != "" || p.SourceEventID != "" {
					t.Errorf("portal after the erasure names actor %q, command %q; want neither", p.Actor, p.SourceEventID)
				}
				if !env.host.Claimed(t, testPortalRoom) {
					t.Error("the room is no longer claimed")
				}
				assertNoRowNames(t, env, testAlice)
				// The portal still relays both ways for those who stay.
				env.say(testBob, "still bridged")
				env.srv.WaitFor(t, irctest.After(seq, irctest.Match("bob[m]", "PRIVMSG", testChannel, "still bridged")))
			})
		})
	}
}

// assertNoRowNames fails if a row of any of the bridge's tables, or of the core's room claims,
// names userID.
func assertNoRowNames(t *testing.T, env *testEnv, userID id.UserID) {
	t.Helper()
	queries := map[string]string{
		"irc_portal":  `SELECT COUNT(*) FROM irc_portal WHERE actor_mxid=$1`,
		"irc_account": `SELECT COUNT(*) FROM irc_account WHERE user_mxid=$1`,
		"irc_nick":    `SELECT COUNT(*) FROM irc_nick WHERE user_mxid=$1`,
		"irc_pm":      `SELECT COUNT(*) FROM irc_pm WHERE user_mxid=$1`,
		"irc_message": `SELECT COUNT(*) FROM irc_message WHERE user_mxid=$1`,
		"irc_media":   `SELECT COUNT(*) FROM irc_media WHERE user_mxid=$1`,
		"as_room":     `SELECT COUNT(*) FROM as_room WHERE actor_mxid=$1`,
	}
	for table, q := range queries {
		var n int
		if err := env.host.RawDB.QueryRow(env.ctx, q, userID).Scan(&n); err != nil {
			t.Fatalf("%s: %v", table, err)
		}
		if n != 0 {
			t.Errorf("%s: %d rows name the erased user", table, n)
		}
	}
}

func TestPurgeRoom(t *testing.T) {
	forEachDialect(t, envConfig{portalActor: testAlice}, func(t *testing.T, env *testEnv) {
		env.say(testAlice, "before the purge")
		env.srv.WaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "before the purge"))
		seq := env.srv.Seq()
		if err := env.br.PurgeRoom(env.ctx, testPortalRoom); err != nil {
			t.Fatalf("PurgeRoom = %v", err)
		}
		env.srv.WaitFor(t, irctest.After(seq, irctest.Match(testBotNick, "PART", testChannel)))
		env.srv.WaitFor(t, irctest.After(seq, irctest.Match("alice[m]", "PART", testChannel)))
		if p, err := env.br.db.Portal.GetByRoom(env.ctx, testPortalRoom); err != nil || p != nil {
			t.Errorf("portal after PurgeRoom = %+v, %v; want none", p, err)
		}
		if env.host.Claimed(t, testPortalRoom) {
			t.Error("the room is still claimed")
		}
		// Later messages in the room are not relayed.
		env.say(testAlice, "after the purge")
		env.say(testBob, "after the purge too")
		if got := env.srv.Lines(irctest.After(seq, irctest.Match("", "PRIVMSG"))); len(got) != 0 {
			t.Errorf("relayed after the purge: %q", got[0].Raw)
		}
		if err := env.br.PurgeRoom(env.ctx, testPortalRoom); err != nil {
			t.Errorf("PurgeRoom again = %v, want nil", err)
		}
		// The bot stays out of the channel across a reconnect.
		seq = env.srv.Seq()
		env.srv.Restart()
		env.srv.WaitFor(t, irctest.After(seq, irctest.Match(testBotNick, "USER")))
		env.say(testBob, "still not relayed")
		if got := env.srv.Lines(irctest.After(seq, irctest.Match("", "JOIN", testChannel))); len(got) != 0 {
			t.Errorf("rejoined an unlinked channel: %q", got[0].Raw)
		}
	})
}

func TestServerRestart(t *testing.T) {
	forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
		env.say(testAlice, "before the restart")
		env.say(testBob, "me too")
		env.waitMembers(testChannel, testBotNick, "alice[m]", "bob[m]")

		env.srv.Restart()
		env.waitMembers(testChannel, testBotNick, "alice[m]", "bob[m]")
		carol := env.ircUser("carol")
		if err := carol.Privmsg(testChannel, "after the restart"); err != nil {
			t.Fatal(err)
		}
		env.waitMessage(testPortalRoom, ghostID(t, "carol"), "after the restart")

		// While the network is down, a Matrix message is queued (the handler does not hold up
		// the room) and goes out once the connection is back.
		env.srv.Down()
		n := env.br.network(testNet)
		env.eventually("the bridge noticed", func() bool {
			return n.bot.current() == nil && env.puppet(testAlice).sess.current() == nil
		})
		env.handle(env.message(testPortalRoom, testAlice, event.MsgText, "sent while down"))
		if !env.puppet(testAlice).busy() {
			t.Fatal("the message sent while the network was down is not queued")
		}
		env.srv.Up()
		env.srv.WaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "sent while down"))
		env.waitMembers(testChannel, testBotNick, "alice[m]", "bob[m]")
	})
}

func TestHostileServerLines(t *testing.T) {
	hostile := []struct {
		name, data string
	}{
		{"garbage", "\x01\x02\x03 garbage \xff\xfe\r\n"},
		{"nul", ":evil!e@h PRIVMSG #test :nul\x00byte\r\n"},
		{"overlong", ":evil!e@h PRIVMSG #test :" + strings.Repeat("A", 20000) + "\r\n"},
		{"overlong tags", "@" + strings.Repeat("a=b;", 3000) + " :evil!e@h PRIVMSG #test :tags\r\n"},
		{"bare command", "PRIVMSG\r\n"},
		{"no params", ":evil!e@h PRIVMSG\r\n:evil!e@h JOIN\r\n:evil!e@h KICK\r\n:evil!e@h NICK\r\n:evil!e@h TOPIC\r\n:evil!e@h PART\r\n"},
		{"short numerics", ":irctest.test 353\r\n:irctest.test 332\r\n:irctest.test 005\r\n:irctest.test 001\r\n:irctest.test 900\r\n"},
		{"empty source", ": PRIVMSG #test :x\r\n:! JOIN #test\r\n"},
		{"bad tags", "@time=yesterday;msgid :evil!e@h PRIVMSG #test :bad time\r\n"},
		{"unterminated ctcp", ":evil!e@h PRIVMSG #test :\x01ACTION\r\n:evil!e@h PRIVMSG #test :\x01\r\n"},
		{"kick unknown", ":evil!e@h KICK #nowhere someone :x\r\n:evil!e@h KICK #test custodian :you\r\n"},
		{"bad cap", ":irctest.test CAP * ACK\r\n:irctest.test CAP custodian NEW :sasl=" + strings.Repeat("X", 400) + "\r\n"},
		{"lone cr", ":evil!e@h PRIVMSG #test :a\rb\r\n"},
		{"huge names", ":irctest.test 353 custodian = #test :" + strings.Repeat("@x ", 150) + "\r\n"},
	}
	forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
		carol := env.ircUser("carol")
		env.say(testAlice, "hello")
		carol.MustWaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "hello"))
		conns := env.srv.ConnCount()
		for _, tt := range hostile {
			t.Run(tt.name, func(t *testing.T) {
				for _, nick := range []string{testBotNick, "alice[m]"} {
					if err := env.srv.SendRaw(nick, tt.data); err != nil {
						t.Fatal(err)
					}
				}
				// Still bridging both ways, on the same connections.
				if err := carol.Privmsg(testChannel, "after "+tt.name); err != nil {
					t.Fatal(err)
				}
				env.waitMessage(testPortalRoom, ghostID(t, "carol"), "after "+tt.name)
				env.say(testAlice, "answer to "+tt.name)
				carol.MustWaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "answer to "+tt.name))
			})
		}
		if got := env.srv.ConnCount(); got != conns {
			t.Errorf("ConnCount() = %d after the hostile lines, want %d (no reconnects)", got, conns)
		}
		if logs := env.logs.String(); strings.Contains(logs, "panicked") {
			t.Error("a handler panicked on a hostile line")
		}
	})
}

// TestStopWaitsForGoroutines stops the bridge while it is busy bridging and checks that nothing
// it started is still running (logging) once Stop returned.
func TestStopWaitsForGoroutines(t *testing.T) {
	forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
		carol := env.ircUser("carol")
		env.say(testAlice, "hello")
		carol.MustWaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel, "hello"))
		for i := range 50 {
			if err := carol.Privmsg(testChannel, fmt.Sprintf("busy %d", i)); err != nil {
				t.Fatal(err)
			}
		}
		env.waitMessage(testPortalRoom, ghostID(t, "carol"), "busy 0")
		env.stop()
		before, _ := env.logs.count()
		// Anything still running logs within moments (each bridged message logs).
		time.Sleep(300 * time.Millisecond)
		after, all := env.logs.count()
		if after != before {
			lines := strings.Split(strings.TrimSpace(all), "\n")
			t.Errorf("%d lines logged after Stop returned, the first: %s", after-before, lines[len(lines)-(after-before)])
		}
	})
}

// TestReconnectJoinsBeforeSending sends messages into twelve portals while the network is
// down; when it is back, the puppet rejoins the twelve channels under flood control and the
// messages must not overtake their channel's JOIN (the server refuses messages to channels
// the sender is not in).
func TestReconnectJoinsBeforeSending(t *testing.T) {
	const channels = 12
	slow := strings.Replace(testConfigYAML, "per_second: 1000\n            burst: 100", "per_second: 20\n            burst: 2", 1)
	forEachDialect(t, envConfig{yaml: slow, noPortal: true}, func(t *testing.T, env *testEnv) {
		n := env.br.network(testNet)
		carol := env.srv.Client(t, "carol")
		rooms := make([]id.RoomID, channels)
		for i := range rooms {
			rooms[i] = id.RoomID(fmt.Sprintf("!portal%d:example.org", i))
			name := fmt.Sprintf("#c%d", i)
			env.host.SetUpRoom(t, rooms[i], testAlice)
			if _, err := env.br.recordPortal(env.ctx, n, &ircdb.Portal{
				Network: testNet, Channel: name, ChannelName: name, RoomID: rooms[i], CreatedAt: time.Now(),
			}, appservice.Provenance{}); err != nil {
				t.Fatal(err)
			}
			if err := carol.Join(name); err != nil {
				t.Fatal(err)
			}
			env.handle(env.message(rooms[i], testAlice, event.MsgText, "joining "+name))
		}
		for i := range rooms {
			env.waitMembers(fmt.Sprintf("#c%d", i), testBotNick, "alice[m]")
		}
		env.srv.Down()
		env.eventually("the puppet noticed", func() bool { return env.puppet(testAlice).sess.current() == nil })
		errs := make(chan error, channels)
		for i := range rooms {
			// The core handles rooms in parallel.
			go func() {
				ctx, cancel := context.WithTimeout(env.ctx, testWait)
				defer cancel()
				errs <- env.deliver(ctx, env.message(rooms[i], testAlice, event.MsgText, fmt.Sprintf("while down %d", i)))
			}()
		}
		env.srv.Up()
		carol = env.srv.Client(t, "carol")
		for i := range rooms {
			if err := carol.Join(fmt.Sprintf("#c%d", i)); err != nil {
				t.Fatal(err)
			}
		}
		for range rooms {
			if err := <-errs; err != nil {
				t.Errorf("HandleEvent = %v", err)
			}
		}
		// The server has every message; carol has each that it accepted once her PING is answered.
		for i := range rooms {
			env.srv.WaitFor(t, irctest.Match("alice[m]", "PRIVMSG", fmt.Sprintf("#c%d", i), fmt.Sprintf("while down %d", i)))
		}
		if err := carol.Send("PING :sync"); err != nil {
			t.Fatal(err)
		}
		carol.MustWaitFor(t, irctest.Match("", "PONG", irctest.ServerName, "sync"))
		for i := range rooms {
			if got := carol.Lines(irctest.Match("alice[m]", "PRIVMSG", fmt.Sprintf("#c%d", i), fmt.Sprintf("while down %d", i))); len(got) != 1 {
				t.Errorf("the message for #c%d was refused: it reached the server before the puppet rejoined the channel", i)
			}
		}
	})
}

// TestKeepsPortals: the bot stays in a portal that everyone left, so that a user who joins it
// later (through its alias) finds it bridged; private chats and other rooms are not kept.
func TestKeepsPortals(t *testing.T) {
	forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
		pmRoom := id.RoomID("!pm:example.org")
		if err := env.br.recordPM(env.ctx, &ircdb.PM{UserID: testAlice, Network: testNet, Nick: "carol", RoomID: pmRoom, CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
		for roomID, want := range map[id.RoomID]bool{testPortalRoom: true, pmRoom: false, "!other:example.org": false} {
			if got, err := env.br.KeepsRoom(env.ctx, roomID); err != nil || got != want {
				t.Errorf("KeepsRoom(%s) = %v, %v; want %v", roomID, got, err, want)
			}
		}
	})
}

//go:build e2e

package e2e_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ergochat/irc-go/ircmsg"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/bridges/irc/ircid"
	"github.com/custodian-matrix/custodian/e2e"
)

// ircWait bounds every wait for something to cross the bridge.
const ircWait = 30 * time.Second

// ircChannel is the channel the tests bridge. The test network keeps it across restarts
// (permchannels) and replays its recent history to users who join (chanhistory), so a test can
// see what was said while it was away.
const ircChannel = "#persist"

// ircGhost returns the user ID of nick's ghost on the test network.
func ircGhost(t *testing.T, nick string) id.UserID {
	t.Helper()
	localpart, err := ircid.GhostLocalpart(e2e.IRCNetworkID, ircid.RFC1459, nick)
	if err != nil {
		t.Fatal(err)
	}
	return id.NewUserID(localpart, e2e.Domain)
}

// mustJoinPortal joins cli to channel's portal through its alias and returns the room.
func mustJoinPortal(t *testing.T, env *e2e.Env, cli *mautrix.Client, channel string) id.RoomID {
	t.Helper()
	localpart, err := ircid.AliasLocalpart(e2e.IRCNetworkID, ircid.RFC1459, channel)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), replyWait)
	defer cancel()
	resp, err := cli.JoinRoom(ctx, "#"+localpart+":"+e2e.Domain, nil)
	if err != nil {
		t.Fatalf("joining the portal of %s: %v", channel, err)
	}
	return resp.RoomID
}

// startIRCEnv starts a test IRC network and Custodian on backend with the IRC bridge on it and
// opts.
func startIRCEnv(t *testing.T, backend e2e.Backend, opts ...e2e.Option) (*e2e.IRCNet, *e2e.Env) {
	t.Helper()
	ircNet := e2e.StartIRC(t)
	return ircNet, e2e.New(t, backend, append([]e2e.Option{e2e.WithIRCBridge(ircNet)}, opts...)...)
}

// mustJoinPortalWithPeer has the IRC user peer join channel, then cli join the channel's portal,
// and waits until peer's ghost is in the room (it joins from NAMES, as peer was in the channel
// before the portal existed). It returns the portal and the ghost.
func mustJoinPortalWithPeer(t *testing.T, env *e2e.Env, cli *mautrix.Client, peer *e2e.IRCClient, channel string) (id.RoomID, id.UserID) {
	t.Helper()
	peer.Join(t, channel)
	ghost := ircGhost(t, peer.Nick())
	roomID := mustJoinPortal(t, env, cli, channel)
	env.MustSyncUntil(t, cli, ircWait, e2e.IsMember(roomID, ghost, event.MembershipJoin))
	return roomID, ghost
}

// mustRelayBothWays sends toIRC from cli in roomID and waits until peer sees it in channel
// from cli's puppet ("<localpart>[m]"), then sends toMatrix as peer and waits until cli sees it
// from peerGhost.
func mustRelayBothWays(t *testing.T, env *e2e.Env, cli *mautrix.Client, roomID id.RoomID,
	peer *e2e.IRCClient, peerGhost id.UserID, channel, toIRC, toMatrix string) {
	t.Helper()
	env.SendText(t, cli, roomID, toIRC)
	peer.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", cli.UserID.Localpart()+"[m]", channel, toIRC))
	peer.Privmsg(t, channel, toMatrix)
	env.MustSyncUntil(t, cli, ircWait, isMessage(roomID, peerGhost, event.MsgText, toMatrix))
}

// isMessage matches a message of msgType from sender in roomID whose body is body.
func isMessage(roomID id.RoomID, sender id.UserID, msgType event.MessageType, body string) func(*event.Event) bool {
	return func(evt *event.Event) bool {
		if evt.RoomID != roomID || evt.Sender != sender || evt.Type != event.EventMessage {
			return false
		}
		msg := evt.Content.AsMessage()
		return msg.MsgType == msgType && msg.Body == body
	}
}

// sendContent sends a message with the given content as cli.
func sendContent(t *testing.T, cli *mautrix.Client, roomID id.RoomID, content *event.MessageEventContent) id.EventID {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), replyWait)
	defer cancel()
	resp, err := cli.SendMessageEvent(ctx, roomID, event.EventMessage, content)
	if err != nil {
		t.Fatalf("sending a message: %v", err)
	}
	return resp.EventID
}

// ircRows counts the rows of an IRC bridge table that name user.
func ircRows(t *testing.T, env *e2e.Env, table string, user id.UserID) int {
	t.Helper()
	var n int
	column := "user_mxid"
	if table == "irc_portal" {
		column = "actor_mxid"
	}
	q := fmt.Sprintf("SELECT count(*) FROM %s WHERE %s = $1", table, column)
	if env.DBDriver() == "sqlite3" {
		q = strings.Replace(q, "$1", "?", 1)
	}
	if err := env.DB(t).QueryRow(q, user.String()).Scan(&n); err != nil {
		t.Fatalf("counting %s rows: %v", table, err)
	}
	return n
}

// TestIRCBridge runs the IRC bridge against a real InspIRCd + Atheme network: a portal joined by
// alias relays text, emotes, notices, multi-line messages and formatting both ways, and private
// messages open a direct chat with the sender's ghost. Long messages and mentions:
// TestIRCMentionsAndLongMessage.
func TestIRCBridge(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		ircNet, env := startIRCEnv(t, backend)
		alice := env.Register(t, "alice")
		bob := ircNet.Connect(t, "bob")
		// Bob was in the channel before the portal existed: his ghost joins from NAMES.
		roomID, bobGhost := mustJoinPortalWithPeer(t, env, alice, bob, ircChannel)

		// Matrix → IRC: text, a message of two lines, an emote, a notice, formatting.
		env.SendText(t, alice, roomID, "hello irc")
		bob.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "alice[m]", ircChannel, "hello irc"))
		env.SendText(t, alice, roomID, "line one\nline two")
		bob.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "alice[m]", ircChannel, "line one"))
		bob.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "alice[m]", ircChannel, "line two"))
		sendContent(t, alice, roomID, &event.MessageEventContent{MsgType: event.MsgEmote, Body: "waves"})
		bob.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "alice[m]", ircChannel, "\x01ACTION waves\x01"))
		sendContent(t, alice, roomID, &event.MessageEventContent{MsgType: event.MsgNotice, Body: "a notice"})
		bob.WaitFor(t, ircWait, e2e.IsIRCMessage("NOTICE", "alice[m]", ircChannel, "a notice"))
		sendContent(t, alice, roomID, &event.MessageEventContent{
			MsgType: event.MsgText, Body: "bold text", Format: event.FormatHTML, FormattedBody: "<b>bold</b> text",
		})
		bob.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "alice[m]", ircChannel, "\x02bold\x02 text"))
		// IRC → Matrix: text, formatting, an emote, a notice.
		bob.Privmsg(t, ircChannel, "hello matrix")
		env.MustSyncUntil(t, alice, ircWait, isMessage(roomID, bobGhost, event.MsgText, "hello matrix"))
		bob.Privmsg(t, ircChannel, "\x02strong\x02 words")
		formatted := env.MustSyncUntil(t, alice, ircWait, isMessage(roomID, bobGhost, event.MsgText, "strong words"))
		if msg := formatted.Content.AsMessage(); msg.Format != event.FormatHTML || !strings.Contains(msg.FormattedBody, "strong</") {
			t.Errorf("bold from IRC arrived as format %q, formatted_body %q; want HTML with bold", msg.Format, msg.FormattedBody)
		}
		bob.Action(t, ircChannel, "waves back")
		env.MustSyncUntil(t, alice, ircWait, isMessage(roomID, bobGhost, event.MsgEmote, "waves back"))
		bob.Notice(t, ircChannel, "a notice from irc")
		env.MustSyncUntil(t, alice, ircWait, isMessage(roomID, bobGhost, event.MsgNotice, "a notice from irc"))

		// A private message to alice's puppet opens a direct chat with bob's ghost; her answer
		// there goes back to bob privately.
		bob.Privmsg(t, "alice[m]", "psst, alice")
		invite := env.MustSyncUntil(t, alice, ircWait, func(evt *event.Event) bool {
			return evt.Type == event.StateMember && evt.GetStateKey() == alice.UserID.String() &&
				evt.Sender == bobGhost && evt.Content.AsMember().Membership == event.MembershipInvite
		})
		env.MustJoinRoom(t, alice, invite.RoomID)
		env.MustSyncUntil(t, alice, ircWait, isMessage(invite.RoomID, bobGhost, event.MsgText, "psst, alice"))
		env.SendText(t, alice, invite.RoomID, "hi bob, privately")
		bob.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "alice[m]", "bob", "hi bob, privately"))

		// Bob leaving the channel takes his ghost out of the room.
		bob.Part(t, ircChannel)
		env.MustSyncUntil(t, alice, ircWait, e2e.IsMember(roomID, bobGhost, event.MembershipLeave))
	})
}

// TestIRCLinkedAccount: !irc login stores SASL credentials sealed (never in plain text), the
// bot deletes the message that carried them, and the puppet logs in (WHOIS shows the account);
// a wrong password is refused without being echoed; !irc logout and redacting the login
// command both delete the credentials and reconnect the puppet without them.
func TestIRCLinkedAccount(t *testing.T) {
	ircNet := e2e.StartIRC(t)
	env := e2e.New(t, e2e.SQLite, e2e.WithIRCBridge(ircNet))
	alice := env.Register(t, "alice")
	bob := ircNet.Connect(t, "bob")
	password := "pw-" + e2e.RandomHex(t, 12)
	ircNet.RegisterAccount(t, "aliceacct", password)

	dm := env.MustCreateDMWithBot(t, alice)
	wrong := "wrong-" + e2e.RandomHex(t, 12)
	bad := env.SendText(t, alice, dm, "!irc login testnet aliceacct "+wrong)
	reply := mustBotReply(t, env, alice, dm, bad, "could not log in")
	if body := reply.Content.AsMessage().Body; strings.Contains(body, wrong) {
		t.Errorf("the bot's answer to a wrong password echoes it: %q", body)
	}
	if n := ircRows(t, env, "irc_account", alice.UserID); n != 0 {
		t.Errorf("a refused login left %d irc_account rows", n)
	}

	login := env.SendText(t, alice, dm, "!irc login testnet aliceacct "+password)
	mustBotReply(t, env, alice, dm, login, "Logged in")
	env.MustSyncUntil(t, alice, replyWait, func(evt *event.Event) bool {
		return evt.Type == event.EventRedaction && evt.Sender == env.BotUserID() && evt.Redacts == login
	})
	bob.WaitWhois(t, ircWait, "alice[m]", func(w e2e.IRCWhois) bool { return w.Account == "aliceacct" })

	dump := env.DumpDatabase(t)
	if rows := dump.Find(password); len(rows) > 0 {
		t.Errorf("the database holds the SASL password in plain text:\n%s", e2e.Describe(rows))
	}
	if log := env.CustodianLog(t); strings.Contains(log, password) || strings.Contains(log, wrong) {
		t.Errorf("Custodian's log holds a SASL password")
	}
	for _, evt := range env.RoomHistory(t, alice, dm) {
		if raw, _ := evt.Content.MarshalJSON(); strings.Contains(string(raw), password) {
			t.Errorf("the room history still holds the password in %s", evt.ID)
		}
	}

	logout := env.SendText(t, alice, dm, "!irc logout testnet")
	mustBotReply(t, env, alice, dm, logout, "Logged out")
	bob.WaitWhois(t, ircWait, "alice[m]", func(w e2e.IRCWhois) bool { return w.Online && w.Account == "" })
	if n := ircRows(t, env, "irc_account", alice.UserID); n != 0 {
		t.Errorf("after logout irc_account has %d rows for alice", n)
	}

	// Redacting the login command deletes the credentials.
	login = env.SendText(t, alice, dm, "!irc login testnet aliceacct "+password)
	mustBotReply(t, env, alice, dm, login, "Logged in")
	bob.WaitWhois(t, ircWait, "alice[m]", func(w e2e.IRCWhois) bool { return w.Account == "aliceacct" })
	env.MustRedact(t, alice, dm, login)
	e2e.Eventually(t, ircWait, func() error {
		if n := ircRows(t, env, "irc_account", alice.UserID); n != 0 {
			return fmt.Errorf("irc_account has %d rows for alice after the login command was redacted", n)
		}
		return nil
	})
	bob.WaitWhois(t, ircWait, "alice[m]", func(w e2e.IRCWhois) bool { return w.Online && w.Account == "" })
}

// TestIRCRestartAndForget: after the IRC daemons restart, every puppet comes back (logged in
// again) and what was sent from Matrix meanwhile reaches the channel; then !forget makes the
// puppet QUIT and leaves no row naming the user.
func TestIRCRestartAndForget(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		ircNet := e2e.StartIRC(t)
		env := e2e.New(t, backend, e2e.WithIRCBridge(ircNet))
		alice := env.Register(t, "alice")
		carol := env.Register(t, "carol")
		password := "pw-" + e2e.RandomHex(t, 12)
		ircNet.RegisterAccount(t, "aliceacct", password)
		dm := env.MustCreateDMWithBot(t, alice)
		login := env.SendText(t, alice, dm, "!irc login testnet aliceacct "+password)
		mustBotReply(t, env, alice, dm, login, "Logged in")

		roomID := mustJoinPortal(t, env, alice, ircChannel)
		env.MustJoinRoom(t, carol, roomID)
		env.SendText(t, alice, roomID, "before the restart")
		env.SendText(t, carol, roomID, "carol is here")
		watcher := ircNet.Connect(t, "watcher")
		watcher.Join(t, ircChannel)
		watcher.WaitWhois(t, ircWait, "alice[m]", func(w e2e.IRCWhois) bool { return w.Account == "aliceacct" })
		watcher.WaitWhois(t, ircWait, "carol[m]", func(w e2e.IRCWhois) bool { return w.Online })

		ircNet.Stop(t)
		const meanwhile = 5
		for i := range meanwhile {
			env.SendText(t, alice, roomID, fmt.Sprintf("while the network was down %d", i))
		}
		env.SendText(t, carol, roomID, "carol while down")
		ircNet.Start(t)

		watcher = ircNet.Connect(t, "watcher2")
		watcher.Join(t, ircChannel) // the channel's history replays what was said before we joined
		for i := range meanwhile {
			watcher.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "alice[m]", ircChannel, fmt.Sprintf("while the network was down %d", i)))
		}
		watcher.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "carol[m]", ircChannel, "carol while down"))
		watcher.WaitWhois(t, ircWait, "alice[m]", func(w e2e.IRCWhois) bool { return w.Account == "aliceacct" })
		watcher.WaitWhois(t, ircWait, "carol[m]", func(w e2e.IRCWhois) bool { return w.Online })

		// Forget: alice's puppet quits, and nothing of hers is left.
		fg := env.SendText(t, alice, dm, "!forget")
		mustBotReply(t, env, alice, dm, fg, "forget confirm")
		env.SendText(t, alice, dm, "!forget confirm")
		watcher.WaitFor(t, ircWait, func(m *ircmsg.Message) bool {
			return m.Command == "QUIT" && strings.EqualFold(m.Nick(), "alice[m]")
		})
		waitInboxEmpty(t, env)
		time.Sleep(time.Second) // follow-ups of the erasure (leaves) settle
		waitInboxEmpty(t, env)
		dump := env.DumpDatabase(t)
		if rows := dump.Find(alice.UserID.String(), "%40alice%3Alocalhost", "aliceacct"); len(rows) > 0 {
			t.Errorf("after !forget, %d rows still name alice:\n%s", len(rows), e2e.Describe(rows))
		}
		if rows := dump.Find(carol.UserID.String()); len(rows) == 0 {
			t.Errorf("no row names carol after alice's erasure: too much was erased, or the dump is wrong")
		}
		// Carol is still bridged.
		env.SendText(t, carol, roomID, "carol after the erasure")
		watcher.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "carol[m]", ircChannel, "carol after the erasure"))
	})
}

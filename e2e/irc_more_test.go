//go:build e2e

package e2e_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ergochat/irc-go/ircmsg"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/e2e"
)

// isTopic matches the m.room.topic event that sets roomID's topic to topic.
func isTopic(roomID id.RoomID, topic string) func(*event.Event) bool {
	return func(evt *event.Event) bool {
		return evt.RoomID == roomID && evt.Type == event.StateTopic && evt.Content.AsTopic().Topic == topic
	}
}

// isQuit matches the QUIT of nick.
func isQuit(nick string) func(*ircmsg.Message) bool {
	return func(m *ircmsg.Message) bool {
		return m.Command == "QUIT" && strings.EqualFold(m.Nick(), nick)
	}
}

// mustJoinAsOp joins c to channel, which must be new: its first member is its operator. It fails
// the test if c did not get operator status, as when the test network does not give it to a
// channel's creator (InspIRCd's <options:defaultmodes> without o).
func mustJoinAsOp(t *testing.T, c *e2e.IRCClient, channel string) {
	t.Helper()
	c.Join(t, channel)
	if w := c.Whois(t, c.Nick()); !slices.Contains(w.Channels, "@"+channel) {
		t.Fatalf("IRC client %s is not an operator of %s, which it created (WHOIS channels %q); the test network "+
			"must give a channel's creator +o (scripts/testbed-irc.sh: <options defaultmodes=\"not\">)", c.Nick(), channel, w.Channels)
	}
}

// mustSetIRCTopic sets channel's topic as c (an operator) and waits until the server confirms it.
// InspIRCd refuses a second topic change of a channel within the same second (437 "Retry topic
// change later", so that servers agree on the topic's timestamp); then it asks again a second
// later.
func mustSetIRCTopic(t *testing.T, c *e2e.IRCClient, channel, topic string) {
	t.Helper()
	deadline := time.Now().Add(ircWait)
	nick := c.Nick()
	set, refused := e2e.IsIRCMessage("TOPIC", nick, channel, topic), e2e.IsIRCMessage("437", "", nick, channel)
	for {
		c.Send(t, "TOPIC "+channel+" :"+topic)
		m := c.WaitFor(t, time.Until(deadline), func(m *ircmsg.Message) bool { return set(m) || refused(m) })
		if m.Command == "TOPIC" {
			return
		}
		if time.Now().Add(time.Second).After(deadline) {
			t.Fatalf("IRC client %s: the server kept refusing the topic of %s: %v", nick, channel, m.Params)
		}
		timer := time.NewTimer(time.Second)
		<-timer.C
	}
}

// isRenamed matches oldNick becoming newNick in channel: a NICK, or newNick's JOIN (after a
// reconnect under the new nick).
func isRenamed(oldNick, newNick, channel string) func(*ircmsg.Message) bool {
	nick, join := e2e.IsIRCMessage("NICK", oldNick, newNick), e2e.IsIRCMessage("JOIN", newNick, channel)
	return func(m *ircmsg.Message) bool { return nick(m) || join(m) }
}

// mustSetTopic sets roomID's topic as cli.
func mustSetTopic(t *testing.T, cli *mautrix.Client, roomID id.RoomID, topic string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), replyWait)
	defer cancel()
	if _, err := cli.SendStateEvent(ctx, roomID, event.StateTopic, "", &event.TopicEventContent{Topic: topic}); err != nil {
		t.Fatalf("%s setting the topic of %s: %v", cli.UserID, roomID, err)
	}
}

// TestIRCTopic: a channel's topic, set before its portal exists, becomes the room's topic when
// the portal is created; later changes on IRC follow; and a Matrix user changing the room's
// topic sends TOPIC from their puppet once the channel lets them (-t).
func TestIRCTopic(t *testing.T) {
	const channel = "#topics"
	ircNet := e2e.StartIRC(t)
	env := e2e.New(t, e2e.SQLite, e2e.WithIRCBridge(ircNet))
	alice := env.Register(t, "alice")
	op := ircNet.Connect(t, "op")
	mustJoinAsOp(t, op, channel)
	mustSetIRCTopic(t, op, channel, "the first topic")

	roomID := mustJoinPortal(t, env, alice, channel)
	env.MustSyncUntil(t, alice, ircWait, isTopic(roomID, "the first topic"))

	mustSetIRCTopic(t, op, channel, "a second topic")
	changed := time.Now()
	env.MustSyncUntil(t, alice, ircWait, isTopic(roomID, "a second topic"))

	op.Send(t, "MODE "+channel+" -t")
	op.WaitFor(t, ircWait, e2e.IsIRCMessage("MODE", "op", channel, "-t"))
	// The server refuses a topic change within a second of the last one (see mustSetIRCTopic).
	if wait := time.Until(changed.Add(time.Second)); wait > 0 {
		timer := time.NewTimer(wait)
		<-timer.C
	}
	mustSetTopic(t, alice, roomID, "set from matrix")
	op.WaitFor(t, ircWait, e2e.IsIRCMessage("TOPIC", "alice[m]", channel, "set from matrix"))
}

// TestIRCMembership: IRC users' ghosts join the portal when they join the channel and leave it
// when they are kicked, change nick (the new nick's ghost joins, named after it) or quit.
func TestIRCMembership(t *testing.T) {
	const channel = "#members"
	ircNet := e2e.StartIRC(t)
	env := e2e.New(t, e2e.SQLite, e2e.WithIRCBridge(ircNet))
	alice := env.Register(t, "alice")
	op := ircNet.Connect(t, "op")
	mustJoinAsOp(t, op, channel)
	roomID := mustJoinPortal(t, env, alice, channel)
	env.MustSyncUntil(t, alice, ircWait, e2e.IsMember(roomID, ircGhost(t, "op"), event.MembershipJoin))

	bob := ircNet.Connect(t, "bob")
	bobGhost := ircGhost(t, "bob")
	bob.Join(t, channel)
	env.MustSyncUntil(t, alice, ircWait, e2e.IsMember(roomID, bobGhost, event.MembershipJoin))

	op.Send(t, "KICK "+channel+" bob :out you go")
	bob.WaitFor(t, ircWait, e2e.IsIRCMessage("KICK", "op", channel, "bob"))
	kicked := env.MustSyncUntil(t, alice, ircWait, e2e.IsMember(roomID, bobGhost, event.MembershipLeave))

	bob.Join(t, channel)
	env.MustSyncUntil(t, alice, ircWait, e2e.After(kicked.ID, e2e.IsMember(roomID, bobGhost, event.MembershipJoin)))
	bob.Send(t, "NICK bobby")
	bob.WaitFor(t, ircWait, e2e.IsIRCMessage("NICK", "bob", "bobby"))
	renamed := env.MustSyncUntil(t, alice, ircWait, e2e.After(kicked.ID, e2e.IsMember(roomID, bobGhost, event.MembershipLeave)))
	bobbyGhost := ircGhost(t, "bobby")
	joined := env.MustSyncUntil(t, alice, ircWait, e2e.IsMember(roomID, bobbyGhost, event.MembershipJoin))
	if name := joined.Content.AsMember().Displayname; name != "bobby" {
		t.Errorf("%s joined with display name %q, want %q", bobbyGhost, name, "bobby")
	}
	t.Logf("bob's ghost left %s after his nick change", renamed.ID)

	bob.Quit(t)
	env.MustSyncUntil(t, alice, ircWait, e2e.IsMember(roomID, bobbyGhost, event.MembershipLeave))
}

// TestIRCEditsRepliesMedia: a Matrix edit reaches IRC as "* <new text>" (a change too large for a
// s/old/new/ correction), a reply as one line `nick: "quote" <- answer`, and media as a link IRC
// users can open.
func TestIRCEditsRepliesMedia(t *testing.T) {
	const channel = "#edits"
	ircNet := e2e.StartIRC(t)
	env := e2e.New(t, e2e.SQLite, e2e.WithIRCBridge(ircNet))
	alice := env.Register(t, "alice")
	bob := ircNet.Connect(t, "bob")
	bob.Join(t, channel)
	bobGhost := ircGhost(t, "bob")
	roomID := mustJoinPortal(t, env, alice, channel)

	original := env.SendText(t, alice, roomID, "the original text")
	bob.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "alice[m]", channel, "the original text"))
	edit := &event.MessageEventContent{MsgType: event.MsgText, Body: "the edited text"}
	edit.SetEdit(original)
	sendContent(t, alice, roomID, edit)
	bob.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "alice[m]", channel, "* the edited text"))

	bob.Privmsg(t, channel, "what is the question?")
	question := env.MustSyncUntil(t, alice, ircWait, isMessage(roomID, bobGhost, event.MsgText, "what is the question?"))
	reply := &event.MessageEventContent{MsgType: event.MsgText, Body: "forty-two"}
	reply.SetReply(question)
	sendContent(t, alice, roomID, reply)
	bob.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "alice[m]", channel, `bob: "what is the question?" <- forty-two`))

	png := []byte("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89" +
		"\x00\x00\x00\rIDATx\x9cc\xf8\xff\xff?\x00\x05\xfe\x02\xfe\xa7\x35\x81\x84\x00\x00\x00\x00IEND\xaeB`\x82")
	ctx, cancel := context.WithTimeout(context.Background(), replyWait)
	defer cancel()
	upload, err := alice.UploadBytesWithName(ctx, png, "image/png", "tiny.png")
	if err != nil {
		t.Fatalf("uploading an image: %v", err)
	}
	imageEvent := sendContent(t, alice, roomID, &event.MessageEventContent{
		MsgType: event.MsgImage, Body: "tiny.png", URL: upload.ContentURI.CUString(),
		Info: &event.FileInfo{MimeType: "image/png", Size: len(png), Width: 1, Height: 1},
	})
	line := bob.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "alice[m]", channel))
	text := line.Params[1]
	name, link, _ := strings.Cut(text, ": ")
	if name != "tiny.png" || !strings.HasPrefix(link, ircNet.MediaURL()+"/media/") || strings.Contains(link, upload.ContentURI.FileID) {
		t.Fatalf("the image reached IRC as %q, want %q followed by a link of the bridge's media listener %s (not naming the media ID)",
			text, "tiny.png: ", ircNet.MediaURL())
	}
	// An IRC user has no Matrix access token: the link must open without one.
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, link, nil)
	if err != nil {
		t.Fatalf("the image's link %q is not a URL: %v", link, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("opening the image's link %s: %v", link, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK || string(body) != string(png) {
		t.Errorf("opening the image's link %s without a Matrix token: status %d, %d bytes (%.200q); want 200 with the image",
			link, resp.StatusCode, len(body), body)
	}
	if got := resp.Header.Get("Content-Type"); got != "image/png" {
		t.Errorf("the image's link serves Content-Type %q, want image/png", got)
	}

	// Redacting the image makes its link stop working.
	env.MustRedact(t, alice, roomID, imageEvent)
	e2e.Eventually(t, ircWait, func() error {
		resp, err := http.Get(link)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			return fmt.Errorf("the link of a redacted image answers %d, want 404", resp.StatusCode)
		}
		return nil
	})
}

// TestIRCPrivateChatFromMatrix: inviting an IRC user's ghost to a new room makes it a private
// chat with them: the ghost joins, the inviter's messages reach the IRC user privately, and
// their answers come back into the room.
func TestIRCPrivateChatFromMatrix(t *testing.T) {
	ircNet := e2e.StartIRC(t)
	env := e2e.New(t, e2e.SQLite, e2e.WithIRCBridge(ircNet))
	alice := env.Register(t, "alice")
	bob := ircNet.Connect(t, "bob")
	bobGhost := ircGhost(t, "bob")

	roomID := env.MustCreateRoom(t, alice, bobGhost)
	env.MustSyncUntil(t, alice, ircWait, e2e.IsMember(roomID, bobGhost, event.MembershipJoin))
	env.SendText(t, alice, roomID, "hello bob, from a room I made")
	bob.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "alice[m]", "bob", "hello bob, from a room I made"))
	bob.Privmsg(t, "alice[m]", "hello alice, back")
	env.MustSyncUntil(t, alice, ircWait, isMessage(roomID, bobGhost, event.MsgText, "hello alice, back"))
}

// TestIRCLinkUnlink: "!irc link" bridges an existing room to a channel both ways (topic
// included) once an operator of the channel agrees; the operator can unlink it from IRC (the
// room is told, and nothing crosses any more); "!irc unlink" does the same for another link.
func TestIRCLinkUnlink(t *testing.T) {
	const channel, channel2 = "#linked", "#linked2"
	ircNet := e2e.StartIRC(t)
	env := e2e.New(t, e2e.SQLite, e2e.WithIRCBridge(ircNet))
	alice := env.Register(t, "alice")
	carol := env.Register(t, "carol")
	dan := ircNet.Connect(t, "dan")
	mustJoinAsOp(t, dan, channel)
	dan.Join(t, channel2)
	danGhost := ircGhost(t, "dan")

	roomID := mustCreateGroupRoom(t, env, alice, carol)
	link := env.SendText(t, alice, roomID, "!irc link testnet "+channel)
	mustBotReply(t, env, alice, roomID, link, "I asked")
	dan.WaitFor(t, ircWait, isConsentRequest("dan", channel))
	dan.Privmsg(t, botNickE2E, "yes")
	dan.WaitFor(t, ircWait, e2e.IsIRCMessage("JOIN", "custodianbot", channel))
	env.MustSyncUntil(t, alice, ircWait, e2e.IsMember(roomID, danGhost, event.MembershipJoin))
	env.SendText(t, alice, roomID, "hello from a linked room")
	dan.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "alice[m]", channel, "hello from a linked room"))
	dan.Privmsg(t, channel, "hello linked room")
	env.MustSyncUntil(t, alice, ircWait, isMessage(roomID, danGhost, event.MsgText, "hello linked room"))
	dan.Send(t, "MODE "+channel+" -t")
	dan.WaitFor(t, ircWait, e2e.IsIRCMessage("MODE", "dan", channel, "-t"))
	mustSetTopic(t, alice, roomID, "a topic from the linked room")
	dan.WaitFor(t, ircWait, e2e.IsIRCMessage("TOPIC", "alice[m]", channel, "a topic from the linked room"))

	// An operator of the channel unlinks the room from IRC.
	dan.Privmsg(t, botNickE2E, "unlink "+channel)
	env.MustSyncUntil(t, alice, replyWait, func(evt *event.Event) bool {
		return e2e.IsNoticeFrom(roomID, env.BotUserID())(evt) &&
			strings.Contains(evt.Content.AsMessage().Body, "unlinked this room")
	})
	dan.WaitFor(t, ircWait, e2e.IsIRCMessage("PART", "custodianbot", channel))
	dan.WaitFor(t, ircWait, e2e.IsIRCMessage("PART", "alice[m]", channel))
	if n := ircRows(t, env, "irc_portal", alice.UserID); n != 0 {
		t.Errorf("after an operator unlinked the channel, irc_portal has %d rows linked by alice", n)
	}

	room2 := mustCreateGroupRoom(t, env, alice, carol)
	link2 := env.SendText(t, alice, room2, "!irc link testnet "+channel2)
	mustBotReply(t, env, alice, room2, link2, "I asked")
	dan.WaitFor(t, ircWait, isConsentRequest("dan", channel2))
	dan.Privmsg(t, botNickE2E, "yes #linked2")
	dan.WaitFor(t, ircWait, e2e.IsIRCMessage("JOIN", "custodianbot", channel2))

	// Nothing crosses the unlinked room any more. Alice's puppet sends both of her messages in
	// order, so once the second (in the other room) is on IRC, the first would be too; the
	// bridge's connection left the unlinked channel, so it cannot hear Dan there.
	env.SendText(t, alice, roomID, "said after the unlink")
	dan.Privmsg(t, channel, "dan after the unlink")
	waitInboxEmpty(t, env)
	env.SendText(t, alice, room2, "hello second room")
	dan.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "alice[m]", channel2, "hello second room"))
	dan.Privmsg(t, channel2, "hello second linked room")
	env.MustSyncUntil(t, alice, ircWait, isMessage(room2, danGhost, event.MsgText, "hello second linked room"))
	for _, line := range dan.Lines() {
		if strings.Contains(line, "said after the unlink") {
			t.Errorf("a message sent after the room was unlinked reached IRC: %s", line)
		}
	}
	for _, evt := range env.RoomHistory(t, alice, roomID) {
		if evt.Type == event.EventMessage && strings.Contains(string(evt.Content.VeryRaw), "dan after the unlink") {
			t.Errorf("a message said on IRC after the room was unlinked reached it: %s from %s", evt.ID, evt.Sender)
		}
	}

	unlink := env.SendText(t, alice, room2, "!irc unlink")
	mustBotReply(t, env, alice, room2, unlink, "no longer bridged to "+channel2)
	dan.WaitFor(t, ircWait, e2e.IsIRCMessage("PART", "custodianbot", channel2))
	if n := ircRows(t, env, "irc_portal", alice.UserID); n != 0 {
		t.Errorf("after !irc unlink, irc_portal has %d rows linked by alice", n)
	}
}

// TestIRCNickAndNetworks: "!irc networks" lists the network and the user's connection; "!irc
// nick" reconnects the puppet under the chosen nick, "!irc nick <network>" goes back to the
// template's, and so does redacting the command that chose the nick.
func TestIRCNickAndNetworks(t *testing.T) {
	const channel = "#nicks"
	ircNet := e2e.StartIRC(t)
	env := e2e.New(t, e2e.SQLite, e2e.WithIRCBridge(ircNet))
	alice := env.Register(t, "alice")
	watcher := ircNet.Connect(t, "watcher")
	watcher.Join(t, channel)
	dm := env.MustCreateDMWithBot(t, alice)

	cmd := env.SendText(t, alice, dm, "!irc networks")
	reply := mustBotReply(t, env, alice, dm, cmd, "TestNet")
	if body := reply.Content.AsMessage().Body; !strings.Contains(body, "testnet") || !strings.Contains(body, "#irc_testnet_") ||
		!strings.Contains(body, "not connected") {
		t.Errorf("!irc networks before alice spoke answered %q, want testnet, its alias pattern and \"not connected\"", body)
	}

	roomID := mustJoinPortal(t, env, alice, channel)
	env.SendText(t, alice, roomID, "as alice[m]")
	watcher.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "alice[m]", channel, "as alice[m]"))
	cmd = env.SendText(t, alice, dm, "!irc networks")
	reply = mustBotReply(t, env, alice, dm, cmd, "TestNet")
	if body := reply.Content.AsMessage().Body; !strings.Contains(body, "connected as") || !strings.Contains(body, "alice[m]") {
		t.Errorf("!irc networks after alice spoke answered %q, want \"connected as\" alice[m]", body)
	}

	// The puppet changes nick in place (NICK) or reconnects under the new one; either way it is
	// in the channel under the new nick and not under the old one.
	cmd = env.SendText(t, alice, dm, "!irc nick testnet alicia")
	mustBotReply(t, env, alice, dm, cmd, "alicia")
	watcher.WaitFor(t, ircWait, isRenamed("alice[m]", "alicia", channel))
	watcher.WaitWhois(t, ircWait, "alicia", func(w e2e.IRCWhois) bool { return w.Online })
	watcher.WaitWhois(t, ircWait, "alice[m]", func(w e2e.IRCWhois) bool { return !w.Online })
	env.SendText(t, alice, roomID, "as alicia")
	watcher.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "alicia", channel, "as alicia"))

	cmd = env.SendText(t, alice, dm, "!irc nick testnet")
	mustBotReply(t, env, alice, dm, cmd, "alice[m]")
	watcher.WaitFor(t, ircWait, isRenamed("alicia", "alice[m]", channel))
	watcher.WaitWhois(t, ircWait, "alicia", func(w e2e.IRCWhois) bool { return !w.Online })

	// Redacting the command that chose the nick goes back to the template's.
	nick := env.SendText(t, alice, dm, "!irc nick testnet alicia")
	mustBotReply(t, env, alice, dm, nick, "alicia")
	watcher.WaitFor(t, ircWait, isRenamed("alice[m]", "alicia", channel))
	env.MustRedact(t, alice, dm, nick)
	watcher.WaitFor(t, ircWait, isRenamed("alicia", "alice[m]", channel))
	watcher.WaitWhois(t, ircWait, "alicia", func(w e2e.IRCWhois) bool { return !w.Online })
	env.SendText(t, alice, roomID, "as alice[m] again")
	watcher.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "alice[m]", channel, "as alice[m] again"))
	if n := ircRows(t, env, "irc_nick", alice.UserID); n != 0 {
		t.Errorf("after the nick command was redacted, irc_nick has %d rows for alice", n)
	}
}

// TestIRCDeactivation: when a user whose puppet is connected is deactivated with erase (through
// Synapse's admin API), the puppet QUITs within a minute and no row names the user any more.
func TestIRCDeactivation(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		const channel = "#deact"
		tokenFile := filepath.Join(t.TempDir(), "synapse-admin.token")
		ircNet := e2e.StartIRC(t)
		env := e2e.New(t, backend, e2e.WithIRCBridge(ircNet), e2e.WithoutStart(),
			e2e.WithConfigValue("privacy.deactivation.admin_token_file", tokenFile))
		admin := env.RegisterAdmin(t, "admin")
		if err := os.WriteFile(tokenFile, []byte(admin.AccessToken+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		env.StartCustodian(t)
		dave := env.Register(t, "dave")
		carol := env.Register(t, "carol")
		watcher := ircNet.Connect(t, "watcher")
		watcher.Join(t, channel)
		roomID := mustJoinPortal(t, env, dave, channel)
		env.MustJoinRoom(t, carol, roomID)
		env.SendText(t, dave, roomID, "dave was here")
		env.SendText(t, carol, roomID, "carol too")
		watcher.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "dave[m]", channel, "dave was here"))
		watcher.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "carol[m]", channel, "carol too"))
		if rows := env.DumpDatabase(t).Find(dave.UserID.String()); len(rows) == 0 {
			t.Fatalf("no row names dave before his deactivation")
		}

		status, body := env.HSRequest(t, http.MethodPost, "/_synapse/admin/v1/deactivate/"+dave.UserID.String(),
			admin.AccessToken, []byte(`{"erase": true}`))
		if status != http.StatusOK {
			t.Fatalf("deactivating dave: status %d: %s", status, body)
		}
		watcher.WaitFor(t, time.Minute, isQuit("dave[m]"))
		e2e.Eventually(t, time.Minute, func() error {
			if rows := env.DumpDatabase(t).Find(dave.UserID.String(), "%40dave%3Alocalhost"); len(rows) > 0 {
				return fmt.Errorf("%d rows still name dave:\n%s", len(rows), e2e.Describe(rows))
			}
			return nil
		})
		waitInboxEmpty(t, env)
		if rows := env.DumpDatabase(t).Find(dave.UserID.String(), "%40dave%3Alocalhost"); len(rows) > 0 {
			t.Errorf("after the deactivation settled, %d rows name dave again:\n%s", len(rows), e2e.Describe(rows))
		}
		watcher.WaitWhois(t, ircWait, "dave[m]", func(w e2e.IRCWhois) bool { return !w.Online })
		// Carol is still bridged.
		env.SendText(t, carol, roomID, "carol after dave left")
		watcher.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "carol[m]", channel, "carol after dave left"))
	})
}

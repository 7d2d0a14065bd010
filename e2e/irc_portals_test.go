//go:build e2e

package e2e_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/bridges/irc/ircid"
	"github.com/custodian-matrix/custodian/e2e"
)

// botParted reports whether the bridge's own connection parted channel, among the lines c saw.
func botParted(c *e2e.IRCClient, channel string) bool {
	for _, line := range c.Lines() {
		if strings.Contains(line, ":custodianbot!") && strings.Contains(line, " PART "+channel) {
			return true
		}
	}
	return false
}

// TestIRCPortalNeverDies: a portal made through its alias stays bridged when its last user
// leaves (a later user joining the alias lands in the same room and talks both ways); a linked
// portal stays bridged when the user who linked it is forgotten, and no row names them; the
// admin lists portals with custodian portals list and unlinks one with custodian portal unlink,
// after which the channel's alias makes a new portal.
func TestIRCPortalNeverDies(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		const solo, linked = "#solo", "#keptlink"
		tokenFile := filepath.Join(t.TempDir(), "admin-api.token")
		if err := os.WriteFile(tokenFile, []byte(e2e.RandomHex(t, 24)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		ircNet, env := startIRCEnv(t, backend,
			e2e.WithConfigValue("admin_api.listen", fmt.Sprintf("127.0.0.1:%d", e2e.FreePort(t))),
			e2e.WithConfigValue("admin_api.token_file", tokenFile),
			// Consent linking has its own test (TestIRCLinkConsent); here nobody answers on IRC.
			e2e.WithConfigValue("bridges.irc.networks.testnet.link_consent", "off"))
		carol := env.Register(t, "carol")
		dave := env.Register(t, "dave")
		alice := env.Register(t, "alice")
		bob := env.Register(t, "bob")
		watcher := ircNet.Connect(t, "watcher")
		watcher.Join(t, solo)
		watcher.Join(t, linked)
		watcherGhost := ircGhost(t, "watcher")

		// Carol joins the alias, speaks and leaves: the portal stays.
		roomID := mustJoinPortal(t, env, carol, solo)
		env.SendText(t, carol, roomID, "carol was here")
		watcher.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "carol[m]", solo, "carol was here"))
		ctx, cancel := context.WithTimeout(context.Background(), replyWait)
		_, err := carol.LeaveRoom(ctx, roomID)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		watcher.WaitFor(t, ircWait, e2e.IsIRCMessage("PART", "carol[m]", solo))
		waitInboxEmpty(t, env)

		// Dave joins the same alias later, lands in the same room, and talks both ways.
		if got := mustJoinPortal(t, env, dave, solo); got != roomID {
			t.Fatalf("dave joined %s through the alias, want the portal %s", got, roomID)
		}
		mustRelayBothWays(t, env, dave, roomID, watcher, watcherGhost, solo, "dave came later", "welcome dave")
		if botParted(watcher, solo) {
			t.Errorf("the bridge parted %s when its last user left", solo)
		}

		// Alice links a room she shares with bob, and is forgotten: the room stays bridged.
		linkedRoom := mustCreateGroupRoom(t, env, alice, bob)
		link := env.SendText(t, alice, linkedRoom, "!irc link testnet "+linked)
		mustBotReply(t, env, alice, linkedRoom, link, "bridged to")
		watcher.WaitFor(t, ircWait, e2e.IsIRCMessage("JOIN", "custodianbot", linked))
		dm := env.MustCreateDMWithBot(t, alice)
		fg := env.SendText(t, alice, dm, "!forget")
		mustBotReply(t, env, alice, dm, fg, "forget confirm")
		env.SendText(t, alice, dm, "!forget confirm")
		e2e.Eventually(t, time.Minute, func() error {
			if rows := env.DumpDatabase(t).Find(alice.UserID.String(), "%40alice%3Alocalhost"); len(rows) > 0 {
				return fmt.Errorf("%d rows still name alice:\n%s", len(rows), e2e.Describe(rows))
			}
			return nil
		})
		waitInboxEmpty(t, env)
		mustRelayBothWays(t, env, bob, linkedRoom, watcher, watcherGhost, linked, "bob after alice was forgotten", "still linked")
		if botParted(watcher, linked) {
			t.Errorf("the bridge parted %s at the erasure of the user who linked it", linked)
		}

		// The admin lists both portals, then unlinks the alias portal.
		res := env.RunCLI(t, time.Minute, "portals", "list", "-c", env.ConfigPath())
		if res.ExitCode != 0 || !strings.Contains(res.Stdout, solo) || !strings.Contains(res.Stdout, linked) ||
			!strings.Contains(res.Stdout, roomID.String()) || !strings.Contains(res.Stdout, linkedRoom.String()) {
			t.Fatalf("portals list:\n%s", res)
		}
		if strings.Contains(res.Stdout, alice.UserID.String()) {
			t.Errorf("portals list names the forgotten alice:\n%s", res)
		}
		localpart, err := ircid.AliasLocalpart(e2e.IRCNetworkID, ircid.RFC1459, solo)
		if err != nil {
			t.Fatal(err)
		}
		alias := id.NewRoomAlias(localpart, e2e.Domain)
		res = env.RunCLI(t, time.Minute, "portal", "unlink", alias.String(), "-c", env.ConfigPath(), "--yes")
		if res.ExitCode != 0 || !strings.Contains(res.Stdout, "Unlinked "+roomID.String()) {
			t.Fatalf("portal unlink:\n%s", res)
		}
		watcher.WaitFor(t, ircWait, e2e.IsIRCMessage("PART", "custodianbot", solo))
		env.MustSyncUntil(t, dave, replyWait, func(evt *event.Event) bool {
			return e2e.IsNoticeFrom(roomID, env.BotUserID())(evt) && strings.Contains(evt.Content.AsMessage().Body, "unlinked")
		})
		res = env.RunCLI(t, time.Minute, "portals", "list", "-c", env.ConfigPath())
		if res.ExitCode != 0 || strings.Contains(res.Stdout, roomID.String()) || !strings.Contains(res.Stdout, linkedRoom.String()) {
			t.Errorf("portals list after the unlink:\n%s", res)
		}
		// The alias is free again: joining it makes a new, working portal.
		newRoom := mustJoinPortal(t, env, carol, solo)
		if newRoom == roomID {
			t.Fatalf("the alias still points at the unlinked room %s", roomID)
		}
		watcher.WaitFor(t, ircWait, e2e.IsIRCMessage("JOIN", "custodianbot", solo))
		env.SendText(t, carol, newRoom, "carol in the new portal")
		watcher.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "carol[m]", solo, "carol in the new portal"))

		// A reset moves the linked channel to a new room with the channel's alias; the old room
		// points to it, and the channel stays joined.
		res = env.RunCLI(t, time.Minute, "portal", "reset", linkedRoom.String(), "-c", env.ConfigPath(), "--yes")
		if res.ExitCode != 0 || !strings.Contains(res.Stdout, "replaces "+linkedRoom.String()) {
			t.Fatalf("portal reset:\n%s", res)
		}
		m := regexp.MustCompile(`: (!\S+) replaces`).FindStringSubmatch(res.Stdout)
		if m == nil {
			t.Fatalf("portal reset names no new room:\n%s", res)
		}
		replacement := id.RoomID(m[1])
		// Alice linked the room and gave the bot no power in it: a notice, not a tombstone,
		// tells bob where the channel went.
		env.MustSyncUntil(t, bob, replyWait, func(evt *event.Event) bool {
			return e2e.IsNoticeFrom(linkedRoom, env.BotUserID())(evt) && strings.Contains(evt.Content.AsMessage().Body, replacement.String())
		})
		if got := mustJoinPortal(t, env, dave, linked); got != replacement || got == linkedRoom {
			t.Fatalf("dave joined %s through the alias after the reset, want the replacement %s", got, replacement)
		}
		watcher.Privmsg(t, linked, "hello new room")
		env.MustSyncUntil(t, dave, ircWait, isMessage(replacement, watcherGhost, event.MsgText, "hello new room"))
		if botParted(watcher, linked) {
			t.Errorf("the bridge parted %s at the reset", linked)
		}
	})
}

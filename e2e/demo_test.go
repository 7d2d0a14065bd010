//go:build e2e && demo

package e2e_test

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"

	"github.com/custodian-matrix/custodian/e2e"
)

// TestDemo is what `make demo` runs (build tags e2e and demo): a throwaway Synapse and Custodian
// on SQLite, a user alice in a room with the bot, and the bot's answer to !help. It then prints
// how to talk to the bot and keeps everything running until interrupted (Ctrl-C), or for
// CUSTODIAN_DEMO_DURATION (default 4h).
func TestDemo(t *testing.T) {
	limit := 4 * time.Hour
	if v := os.Getenv("CUSTODIAN_DEMO_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("CUSTODIAN_DEMO_DURATION: %v", err)
		}
		limit = d
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()

	ircNet := e2e.StartIRC(t)
	env := e2e.New(t, e2e.SQLite, e2e.WithIRCBridge(ircNet))
	bot := env.BotUserID()
	alice := env.Register(t, "alice")
	roomID := env.MustCreateRoomWithBot(t, alice)
	help := env.SendText(t, alice, roomID, "!help")
	// The bot may greet the room first; its answer to !help replies to it or lists the commands.
	reply := env.MustSyncUntil(t, alice, 30*time.Second, e2e.After(help, func(evt *event.Event) bool {
		if !e2e.IsNoticeFrom(roomID, bot)(evt) {
			return false
		}
		msg := evt.Content.AsMessage()
		return msg.RelatesTo.GetReplyTo() == help || strings.Contains(msg.Body, "ping")
	}))

	// The IRC bridge: alice joins #demo on the test network through its portal alias, and an
	// IRC user there greets her.
	ircUser := ircNet.Connect(t, "ircfriend")
	ircUser.Join(t, "#demo")
	portal := mustJoinPortal(t, env, alice, "#demo")
	ircUser.Privmsg(t, "#demo", "hello from IRC!")
	env.MustSyncUntil(t, alice, 30*time.Second, isMessage(portal, ircGhost(t, "ircfriend"), event.MsgText, "hello from IRC!"))
	env.SendText(t, alice, portal, "hello from Matrix!")
	ircUser.WaitFor(t, 30*time.Second, e2e.IsIRCMessage("PRIVMSG", "alice[m]", "#demo", "hello from Matrix!"))

	hs := env.HomeserverURL()
	fmt.Printf(`
Custodian demo is running.

  Synapse         %s  (server_name localhost)
  Custodian       %s  (metrics: %s)
  Custodian files %s  (config.yaml, registration.yaml, custodian.db, custodian.log)

alice (password %s) invited %s into %s; it joined.
alice said !help, and the bot answered:

%s

Try next, as alice:
  export HS=%s TOKEN=%s ROOM='%s'
  send() { curl -s -X PUT -H "Authorization: Bearer $TOKEN" -d "{\"msgtype\":\"m.text\",\"body\":\"$1\"}" "$HS/_matrix/client/v3/rooms/$ROOM/send/m.room.message/demo$(date +%%s%%N)"; echo; }
  send '!ping'; send '!setup'
  curl -s -H "Authorization: Bearer $TOKEN" "$HS/_matrix/client/v3/rooms/$ROOM/messages?dir=b&limit=4" | head -c 3000; echo
  tail -f %s
  curl -s %s | grep custodian_

IRC: alice joined #irc_testnet_demo:localhost (room %s), the portal of #demo on the test
network at %s (InspIRCd + Atheme). ircfriend said "hello from IRC!" there and alice's answer
reached IRC from her own connection, alice[m]. Join the channel with any IRC client, e.g.
  irssi -c 127.0.0.1 -p %d -n you    then   /join #demo
and talk to alice; as alice, send into the portal:  ROOM='%s' send 'hi IRC'
In a direct chat with the bot, alice can link a services account: !irc login testnet <account> <password>

Press Ctrl-C to stop and delete everything.
`, hs, env.ASURL(), env.MetricsURL(), env.Dir(),
		env.Password(alice.UserID), bot, roomID,
		indent(reply.Content.AsMessage().Body),
		hs, alice.AccessToken, roomID, env.LogPath(), env.MetricsURL(),
		portal, ircNet.Addr(), ircNet.Port(), portal)

	<-ctx.Done()
	fmt.Println("\nStopping the demo.")
	env.StopCustodian(t)
}

func indent(s string) string { return "    " + strings.ReplaceAll(s, "\n", "\n    ") }

//go:build e2e

package e2e_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"

	"maunium.net/go/mautrix/event"

	"github.com/custodian-matrix/custodian/e2e"
)

// TestIRCMentionsAndLongMessage: on a real network and homeserver, an IRC line naming a Matrix
// user's puppet nick arrives with that user in m.mentions (so Synapse notifies them), and a long
// Matrix message reaches IRC as its first line and a link of the bridge's media listener that
// serves the full text without a Matrix token.
func TestIRCMentionsAndLongMessage(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		const channel = "#mentions"
		ircNet, env := startIRCEnv(t, backend)
		alice := env.Register(t, "alice")
		bob := ircNet.Connect(t, "bob")
		roomID, bobGhost := mustJoinPortalWithPeer(t, env, alice, bob, channel)

		// alice's puppet joins the channel when she first speaks.
		env.SendText(t, alice, roomID, "hi all")
		bob.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "alice[m]", channel, "hi all"))
		bob.Privmsg(t, channel, "Alice[m]: did you see this?")
		mention := env.MustSyncUntil(t, alice, ircWait, isMessage(roomID, bobGhost, event.MsgText, "Alice[m]: did you see this?"))
		if m := mention.Content.AsMessage().Mentions; m == nil || !slices.Contains(m.UserIDs, alice.UserID) {
			t.Errorf("a line naming alice's puppet arrived with m.mentions %+v, want her user ID in it", m)
		}
		bob.Privmsg(t, channel, "nobody named here")
		plain := env.MustSyncUntil(t, alice, ircWait, isMessage(roomID, bobGhost, event.MsgText, "nobody named here"))
		if m := plain.Content.AsMessage().Mentions; m != nil && len(m.UserIDs) > 0 {
			t.Errorf("a line naming nobody arrived with m.mentions %v", m.UserIDs)
		}

		var b strings.Builder
		for i := range 12 {
			fmt.Fprintf(&b, "paragraph %d of a long paste, with enough words to matter\n", i+1)
		}
		long := strings.TrimSuffix(b.String(), "\n")
		env.SendText(t, alice, roomID, long)
		line := bob.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "alice[m]", channel))
		re := regexp.MustCompile(`^paragraph 1 of a long paste, with enough words to matter\x0f… \(full message: (` +
			regexp.QuoteMeta(ircNet.MediaURL()) + `/media/\S+)\)$`)
		m := re.FindStringSubmatch(line.Params[1])
		if m == nil {
			t.Fatalf("the long message reached IRC as %q, want its first line and a link under %s", line.Params[1], ircNet.MediaURL())
		}
		env.SendText(t, alice, roomID, "short again")
		bob.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", "alice[m]", channel, "short again"))
		for _, l := range bob.Lines() {
			if strings.Contains(l, "paragraph 2 of") {
				t.Errorf("a later line of the long message reached IRC: %q", l)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), replyWait)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, m[1], nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("opening the long message's link: %v", err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if resp.StatusCode != http.StatusOK || string(body) != long+"\n" {
			t.Errorf("the long message's link answers %d with %q, want 200 and the full text", resp.StatusCode, body)
		}
	})
}

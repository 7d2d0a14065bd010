//go:build e2e

package e2e_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/e2e"
)

// TestCrashSafety: Custodian is killed with SIGKILL while a user sends 200 commands, and
// restarted; afterwards every command has been handled exactly once (invariant 4: an
// acknowledged transaction is never lost and never applied twice, across crashes). The bot's
// replies make it observable: each !ping gets exactly one reply.
func TestCrashSafety(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		const total, killAfter = 200, 60
		env := e2e.New(t, backend)
		bot := env.BotUserID()
		alice := env.Register(t, "alice")
		roomID := env.MustCreateRoomWithBot(t, alice)

		pings := make([]id.EventID, 0, total)
		for i := range total {
			if i == killAfter {
				env.KillCustodian(t)
			}
			pings = append(pings, env.SendText(t, alice, roomID, fmt.Sprintf("!ping %d", i+1)))
		}
		// Synapse has been retrying with backoff while Custodian was down; Custodian's startup
		// ping makes it send the queued transactions at once.
		env.StartCustodian(t)

		isPing := make(map[id.EventID]int, total)
		for i, evt := range pings {
			isPing[evt] = i + 1
		}
		countReplies := func(replies map[id.EventID]int) func(*event.Event) bool {
			return func(evt *event.Event) bool {
				if !e2e.IsMessageFrom(roomID, bot)(evt) {
					return false
				}
				if to := evt.Content.AsMessage().RelatesTo.GetReplyTo(); isPing[to] != 0 {
					replies[to]++
				}
				return false
			}
		}

		// Every ping gets a reply.
		replies := map[id.EventID]int{}
		count := countReplies(replies)
		_, err := env.SyncUntil(alice, 5*time.Minute, func(evt *event.Event) bool {
			count(evt)
			return len(replies) == total
		})
		if err != nil {
			t.Fatalf("%d of %d pings were answered: %v\nunanswered: %s",
				len(replies), total, err, describeMissing(pings, replies))
		}

		// Then a barrier: one room's events are handled in order, so once the bot has answered a
		// ping sent after all others, any replay of an earlier one would have shown up before it.
		barrier := env.SendText(t, alice, roomID, "!ping barrier")
		replies = map[id.EventID]int{}
		count = countReplies(replies)
		env.MustSyncUntil(t, alice, 2*time.Minute, func(evt *event.Event) bool {
			count(evt)
			return e2e.IsReplyTo(roomID, bot, barrier)(evt)
		})
		var doubled []string
		for _, evt := range pings {
			if n := replies[evt]; n != 1 {
				doubled = append(doubled, fmt.Sprintf("!ping %d (%s): %d replies", isPing[evt], evt, n))
			}
		}
		if len(doubled) > 0 {
			t.Errorf("%d pings were not answered exactly once:\n%s", len(doubled), strings.Join(doubled, "\n"))
		}
	})
}

// describeMissing lists (up to 20 of) the pings that have no reply.
func describeMissing(pings []id.EventID, replies map[id.EventID]int) string {
	var missing []string
	for i, evt := range pings {
		if replies[evt] == 0 {
			missing = append(missing, fmt.Sprintf("#%d %s", i+1, evt))
		}
	}
	if len(missing) > 20 {
		missing = append(missing[:20], fmt.Sprintf("and %d more", len(missing)-20))
	}
	return strings.Join(missing, ", ")
}

package webhook

import (
	"strings"
	"testing"

	"maunium.net/go/mautrix/event"
)

// TestSecretsRoomOthersJoinedIsNotReused: the room the core opened for alice's secrets (her
// management room) is a trusted private chat, so alice may invite others into it. Once anyone
// else joined, a later secret goes to a new room, never to the shared one.
func TestSecretsRoomOthersJoinedIsNotReused(t *testing.T) {
	forEachDialect(t, nil, func(t *testing.T, env *testEnv) {
		env.mustRun(testAlice, "add ci", "I sent you its URL")
		first := env.dmRoom(testAlice)
		if created := env.host.CreatedRooms(); len(created) != 1 {
			t.Fatalf("created rooms = %d after the first hook, want 1", len(created))
		}
		// The URL went through the core's one private path, into the recorded management room.
		if notices := env.host.Notices(testAlice); len(notices) != 1 || notices[0].RoomID != first ||
			!strings.HasPrefix(notices[0].Notice.Purpose, "url-") {
			t.Fatalf("notices through Host.NotifyUser = %+v, want alice's URL in %s", notices, first)
		}
		env.host.SetMembership(t, first, testAlice, event.MembershipJoin)
		// While alice is alone with the bot, the room is reused.
		env.mustRun(testAlice, "add deploy", "I sent you its URL")
		if created := env.host.CreatedRooms(); len(created) != 1 {
			t.Fatalf("created rooms = %d while the secrets room is private, want 1", len(created))
		}

		env.host.SetMembership(t, first, testBob, event.MembershipJoin)
		before := len(env.host.HS.Messages(first))
		env.mustRun(testAlice, "add release", "I sent you its URL")
		if got := len(env.host.HS.Messages(first)); got != before {
			t.Errorf("%d new messages in the secrets room bob joined, want none", got-before)
		}
		created := env.host.CreatedRooms()
		if len(created) != 2 || env.dmRoom(testAlice) != created[1].RoomID {
			t.Fatalf("created rooms = %+v, want a second secrets room, recorded", created)
		}
		if _, hook := env.lastURL(testAlice); hook == "" {
			t.Error("the new secrets room holds no URL")
		}
		for _, msg := range env.host.HS.Messages(first) {
			if strings.Contains(string(msg.Content), "release") {
				t.Error("the release hook's secret went to the room bob joined")
			}
		}
	})
}

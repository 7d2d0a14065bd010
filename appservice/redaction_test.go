package appservice

import (
	"maps"
	"strings"
	"testing"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
)

func TestRedactionPurgesConfiguration(t *testing.T) {
	tests := []struct {
		name string
		// sender redacts target in room; topLevel puts redacts outside the content (before
		// room v11).
		sender   id.UserID
		room     id.RoomID
		target   id.EventID
		topLevel bool
		// known marks the target as sent in room, for tables without a room column.
		known      bool
		wantPurged map[string]int // table → rows gone
	}{
		{name: "by the actor", sender: pvAlice, room: pvRoom, target: "$add1", wantPurged: map[string]int{"hooks_hook": 1}},
		{name: "by the actor, top-level redacts", sender: pvAlice, room: pvRoom, target: "$add1", topLevel: true, wantPurged: map[string]int{"hooks_hook": 1}},
		{name: "by an unprivileged other user", sender: pvBob, room: pvRoom, target: "$add1"},
		{name: "by a moderator", sender: pvCarol, room: pvRoom, target: "$add1", wantPurged: map[string]int{"hooks_hook": 1}},
		{name: "by our own bot", sender: pvBot, room: pvRoom, target: "$add1"},
		{name: "in another room", sender: pvCarol, room: pvDM, target: "$add1"},
		{name: "unrelated event", sender: pvAlice, room: pvRoom, target: "$hello"},
		{name: "no room column, event in the room", sender: pvAlice, room: pvRoom, target: "$addO", known: true, wantPurged: map[string]int{"other_hook": 1}},
		{name: "no room column, event elsewhere", sender: pvCarol, room: pvRoom, target: "$addO"},
	}
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					env := newPrivacyEnv(t, dialect, nil).start()
					env.hs.SetState(pvRoom, event.StatePowerLevels, "", pvAlice, map[string]any{
						"users": map[string]int{pvAlice.String(): 100, pvCarol.String(): 50}, "redact": 50,
					})
					env.hs.SetState(pvRoom, event.StateCreate, "", pvAlice, map[string]any{"room_version": "10"})
					env.setUpRoom(pvRoom, false, pvAlice, pvBob, pvCarol)
					env.setUpRoom(pvDM, true, pvCarol)
					env.addHook(env.hooks, "h1", pvAlice, pvRoom, "$add1")
					env.addHook(env.other, "o1", pvAlice, pvRoom, "$addO")
					if tt.known {
						env.hs.setKnownEvent(tt.target, tt.room)
					}
					counts := func() map[string]int {
						return map[string]int{
							"hooks_hook":     env.count(`SELECT COUNT(*) FROM hooks_hook`),
							"other_hook":     env.count(`SELECT COUNT(*) FROM other_hook`),
							"hooks_delivery": env.count(`SELECT COUNT(*) FROM hooks_delivery`),
						}
					}
					before := counts()
					env.hs.Reset()

					content := map[string]any{"redacts": tt.target}
					var extra map[string]any
					if tt.topLevel {
						content, extra = map[string]any{}, map[string]any{"redacts": tt.target}
					}
					env.deliver(tt.room, event.EventRedaction, tt.sender, nil, content, extra)

					after := counts()
					want := maps.Clone(before)
					for table, n := range tt.wantPurged {
						want[table] -= n
						if table == "hooks_hook" {
							want["hooks_delivery"] -= 2 * n
						}
					}
					if !maps.Equal(after, want) {
						t.Errorf("rows after the redaction = %v, want %v", after, want)
					}
					notices := env.notices(tt.room)
					if len(tt.wantPurged) > 0 {
						if len(notices) != 1 || !strings.HasPrefix(notices[0], "Removed the configuration created by that message:") || !strings.Contains(notices[0], "(1 entry)") {
							t.Errorf("notices = %q, want one saying what was removed", notices)
						}
					} else if len(notices) != 0 {
						t.Errorf("notices = %q, want none", notices)
					}
					purgedHooks := len(env.hooks.purged)
					if wantCalls := tt.wantPurged["hooks_hook"]; purgedHooks != wantCalls {
						t.Errorf("RedactionPurged calls on hooks = %d, want %d", purgedHooks, wantCalls)
					}
				})
			}
		})
	}
}

package webhook

import (
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/bridges/webhook/webhookdb"
)

// ownerLevels are the test room's power levels with alice's level set to alice: configuring
// webhooks (state_default) needs 50, bob is a moderator.
func ownerLevels(alice int) *event.PowerLevelsEventContent {
	stateDefault := 50
	return &event.PowerLevelsEventContent{
		Users:           map[id.UserID]int{testAlice: alice, testBob: 50},
		StateDefaultPtr: &stateDefault,
		EventsDefault:   0,
		UsersDefault:    0,
	}
}

// memberEvent returns target's member event with membership, sent by sender, in the test room.
func (env *testEnv) memberEvent(sender, target id.UserID, membership event.Membership) *event.Event {
	stateKey := target.String()
	return &event.Event{
		ID: env.newEventID(), RoomID: testRoom, Sender: sender, Type: event.StateMember, StateKey: &stateKey,
		Timestamp: env.clock.Now().UnixMilli(),
		Content:   event.Content{Parsed: &event.MemberEventContent{Membership: membership}},
	}
}

// powerLevelsEvent returns a power levels event with pl, sent by bob, in the test room.
func (env *testEnv) powerLevelsEvent(pl *event.PowerLevelsEventContent) *event.Event {
	stateKey := ""
	return &event.Event{
		ID: env.newEventID(), RoomID: testRoom, Sender: testBob, Type: event.StatePowerLevels, StateKey: &stateKey,
		Timestamp: env.clock.Now().UnixMilli(),
		Content:   event.Content{Parsed: pl},
	}
}

// checkSuspended checks that hook is suspended for reason, that the room was told in a notice
// naming the hook but not its URL, that bob's messages no longer reach the receiver and that
// !webhook list shows the suspension.
func (env *testEnv) checkSuspended(t *testing.T, rc *receiver, hook *webhookdb.Hook, reason string) {
	t.Helper()
	got := env.waitStatus(hook.ID, func(h *webhookdb.Hook) bool { return !h.SuspendedAt.IsZero() })
	if got.SuspendedReason != reason {
		t.Errorf("suspension reason = %q, want %q", got.SuspendedReason, reason)
	}
	// The delivery worker posts the notice after it recorded the suspension.
	notices := env.waitSuspendedNotices(1)
	if len(notices) != 1 || !strings.Contains(notices[0], "**relay**") || !strings.Contains(notices[0], reason) {
		t.Errorf("suspension notices in the room = %q, want one naming the hook and why", notices)
	}
	for _, notice := range notices {
		if strings.Contains(notice, "sekrit") || strings.Contains(notice, rc.srv.URL) {
			t.Errorf("suspension notice %q shows the hook's URL", notice)
		}
	}
	if err := env.deliver(env.ctx, env.message(testBob, "after the suspension")); err != nil {
		t.Fatal(err)
	}
	rc.none(t)
	list := env.mustRun(testBob, "list", "relay")
	if !strings.Contains(list.replies[0], "suspended") || !strings.Contains(list.replies[0], reason) ||
		!strings.Contains(list.replies[0], "webhook resume relay") {
		t.Errorf("list = %q, want the suspension, why and how to resume", list.replies[0])
	}
}

// suspendedNotices returns the bodies of the bot's notices in the test room that say a hook is
// suspended.
func (env *testEnv) suspendedNotices() []string {
	env.t.Helper()
	var out []string
	for _, sent := range env.roomMessages() {
		var content event.MessageEventContent
		if err := sent.Decode(&content); err != nil {
			env.t.Fatal(err)
		}
		if strings.Contains(content.Body, "is suspended") {
			out = append(out, content.Body)
		}
	}
	return out
}

// waitSuspendedNotices waits (up to 10 s) until the room holds at least n suspension notices,
// and returns them.
func (env *testEnv) waitSuspendedNotices(n int) []string {
	env.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		notices := env.suspendedNotices()
		if len(notices) >= n || time.Now().After(deadline) {
			return notices
		}
		<-time.After(5 * time.Millisecond)
	}
}

func TestOutboundSuspendedWhenOwnerLosesRight(t *testing.T) {
	tests := []struct {
		name   string
		change func(env *testEnv) *event.Event
		reason string
	}{
		{"leave", func(env *testEnv) *event.Event {
			env.host.SetMembership(env.t, testRoom, testAlice, event.MembershipLeave)
			return env.memberEvent(testAlice, testAlice, event.MembershipLeave)
		}, suspendedLeft},
		{"kick", func(env *testEnv) *event.Event {
			env.host.SetMembership(env.t, testRoom, testAlice, event.MembershipLeave)
			return env.memberEvent(testBob, testAlice, event.MembershipLeave)
		}, suspendedRemoved},
		{"ban", func(env *testEnv) *event.Event {
			env.host.SetMembership(env.t, testRoom, testAlice, event.MembershipBan)
			return env.memberEvent(testBob, testAlice, event.MembershipBan)
		}, suspendedBanned},
		{"demotion", func(env *testEnv) *event.Event {
			env.host.SetPowerLevels(env.t, testRoom, ownerLevels(0))
			return env.powerLevelsEvent(ownerLevels(0))
		}, suspendedDemoted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			forEachDialect(t, nil, func(t *testing.T, env *testEnv) {
				env.host.SetPowerLevels(t, testRoom, ownerLevels(50))
				rc := newReceiver(t)
				hook, secret := setUpOutbound(t, env, rc)
				msg := env.message(testBob, "before")
				if err := env.deliver(env.ctx, msg); err != nil {
					t.Fatal(err)
				}
				if got := verify(t, rc.next(t), secret); got.EventID != msg.ID {
					t.Fatalf("delivered %s, want %s", got.EventID, msg.ID)
				}

				change := tt.change(env)
				if err := env.deliver(env.ctx, change); err != nil {
					t.Fatal(err)
				}
				env.checkSuspended(t, rc, hook, tt.reason)
				// The same event handled again (after a crash) posts no second notice.
				if err := env.deliver(env.ctx, change); err != nil {
					t.Fatal(err)
				}
				if n := len(env.suspendedNotices()); n != 1 {
					t.Errorf("%d suspension notices after the event was handled twice, want 1", n)
				}
			})
		})
	}
}

func TestOutboundDeliveryChecksOwner(t *testing.T) {
	tests := []struct {
		name   string
		change func(env *testEnv)
	}{
		{"left unnoticed", func(env *testEnv) { env.host.SetMembership(env.t, testRoom, testAlice, event.MembershipLeave) }},
		{"demoted unnoticed", func(env *testEnv) { env.host.SetPowerLevels(env.t, testRoom, ownerLevels(0)) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			forEachDialect(t, nil, func(t *testing.T, env *testEnv) {
				env.host.SetPowerLevels(t, testRoom, ownerLevels(50))
				rc := newReceiver(t)
				hook, _ := setUpOutbound(t, env, rc)
				// The bridge never sees the event that took alice's right away.
				tt.change(env)
				if err := env.deliver(env.ctx, env.message(testBob, "secret plans")); err != nil {
					t.Fatal(err)
				}
				env.checkSuspended(t, rc, hook, suspendedNoRights)
			})
		})
	}
}

func TestResumeSuspendedHook(t *testing.T) {
	forEachDialect(t, nil, func(t *testing.T, env *testEnv) {
		env.host.SetPowerLevels(t, testRoom, ownerLevels(50))
		rc := newReceiver(t)
		hook, secret := setUpOutbound(t, env, rc)
		env.host.SetPowerLevels(t, testRoom, ownerLevels(0))
		if err := env.deliver(env.ctx, env.powerLevelsEvent(ownerLevels(0))); err != nil {
			t.Fatal(err)
		}
		env.waitStatus(hook.ID, func(h *webhookdb.Hook) bool { return !h.SuspendedAt.IsZero() })

		env.mustRun(testBob, "resume relay", "Only the owner")
		env.mustRun(testBob, "rotate relay", "is suspended")
		env.mustRun(testAlice, "resume relay", "You need the power level")
		if h := env.status(hook.ID); h.SuspendedAt.IsZero() || h.Actor != testAlice {
			t.Fatalf("hook after refused resume and rotate = %+v, want still suspended and alice's", h)
		}

		env.host.SetPowerLevels(t, testRoom, ownerLevels(50))
		env.mustRun(testAlice, "resume relay", "Resumed")
		if h := env.status(hook.ID); !h.SuspendedAt.IsZero() || h.SuspendedReason != "" {
			t.Errorf("hook after resume = %+v, want no suspension", h)
		}
		msg := env.message(testBob, "welcome back")
		if err := env.deliver(env.ctx, msg); err != nil {
			t.Fatal(err)
		}
		if got := verify(t, rc.next(t), secret); got.EventID != msg.ID {
			t.Errorf("delivered %s after resume, want %s", got.EventID, msg.ID)
		}
		env.mustRun(testAlice, "resume relay", "is not suspended")
	})
}

// TestSuspendedNoticeNeverPlaintextInEncryptedRoom suspends a hook in a room that turned
// encrypted while the state cache still holds it unencrypted: the notice, which names the hook
// and its owner, goes out encrypted (Alice reads it) with the core's crypto, and not at all
// without it (the suspension stands all the same).
func TestSuspendedNoticeNeverPlaintextInEncryptedRoom(t *testing.T) {
	for _, withCrypto := range []bool{true, false} {
		t.Run(map[bool]string{true: "with crypto", false: "without crypto"}[withCrypto], func(t *testing.T) {
			forEachDialect(t, nil, func(t *testing.T, env *testEnv) {
				env.host.SetPowerLevels(t, testRoom, ownerLevels(50))
				rc := newReceiver(t)
				hook, _ := setUpOutbound(t, env, rc)
				var alice *astest.TestDevice
				if withCrypto {
					env.host.EnableCrypto(t)
					alice = astest.NewTestDevice(t, env.host.HS, testAlice, "ALICEPHONE")
				}
				env.host.HS.SetState(testRoom, event.StateEncryption, "", testAlice,
					&event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1})
				if cached, err := env.host.AS.StateStore.IsEncrypted(env.ctx, testRoom); err != nil || cached {
					t.Fatalf("state cache says encrypted = %t (%v); the test needs it stale", cached, err)
				}
				before := len(env.host.HS.Events(testRoom))

				env.host.SetPowerLevels(t, testRoom, ownerLevels(0))
				if err := env.deliver(env.ctx, env.powerLevelsEvent(ownerLevels(0))); err != nil {
					t.Fatal(err)
				}
				// The power-level change is handled, and the notice sent, before deliver returns.
				if got := env.status(hook.ID); got.SuspendedAt.IsZero() {
					t.Fatal("the hook was not suspended; the test would prove nothing")
				}
				if n := len(env.suspendedNotices()); n != 0 {
					t.Errorf("%d plaintext suspension notices in the encrypted room, want none", n)
				}
				var sent []*astest.SentEvent
				for _, se := range env.host.HS.Events(testRoom)[before:] {
					if se.Sender == env.host.BotID() && se.Type.Class == event.MessageEventType {
						sent = append(sent, se)
					}
				}
				if !withCrypto {
					if len(sent) != 0 {
						t.Errorf("the bot sent %d messages into the encrypted room without crypto, want 0", len(sent))
					}
					return
				}
				if len(sent) != 1 || sent[0].Type != event.EventEncrypted {
					t.Fatalf("the bot sent %d messages, want one m.room.encrypted", len(sent))
				}
				alice.Receive(env.ctx)
				evt, err := alice.Decrypt(env.ctx, sent[0])
				if err != nil {
					t.Fatalf("alice cannot decrypt the notice: %v", err)
				}
				if body := evt.Content.AsMessage().Body; !strings.Contains(body, "relay") || !strings.Contains(body, suspendedDemoted) {
					t.Errorf("notice decrypts to %q, want it to name the hook", body)
				}
			})
		})
	}
}

//go:build e2e

package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/e2e"
)

// entryCount matches a line of !mydata: "* 2 entries: <description>".
var entryCount = regexp.MustCompile(`(\d+) entr(?:y|ies)`)

// TestMyData: after alice created an incoming and an outgoing webhook, !mydata in her direct chat
// with the bot answers with a notice listing, per module, what it holds about her: the webhook
// module with at least one entry, and none of her webhook's token, URL or signing secret.
func TestMyData(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		env := e2e.New(t, backend, e2e.WithWebhookBridge(t))
		receiver := e2e.NewReceiver(t)
		alice := env.Register(t, "alice")
		roomID := mustCreateGroupRoom(t, env, alice, env.Register(t, "bob"))
		in := mustAddInbound(t, env, alice, roomID, "ci")
		out := mustAddOutbound(t, env, alice, roomID, "relay", receiver.URL("/mydata/"+e2e.RandomHex(t, 16)))

		cmd := env.SendText(t, alice, in.DMRoomID, "!mydata")
		reply := mustBotReply(t, env, alice, in.DMRoomID, cmd, "Here is what Custodian holds about you")
		if reply.Content.AsMessage().MsgType != event.MsgNotice {
			t.Errorf("!mydata answered with msgtype %s, want m.notice", reply.Content.AsMessage().MsgType)
		}
		msg := reply.Content.AsMessage()
		text := msg.Body + "\n" + msg.FormattedBody
		for _, module := range []string{"core", "webhook"} {
			if !strings.Contains(msg.Body, module) {
				t.Errorf("!mydata does not mention the %s module:\n%s", module, msg.Body)
			}
		}
		// The webhook module's section (from its heading on) lists at least one entry.
		section := msg.Body[strings.Index(msg.Body, "webhook"):]
		m := entryCount.FindStringSubmatch(section)
		if m == nil {
			t.Errorf("!mydata lists no count for the webhook module:\n%s", msg.Body)
		} else if n, _ := strconv.Atoi(m[1]); n < 1 {
			t.Errorf("!mydata lists %d entries for the webhook module, want at least 1:\n%s", n, msg.Body)
		}
		if found := findSecrets(text, map[string]string{
			"incoming token": in.Token, "incoming URL": in.URL, "outgoing URL": out.URL, "signing secret": out.SigningSecret,
		}); len(found) > 0 {
			t.Errorf("!mydata reveals %v:\n%s", found, text)
		}
	})
}

// TestPauseResume: after !pause, alice's outgoing webhook delivers nothing, not even her own
// message in its room, while bob's outgoing webhook in the same room still delivers his (the
// barrier that shows Custodian handled the room's events after hers); after !resume her next
// message is delivered.
func TestPauseResume(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		env := e2e.New(t, backend, e2e.WithWebhookBridge(t))
		receiver := e2e.NewReceiver(t)
		alice := env.Register(t, "alice")
		bob := env.Register(t, "bob")
		// Bob needs the power to configure the room to add his own outgoing webhook.
		roomID := mustCreateRoomWithPowers(t, env, alice, map[*mautrix.Client]int{bob: 100}, bob)
		aliceOut := mustAddOutbound(t, env, alice, roomID, "alice-relay", receiver.URL("/alice/"+e2e.RandomHex(t, 16)))
		bobOut := mustAddOutbound(t, env, bob, roomID, "bob-relay", receiver.URL("/bob/"+e2e.RandomHex(t, 16)))
		dm := aliceOut.DMRoomID

		// Control: before the pause, alice's message is delivered.
		before := env.SendText(t, alice, roomID, "before the pause")
		receiver.WaitFor(t, deliveryWait, deliveryOf(aliceOut.ID, before))

		pause := env.SendText(t, alice, dm, "!pause")
		mustBotReply(t, env, alice, dm, pause, "Paused.")
		// Everything in the room before the pause (up to the control message) has been delivered.
		delivered := len(hookDeliveries(receiver, aliceOut.ID))

		paused := env.SendText(t, alice, roomID, "while paused")
		barrier := env.SendText(t, bob, roomID, "bob while alice is paused")
		receiver.WaitFor(t, deliveryWait, deliveryOf(bobOut.ID, barrier))
		// Bob's message went through after hers; give alice's queue a few more seconds.
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) {
			if ds := hookDeliveries(receiver, aliceOut.ID); len(ds) > delivered {
				t.Fatalf("alice's outgoing webhook delivered while she is paused: %s", ds[delivered].Body)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if d := findDelivery(receiver, deliveryOf(bobOut.ID, paused)); d != nil {
			t.Errorf("bob's outgoing webhook delivered alice's message while she is paused: %s", d.Body)
		}

		resume := env.SendText(t, alice, dm, "!resume")
		mustBotReply(t, env, alice, dm, resume, "Resumed.")
		after := env.SendText(t, alice, roomID, "after the resume")
		receiver.WaitFor(t, deliveryWait, deliveryOf(aliceOut.ID, after))
		if d := findDelivery(receiver, deliveryOf(aliceOut.ID, paused)); d != nil {
			t.Errorf("alice's message sent while paused was delivered after the resume: %s", d.Body)
		}
	})
}

// hookDeliveries returns the deliveries the receiver got from hook hookID, in order.
func hookDeliveries(r *e2e.Receiver, hookID string) []*e2e.Delivery {
	var ds []*e2e.Delivery
	for _, d := range r.Deliveries() {
		if d.Header.Get("X-Custodian-Hook-ID") == hookID {
			ds = append(ds, d)
		}
	}
	return ds
}

// findDelivery returns the first delivery the receiver got that pred accepts, or nil.
func findDelivery(r *e2e.Receiver, pred func(*e2e.Delivery) bool) *e2e.Delivery {
	for _, d := range r.Deliveries() {
		if pred(d) {
			return d
		}
	}
	return nil
}

// mustCreateRoomWithPowers is mustCreateGroupRoom with extra power levels for some members.
func mustCreateRoomWithPowers(t *testing.T, env *e2e.Env, owner *mautrix.Client, powers map[*mautrix.Client]int, others ...*mautrix.Client) id.RoomID {
	t.Helper()
	bot := env.BotUserID()
	invitees := []id.UserID{bot}
	for _, other := range others {
		invitees = append(invitees, other.UserID)
	}
	users := map[id.UserID]int{owner.UserID: 100, bot: 50}
	for cli, level := range powers {
		users[cli.UserID] = level
	}
	ctx, cancel := context.WithTimeout(context.Background(), replyWait)
	defer cancel()
	resp, err := owner.CreateRoom(ctx, &mautrix.ReqCreateRoom{
		Preset:             "private_chat",
		Invite:             invitees,
		PowerLevelOverride: &event.PowerLevelsEventContent{Users: users},
	})
	if err != nil {
		t.Fatalf("creating a room as %s: %v", owner.UserID, err)
	}
	roomID := resp.RoomID
	for _, other := range others {
		env.MustSyncUntil(t, other, replyWait, e2e.IsMember(roomID, other.UserID, event.MembershipInvite))
		env.MustJoinRoom(t, other, roomID)
	}
	env.MustSyncUntil(t, owner, 60*time.Second, e2e.IsMember(roomID, bot, event.MembershipJoin))
	for _, other := range others {
		env.MustSyncUntil(t, owner, replyWait, e2e.IsMember(roomID, other.UserID, event.MembershipJoin))
		env.MustSyncUntil(t, other, replyWait, e2e.IsMember(roomID, bot, event.MembershipJoin))
	}
	return roomID
}

// TestForgetOneBridge: "!forget webhook" and "!forget webhook confirm" erase only what the
// webhook bridge holds about alice: her webhooks are gone (the URL answers 404) while her users
// row and the bot's setup record of her room remain.
func TestForgetOneBridge(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		env, alice, roomID := startWebhookGroupRoom(t, backend)
		bot := env.BotUserID()
		in := mustAddInbound(t, env, alice, roomID, "ci")
		mustPostText(t, in, "hello from CI")
		dm := in.DMRoomID
		db := env.DB(t)
		count := func(query string) int {
			t.Helper()
			var n int
			if err := db.QueryRow(query, alice.UserID).Scan(&n); err != nil {
				t.Fatalf("%s: %v", query, err)
			}
			return n
		}
		setupsBefore := count(`SELECT COUNT(*) FROM as_bot_setup WHERE inviter_mxid=$1`)
		if setupsBefore == 0 || count(`SELECT COUNT(*) FROM webhook_hook WHERE actor_mxid=$1`) == 0 {
			t.Fatalf("before the erasure alice has %d bot setups and no webhook row; want both", setupsBefore)
		}

		forget := env.SendText(t, alice, dm, "!forget webhook")
		mustBotReply(t, env, alice, dm, forget, "forget webhook confirm")
		confirm := env.SendText(t, alice, dm, "!forget webhook confirm")
		env.MustSyncUntil(t, alice, time.Minute, e2e.After(confirm, func(evt *event.Event) bool {
			return e2e.IsNoticeFrom(dm, bot)(evt) && strings.Contains(evt.Content.AsMessage().Body, "Done: I erased what webhook held about you")
		}))

		if status, answer := post(t, in.URL, "application/json", []byte(`{"text":"after forget"}`)); status != http.StatusNotFound {
			t.Errorf("POST to alice's webhook after forgetting the webhook bridge: status %d, want 404: %s", status, answer)
		}
		if n := count(`SELECT COUNT(*) FROM webhook_hook WHERE actor_mxid=$1`); n != 0 {
			t.Errorf("alice still has %d webhook rows after forgetting the webhook bridge", n)
		}
		if n := count(`SELECT COUNT(*) FROM users WHERE mxid=$1`); n != 1 {
			t.Errorf("alice has %d users rows after forgetting only the webhook bridge, want 1", n)
		}
		if n := count(`SELECT COUNT(*) FROM as_bot_setup WHERE inviter_mxid=$1`); n != setupsBefore {
			t.Errorf("alice has %d bot setup rows after forgetting only the webhook bridge, want %d", n, setupsBefore)
		}
	})
}

// TestRetentionSweeps: with privacy.activity_retention 2s, the activity record of alice's !ping
// is deleted by the retention sweeper. privacy.sweep_interval cannot be set below 1m
// (config.go), and the sweeper first runs one interval after the start, so this waits up to
// 90 s.
func TestRetentionSweeps(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		env := e2e.New(t, backend,
			e2e.WithConfigValue("privacy.activity_retention", "2s"),
			e2e.WithConfigValue("privacy.sweep_interval", "1m"))
		alice := env.Register(t, "alice")
		dm := env.MustCreateDMWithBot(t, alice)
		ping := env.SendText(t, alice, dm, "!ping")
		env.MustWaitForMessage(t, alice, dm, env.BotUserID(), ping, replyWait)

		activity := func() (int, error) {
			var n int
			err := env.DB(t).QueryRow(`SELECT COUNT(*) FROM as_activity WHERE event_id=$1`, ping).Scan(&n)
			return n, err
		}
		e2e.Eventually(t, 10*time.Second, func() error {
			if n, err := activity(); err != nil || n != 1 {
				return fmt.Errorf("as_activity has %d rows for the !ping (%v), want 1", n, err)
			}
			return nil
		})
		start := time.Now()
		e2e.Eventually(t, 90*time.Second, func() error {
			if n, err := activity(); err != nil || n != 0 {
				return fmt.Errorf("as_activity still has %d rows for the !ping (%v)", n, err)
			}
			return nil
		})
		t.Logf("the activity record was swept %v after it was seen", time.Since(start).Round(100*time.Millisecond))
	})
}

// TestDeactivationWithoutAdminAccess: with no homeserver admin access configured, a leave
// followed by a missing profile erases nobody. Synapse answers 404 for the profile of an erased
// account, but also for any active local user with no display name and no avatar (carol here).
// Both become deactivation suspects: one log line each, listed in the admin API, data kept.
func TestDeactivationWithoutAdminAccess(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		tokenFile := filepath.Join(t.TempDir(), "admin-api.token")
		token := e2e.RandomHex(t, 24)
		if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		listen := fmt.Sprintf("127.0.0.1:%d", e2e.FreePort(t))
		env := e2e.New(t, backend, e2e.WithWebhookBridge(t),
			e2e.WithConfigValue("admin_api.listen", listen),
			e2e.WithConfigValue("admin_api.token_file", tokenFile))
		env.MustWaitForLog(t, "Account deactivations cannot be confirmed", 10*time.Second)
		// The admin only makes the deactivation call; Custodian is not given its token.
		admin := env.RegisterAdmin(t, "admin")
		alice := env.Register(t, "alice")
		bob := env.Register(t, "bob")
		carol := env.Register(t, "carol")
		aliceRoom := mustCreateGroupRoom(t, env, alice, bob)
		mustPostText(t, mustAddInbound(t, env, alice, aliceRoom, "ci"), "hello from CI")
		carolRoom := mustCreateGroupRoom(t, env, carol, bob)
		mustAddInbound(t, env, carol, carolRoom, "carols")

		// carol is active; she only has no display name (and no avatar) any more.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := carol.SetDisplayName(ctx, ""); err != nil {
			t.Fatalf("clearing carol's display name: %v", err)
		}
		if _, err := carol.GetProfile(ctx, carol.UserID); err == nil {
			t.Fatal("carol's profile still answers 200 without a display name; the test would prove nothing")
		}
		if _, err := carol.LeaveRoom(ctx, carolRoom); err != nil {
			t.Fatalf("carol leaving: %v", err)
		}
		status, body := env.HSRequest(t, http.MethodPost, "/_synapse/admin/v1/deactivate/"+alice.UserID.String(),
			admin.AccessToken, []byte(`{"erase": true}`))
		if status != http.StatusOK {
			t.Fatalf("deactivating alice: status %d: %s", status, body)
		}

		var suspects struct {
			Suspects []struct {
				User id.UserID `json:"user_id"`
			} `json:"suspects"`
		}
		e2e.Eventually(t, time.Minute, func() error {
			status, body := adminRequest(t, http.MethodGet, "http://"+listen+"/_custodian/admin/v1/deactivation-suspects", "Bearer "+token)
			if status != http.StatusOK {
				return fmt.Errorf("GET deactivation-suspects: status %d: %s", status, body)
			}
			if err := json.Unmarshal(body, &suspects); err != nil {
				return err
			}
			if len(suspects.Suspects) < 2 {
				return fmt.Errorf("deactivation suspects: %s, want alice and carol", body)
			}
			return nil
		})
		var listed []id.UserID
		for _, s := range suspects.Suspects {
			listed = append(listed, s.User)
		}
		slices.Sort(listed)
		if want := []id.UserID{alice.UserID, carol.UserID}; !slices.Equal(listed, want) {
			t.Errorf("deactivation suspects = %v, want %v", listed, want)
		}
		log := env.CustodianLog(t)
		for _, user := range []*mautrix.Client{alice, carol} {
			if n := countLogLines(log, "Account of a leaving user looks deactivated", user.UserID.String()); n != 1 {
				t.Errorf("%d log lines about the suspicion of %s, want 1", n, user.UserID)
			}
		}
		if strings.Contains(log, "Erasing user data") {
			t.Error("Custodian erased someone on a guess")
		}
		dump := env.DumpDatabase(t)
		for _, user := range []*mautrix.Client{alice, bob, carol} {
			if rows := dump.Find(user.UserID.String()); len(rows) == 0 {
				t.Errorf("no row names %s any more: a user was erased without a confirmed deactivation", user.UserID)
			}
		}
	})
}

// countLogLines counts the lines of log that contain every one of substrs.
func countLogLines(log string, substrs ...string) int {
	n := 0
	for _, line := range strings.Split(log, "\n") {
		all := true
		for _, s := range substrs {
			if !strings.Contains(line, s) {
				all = false
				break
			}
		}
		if all {
			n++
		}
	}
	return n
}

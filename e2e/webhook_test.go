//go:build e2e

package e2e_test

import (
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/e2e"
)

// TestWebhookInbound: !webhook add creates an incoming webhook whose URL reaches its creator only
// in a direct chat, never in the room; POSTs to it (JSON or plain text) appear in the room as the
// hook's ghost; a wrong token or an unknown hook gets 404.
func TestWebhookInbound(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		env, alice, roomID := startWebhookGroupRoom(t, backend)

		hook := mustAddInbound(t, env, alice, roomID, "ci")
		if !strings.HasPrefix(hook.URL, env.WebhookURL()+"/hooks/") {
			t.Errorf("webhook URL %s is not under the public URL %s", hook.URL, env.WebhookURL())
		}
		if hook.DMRoomID == roomID {
			t.Fatalf("the URL was sent in the group room")
		}

		// JSON, as in the README.
		posted := mustPostText(t, hook, "hello from CI")
		msg := env.MustSyncUntil(t, alice, deliveryWait, func(evt *event.Event) bool { return evt.ID == posted })
		if msg.RoomID != roomID || msg.Sender != ghostOf(hook.ID) || msg.Type != event.EventMessage {
			t.Errorf("posted event is %s from %s in %s, want m.room.message from %s in %s",
				msg.Type.Type, msg.Sender, msg.RoomID, ghostOf(hook.ID), roomID)
		}
		if body := msg.Content.AsMessage().Body; body != "hello from CI" {
			t.Errorf("posted message body = %q, want %q", body, "hello from CI")
		}
		if !strings.HasPrefix(msg.Sender.Localpart(), "webhook_") {
			t.Errorf("posted message sender %s is not a webhook ghost", msg.Sender)
		}

		// Plain text.
		status, answer := post(t, hook.URL, "text/plain; charset=utf-8", []byte("plain hello"))
		if status != http.StatusOK {
			t.Fatalf("plain-text POST: status %d, want 200: %s", status, answer)
		}
		env.MustSyncUntil(t, alice, deliveryWait, func(evt *event.Event) bool {
			return e2e.IsMessageFrom(roomID, ghostOf(hook.ID))(evt) && evt.Content.AsMessage().Body == "plain hello"
		})

		// Wrong tokens and unknown hooks: 404, and nothing posted.
		wrongToken := strings.Repeat("A", len(hook.Token))
		otherHook := strings.Repeat("0", len(hook.ID))
		for name, url := range map[string]string{
			"wrong token":        env.WebhookURL() + "/hooks/" + hook.ID + "/" + wrongToken,
			"token of another":   env.WebhookURL() + "/hooks/" + otherHook + "/" + hook.Token,
			"malformed token":    env.WebhookURL() + "/hooks/" + hook.ID + "/short",
			"no token":           env.WebhookURL() + "/hooks/" + hook.ID,
			"token with a typo":  hook.URL[:len(hook.URL)-1] + flipCase(hook.URL[len(hook.URL)-1:]),
			"nothing but a path": env.WebhookURL() + "/",
		} {
			status, answer := post(t, url, "application/json", []byte(`{"text":"should not be posted"}`))
			if status != http.StatusNotFound {
				t.Errorf("%s: POST status %d, want 404: %s", name, status, answer)
			}
		}

		// The room's history, as anyone in it can read it, never carried the URL or the token.
		history := eventJSON(t, env.RoomHistory(t, alice, roomID))
		if strings.Contains(history, hook.Token) || strings.Contains(history, "/hooks/"+hook.ID) {
			t.Errorf("the group room's history contains the webhook's URL or token")
		}
		if strings.Contains(history, "should not be posted") {
			t.Errorf("a refused POST was posted into the room")
		}
		if !strings.Contains(eventJSON(t, env.RoomHistory(t, alice, hook.DMRoomID)), hook.Token) {
			t.Errorf("the direct chat's history does not contain the token (the DM check above found the wrong message?)")
		}
	})
}

// flipCase changes the case of an ASCII letter, or replaces anything else with "x".
func flipCase(s string) string {
	switch c := s[0]; {
	case c >= 'a' && c <= 'z':
		return strings.ToUpper(s)
	case c >= 'A' && c <= 'Z':
		return strings.ToLower(s)
	case c == 'x':
		return "y"
	default:
		return "x"
	}
}

// TestWebhookOutbound: !webhook out makes the room's messages arrive at a receiver as signed JSON
// (verified with the signing secret from the direct chat, as the README says); the bot redacts
// the command, which carries the URL, without that redaction purging the hook; a redaction of a
// bridged message arrives as a deletion notice; commands are never passed on.
func TestWebhookOutbound(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		env := e2e.New(t, backend, e2e.WithWebhookBridge(t))
		receiver := e2e.NewReceiver(t)
		alice := env.Register(t, "alice")
		roomID := mustCreateGroupRoom(t, env, alice, env.Register(t, "bob"))

		target := receiver.URL("/in/" + e2e.RandomHex(t, 16) + "?token=" + e2e.RandomHex(t, 16))
		targetURL, err := url.Parse(target)
		if err != nil {
			t.Fatal(err)
		}
		hook := mustAddOutbound(t, env, alice, roomID, "relay", target)

		// The bot redacted the command, since it carries the URL; that redaction (by our own
		// bot) did not purge the hook.
		env.MustSyncUntil(t, alice, replyWait, func(evt *event.Event) bool {
			return evt.RoomID == roomID && evt.Type == event.EventRedaction && evt.Sender == env.BotUserID() &&
				redactedID(evt) == hook.Command
		})
		if !hookExists(t, env, hook.ID) {
			t.Fatalf("the bot's redaction of the command purged the outgoing webhook")
		}
		history := eventJSON(t, env.RoomHistory(t, alice, roomID))
		if strings.Contains(history, strings.TrimPrefix(target, "http://")) {
			t.Errorf("the room's history still contains the outgoing webhook's URL after the bot's redaction")
		}
		if strings.Contains(history, hook.SigningSecret) {
			t.Errorf("the room's history contains the signing secret")
		}

		canary := "body-canary-" + e2e.RandomHex(t, 8)
		msgID := env.SendText(t, alice, roomID, canary)
		d := receiver.WaitFor(t, deliveryWait, deliveryOf(hook.ID, msgID))
		checkSignature(t, d, hook.SigningSecret)
		if ct := d.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Errorf("delivery Content-Type %q, want application/json", ct)
		}
		body := parseDelivery(t, d)
		if body.EventID != msgID || body.RoomID != roomID || body.Sender != alice.UserID || body.Type != "m.room.message" ||
			body.Content == nil || body.Content.Body != canary || body.Content.MsgType != "m.text" {
			t.Errorf("delivery body %s does not describe alice's message %s (%q) in %s", d.Body, msgID, canary, roomID)
		}

		// A command is addressed to the bot, not to the room's audience: it is not passed on.
		ping := env.SendText(t, alice, roomID, "!ping")
		env.MustSyncUntil(t, alice, replyWait, e2e.IsReplyTo(roomID, env.BotUserID(), ping))

		// Deleting a bridged message sends a deletion notice.
		redaction := env.MustRedact(t, alice, roomID, msgID)
		d = receiver.WaitFor(t, deliveryWait, deliveryOf(hook.ID, redaction))
		checkSignature(t, d, hook.SigningSecret)
		body = parseDelivery(t, d)
		if body.Type != "m.room.redaction" || body.Redacts != msgID || body.Content != nil {
			t.Errorf("deletion notice %s, want type m.room.redaction redacting %s without content", d.Body, msgID)
		}

		// Messages sent afterwards still arrive, after the notice.
		after := env.SendText(t, alice, roomID, "after the deletion")
		receiver.WaitFor(t, deliveryWait, deliveryOf(hook.ID, after))

		for _, d := range receiver.Deliveries() {
			switch s := string(d.Body); {
			case strings.Contains(s, "!webhook"), strings.Contains(s, "!ping"):
				t.Errorf("a command was delivered to the outgoing webhook: %s", s)
			case strings.Contains(s, hook.SigningSecret):
				t.Errorf("a delivery carries the signing secret")
			}
			if d.Path != targetURL.Path || d.Query != targetURL.RawQuery {
				t.Errorf("delivery went to %s?%s, want %s?%s", d.Path, d.Query, targetURL.Path, targetURL.RawQuery)
			}
		}
		var order []string
		for _, d := range receiver.Deliveries() {
			order = append(order, d.Header.Get("X-Custodian-Event-ID"))
		}
		if want := []string{string(msgID), string(redaction), string(after)}; !slices.Equal(order, want) {
			t.Errorf("the receiver got events %v, want %v (message, deletion notice, message)", order, want)
		}
	})
}

// redactedID returns the event a redaction redacts (content.redacts in room v11, the top-level
// redacts before).
func redactedID(evt *event.Event) id.EventID {
	if content, ok := evt.Content.Parsed.(*event.RedactionEventContent); ok && content.Redacts != "" {
		return content.Redacts
	}
	return evt.Redacts
}

// TestWebhookRedactionPurge: redacting the !webhook add command removes the webhook (its URL
// answers 404) and the bot says so in the room; redacting the !webhook out command (which the
// bot had already redacted, without purging) removes the outgoing webhook, and nothing more is
// delivered.
func TestWebhookRedactionPurge(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		env := e2e.New(t, backend, e2e.WithWebhookBridge(t))
		receiver := e2e.NewReceiver(t)
		bot := env.BotUserID()
		alice := env.Register(t, "alice")
		roomID := mustCreateGroupRoom(t, env, alice, env.Register(t, "bob"))
		in := mustAddInbound(t, env, alice, roomID, "ci")
		out := mustAddOutbound(t, env, alice, roomID, "relay", receiver.URL("/purge/"+e2e.RandomHex(t, 8)))
		mustPostText(t, in, "before the purge")
		before := env.SendText(t, alice, roomID, "before the purge")
		receiver.WaitFor(t, deliveryWait, deliveryOf(out.ID, before))

		redaction := env.MustRedact(t, alice, roomID, in.Command)
		mustWaitForNotice(t, env, alice, roomID, redaction, func(msg *event.MessageEventContent) error {
			if !strings.Contains(msg.Body, "Removed the configuration created by that message") || !strings.Contains(msg.Body, "webhook") {
				return fmt.Errorf("does not announce the purge of the webhook configuration")
			}
			return nil
		})
		if status, answer := post(t, in.URL, "application/json", []byte(`{"text":"after the purge"}`)); status != http.StatusNotFound {
			t.Errorf("POST to the purged webhook: status %d, want 404: %s", status, answer)
		}
		if hookExists(t, env, in.ID) {
			t.Errorf("webhook_hook still has the purged incoming webhook")
		}
		if !hookExists(t, env, out.ID) {
			t.Fatalf("redacting !webhook add also purged the outgoing webhook")
		}

		redaction = env.MustRedact(t, alice, roomID, out.Command)
		mustWaitForNotice(t, env, alice, roomID, redaction, func(msg *event.MessageEventContent) error {
			if !strings.Contains(msg.Body, "Removed the configuration created by that message") {
				return fmt.Errorf("does not announce the purge")
			}
			return nil
		})
		if hookExists(t, env, out.ID) {
			t.Errorf("webhook_hook still has the purged outgoing webhook")
		}
		// Nothing sent after the purge is delivered. A barrier: the bot answers a !ping sent
		// after the message, and the room's events are handled in order.
		after := env.SendText(t, alice, roomID, "after the purge")
		ping := env.SendText(t, alice, roomID, "!ping")
		env.MustSyncUntil(t, alice, replyWait, e2e.IsReplyTo(roomID, bot, ping))
		time.Sleep(500 * time.Millisecond) // a delivery already queued would take milliseconds
		for _, d := range receiver.Deliveries() {
			if d.Header.Get("X-Custodian-Event-ID") == string(after) {
				t.Errorf("a message sent after the outgoing webhook was purged was delivered")
			}
			if d.Header.Get("X-Custodian-Event-ID") == string(redaction) {
				t.Errorf("the redaction of the webhook's own command was delivered as a deletion notice")
			}
		}
	})
}

// TestNoPlaintextSecrets: after incoming and outgoing webhooks were created, used and rotated,
// a dump of every table holds no incoming token, no outgoing URL (nor its secret parts), no
// signing secret and no message body, in plain text or hex or base64; and Custodian's log
// (at debug level, across the whole run) holds none of them either.
func TestNoPlaintextSecrets(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		env := e2e.New(t, backend, e2e.WithWebhookBridge(t))
		receiver := e2e.NewReceiver(t)
		alice := env.Register(t, "alice")
		bob := env.Register(t, "bob")
		roomID := mustCreateGroupRoom(t, env, alice, bob)

		pathSecret, querySecret := "path-"+e2e.RandomHex(t, 16), "query-"+e2e.RandomHex(t, 16)
		in := mustAddInbound(t, env, alice, roomID, "ci")
		out := mustAddOutbound(t, env, alice, roomID, "relay", receiver.URL("/np/"+pathSecret+"?token="+querySecret))
		secrets := map[string]string{
			"incoming token":            in.Token,
			"incoming URL":              in.URL,
			"outgoing URL":              out.URL,
			"outgoing URL's path":       pathSecret,
			"outgoing URL's query":      querySecret,
			"signing secret":            out.SigningSecret,
			"outgoing URL without http": strings.TrimPrefix(out.URL, "http://"),
		}
		var bodies []string
		canary := func(kind string) string {
			body := kind + "-canary-" + e2e.RandomHex(t, 8)
			bodies = append(bodies, body)
			return body
		}

		// Messages from the room to the outgoing webhook, and a redaction of one of them.
		var sent []id.EventID
		for _, cli := range []*mautrix.Client{alice, bob, alice} {
			sent = append(sent, env.SendText(t, cli, roomID, canary("body")))
		}
		sent = append(sent, env.MustRedact(t, alice, roomID, sent[0]))
		// Posts to the incoming webhook, JSON and plain text.
		posted := mustPostText(t, in, canary("inbound"))
		if status, answer := post(t, in.URL, "text/plain", []byte(canary("inbound-plain"))); status != http.StatusOK {
			t.Fatalf("plain-text POST: status %d: %s", status, answer)
		}
		env.MustSyncUntil(t, alice, deliveryWait, func(evt *event.Event) bool { return evt.ID == posted })

		// Rotating both: the new secrets must not be stored either.
		rotate := env.SendText(t, alice, roomID, "!webhook rotate ci")
		mustBotReply(t, env, alice, roomID, rotate, "Rotated the webhook")
		dm := mustReadBotDM(t, env, alice, roomID, "/hooks/"+in.ID+"/", in.Token)
		m := tokenPattern.FindStringSubmatch(dm.Content.AsMessage().Body)
		if m == nil {
			t.Fatalf("no new URL after !webhook rotate:\n%s", dm.Content.AsMessage().Body)
		}
		secrets["rotated incoming token"] = m[2]
		rotate = env.SendText(t, alice, roomID, "!webhook rotate relay")
		mustBotReply(t, env, alice, roomID, rotate, "Rotated the webhook")
		dm = mustReadBotDM(t, env, alice, roomID, out.ID, out.SigningSecret)
		newSecret := signingSecretPattern.FindString(dm.Content.AsMessage().Body)
		if newSecret == "" || newSecret == out.SigningSecret {
			t.Fatalf("no new signing secret after !webhook rotate:\n%s", dm.Content.AsMessage().Body)
		}
		secrets["rotated signing secret"] = newSecret
		last := env.SendText(t, bob, roomID, canary("body-after-rotation"))
		sent = append(sent, last)
		d := receiver.WaitFor(t, deliveryWait, deliveryOf(out.ID, last))
		checkSignature(t, d, newSecret)
		for _, evt := range sent {
			receiver.WaitFor(t, deliveryWait, deliveryOf(out.ID, evt))
		}

		waitInboxEmpty(t, env)
		dump := env.DumpDatabase(t)
		if len(dump.Find(in.ID)) == 0 || len(dump.Find(alice.UserID.String())) == 0 {
			t.Fatalf("the dump has no row with the hook or alice: it is not a dump of this run")
		}
		bodySecrets := map[string]string{}
		for i, body := range bodies {
			bodySecrets[fmt.Sprintf("message body %d", i)] = body
		}
		for _, row := range dump.Rows {
			if found := findSecrets(row.Text, secrets); len(found) > 0 {
				t.Errorf("table %s holds %v", row.Table, found)
			}
			for what, body := range bodySecrets {
				if strings.Contains(row.Text, body) {
					t.Errorf("table %s holds %s (%q)", row.Table, what, body)
				}
			}
		}

		logData, err := os.ReadFile(env.LogPath())
		if err != nil {
			t.Fatal(err)
		}
		logText := string(logData)
		if !strings.Contains(logText, in.ID) || !strings.Contains(logText, "Handling event") {
			t.Fatalf("Custodian's log has no line about the hook or the events: is it the log of this run?")
		}
		if found := findSecrets(logText, secrets); len(found) > 0 {
			t.Errorf("Custodian's log holds %v", found)
		}
		for what, body := range bodySecrets {
			if strings.Contains(logText, body) {
				t.Errorf("Custodian's log holds %s (%q)", what, body)
			}
		}
	})
}

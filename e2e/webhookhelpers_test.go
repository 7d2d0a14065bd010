//go:build e2e

package e2e_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/e2e"
)

// Deadlines of what the webhook tests wait for.
const (
	replyWait    = 30 * time.Second // a command's reply, a direct message
	deliveryWait = 30 * time.Second // an outbound delivery, a posted message
)

// inboundHook is an incoming webhook a test created with [mustAddInbound].
type inboundHook struct {
	Name     string
	ID       string
	Command  id.EventID // the !webhook add event
	URL      string     // <public_url>/hooks/<id>/<token>
	Token    string
	DMRoomID id.RoomID // where the bot sent the URL
}

// outboundHook is an outgoing webhook a test created with [mustAddOutbound].
type outboundHook struct {
	Name          string
	ID            string
	Command       id.EventID // the !webhook out event
	URL           string     // the receiver URL the messages go to
	SigningSecret string
	DMRoomID      id.RoomID
}

var (
	tokenPattern         = regexp.MustCompile(`/hooks/([0-9a-f]{16})/([A-Za-z0-9_-]{43})`)
	signingSecretPattern = regexp.MustCompile(`\b[0-9a-f]{64}\b`)
)

// startWebhookGroupRoom starts Custodian on backend with the webhook bridge, registers alice and
// bob, and returns the environment, alice and her group room with bob (mustCreateGroupRoom).
func startWebhookGroupRoom(t *testing.T, backend e2e.Backend) (*e2e.Env, *mautrix.Client, id.RoomID) {
	t.Helper()
	env := e2e.New(t, backend, e2e.WithWebhookBridge(t))
	alice := env.Register(t, "alice")
	return env, alice, mustCreateGroupRoom(t, env, alice, env.Register(t, "bob"))
}

// mustCreateGroupRoom creates a private room as owner with the Custodian bot and the other
// users, who join, and waits until the bot has joined. Two things make it a room where the
// !webhook commands work:
//   - a third member: a room whose joined members are only its creator and the bot can count as
//     a direct chat with the bot (appservice/commands.go, isDM), where room commands refuse to
//     run;
//   - the bot has the redact power level (50), as a moderator: "!webhook out <url>" carries a
//     secret, and the bot refuses to run it unless it can redact the message.
func mustCreateGroupRoom(t *testing.T, env *e2e.Env, owner *mautrix.Client, others ...*mautrix.Client) id.RoomID {
	t.Helper()
	bot := env.BotUserID()
	invitees := []id.UserID{bot}
	for _, other := range others {
		invitees = append(invitees, other.UserID)
	}
	ctx, cancel := context.WithTimeout(context.Background(), replyWait)
	defer cancel()
	resp, err := owner.CreateRoom(ctx, &mautrix.ReqCreateRoom{
		Preset: "private_chat",
		Invite: invitees,
		PowerLevelOverride: &event.PowerLevelsEventContent{
			Users: map[id.UserID]int{owner.UserID: 100, bot: 50},
		},
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
	}
	return roomID
}

// mustAddInbound sends "!webhook add <name>" as cli in roomID, waits for the bot's reply, and
// reads the URL from the direct chat the bot sends it to (joining its invite).
func mustAddInbound(t *testing.T, env *e2e.Env, cli *mautrix.Client, roomID id.RoomID, name string) *inboundHook {
	t.Helper()
	cmd := env.SendText(t, cli, roomID, "!webhook add "+name)
	mustBotReply(t, env, cli, roomID, cmd, "Created the incoming webhook")
	hookID, source := hookByName(t, env, roomID, name)
	if source != cmd {
		t.Fatalf("webhook %s records source event %s, want the command %s", name, source, cmd)
	}
	dm := mustReadBotDM(t, env, cli, roomID, "/hooks/"+hookID+"/")
	msg := dm.Content.AsMessage()
	m := tokenPattern.FindStringSubmatch(msg.Body)
	if m == nil || m[1] != hookID {
		t.Fatalf("the bot's direct message has no URL of hook %s:\n%s", hookID, msg.Body)
	}
	hook := &inboundHook{Name: name, ID: hookID, Command: cmd, Token: m[2], DMRoomID: dm.RoomID,
		URL: env.WebhookURL() + "/hooks/" + hookID + "/" + m[2]}
	if !strings.Contains(msg.Body, hook.URL) {
		t.Fatalf("the bot's direct message does not carry the URL %s under the public URL %s:\n%s", hook.URL, env.WebhookURL(), msg.Body)
	}
	return hook
}

// mustAddOutbound sends "!webhook out <target> <name>" as cli in roomID, waits for the bot's reply,
// and reads the signing secret from the bot's direct chat.
func mustAddOutbound(t *testing.T, env *e2e.Env, cli *mautrix.Client, roomID id.RoomID, name, target string) *outboundHook {
	t.Helper()
	cmd := env.SendText(t, cli, roomID, "!webhook out "+target+" "+name)
	mustBotReply(t, env, cli, roomID, cmd, "Created the outgoing webhook")
	hookID, source := hookByName(t, env, roomID, name)
	if source != cmd {
		t.Fatalf("webhook %s records source event %s, want the command %s", name, source, cmd)
	}
	dm := mustReadBotDM(t, env, cli, roomID, hookID)
	msg := dm.Content.AsMessage()
	secret := signingSecretPattern.FindString(msg.Body)
	if secret == "" {
		t.Fatalf("the bot's direct message about hook %s has no signing secret:\n%s", hookID, msg.Body)
	}
	return &outboundHook{Name: name, ID: hookID, Command: cmd, URL: target, SigningSecret: secret, DMRoomID: dm.RoomID}
}

// mustBotReply waits for the bot's reply to the command cmd and fails the test unless its body
// contains want.
func mustBotReply(t *testing.T, env *e2e.Env, cli *mautrix.Client, roomID id.RoomID, cmd id.EventID, want string) *event.Event {
	t.Helper()
	reply := env.MustSyncUntil(t, cli, replyWait, e2e.IsReplyTo(roomID, env.BotUserID(), cmd))
	if body := reply.Content.AsMessage().Body; !strings.Contains(body, want) {
		t.Fatalf("the bot answered %s with %q, want a message containing %q", cmd, body, want)
	}
	return reply
}

// mustReadBotDM waits for a notice from the bot that contains want, and none of notWant, in a
// room other than groupRoom, joining every room the bot invites cli to on the way (the bot sends secrets in a
// direct chat it opens itself), and returns it.
func mustReadBotDM(t *testing.T, env *e2e.Env, cli *mautrix.Client, groupRoom id.RoomID, want string, notWant ...string) *event.Event {
	t.Helper()
	bot := env.BotUserID()
	deadline := time.Now().Add(replyWait)
	joined := map[id.RoomID]bool{}
	for {
		evt, err := env.SyncUntil(cli, time.Until(deadline), func(evt *event.Event) bool {
			if evt.RoomID == groupRoom || evt.Sender != bot {
				return false
			}
			if evt.Type == event.StateMember {
				return !joined[evt.RoomID] && evt.GetStateKey() == cli.UserID.String() &&
					evt.Content.AsMember().Membership == event.MembershipInvite
			}
			if !e2e.IsNoticeFrom(evt.RoomID, bot)(evt) {
				return false
			}
			msg := evt.Content.AsMessage()
			for _, s := range notWant {
				if strings.Contains(msg.Body, s) {
					return false
				}
			}
			return strings.Contains(msg.Body, want) || strings.Contains(msg.FormattedBody, want)
		})
		if err != nil {
			t.Fatalf("no direct message from the bot containing %q: %v", want, err)
		}
		if evt.Type == event.StateMember {
			// Joining a room twice is harmless, so an invite accepted in an earlier call is
			// simply joined again. An old management room cli has left since, and the bot too,
			// cannot be joined any more: the bot sends the next notice to a new room instead, so
			// the failure is logged and the wait for the notice decides.
			joined[evt.RoomID] = true
			ctx, cancel := context.WithTimeout(context.Background(), replyWait)
			_, err := cli.JoinRoomByID(ctx, evt.RoomID)
			cancel()
			if err != nil {
				t.Logf("%s could not join %s, which the bot invited it to earlier: %v", cli.UserID, evt.RoomID, err)
			}
			continue
		}
		return evt
	}
}

// hookByName returns the ID and source event of the room's webhook called name.
func hookByName(t *testing.T, env *e2e.Env, roomID id.RoomID, name string) (string, id.EventID) {
	t.Helper()
	var hookID string
	var source id.EventID
	err := env.DB(t).QueryRow(`SELECT id, source_event_id FROM webhook_hook WHERE room_id=$1 AND name=$2`, roomID, name).Scan(&hookID, &source)
	if err != nil {
		t.Fatalf("looking up webhook %q of %s: %v", name, roomID, err)
	}
	return hookID, source
}

// hookExists reports whether webhook_hook has an unrevoked row with the given ID.
func hookExists(t *testing.T, env *e2e.Env, hookID string) bool {
	t.Helper()
	var revoked sql.NullInt64
	err := env.DB(t).QueryRow(`SELECT revoked_at FROM webhook_hook WHERE id=$1`, hookID).Scan(&revoked)
	if errors.Is(err, sql.ErrNoRows) {
		return false
	} else if err != nil {
		t.Fatalf("looking up webhook %s: %v", hookID, err)
	}
	return !revoked.Valid
}

// post POSTs body with the given content type to url and returns the status and answer.
func post(t *testing.T, url, contentType string, body []byte) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatalf("building POST: %v", err)
	}
	req.Header.Set("Content-Type", contentType)
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("POST to the webhook listener: %v", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatalf("reading the webhook listener's answer: %v", err)
	}
	return resp.StatusCode, data
}

// mustPostText posts {"text": text} to an inbound hook, expects 200 with an event ID and returns
// that ID.
func mustPostText(t *testing.T, hook *inboundHook, text string) id.EventID {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"text": text})
	status, answer := post(t, hook.URL, "application/json", body)
	if status != http.StatusOK {
		t.Fatalf("POST to webhook %s: status %d, want 200: %s", hook.Name, status, answer)
	}
	var ok struct {
		EventID id.EventID `json:"event_id"`
	}
	if err := json.Unmarshal(answer, &ok); err != nil || ok.EventID == "" {
		t.Fatalf("POST to webhook %s answered %s, want {\"event_id\": …}", hook.Name, answer)
	}
	return ok.EventID
}

// ghostOf is the user ID of an inbound hook's ghost.
func ghostOf(hookID string) id.UserID {
	return id.NewUserID("webhook_"+hookID, e2e.Domain)
}

// outboundBody is the JSON an outbound hook delivers.
type outboundBody struct {
	EventID id.EventID `json:"event_id"`
	RoomID  id.RoomID  `json:"room_id"`
	Sender  id.UserID  `json:"sender"`
	Type    string     `json:"type"`
	Content *struct {
		MsgType string `json:"msgtype"`
		Body    string `json:"body"`
	} `json:"content"`
	Redacts id.EventID `json:"redacts"`
}

// parseDelivery decodes a delivery's body, failing the test if it is not the documented JSON.
func parseDelivery(t *testing.T, d *e2e.Delivery) *outboundBody {
	t.Helper()
	var body outboundBody
	if err := json.Unmarshal(d.Body, &body); err != nil {
		t.Fatalf("outbound delivery is not JSON: %v: %s", err, d.Body)
	}
	return &body
}

// deliveryOf matches the delivery of Matrix event eventID by hook hookID.
func deliveryOf(hookID string, eventID id.EventID) func(*e2e.Delivery) bool {
	return func(d *e2e.Delivery) bool {
		return d.Header.Get("X-Custodian-Hook-ID") == hookID && d.Header.Get("X-Custodian-Event-ID") == string(eventID)
	}
}

// checkSignature checks a delivery's X-Custodian-Signature against the signing secret, as a
// receiver following bridges/webhook/README.md would: HMAC-SHA256 of the raw body, keyed with
// the secret's text, compared in constant time.
func checkSignature(t *testing.T, d *e2e.Delivery, secret string) {
	t.Helper()
	header := d.Header.Get("X-Custodian-Signature")
	got, ok := strings.CutPrefix(header, "sha256=")
	if !ok {
		t.Errorf("delivery has X-Custodian-Signature %q, want sha256=<hex>", header)
		return
	}
	gotMAC, err := hex.DecodeString(got)
	if err != nil {
		t.Errorf("delivery's signature %q is not hex", header)
		return
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(d.Body)
	if !hmac.Equal(gotMAC, mac.Sum(nil)) {
		t.Errorf("delivery's signature does not verify with the signing secret from the direct message")
	}
	wrong := hmac.New(sha256.New, []byte(secret+"x"))
	wrong.Write(d.Body)
	if hmac.Equal(gotMAC, wrong.Sum(nil)) {
		t.Errorf("delivery's signature also verifies with another secret")
	}
}

// encodings returns s and the forms a careless implementation might store it in.
func encodings(s string) []string {
	return []string{
		s,
		hex.EncodeToString([]byte(s)),
		base64.StdEncoding.EncodeToString([]byte(s)),
		base64.RawURLEncoding.EncodeToString([]byte(s)),
	}
}

// findSecrets lists which of the named values appear in text, in any of their encodings.
func findSecrets(text string, secrets map[string]string) []string {
	var found []string
	lower := strings.ToLower(text)
	for what, value := range secrets {
		for i, enc := range encodings(value) {
			if strings.Contains(text, enc) || (i == 1 && strings.Contains(lower, strings.ToLower(enc))) {
				found = append(found, fmt.Sprintf("%s (encoding %d)", what, i))
				break
			}
		}
	}
	return found
}

// eventJSON renders events as JSON, for searching a room's history.
func eventJSON(t *testing.T, events []*event.Event) string {
	t.Helper()
	var sb strings.Builder
	for _, evt := range events {
		data, err := json.Marshal(evt)
		if err != nil {
			t.Fatalf("encoding event %s: %v", evt.ID, err)
		}
		sb.Write(data)
		sb.WriteByte('\n')
	}
	return sb.String()
}

// waitInboxEmpty waits until Custodian has handled every event it acknowledged (as_inbox is
// empty), at most 30 s.
func waitInboxEmpty(t *testing.T, env *e2e.Env) {
	t.Helper()
	e2e.Eventually(t, 30*time.Second, func() error {
		var n int
		if err := env.DB(t).QueryRow(`SELECT COUNT(*) FROM as_inbox`).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("as_inbox holds %d events", n)
		}
		return nil
	})
}

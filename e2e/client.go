//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// requestTimeout bounds each client request the harness makes on a test's behalf.
const requestTimeout = 30 * time.Second

// syncFilter asks for long timelines (Synapse still sends at most 100 events per room; see
// fetchGap) and leaves out what tests never look at.
const syncFilter = `{"room":{"timeline":{"limit":1000}},"presence":{"not_types":["*"]},"account_data":{"not_types":["*"]}}`

// Register creates the user localpart on the test's Synapse with the shared-secret admin API and
// returns a client logged in as them. The password is available from [Env.Password].
func (env *Env) Register(t testing.TB, localpart string) *mautrix.Client {
	t.Helper()
	return env.register(t, localpart, false)
}

// RegisterAdmin is [Env.Register] for a homeserver admin, who may call Synapse's admin API.
func (env *Env) RegisterAdmin(t testing.TB, localpart string) *mautrix.Client {
	t.Helper()
	return env.register(t, localpart, true)
}

// Password returns the password [Env.Register] gave user, or "" for a user it did not create.
func (env *Env) Password(user id.UserID) string {
	env.mu.Lock()
	defer env.mu.Unlock()
	return env.passwords[user]
}

func (env *Env) register(t testing.TB, localpart string, admin bool) *mautrix.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	endpoint := env.HomeserverURL() + "/_synapse/admin/v1/register"

	var nonce struct {
		Nonce string `json:"nonce"`
	}
	if err := doJSON(ctx, http.MethodGet, endpoint, "", nil, &nonce); err != nil {
		t.Fatalf("registering %s: getting a nonce: %v", localpart, err)
	}
	password := "pw-" + localpart + "-" + randomHex(t, 8)
	adminWord := "notadmin"
	if admin {
		adminWord = "admin"
	}
	mac := hmac.New(sha1.New, []byte(env.synapse.sharedSecret))
	mac.Write([]byte(nonce.Nonce + "\x00" + localpart + "\x00" + password + "\x00" + adminWord))
	req := map[string]any{
		"nonce":    nonce.Nonce,
		"username": localpart,
		"password": password,
		"admin":    admin,
		"mac":      hex.EncodeToString(mac.Sum(nil)),
	}
	var resp struct {
		UserID      id.UserID   `json:"user_id"`
		AccessToken string      `json:"access_token"`
		DeviceID    id.DeviceID `json:"device_id"`
	}
	if err := doJSON(ctx, http.MethodPost, endpoint, "", req, &resp); err != nil {
		t.Fatalf("registering %s: %v", localpart, err)
	}
	cli, err := mautrix.NewClient(env.HomeserverURL(), resp.UserID, resp.AccessToken)
	if err != nil {
		t.Fatalf("creating a client for %s: %v", resp.UserID, err)
	}
	cli.DeviceID = resp.DeviceID
	cli.Client = &http.Client{Timeout: 2 * time.Minute}

	env.mu.Lock()
	env.passwords[resp.UserID] = password
	env.clients[cli] = &clientState{}
	env.mu.Unlock()
	return cli
}

// clientState is what the harness remembers of a client's syncs: the next_batch token and every
// event received so far, in timeline order, without duplicates.
type clientState struct {
	mu      sync.Mutex
	since   string
	history []*event.Event
	seen    map[id.EventID]bool
}

func (env *Env) state(cli *mautrix.Client) *clientState {
	env.mu.Lock()
	defer env.mu.Unlock()
	st, ok := env.clients[cli]
	if !ok {
		st = &clientState{}
		env.clients[cli] = st
	}
	return st
}

// ErrSyncTimeout is wrapped by the error [Env.SyncUntil] returns when its deadline passes
// before the predicate is satisfied.
var ErrSyncTimeout = errors.New("e2e: sync deadline passed")

// SyncUntil syncs cli until pred returns true for an event and returns that event. pred is called
// exactly once per event, in order: first for every event cli has received in earlier calls (the
// harness keeps them), then for new ones as they arrive. So pred sees the same event again in a
// later call, and should match something specific (an event ID, a reply relation), or be a
// stateful predicate built fresh for each call, such as one from [After].
//
// Events come from joined rooms' state and timelines, invited rooms' stripped state and left
// rooms' timelines; each has RoomID set and its content parsed where mautrix knows the type.
// Synapse sends at most 100 timeline events of a room per sync; when it leaves a gap (a limited
// timeline), SyncUntil fills it from /messages, so no event is ever skipped.
//
// SyncUntil waits at most timeout and then returns an error wrapping [ErrSyncTimeout].
// Concurrent calls for the same client wait for each other.
func (env *Env) SyncUntil(cli *mautrix.Client, timeout time.Duration, pred func(evt *event.Event) bool) (*event.Event, error) {
	st := env.state(cli)
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, evt := range st.history {
		if pred(evt) {
			return evt, nil
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	seen := len(st.history)
	for {
		deadline, _ := ctx.Deadline()
		poll := min(time.Until(deadline), 5*time.Second)
		if poll <= 0 {
			break
		}
		resp, err := cli.FullSyncRequest(ctx, mautrix.ReqSync{
			Timeout:  int(poll.Milliseconds()),
			Since:    st.since,
			FilterID: syncFilter,
		})
		if err == nil {
			var events []*event.Event
			events, err = syncEvents(ctx, cli, st.since, resp)
			if err == nil {
				st.since = resp.NextBatch
				if found := st.add(events, pred); found != nil {
					return found, nil
				}
				continue
			}
		}
		if ctx.Err() != nil {
			break
		}
		return nil, fmt.Errorf("syncing as %s: %w", cli.UserID, err)
	}
	return nil, fmt.Errorf("%w: %s waited %v; %d events seen, %d of them in this wait; the last ones:\n%s",
		ErrSyncTimeout, cli.UserID, timeout, len(st.history), len(st.history)-seen, describeEvents(st.history, 15))
}

// add appends the events not seen before to the history and returns the first of them pred
// matches; pred is not called after a match.
func (st *clientState) add(events []*event.Event, pred func(*event.Event) bool) *event.Event {
	if st.seen == nil {
		st.seen = map[id.EventID]bool{}
	}
	var found *event.Event
	for _, evt := range events {
		if evt.ID != "" {
			if st.seen[evt.ID] {
				continue
			}
			st.seen[evt.ID] = true
		}
		st.history = append(st.history, evt)
		if found == nil && pred(evt) {
			found = evt
		}
	}
	return found
}

// MustSyncUntil is [Env.SyncUntil] that fails the test on a timeout or error.
func (env *Env) MustSyncUntil(t testing.TB, cli *mautrix.Client, timeout time.Duration, pred func(evt *event.Event) bool) *event.Event {
	t.Helper()
	evt, err := env.SyncUntil(cli, timeout, pred)
	if err != nil {
		t.Fatalf("MustSyncUntil: %v", err)
	}
	return evt
}

// MustWaitForMessage waits until a message event from sender appears in roomID after the event
// after (or anywhere, if after is empty), and returns it.
func (env *Env) MustWaitForMessage(t testing.TB, cli *mautrix.Client, roomID id.RoomID, sender id.UserID, after id.EventID, timeout time.Duration) *event.Event {
	t.Helper()
	pred := IsMessageFrom(roomID, sender)
	if after != "" {
		pred = After(after, pred)
	}
	return env.MustSyncUntil(t, cli, timeout, pred)
}

// syncEvents flattens a sync response into events in timeline order, with RoomID set and content
// parsed. For a limited timeline of an incremental sync it fetches the gap since the previous
// sync from /messages first.
func syncEvents(ctx context.Context, cli *mautrix.Client, since string, resp *mautrix.RespSync) ([]*event.Event, error) {
	var out []*event.Event
	add := func(roomID id.RoomID, events []*event.Event) {
		for _, evt := range events {
			evt.RoomID = roomID
			if evt.StateKey != nil {
				evt.Type.Class = event.StateEventType
			} else {
				evt.Type.Class = event.MessageEventType
			}
			_ = evt.Content.ParseRaw(evt.Type)
			out = append(out, evt)
		}
	}
	timeline := func(roomID id.RoomID, state []*event.Event, tl mautrix.SyncTimeline) error {
		if tl.Limited && since != "" && tl.PrevBatch != "" {
			gap, err := fetchGap(ctx, cli, roomID, tl.PrevBatch, since)
			if err != nil {
				return err
			}
			add(roomID, gap)
		}
		add(roomID, state)
		add(roomID, tl.Events)
		return nil
	}
	for roomID, room := range resp.Rooms.Invite {
		add(roomID, room.State.Events)
	}
	for roomID, room := range resp.Rooms.Join {
		if err := timeline(roomID, room.State.Events, room.Timeline); err != nil {
			return nil, err
		}
	}
	for roomID, room := range resp.Rooms.Leave {
		if err := timeline(roomID, room.State.Events, room.Timeline); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// fetchGap pages backwards through /messages from the start of a limited timeline to the
// previous sync's token, and returns the events in between, oldest first.
func fetchGap(ctx context.Context, cli *mautrix.Client, roomID id.RoomID, from, to string) ([]*event.Event, error) {
	const pageSize, maxPages = 100, 1000
	var newestFirst []*event.Event
	for range maxPages {
		resp, err := cli.Messages(ctx, roomID, from, to, mautrix.DirectionBackward, nil, pageSize)
		if err != nil {
			return nil, fmt.Errorf("filling a sync gap in %s: %w", roomID, err)
		}
		newestFirst = append(newestFirst, resp.Chunk...)
		if len(resp.Chunk) == 0 || resp.End == "" || resp.End == from {
			break
		}
		from = resp.End
	}
	oldestFirst := make([]*event.Event, 0, len(newestFirst))
	for i := len(newestFirst) - 1; i >= 0; i-- {
		oldestFirst = append(oldestFirst, newestFirst[i])
	}
	return oldestFirst, nil
}

func describeEvents(events []*event.Event, n int) string {
	if len(events) > n {
		events = events[len(events)-n:]
	}
	var b strings.Builder
	for _, evt := range events {
		fmt.Fprintf(&b, "  %s %s %s from %s", evt.RoomID, evt.ID, evt.Type.Type, evt.Sender)
		if evt.StateKey != nil {
			fmt.Fprintf(&b, " state_key=%q", *evt.StateKey)
		}
		switch evt.Type {
		case event.StateMember:
			fmt.Fprintf(&b, " membership=%s", evt.Content.AsMember().Membership)
		case event.EventMessage:
			msg := evt.Content.AsMessage()
			fmt.Fprintf(&b, " msgtype=%s reply_to=%s", msg.MsgType, msg.RelatesTo.GetReplyTo())
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// SendText sends a plain-text message as cli and returns its event ID, failing the test on error.
func (env *Env) SendText(t testing.TB, cli *mautrix.Client, roomID id.RoomID, body string) id.EventID {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	resp, err := cli.SendMessageEvent(ctx, roomID, event.EventMessage, &event.MessageEventContent{
		MsgType: event.MsgText,
		Body:    body,
	})
	if err != nil {
		t.Fatalf("sending a message as %s: %v", cli.UserID, err)
	}
	return resp.EventID
}

// MustCreateRoom creates a private room as cli, inviting invitees, and returns its ID.
func (env *Env) MustCreateRoom(t testing.TB, cli *mautrix.Client, invitees ...id.UserID) id.RoomID {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	resp, err := cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{
		Preset: "private_chat",
		Invite: invitees,
	})
	if err != nil {
		t.Fatalf("creating a room as %s: %v", cli.UserID, err)
	}
	return resp.RoomID
}

// MustCreateRoomWithBot creates a private room as cli, invites the Custodian bot and waits (up
// to 60 s) until the bot has joined.
func (env *Env) MustCreateRoomWithBot(t testing.TB, cli *mautrix.Client) id.RoomID {
	t.Helper()
	roomID := env.MustCreateRoom(t, cli, env.BotUserID())
	env.MustSyncUntil(t, cli, 60*time.Second, IsMember(roomID, env.BotUserID(), event.MembershipJoin))
	return roomID
}

// IsMember matches the m.room.member event that gives user the membership in roomID.
func IsMember(roomID id.RoomID, user id.UserID, membership event.Membership) func(*event.Event) bool {
	return func(evt *event.Event) bool {
		return evt.RoomID == roomID && evt.Type == event.StateMember &&
			evt.GetStateKey() == user.String() && evt.Content.AsMember().Membership == membership
	}
}

// IsMessageFrom matches any m.room.message event from sender in roomID.
func IsMessageFrom(roomID id.RoomID, sender id.UserID) func(*event.Event) bool {
	return func(evt *event.Event) bool {
		return evt.RoomID == roomID && evt.Sender == sender && evt.Type == event.EventMessage
	}
}

// IsNoticeFrom matches an m.notice message from sender in roomID.
func IsNoticeFrom(roomID id.RoomID, sender id.UserID) func(*event.Event) bool {
	return func(evt *event.Event) bool {
		return IsMessageFrom(roomID, sender)(evt) && evt.Content.AsMessage().MsgType == event.MsgNotice
	}
}

// IsReplyTo matches a message from sender in roomID that replies (m.relates_to.m.in_reply_to)
// to the event to.
func IsReplyTo(roomID id.RoomID, sender id.UserID, to id.EventID) func(*event.Event) bool {
	return func(evt *event.Event) bool {
		return IsMessageFrom(roomID, sender)(evt) && evt.Content.AsMessage().RelatesTo.GetReplyTo() == to
	}
}

// After matches the first event pred matches after the event with ID eventID has gone by. It
// keeps state, so build a fresh one for each [Env.SyncUntil] call.
func After(eventID id.EventID, pred func(*event.Event) bool) func(*event.Event) bool {
	passed := false
	return func(evt *event.Event) bool {
		if !passed {
			passed = evt.ID == eventID
			return false
		}
		return pred(evt)
	}
}

// Eventually calls check until it returns nil, at most for timeout, and fails the test with
// check's last error if it never does. For state that has no event to sync on, such as database
// rows.
func Eventually(t testing.TB, timeout time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	ticker := time.NewTicker(100 * time.Millisecond)
	defer ticker.Stop()
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not true within %v: %v", timeout, err)
		}
		<-ticker.C
	}
}

// doJSON makes a request with an optional bearer token and JSON body and decodes a JSON answer
// into out. A non-2xx answer is an error carrying the status and the body.
func doJSON(ctx context.Context, method, url, token string, in, out any) error {
	var body io.Reader
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: status %d: %s", method, url, resp.StatusCode, data)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: decoding the answer: %w", method, url, err)
		}
	}
	return nil
}

// MustJoinRoom joins cli to roomID (an invite it has, or a public room), failing the test on
// error.
func (env *Env) MustJoinRoom(t testing.TB, cli *mautrix.Client, roomID id.RoomID) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	if _, err := cli.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatalf("%s joining %s: %v", cli.UserID, roomID, err)
	}
}

// MustCreateDMWithBot creates a direct chat (is_direct invite, trusted_private_chat) between cli
// and the Custodian bot, waits (up to 60 s) until the bot has joined, and returns its ID.
func (env *Env) MustCreateDMWithBot(t testing.TB, cli *mautrix.Client) id.RoomID {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	resp, err := cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{
		Preset:   "trusted_private_chat",
		IsDirect: true,
		Invite:   []id.UserID{env.BotUserID()},
	})
	if err != nil {
		t.Fatalf("creating a direct chat with the bot as %s: %v", cli.UserID, err)
	}
	env.MustSyncUntil(t, cli, 60*time.Second, IsMember(resp.RoomID, env.BotUserID(), event.MembershipJoin))
	return resp.RoomID
}

// MustRedact redacts eventID in roomID as cli and returns the redaction's event ID.
func (env *Env) MustRedact(t testing.TB, cli *mautrix.Client, roomID id.RoomID, eventID id.EventID) id.EventID {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	resp, err := cli.RedactEvent(ctx, roomID, eventID)
	if err != nil {
		t.Fatalf("%s redacting %s in %s: %v", cli.UserID, eventID, roomID, err)
	}
	return resp.EventID
}

// RoomHistory reads roomID's whole timeline as cli sees it now, oldest first, straight from
// /messages (not from the harness's sync history, which keeps events as they were first seen:
// a redaction does not change them there). At most 5,000 events.
func (env *Env) RoomHistory(t testing.TB, cli *mautrix.Client, roomID id.RoomID) []*event.Event {
	t.Helper()
	const pageSize, maxPages = 100, 50
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	var newestFirst []*event.Event
	from := ""
	for range maxPages {
		resp, err := cli.Messages(ctx, roomID, from, "", mautrix.DirectionBackward, nil, pageSize)
		if err != nil {
			t.Fatalf("reading the history of %s as %s: %v", roomID, cli.UserID, err)
		}
		newestFirst = append(newestFirst, resp.Chunk...)
		if len(resp.Chunk) == 0 || resp.End == "" || resp.End == from {
			break
		}
		from = resp.End
	}
	oldestFirst := make([]*event.Event, 0, len(newestFirst))
	for i := len(newestFirst) - 1; i >= 0; i-- {
		evt := newestFirst[i]
		evt.RoomID = roomID
		oldestFirst = append(oldestFirst, evt)
	}
	return oldestFirst
}

// DownloadMedia downloads an mxc:// URI through the authenticated media API
// (/_matrix/client/v1/media/download) as cli and returns its bytes (at most 16 MiB).
func (env *Env) DownloadMedia(t testing.TB, cli *mautrix.Client, mxc id.ContentURIString) []byte {
	t.Helper()
	uri, err := mxc.Parse()
	if err != nil {
		t.Fatalf("parsing media URI %q: %v", mxc, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	endpoint := env.HomeserverURL() + "/_matrix/client/v1/media/download/" + uri.Homeserver + "/" + uri.FileID
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint, nil)
	if err != nil {
		t.Fatalf("building the media download: %v", err)
	}
	req.Header.Set("Authorization", "Bearer "+cli.AccessToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("downloading %s: %v", mxc, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		t.Fatalf("downloading %s: %v", mxc, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("downloading %s: status %d: %s", mxc, resp.StatusCode, data)
	}
	return data
}

// RandomHex returns n random bytes as hex, for distinctive values such as message canaries.
func RandomHex(t testing.TB, n int) string {
	t.Helper()
	return randomHex(t, n)
}

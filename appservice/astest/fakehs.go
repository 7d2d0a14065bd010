package astest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// FakeHomeserver is a small in-memory Matrix homeserver for tests of appservice code: it answers
// the client-server API calls intents make (join, leave, send, redact, state, members, profile,
// register) as the appservice's users, keeps just enough room state to answer them, and records
// every request. Like Synapse, it deduplicates sends by (user, transaction ID): a repeated send
// returns the first event ID and is recorded as a request but not as a new event.
//
// Create it with [NewFakeHomeserver]; set rooms up with [FakeHomeserver.SetMembership] and
// friends, then point the code under test at [FakeHomeserver.URL]. All methods are safe for
// concurrent use.
type FakeHomeserver struct {
	// Server is the underlying test server; it is closed when the test ends.
	Server *httptest.Server
	// Domain is the homeserver's server name.
	Domain string

	asToken string

	lock       sync.Mutex
	requests   []Request
	events     []*SentEvent
	txnIDs     map[string]id.EventID // user + "\x00" + txn ID → event ID
	rooms      map[id.RoomID]*fakeRoom
	profiles   map[id.UserID]map[string]any
	registered map[id.UserID]bool
	failures   map[string]failure // pattern → injected failure
	hooks      map[string]func()  // pattern → OnRequest callback
	nextID     int
	keys       fakeKeys // devices, keys, account data, to-device (fakekeys.go)
	// deliveryCounters count DeliverToDevice's pushes (fakedelivery.go).
	deliveryCounters
	// changed is closed and replaced whenever a request is recorded (see WaitFor).
	changed chan struct{}
}

type failure struct {
	status  int
	errcode string
}

// Request is one request the fake homeserver received.
type Request struct {
	// Method and Path are the HTTP method and the unescaped URL path.
	Method string
	Path   string
	// Pattern is the ServeMux pattern that matched, "" for an unknown endpoint.
	Pattern string
	// UserID is the appservice user the request was made as (the user_id query parameter).
	UserID id.UserID
	// Query is the URL query.
	Query url.Values
	// Body is the request body as sent.
	Body []byte
	// PathValues holds the pattern's wildcards: roomID, eventType, txnID, eventID, stateKey,
	// userID, field.
	PathValues map[string]string
}

// DecodeBody unmarshals the request's JSON body into into.
func (r *Request) DecodeBody(into any) error {
	return json.Unmarshal(r.Body, into)
}

// SentEvent is an event the fake homeserver accepted through the send, state or redact
// endpoints (membership changes through join and leave are recorded as m.room.member events).
type SentEvent struct {
	EventID  id.EventID
	RoomID   id.RoomID
	Sender   id.UserID
	Type     event.Type
	StateKey *string
	// TxnID is the transaction ID of a send or redaction, "" otherwise.
	TxnID string
	// Redacts is the target of a redaction.
	Redacts id.EventID
	Content json.RawMessage
}

// Decode unmarshals the event's content into into.
func (se *SentEvent) Decode(into any) error {
	return json.Unmarshal(se.Content, into)
}

type fakeRoom struct {
	members   map[id.UserID]event.Membership
	state     map[string]json.RawMessage // type + "\x00" + state key → content
	stateMeta map[string]*SentEvent
	gone      bool
}

// Patterns of the fake homeserver's endpoints, for [FakeHomeserver.RequestsTo] and
// [FakeHomeserver.Fail].
const (
	PatternRegister        = "POST /_matrix/client/v3/register"
	PatternPing            = "POST /_matrix/client/v1/appservice/{appserviceID}/ping"
	PatternJoin            = "POST /_matrix/client/v3/rooms/{roomID}/join"
	PatternJoinByIDOrAlias = "POST /_matrix/client/v3/join/{roomID}"
	PatternLeave           = "POST /_matrix/client/v3/rooms/{roomID}/leave"
	PatternSend            = "PUT /_matrix/client/v3/rooms/{roomID}/send/{eventType}/{txnID}"
	PatternRedact          = "PUT /_matrix/client/v3/rooms/{roomID}/redact/{eventID}/{txnID}"
	PatternGetState        = "GET /_matrix/client/v3/rooms/{roomID}/state/{eventType}/{stateKey...}"
	PatternPutState        = "PUT /_matrix/client/v3/rooms/{roomID}/state/{eventType}/{stateKey...}"
	PatternMembers         = "GET /_matrix/client/v3/rooms/{roomID}/members"
	PatternJoinedMembers   = "GET /_matrix/client/v3/rooms/{roomID}/joined_members"
	PatternPutProfile      = "PUT /_matrix/client/v3/profile/{userID}/{field}"
	PatternCreateRoom      = "POST /_matrix/client/v3/createRoom"
)

// NewFakeHomeserver starts a fake homeserver for domain that accepts asToken as the appservice
// token (an empty asToken accepts any). It is closed when t ends.
func NewFakeHomeserver(t testing.TB, domain, asToken string) *FakeHomeserver {
	t.Helper()
	hs := &FakeHomeserver{
		Domain:     domain,
		asToken:    asToken,
		txnIDs:     make(map[string]id.EventID),
		rooms:      make(map[id.RoomID]*fakeRoom),
		profiles:   make(map[id.UserID]map[string]any),
		registered: make(map[id.UserID]bool),
		failures:   make(map[string]failure),
		hooks:      make(map[string]func()),
		keys:       newFakeKeys(),
		changed:    make(chan struct{}),
	}
	mux := http.NewServeMux()
	handle := func(pattern string, fn func(w http.ResponseWriter, r *http.Request, req *Request)) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			// Waiters look once the request was answered: its effect (an event appended) comes
			// after it is recorded.
			defer hs.notify()
			req := hs.record(r, pattern)
			if req == nil {
				writeError(w, http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "Unknown access token")
				return
			}
			hs.lock.Lock()
			fail, failing := hs.failures[pattern]
			hook := hs.hooks[pattern]
			hs.lock.Unlock()
			if hook != nil {
				hook()
			}
			if failing {
				writeError(w, fail.status, fail.errcode, "Injected failure")
				return
			}
			fn(w, r, req)
		})
	}
	handle("GET /_matrix/client/versions", hs.getVersions)
	handle(PatternRegister, hs.postRegister)
	handle("GET /_matrix/client/v3/account/whoami", hs.getWhoami)
	handle(PatternPing, hs.postPing)
	handle(PatternJoinByIDOrAlias, hs.postJoin)
	handle(PatternJoin, hs.postJoin)
	handle(PatternLeave, hs.postLeave)
	handle(PatternSend, hs.putSend)
	handle(PatternRedact, hs.putRedact)
	handle(PatternGetState, hs.getState)
	handle("GET /_matrix/client/v3/rooms/{roomID}/state/{eventType}", hs.getState)
	handle(PatternPutState, hs.putState)
	handle("PUT /_matrix/client/v3/rooms/{roomID}/state/{eventType}", hs.putState)
	handle(PatternMembers, hs.getMembers)
	handle(PatternJoinedMembers, hs.getJoinedMembers)
	handle("GET /_matrix/client/v3/profile/{userID}/{field}", hs.getProfileField)
	handle(PatternPutProfile, hs.putProfileField)
	handle(PatternCreateRoom, hs.postCreateRoom)
	handle("GET /_matrix/client/v3/profile/{userID}", hs.getProfile)
	hs.handleKeys(handle)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		defer hs.notify()
		hs.record(r, "")
		writeError(w, http.StatusNotFound, "M_UNRECOGNIZED", "Unrecognized request")
	})
	hs.Server = httptest.NewServer(mux)
	t.Cleanup(hs.Server.Close)
	return hs
}

// URL returns the homeserver's base URL, for AppService.SetHomeserverURL.
func (hs *FakeHomeserver) URL() string {
	return hs.Server.URL
}

// record stores the request and returns it, or nil if its token is wrong.
func (hs *FakeHomeserver) record(r *http.Request, pattern string) *Request {
	body, _ := io.ReadAll(r.Body)
	req := &Request{
		Method:     r.Method,
		Path:       r.URL.Path,
		Pattern:    pattern,
		UserID:     id.UserID(r.URL.Query().Get("user_id")),
		Query:      r.URL.Query(),
		Body:       body,
		PathValues: make(map[string]string),
	}
	for _, name := range []string{"appserviceID", "roomID", "eventType", "txnID", "eventID", "stateKey", "userID", "field", "deviceID"} {
		if v := r.PathValue(name); v != "" {
			req.PathValues[name] = v
		}
	}
	hs.lock.Lock()
	defer hs.lock.Unlock()
	hs.requests = append(hs.requests, *req)
	token := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	if ref, ok := hs.keys.tokens[token]; ok {
		// A device's own access token (appservice login): the request is made as that device.
		req.UserID = ref.user
		req.Query.Set("device_id", ref.device.String())
		return req
	}
	if hs.asToken != "" && token != hs.asToken {
		return nil
	}
	return req
}

// notify wakes the callers of WaitFor.
func (hs *FakeHomeserver) notify() {
	hs.lock.Lock()
	defer hs.lock.Unlock()
	close(hs.changed)
	hs.changed = make(chan struct{})
}

// WaitFor waits until cond holds, checking it again after every request the homeserver
// receives, and fails the test if it does not hold within d. cond must not call back into
// WaitFor; it may call the other methods.
func (hs *FakeHomeserver) WaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		hs.lock.Lock()
		changed := hs.changed
		hs.lock.Unlock()
		if cond() {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
	}
}

// Requests returns a copy of every request received so far, in order.
func (hs *FakeHomeserver) Requests() []Request {
	hs.lock.Lock()
	defer hs.lock.Unlock()
	return slices.Clone(hs.requests)
}

// RequestsTo returns the requests that matched pattern, as passed to the ServeMux, for example
// "POST /_matrix/client/v3/rooms/{roomID}/leave".
func (hs *FakeHomeserver) RequestsTo(pattern string) []Request {
	hs.lock.Lock()
	defer hs.lock.Unlock()
	var out []Request
	for _, req := range hs.requests {
		if req.Pattern == pattern {
			out = append(out, req)
		}
	}
	return out
}

// Events returns the events accepted so far in roomID (every room if roomID is empty), in
// order. Repeated sends with the same transaction ID appear once.
func (hs *FakeHomeserver) Events(roomID id.RoomID) []*SentEvent {
	hs.lock.Lock()
	defer hs.lock.Unlock()
	var out []*SentEvent
	for _, evt := range hs.events {
		if roomID == "" || evt.RoomID == roomID {
			out = append(out, evt)
		}
	}
	return out
}

// Messages returns the message events (m.room.message) sent in roomID, in order.
func (hs *FakeHomeserver) Messages(roomID id.RoomID) []*SentEvent {
	var out []*SentEvent
	for _, evt := range hs.Events(roomID) {
		if evt.Type == event.EventMessage {
			out = append(out, evt)
		}
	}
	return out
}

// OnRequest makes the fake call fn, in the request's goroutine, before it answers each request
// to pattern (after an injected failure is decided); nil removes it. fn sees what the caller
// holds while it waits for the answer.
func (hs *FakeHomeserver) OnRequest(pattern string, fn func()) {
	hs.lock.Lock()
	defer hs.lock.Unlock()
	if fn == nil {
		delete(hs.hooks, pattern)
		return
	}
	hs.hooks[pattern] = fn
}

// Fail makes every later request to pattern (as in [FakeHomeserver.RequestsTo]) fail with
// status and errcode, until [FakeHomeserver.Unfail]. Requests are still recorded. Avoid 5xx and
// 429 statuses unless the client's retries are turned off: mautrix retries them with backoff.
func (hs *FakeHomeserver) Fail(pattern string, status int, errcode string) {
	hs.lock.Lock()
	defer hs.lock.Unlock()
	hs.failures[pattern] = failure{status: status, errcode: errcode}
}

// Unfail undoes [FakeHomeserver.Fail] for pattern.
func (hs *FakeHomeserver) Unfail(pattern string) {
	hs.lock.Lock()
	defer hs.lock.Unlock()
	delete(hs.failures, pattern)
}

// Reset forgets the recorded requests and events, keeping rooms, profiles and transaction IDs.
func (hs *FakeHomeserver) Reset() {
	hs.lock.Lock()
	defer hs.lock.Unlock()
	hs.requests = nil
	hs.events = nil
}

func (hs *FakeHomeserver) room(roomID id.RoomID) *fakeRoom {
	r, ok := hs.rooms[roomID]
	if !ok {
		r = &fakeRoom{
			members:   make(map[id.UserID]event.Membership),
			state:     make(map[string]json.RawMessage),
			stateMeta: make(map[string]*SentEvent),
		}
		hs.rooms[roomID] = r
	}
	return r
}

// SetMembership sets userID's membership in roomID, creating the room if needed. The change is
// not recorded as an event.
func (hs *FakeHomeserver) SetMembership(roomID id.RoomID, userID id.UserID, membership event.Membership) {
	hs.lock.Lock()
	defer hs.lock.Unlock()
	hs.room(roomID).members[userID] = membership
}

// Membership returns userID's membership in roomID, "" if none.
func (hs *FakeHomeserver) Membership(roomID id.RoomID, userID id.UserID) event.Membership {
	hs.lock.Lock()
	defer hs.lock.Unlock()
	if r, ok := hs.rooms[roomID]; ok {
		return r.members[userID]
	}
	return ""
}

// SetState sets a state event's content in roomID, creating the room if needed. sender is
// reported as the event's sender by ?format=event requests (it matters for m.room.create).
func (hs *FakeHomeserver) SetState(roomID id.RoomID, evtType event.Type, stateKey string, sender id.UserID, content any) {
	data, err := json.Marshal(content)
	if err != nil {
		panic(fmt.Errorf("astest: failed to marshal state content: %w", err))
	}
	hs.lock.Lock()
	defer hs.lock.Unlock()
	r := hs.room(roomID)
	key := evtType.Type + "\x00" + stateKey
	r.state[key] = data
	r.stateMeta[key] = &SentEvent{
		EventID: hs.newEventID(), RoomID: roomID, Sender: sender, Type: evtType,
		StateKey: &stateKey, Content: data,
	}
}

// SetRoomGone makes roomID behave like a room the server has left or that never existed: joins
// fail with M_NOT_FOUND.
func (hs *FakeHomeserver) SetRoomGone(roomID id.RoomID) {
	hs.lock.Lock()
	defer hs.lock.Unlock()
	hs.room(roomID).gone = true
}

// Profile returns a copy of userID's profile fields.
func (hs *FakeHomeserver) Profile(userID id.UserID) map[string]any {
	hs.lock.Lock()
	defer hs.lock.Unlock()
	out := make(map[string]any)
	for k, v := range hs.profiles[userID] {
		out[k] = v
	}
	return out
}

// SetProfileField sets one of userID's profile fields ("displayname", "avatar_url").
func (hs *FakeHomeserver) SetProfileField(userID id.UserID, field string, value any) {
	hs.lock.Lock()
	defer hs.lock.Unlock()
	if hs.profiles[userID] == nil {
		hs.profiles[userID] = make(map[string]any)
	}
	hs.profiles[userID][field] = value
}

func (hs *FakeHomeserver) newEventID() id.EventID {
	hs.nextID++
	return id.EventID(fmt.Sprintf("$fake%d:%s", hs.nextID, hs.Domain))
}

// appendEvent records an accepted event; hs.lock must be held.
func (hs *FakeHomeserver) appendEvent(evt *SentEvent) {
	evt.EventID = hs.newEventID()
	hs.events = append(hs.events, evt)
}

func writeJSON(w http.ResponseWriter, status int, data any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(data)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]string{"errcode": code, "error": msg})
}

func (hs *FakeHomeserver) getVersions(w http.ResponseWriter, _ *http.Request, _ *Request) {
	writeJSON(w, http.StatusOK, map[string]any{"versions": []string{"v1.11"}})
}

func (hs *FakeHomeserver) postRegister(w http.ResponseWriter, _ *http.Request, req *Request) {
	var body struct {
		Username string `json:"username"`
	}
	_ = req.DecodeBody(&body)
	userID := id.NewUserID(body.Username, hs.Domain)
	hs.lock.Lock()
	defer hs.lock.Unlock()
	if hs.registered[userID] {
		writeError(w, http.StatusBadRequest, "M_USER_IN_USE", "User ID already taken")
		return
	}
	hs.registered[userID] = true
	writeJSON(w, http.StatusOK, map[string]any{"user_id": userID})
}

func (hs *FakeHomeserver) getWhoami(w http.ResponseWriter, _ *http.Request, req *Request) {
	writeJSON(w, http.StatusOK, map[string]any{"user_id": req.UserID})
}

func (hs *FakeHomeserver) postPing(w http.ResponseWriter, _ *http.Request, _ *Request) {
	writeJSON(w, http.StatusOK, map[string]any{"duration_ms": 1})
}

func (hs *FakeHomeserver) postJoin(w http.ResponseWriter, _ *http.Request, req *Request) {
	roomID := id.RoomID(req.PathValues["roomID"])
	hs.lock.Lock()
	defer hs.lock.Unlock()
	r, ok := hs.rooms[roomID]
	switch {
	case !ok || r.gone:
		writeError(w, http.StatusNotFound, "M_NOT_FOUND", "No known servers")
		return
	case r.members[req.UserID] != event.MembershipInvite && r.members[req.UserID] != event.MembershipJoin:
		writeError(w, http.StatusForbidden, "M_FORBIDDEN", "You are not invited to this room.")
		return
	}
	if r.members[req.UserID] != event.MembershipJoin {
		r.members[req.UserID] = event.MembershipJoin
		hs.appendMember(roomID, req.UserID, event.MembershipJoin, "")
	}
	writeJSON(w, http.StatusOK, map[string]any{"room_id": roomID})
}

func (hs *FakeHomeserver) postLeave(w http.ResponseWriter, _ *http.Request, req *Request) {
	roomID := id.RoomID(req.PathValues["roomID"])
	var body struct {
		Reason string `json:"reason"`
	}
	_ = req.DecodeBody(&body)
	hs.lock.Lock()
	defer hs.lock.Unlock()
	r, ok := hs.rooms[roomID]
	if !ok || !r.members[req.UserID].IsInviteOrJoin() {
		writeError(w, http.StatusForbidden, "M_FORBIDDEN", "You are not in this room.")
		return
	}
	r.members[req.UserID] = event.MembershipLeave
	hs.appendMember(roomID, req.UserID, event.MembershipLeave, body.Reason)
	writeJSON(w, http.StatusOK, map[string]any{})
}

// appendMember records a membership change as an event; hs.lock must be held.
func (hs *FakeHomeserver) appendMember(roomID id.RoomID, userID id.UserID, membership event.Membership, reason string) {
	content, _ := json.Marshal(&event.MemberEventContent{Membership: membership, Reason: reason})
	stateKey := userID.String()
	hs.appendEvent(&SentEvent{RoomID: roomID, Sender: userID, Type: event.StateMember, StateKey: &stateKey, Content: content})
}

// checkJoined answers 403 unless the requester is joined to the room; hs.lock must be held.
func (hs *FakeHomeserver) checkJoined(w http.ResponseWriter, roomID id.RoomID, userID id.UserID) bool {
	if r, ok := hs.rooms[roomID]; !ok || r.members[userID] != event.MembershipJoin {
		writeError(w, http.StatusForbidden, "M_FORBIDDEN", "User not in room")
		return false
	}
	return true
}

// postCreateRoom creates a room "!createdN:domain" with the requester joined and the invitees
// invited; its initial_state and topic become room state. The request (preset, is_direct …) is
// recorded for tests to inspect.
func (hs *FakeHomeserver) postCreateRoom(w http.ResponseWriter, _ *http.Request, req *Request) {
	var body struct {
		Invite       []id.UserID `json:"invite"`
		Topic        string      `json:"topic"`
		InitialState []struct {
			Type     string          `json:"type"`
			StateKey string          `json:"state_key"`
			Content  json.RawMessage `json:"content"`
		} `json:"initial_state"`
	}
	if err := req.DecodeBody(&body); err != nil {
		writeError(w, http.StatusBadRequest, "M_NOT_JSON", "Body is not JSON")
		return
	}
	hs.lock.Lock()
	defer hs.lock.Unlock()
	hs.nextID++
	roomID := id.RoomID(fmt.Sprintf("!created%d:%s", hs.nextID, hs.Domain))
	r := hs.room(roomID)
	r.members[req.UserID] = event.MembershipJoin
	hs.appendMember(roomID, req.UserID, event.MembershipJoin, "")
	for _, invitee := range body.Invite {
		r.members[invitee] = event.MembershipInvite
	}
	setState := func(evtType, stateKey string, content json.RawMessage) {
		evt := &SentEvent{RoomID: roomID, Sender: req.UserID, Type: event.Type{Type: evtType, Class: event.StateEventType}, StateKey: &stateKey, Content: content}
		hs.appendEvent(evt)
		r.state[evtType+"\x00"+stateKey] = content
		r.stateMeta[evtType+"\x00"+stateKey] = evt
	}
	for _, st := range body.InitialState {
		setState(st.Type, st.StateKey, st.Content)
	}
	if body.Topic != "" {
		topic, _ := json.Marshal(&event.TopicEventContent{Topic: body.Topic})
		setState(event.StateTopic.Type, "", topic)
	}
	writeJSON(w, http.StatusOK, map[string]any{"room_id": roomID})
}

func (hs *FakeHomeserver) putSend(w http.ResponseWriter, _ *http.Request, req *Request) {
	roomID := id.RoomID(req.PathValues["roomID"])
	txnID := req.PathValues["txnID"]
	hs.lock.Lock()
	defer hs.lock.Unlock()
	if !hs.checkJoined(w, roomID, req.UserID) {
		return
	}
	txnKey := req.UserID.String() + "\x00" + txnID
	if evtID, ok := hs.txnIDs[txnKey]; ok {
		writeJSON(w, http.StatusOK, map[string]any{"event_id": evtID})
		return
	}
	evt := &SentEvent{
		RoomID: roomID, Sender: req.UserID, TxnID: txnID, Content: req.Body,
		Type: event.Type{Type: req.PathValues["eventType"], Class: event.MessageEventType},
	}
	hs.appendEvent(evt)
	hs.txnIDs[txnKey] = evt.EventID
	writeJSON(w, http.StatusOK, map[string]any{"event_id": evt.EventID})
}

func (hs *FakeHomeserver) putRedact(w http.ResponseWriter, _ *http.Request, req *Request) {
	roomID := id.RoomID(req.PathValues["roomID"])
	txnID := req.PathValues["txnID"]
	hs.lock.Lock()
	defer hs.lock.Unlock()
	if !hs.checkJoined(w, roomID, req.UserID) {
		return
	}
	txnKey := req.UserID.String() + "\x00" + txnID
	if evtID, ok := hs.txnIDs[txnKey]; ok {
		writeJSON(w, http.StatusOK, map[string]any{"event_id": evtID})
		return
	}
	evt := &SentEvent{
		RoomID: roomID, Sender: req.UserID, TxnID: txnID, Content: req.Body,
		Type: event.EventRedaction, Redacts: id.EventID(req.PathValues["eventID"]),
	}
	hs.appendEvent(evt)
	hs.txnIDs[txnKey] = evt.EventID
	writeJSON(w, http.StatusOK, map[string]any{"event_id": evt.EventID})
}

func (hs *FakeHomeserver) getState(w http.ResponseWriter, _ *http.Request, req *Request) {
	roomID := id.RoomID(req.PathValues["roomID"])
	key := req.PathValues["eventType"] + "\x00" + req.PathValues["stateKey"]
	hs.lock.Lock()
	defer hs.lock.Unlock()
	if !hs.checkJoined(w, roomID, req.UserID) {
		return
	}
	r := hs.rooms[roomID]
	if req.PathValues["eventType"] == event.StateMember.Type {
		if membership, ok := r.members[id.UserID(req.PathValues["stateKey"])]; ok {
			writeJSON(w, http.StatusOK, &event.MemberEventContent{Membership: membership})
			return
		}
	}
	content, ok := r.state[key]
	if !ok {
		writeError(w, http.StatusNotFound, "M_NOT_FOUND", "Event not found")
		return
	}
	if req.Query.Get("format") == "event" {
		meta := r.stateMeta[key]
		writeJSON(w, http.StatusOK, map[string]any{
			"type": meta.Type.Type, "state_key": *meta.StateKey, "sender": meta.Sender,
			"event_id": meta.EventID, "room_id": roomID, "content": content,
			"origin_server_ts": time.Now().UnixMilli(),
		})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(content)
}

func (hs *FakeHomeserver) putState(w http.ResponseWriter, _ *http.Request, req *Request) {
	roomID := id.RoomID(req.PathValues["roomID"])
	stateKey := req.PathValues["stateKey"]
	evtType := event.Type{Type: req.PathValues["eventType"], Class: event.StateEventType}
	hs.lock.Lock()
	defer hs.lock.Unlock()
	r := hs.room(roomID)
	if evtType == event.StateMember {
		var content event.MemberEventContent
		_ = req.DecodeBody(&content)
		r.members[id.UserID(stateKey)] = content.Membership
	} else if !hs.checkJoined(w, roomID, req.UserID) {
		return
	}
	key := evtType.Type + "\x00" + stateKey
	evt := &SentEvent{RoomID: roomID, Sender: req.UserID, Type: evtType, StateKey: &stateKey, Content: req.Body}
	hs.appendEvent(evt)
	r.state[key] = req.Body
	r.stateMeta[key] = evt
	writeJSON(w, http.StatusOK, map[string]any{"event_id": evt.EventID})
}

func (hs *FakeHomeserver) getMembers(w http.ResponseWriter, _ *http.Request, req *Request) {
	roomID := id.RoomID(req.PathValues["roomID"])
	hs.lock.Lock()
	defer hs.lock.Unlock()
	if !hs.checkJoined(w, roomID, req.UserID) {
		return
	}
	chunk := []map[string]any{}
	for userID, membership := range hs.rooms[roomID].members {
		chunk = append(chunk, map[string]any{
			"type": event.StateMember.Type, "state_key": userID, "sender": userID,
			"room_id": roomID, "event_id": "$member-" + strings.TrimPrefix(userID.String(), "@"),
			"content": map[string]any{"membership": membership},
		})
	}
	writeJSON(w, http.StatusOK, map[string]any{"chunk": chunk})
}

func (hs *FakeHomeserver) getJoinedMembers(w http.ResponseWriter, _ *http.Request, req *Request) {
	roomID := id.RoomID(req.PathValues["roomID"])
	hs.lock.Lock()
	defer hs.lock.Unlock()
	if !hs.checkJoined(w, roomID, req.UserID) {
		return
	}
	joined := map[id.UserID]any{}
	for userID, membership := range hs.rooms[roomID].members {
		if membership == event.MembershipJoin {
			joined[userID] = map[string]any{}
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"joined": joined})
}

func (hs *FakeHomeserver) getProfile(w http.ResponseWriter, _ *http.Request, req *Request) {
	hs.lock.Lock()
	defer hs.lock.Unlock()
	profile, ok := hs.profiles[id.UserID(req.PathValues["userID"])]
	if !ok {
		writeError(w, http.StatusNotFound, "M_NOT_FOUND", "Profile not found")
		return
	}
	writeJSON(w, http.StatusOK, profile)
}

func (hs *FakeHomeserver) getProfileField(w http.ResponseWriter, _ *http.Request, req *Request) {
	field := req.PathValues["field"]
	hs.lock.Lock()
	defer hs.lock.Unlock()
	value, ok := hs.profiles[id.UserID(req.PathValues["userID"])][field]
	if !ok {
		writeError(w, http.StatusNotFound, "M_NOT_FOUND", "Profile field not found")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{field: value})
}

func (hs *FakeHomeserver) putProfileField(w http.ResponseWriter, _ *http.Request, req *Request) {
	userID := id.UserID(req.PathValues["userID"])
	field := req.PathValues["field"]
	if userID != req.UserID {
		writeError(w, http.StatusForbidden, "M_FORBIDDEN", "Cannot set another user's profile")
		return
	}
	var body map[string]any
	if err := req.DecodeBody(&body); err != nil {
		writeError(w, http.StatusBadRequest, "M_NOT_JSON", "Body is not JSON")
		return
	}
	hs.lock.Lock()
	defer hs.lock.Unlock()
	if hs.profiles[userID] == nil {
		hs.profiles[userID] = make(map[string]any)
	}
	hs.profiles[userID][field] = body[field]
	writeJSON(w, http.StatusOK, map[string]any{})
}

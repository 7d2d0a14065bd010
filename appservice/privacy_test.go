package appservice

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/clock"
	"github.com/custodian-matrix/custodian/appservice/database"
	"github.com/custodian-matrix/custodian/appservice/httpjson"
	"github.com/custodian-matrix/custodian/appservice/privacy"
)

// Users and rooms of the privacy tests.
const (
	pvAlice = id.UserID("@alice:example.org")
	pvBob   = id.UserID("@bob:example.org")
	pvCarol = id.UserID("@carol:example.org")
	pvBot   = id.UserID("@custodian:example.org")
	pvDM    = id.RoomID("!dm:example.org")
	pvRoom  = id.RoomID("!room:example.org")
)

// privacyBridge is a bridge with personal data: hooks users create with a command (provenance:
// actor, room, source event; a sealed token), deliveries derived from hooks, and records of
// callers' IP addresses (network retention). It records what the core asks of it.
type privacyBridge struct {
	id   string
	host Host
	// noRoomColumn leaves RoomColumn undeclared, so redactions are checked with the homeserver.
	noRoomColumn bool

	lock     sync.Mutex
	erased   []id.UserID
	eraseErr error
	// block, if set, holds EraseRemote until it is closed (or its ctx ends).
	block  chan struct{}
	purged []map[string]int64
	events []*event.Event
	// purgedRooms and configured record PurgeRoom calls and runs of the configure command.
	purgedRooms []id.RoomID
	configured  []id.UserID
	// keeps are the rooms the bridge keeps (RoomKeeper).
	keeps map[id.RoomID]bool
	// notifyInErase makes EraseRemote send the user a notice, as a late bridge goroutine
	// might; notifyErr records what NotifyUser returned.
	notifyInErase bool
	notifyErr     error
}

var (
	_ Eraser          = (*privacyBridge)(nil)
	_ RedactionPurger = (*privacyBridge)(nil)
)

func newPrivacyBridge(id string) *privacyBridge { return &privacyBridge{id: id} }

func (pb *privacyBridge) ID() string             { return pb.id }
func (pb *privacyBridge) Namespaces() Namespaces { return Namespaces{UserPrefix: pb.id + "_"} }
func (pb *privacyBridge) Config() (string, any)  { return "", nil }
func (pb *privacyBridge) Migrations() dbutil.UpgradeTable {
	return dbutil.BuildUpgradeTable().WithRaw(0, 1, 0, "Test tables", dbutil.TxnModeOn, func(ctx context.Context, db *dbutil.Database) error {
		blob := "BLOB"
		if db.Dialect == dbutil.Postgres {
			blob = "BYTEA"
		}
		for _, stmt := range []string{
			fmt.Sprintf(`CREATE TABLE %[1]s_hook (
				hook_id      TEXT PRIMARY KEY,
				owner_mxid   TEXT REFERENCES users (mxid) ON DELETE CASCADE ON UPDATE CASCADE,
				room_id      TEXT NOT NULL,
				source_event TEXT,
				name         TEXT NOT NULL,
				token_sealed %[2]s,
				created_at   BIGINT NOT NULL
			)`, pb.id, blob),
			fmt.Sprintf(`CREATE INDEX %[1]s_hook_owner_idx ON %[1]s_hook (owner_mxid)`, pb.id),
			fmt.Sprintf(`CREATE INDEX %[1]s_hook_source_idx ON %[1]s_hook (source_event)`, pb.id),
			fmt.Sprintf(`CREATE TABLE %[1]s_delivery (
				hook_id TEXT NOT NULL REFERENCES %[1]s_hook (hook_id) ON DELETE CASCADE,
				status  INTEGER NOT NULL,
				sent_at BIGINT NOT NULL
			)`, pb.id),
			fmt.Sprintf(`CREATE TABLE %[1]s_caller (
				user_mxid  TEXT NOT NULL REFERENCES users (mxid) ON DELETE CASCADE ON UPDATE CASCADE,
				ip         TEXT NOT NULL,
				user_agent TEXT NOT NULL,
				seen_at    BIGINT NOT NULL
			)`, pb.id),
			fmt.Sprintf(`CREATE INDEX %[1]s_caller_user_idx ON %[1]s_caller (user_mxid)`, pb.id),
		} {
			if _, err := db.Exec(ctx, stmt); err != nil {
				return err
			}
		}
		return nil
	}).Finish()
}

func (pb *privacyBridge) PersonalData() []UserTable {
	roomColumn := "room_id"
	if pb.noRoomColumn {
		roomColumn = ""
	}
	return []UserTable{
		{
			Table: pb.id + "_hook", UserColumn: "owner_mxid", Export: []string{"hook_id", "name", "room_id"},
			Secret: []string{"token_sealed"}, SourceEventColumn: "source_event", RoomColumn: roomColumn,
			TimeColumn: "created_at", Description: "webhooks you created",
		},
		{
			Table: pb.id + "_caller", UserColumn: "user_mxid", Export: []string{"ip", "user_agent"},
			TimeColumn: "seen_at", RetentionClass: RetentionNetwork,
			Description: "where you called your webhooks from",
		},
	}
}

func (pb *privacyBridge) Init(host Host) error        { pb.host = host; return nil }
func (pb *privacyBridge) Start(context.Context) error { return nil }
func (pb *privacyBridge) Stop(context.Context) error  { return nil }
func (pb *privacyBridge) HandleEvent(_ context.Context, evt *event.Event, _ Route) error {
	pb.lock.Lock()
	defer pb.lock.Unlock()
	pb.events = append(pb.events, evt)
	return nil
}

func (pb *privacyBridge) EraseRemote(ctx context.Context, user id.UserID) error {
	pb.lock.Lock()
	block := pb.block
	pb.lock.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	pb.lock.Lock()
	notify := pb.notifyInErase
	pb.lock.Unlock()
	var notifyErr error
	if notify {
		_, _, notifyErr = pb.host.NotifyUser(ctx, user, Notice{
			Cause: "$late", Purpose: "late", Content: &event.MessageEventContent{MsgType: event.MsgNotice, Body: "late"},
		})
	}
	pb.lock.Lock()
	defer pb.lock.Unlock()
	pb.notifyErr = notifyErr
	pb.erased = append(pb.erased, user)
	return pb.eraseErr
}

func (pb *privacyBridge) RedactionPurged(_ context.Context, _ id.RoomID, _ id.EventID, purged map[string]int64) error {
	pb.lock.Lock()
	defer pb.lock.Unlock()
	pb.purged = append(pb.purged, purged)
	return nil
}

func (pb *privacyBridge) erasedUsers() []id.UserID {
	pb.lock.Lock()
	defer pb.lock.Unlock()
	return slices.Clone(pb.erased)
}

// privacyHS is the fake homeserver with the endpoints the privacy operations need on top:
// media upload, fetching an event, and Synapse's admin user API.
type privacyHS struct {
	*astest.FakeHomeserver
	srv *httptest.Server

	lock        sync.Mutex
	uploads     [][]byte
	deactivated map[id.UserID]bool
	known       map[id.EventID]id.RoomID
	adminToken  string
	adminGhost  id.UserID
	adminCalls  int
	// deletedMedia lists the media deleted through the admin API, as server/mediaID;
	// onMediaDelete, if set, runs before each deletion is answered.
	deletedMedia  []string
	onMediaDelete func()
	// mediaDeleteFails makes the admin API answer media deletions with a 500.
	mediaDeleteFails bool
}

func newPrivacyHS(t testing.TB) *privacyHS {
	hs := &privacyHS{
		FakeHomeserver: astest.NewFakeHomeserver(t, testDomain, testASToken),
		deactivated:    make(map[id.UserID]bool),
		known:          make(map[id.EventID]id.RoomID),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /_matrix/media/v3/upload", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			httpjson.WriteError(w, http.StatusBadRequest, "M_UNKNOWN", "Failed to read the body")
			return
		}
		hs.lock.Lock()
		hs.uploads = append(hs.uploads, body)
		n := len(hs.uploads)
		hs.lock.Unlock()
		httpjson.Write(w, http.StatusOK, map[string]any{"content_uri": fmt.Sprintf("mxc://%s/upload%d", testDomain, n)})
	})
	mux.HandleFunc("GET /_matrix/client/v3/rooms/{roomID}/event/{eventID}", func(w http.ResponseWriter, r *http.Request) {
		hs.lock.Lock()
		room, ok := hs.known[id.EventID(r.PathValue("eventID"))]
		hs.lock.Unlock()
		if !ok || room != id.RoomID(r.PathValue("roomID")) {
			httpjson.WriteError(w, http.StatusNotFound, "M_NOT_FOUND", "Event not found")
			return
		}
		httpjson.Write(w, http.StatusOK, map[string]any{
			"event_id": r.PathValue("eventID"), "room_id": room, "type": "m.room.message",
			"sender": pvAlice, "content": map[string]any{}, "origin_server_ts": 1,
		})
	})
	mux.HandleFunc("GET /_synapse/admin/v2/users/{userID}", func(w http.ResponseWriter, r *http.Request) {
		hs.lock.Lock()
		defer hs.lock.Unlock()
		hs.adminCalls++
		auth := r.Header.Get("Authorization")
		asGhost := auth == "Bearer "+testASToken && hs.adminGhost != "" && r.URL.Query().Get("user_id") == hs.adminGhost.String()
		if !(hs.adminToken != "" && auth == "Bearer "+hs.adminToken) && !asGhost {
			httpjson.WriteError(w, http.StatusForbidden, "M_FORBIDDEN", "You are not a server admin")
			return
		}
		user := id.UserID(r.PathValue("userID"))
		httpjson.Write(w, http.StatusOK, map[string]any{"name": user, "deactivated": hs.deactivated[user], "erased": hs.deactivated[user]})
	})
	mux.HandleFunc("DELETE /_synapse/admin/v1/media/{serverName}/{mediaID}", func(w http.ResponseWriter, r *http.Request) {
		hs.lock.Lock()
		auth := r.Header.Get("Authorization")
		admin := hs.adminToken != "" && auth == "Bearer "+hs.adminToken
		hook, fails := hs.onMediaDelete, hs.mediaDeleteFails
		hs.lock.Unlock()
		if !admin {
			httpjson.WriteError(w, http.StatusForbidden, "M_FORBIDDEN", "You are not a server admin")
			return
		}
		if fails {
			httpjson.WriteError(w, http.StatusInternalServerError, "M_UNKNOWN", "Internal server error")
			return
		}
		if hook != nil {
			hook()
		}
		media := r.PathValue("serverName") + "/" + r.PathValue("mediaID")
		hs.lock.Lock()
		hs.deletedMedia = append(hs.deletedMedia, media)
		hs.lock.Unlock()
		httpjson.Write(w, http.StatusOK, map[string]any{"deleted_media": []string{r.PathValue("mediaID")}, "total": 1})
	})
	mux.Handle("/", hs.FakeHomeserver.Server.Config.Handler)
	hs.srv = httptest.NewServer(mux)
	t.Cleanup(hs.srv.Close)
	return hs
}

// URL is the wrapper's base URL, which the service under test talks to.
func (hs *privacyHS) URL() string { return hs.srv.URL }

func (hs *privacyHS) setKnownEvent(evtID id.EventID, roomID id.RoomID) {
	hs.lock.Lock()
	defer hs.lock.Unlock()
	hs.known[evtID] = roomID
}

func (hs *privacyHS) setDeactivated(user id.UserID) {
	hs.lock.Lock()
	defer hs.lock.Unlock()
	hs.deactivated[user] = true
}

func (hs *privacyHS) mediaDeleted() []string {
	hs.lock.Lock()
	defer hs.lock.Unlock()
	return slices.Clone(hs.deletedMedia)
}

func (hs *privacyHS) upload(i int) []byte {
	hs.lock.Lock()
	defer hs.lock.Unlock()
	if i >= len(hs.uploads) {
		return nil
	}
	return hs.uploads[i]
}

// privacyEnv is a running service on a fresh database with privacy bridges "hooks" and
// "other", a fake clock and the fake homeserver.
type privacyEnv struct {
	t       *testing.T
	ctx     context.Context
	dialect string
	svc     *Service
	hs      *privacyHS
	clock   *clock.Fake
	hooks   *privacyBridge
	other   *privacyBridge
	seq     int
	started bool
	cancel  context.CancelFunc
	// logs holds everything the service logged.
	logs *watchedLog
	// erasureRan is signalled after each attempt of the erasure runner at a job; signals
	// coalesce, so waiters check the database again after each.
	erasureRan chan struct{}
}

var pvEpoch = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// newPrivacyEnv builds the service and migrates its database; start starts it.
func newPrivacyEnv(t *testing.T, dialect string, configure func(cfg *Config)) *privacyEnv {
	t.Helper()
	return newPrivacyEnvOn(t, dialect, astest.TestDB(t, dialect), configure)
}

// newPrivacyEnvOn is newPrivacyEnv on an existing database, as a restarted service.
func newPrivacyEnvOn(t *testing.T, dialect string, db *dbutil.Database, configure func(cfg *Config)) *privacyEnv {
	t.Helper()
	hs := newPrivacyHS(t)
	cfg := testConfig(hs.URL())
	if configure != nil {
		configure(cfg)
	}
	logs := newWatchedLog()
	log := zerolog.New(zerolog.MultiLevelWriter(astest.LogWriter(t), logs)).Level(zerolog.DebugLevel)
	env := &privacyEnv{
		t: t, dialect: dialect, hs: hs, clock: clock.NewFake(pvEpoch),
		hooks: newPrivacyBridge("hooks"), other: newPrivacyBridge("other"), logs: logs,
	}
	env.other.noRoomColumn = true
	svc, err := newService(cfg, testRegistration(), []Bridge{env.hooks, env.other}, log, db)
	if err != nil {
		t.Fatal(err)
	}
	svc.clk = env.clock
	env.svc = svc
	env.erasureRan = make(chan struct{}, 1)
	svc.privacy.erasureRan = func(string, privacy.ErasureState, error) {
		select {
		case env.erasureRan <- struct{}{}:
		default:
		}
	}
	ctx, cancel := context.WithCancel(log.WithContext(context.Background()))
	env.ctx, env.cancel = ctx, cancel
	if err = svc.upgradeDatabases(ctx); err != nil {
		t.Fatal(err)
	}
	// mautrix's IntentAPI.EnsureRegistered reads its Registered flag without a lock; registering
	// the bot before any goroutine starts keeps the connect loop and the handlers from racing.
	if err = svc.as.BotIntent().EnsureRegistered(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if env.started {
			svc.stopServing()
			svc.privacy.loops.Wait()
		}
	})
	return env
}

// start starts the service and waits until interrupted erasures are finished.
func (env *privacyEnv) start() *privacyEnv {
	env.t.Helper()
	if err := env.svc.start(env.ctx); err != nil {
		env.t.Fatal(err)
	}
	env.started = true
	select {
	case <-env.svc.engine.Resumed():
	case <-time.After(30 * time.Second):
		env.t.Fatal("interrupted erasures did not finish")
	}
	return env
}

// deliver hands an event to the service the way the dispatcher does and returns it decoded.
// extra holds top-level fields (redacts, unsigned).
func (env *privacyEnv) deliver(roomID id.RoomID, evtType event.Type, sender id.UserID, stateKey *string, content, extra map[string]any) *event.Event {
	env.t.Helper()
	env.seq++
	evtID := id.EventID(fmt.Sprintf("$pv%d", env.seq))
	raw := map[string]any{
		"type": evtType.Type, "event_id": evtID, "room_id": roomID, "sender": sender,
		"origin_server_ts": env.clock.Now().UnixMilli(), "content": content,
	}
	if stateKey != nil {
		raw["state_key"] = *stateKey
	}
	for k, v := range extra {
		raw[k] = v
	}
	data, err := json.Marshal(raw)
	if err != nil {
		env.t.Fatal(err)
	}
	ie := &database.InboxEvent{TxnID: "t", EventID: evtID, RoomID: roomID, Sender: sender, JSON: data}
	env.svc.handleInboxEvent(env.ctx, ie)
	evt, _ := decodeEvent(ie)
	return evt
}

// redeliver hands evt to the service again, as after a crash.
func (env *privacyEnv) redeliver(evt *event.Event) {
	env.t.Helper()
	data, err := json.Marshal(evt)
	if err != nil {
		env.t.Fatal(err)
	}
	env.svc.handleInboxEvent(env.ctx, &database.InboxEvent{TxnID: "t", EventID: evt.ID, RoomID: evt.RoomID, Sender: evt.Sender, JSON: data})
}

func (env *privacyEnv) text(roomID id.RoomID, sender id.UserID, body string) *event.Event {
	return env.deliver(roomID, event.EventMessage, sender, nil, map[string]any{"msgtype": "m.text", "body": body}, nil)
}

func (env *privacyEnv) member(roomID id.RoomID, sender, target id.UserID, membership event.Membership, extra map[string]any) *event.Event {
	content := map[string]any{"membership": membership}
	for k, v := range extra {
		content[k] = v
	}
	stateKey := target.String()
	return env.deliver(roomID, event.StateMember, sender, &stateKey, content, nil)
}

// setUpRoom has inviter invite the bot to roomID, where members are joined; the bot accepts.
func (env *privacyEnv) setUpRoom(roomID id.RoomID, isDirect bool, inviter id.UserID, members ...id.UserID) {
	env.t.Helper()
	for _, user := range append([]id.UserID{inviter}, members...) {
		env.hs.SetMembership(roomID, user, event.MembershipJoin)
		env.member(roomID, user, user, event.MembershipJoin, nil)
	}
	env.hs.SetMembership(roomID, pvBot, event.MembershipInvite)
	env.member(roomID, inviter, pvBot, event.MembershipInvite, map[string]any{"is_direct": isDirect})
	if got := env.hs.Membership(roomID, pvBot); got != event.MembershipJoin {
		env.t.Fatalf("bot membership in %s = %q, want join", roomID, got)
	}
}

// notices returns the bodies of the bot's messages in roomID.
func (env *privacyEnv) notices(roomID id.RoomID) []string {
	env.t.Helper()
	var out []string
	for _, sent := range env.hs.Messages(roomID) {
		var content event.MessageEventContent
		if err := sent.Decode(&content); err != nil {
			env.t.Fatal(err)
		}
		out = append(out, content.Body)
	}
	return out
}

func (env *privacyEnv) lastNotice(roomID id.RoomID) string {
	env.t.Helper()
	notices := env.notices(roomID)
	if len(notices) == 0 {
		env.t.Fatalf("the bot sent nothing in %s", roomID)
	}
	return notices[len(notices)-1]
}

func (env *privacyEnv) exec(query string, args ...any) {
	env.t.Helper()
	if _, err := env.svc.rawDB.Exec(env.ctx, query, args...); err != nil {
		env.t.Fatalf("%s: %v", strings.Fields(query)[0], err)
	}
}

func (env *privacyEnv) count(query string, args ...any) int {
	env.t.Helper()
	var n int
	if err := env.svc.rawDB.QueryRow(env.ctx, query, args...).Scan(&n); err != nil {
		env.t.Fatalf("%s: %v", query, err)
	}
	return n
}

// addHook inserts a hook of bridge br owned by owner, created by event source in roomID, with
// two deliveries derived from it.
func (env *privacyEnv) addHook(br *privacyBridge, hookID string, owner id.UserID, roomID id.RoomID, source id.EventID) {
	env.t.Helper()
	if err := env.svc.db.User.Ensure(env.ctx, owner); err != nil {
		env.t.Fatal(err)
	}
	env.exec(fmt.Sprintf(`INSERT INTO %s_hook (hook_id, owner_mxid, room_id, source_event, name, token_sealed, created_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`, br.id), hookID, owner, roomID, source, "hook "+hookID, []byte("sealed-secret-bytes"), env.clock.Now().UnixMilli())
	for i := range 2 {
		env.exec(fmt.Sprintf(`INSERT INTO %s_delivery (hook_id, status, sent_at) VALUES ($1, $2, $3)`, br.id), hookID, 200, int64(i))
	}
}

// seedUser gives user a row in every declared table of the core, the state cache and both
// bridges: a users row with dm as the management room, a bot setup in dm and a claimed room, pending inbox events, cached membership,
// power levels and create events naming them, activity, hooks and caller records.
func (env *privacyEnv) seedUser(user id.UserID, dm id.RoomID) {
	env.t.Helper()
	ctx := env.ctx
	svc := env.svc
	now := env.clock.Now()
	if err := svc.db.User.SetManagementRoom(ctx, user, dm); err != nil {
		env.t.Fatal(err)
	}
	err := svc.db.BotSetup.Put(ctx, &database.BotSetup{
		RoomID: dm, Bot: pvBot, Inviter: user, InviteEventID: id.EventID("$invite-" + dm.String()),
		InvitedAt: now, JoinedAt: now, IsDirect: true, Config: json.RawMessage(`{"command_prefix":"!"}`),
	})
	if err != nil {
		env.t.Fatal(err)
	}
	room := id.RoomID("!claimed-" + user.Localpart() + ":example.org")
	if err = svc.db.Room.Claim(ctx, room, env.hooks.id, user, id.EventID("$claim-"+user.Localpart()), now); err != nil {
		env.t.Fatal(err)
	}
	for i := range 2 {
		_, _, err = svc.db.Inbox.Accept(ctx, fmt.Sprintf("seed-%s-%d", user.Localpart(), i), []*database.InboxEvent{{
			TxnID: fmt.Sprintf("seed-%s-%d", user.Localpart(), i), EventID: id.EventID(fmt.Sprintf("$in-%s-%d", user.Localpart(), i)),
			RoomID: room, Sender: user, JSON: []byte(fmt.Sprintf(`{"sender":%q,"type":"m.room.message"}`, user)),
		}}, now)
		if err != nil {
			env.t.Fatal(err)
		}
	}
	for _, r := range []id.RoomID{dm, room} {
		if err = svc.stateStore.SetMember(ctx, r, user, &event.MemberEventContent{Membership: event.MembershipJoin, Displayname: "Name of " + user.Localpart()}); err != nil {
			env.t.Fatal(err)
		}
		if err = svc.stateStore.SetMembership(ctx, r, pvBot, event.MembershipJoin); err != nil {
			env.t.Fatal(err)
		}
		if err = svc.stateStore.MarkMembersFetched(ctx, r); err != nil {
			env.t.Fatal(err)
		}
		if err = svc.stateStore.SetPowerLevels(ctx, r, &event.PowerLevelsEventContent{Users: map[id.UserID]int{user: 100}}); err != nil {
			env.t.Fatal(err)
		}
		stateKey := ""
		if err = svc.stateStore.SetCreate(ctx, &event.Event{
			Type: event.StateCreate, RoomID: r, Sender: user, StateKey: &stateKey, ID: id.EventID("$create-" + r.String()),
			Content: event.Content{Raw: map[string]any{"room_version": "11", "creator": user.String()}},
		}); err != nil {
			env.t.Fatal(err)
		}
	}
	if err = svc.stateStore.MarkRegistered(ctx, user); err != nil {
		env.t.Fatal(err)
	}
	for i := range 2 {
		if err = svc.db.Privacy().RecordActivity(ctx, id.EventID(fmt.Sprintf("$act-%s-%d", user.Localpart(), i)), user, dm, "ping", now); err != nil {
			env.t.Fatal(err)
		}
	}
	env.addHook(env.hooks, "hook-"+user.Localpart()+"-1", user, room, id.EventID("$add-"+user.Localpart()+"-1"))
	env.addHook(env.hooks, "hook-"+user.Localpart()+"-2", user, room, id.EventID("$add-"+user.Localpart()+"-2"))
	env.addHook(env.other, "other-"+user.Localpart(), user, room, id.EventID("$other-"+user.Localpart()))
	for _, br := range []*privacyBridge{env.hooks, env.other} {
		env.exec(fmt.Sprintf(`INSERT INTO %s_caller (user_mxid, ip, user_agent, seen_at) VALUES ($1, $2, $3, $4)`, br.id),
			user, "192.0.2.7", "curl/8", now.UnixMilli())
	}
}

// dumpDatabase returns every row of every table as text, one line per row, prefixed with the
// table's name.
func dumpDatabase(t testing.TB, ctx context.Context, db *dbutil.Database) []string {
	t.Helper()
	cols, _, err := privacy.IntrospectSchema(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for _, c := range cols {
		if !slices.Contains(tables, c.Table) {
			tables = append(tables, c.Table)
		}
	}
	slices.Sort(tables)
	var out []string
	for _, table := range tables {
		rows, err := db.Query(ctx, "SELECT * FROM "+`"`+table+`"`)
		if err != nil {
			t.Fatalf("dump %s: %v", table, err)
		}
		names, _ := rows.Columns()
		for rows.Next() {
			values := make([]any, len(names))
			ptrs := make([]any, len(names))
			for i := range values {
				ptrs[i] = &values[i]
			}
			if err = rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			var sb strings.Builder
			sb.WriteString(table)
			for i, v := range values {
				if b, ok := v.([]byte); ok {
					v = string(b)
				}
				fmt.Fprintf(&sb, " %s=%v", names[i], v)
			}
			out = append(out, sb.String())
		}
		if err = rows.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// rowsMentioning returns the dumped rows that contain needle.
func rowsMentioning(dump []string, needle string) []string {
	var out []string
	for _, row := range dump {
		if strings.Contains(row, needle) {
			out = append(out, row)
		}
	}
	return out
}

// awaitErasures waits until no erasure job is pending: every erasure requested so far has
// erased its data.
func (env *privacyEnv) awaitErasures() {
	env.t.Helper()
	for range 50 {
		n := env.count(`SELECT COUNT(*) FROM as_erasure WHERE state='pending'`)
		if n == 0 {
			return
		}
		select {
		case <-env.erasureRan:
		case <-time.After(30 * time.Second):
			env.t.Fatalf("%d erasure jobs still pending after 30 s", n)
		}
	}
	env.t.Fatal("erasure jobs still pending after 50 runs of the erasure runner")
}

// stop stops the service as a shutdown would, and waits for its loops.
func (env *privacyEnv) stop() {
	env.t.Helper()
	env.cancel()
	if env.started {
		env.svc.stopServing()
		env.svc.privacy.loops.Wait()
		env.started = false
	}
}

// What the privacy loops log after every pass, at debug level.
const (
	deactivationPass = `"message":"Deactivation sweep pass finished"`
	retentionPass    = `"message":"Retention sweep pass finished"`
	exportPass       = `"message":"Export expiry pass finished"`
)

// pass waits until a privacy loop logged pass number n (msg is one of the constants above) and
// returns the count it logged under field; the test fails if the pass failed.
func (env *privacyEnv) pass(msg string, n int, field string) int64 {
	env.t.Helper()
	line := env.logs.waitForLine(env.t, msg, n)
	var logged struct {
		Failed bool `json:"failed"`
	}
	counts := map[string]any{}
	if err := json.Unmarshal([]byte(line), &logged); err != nil {
		env.t.Fatalf("pass %d: %v in %s", n, err, line)
	}
	if err := json.Unmarshal([]byte(line), &counts); err != nil {
		env.t.Fatalf("pass %d: %v in %s", n, err, line)
	}
	if logged.Failed {
		env.t.Errorf("pass %d failed: %s", n, line)
	}
	count, ok := counts[field].(float64)
	if !ok {
		env.t.Fatalf("pass %d logged no %s: %s", n, field, line)
	}
	return int64(count)
}

// startAndSweep starts a service that has admin access to the homeserver and waits for the
// deactivation sweep at start, so that it cannot race with what the test does next.
func (env *privacyEnv) startAndSweep() *privacyEnv {
	env.t.Helper()
	env.start()
	env.logs.waitFor(env.t, deactivationPass)
	return env
}

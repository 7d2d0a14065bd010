package appservice

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix"
	mxas "maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
	"maunium.net/go/mautrix/sqlstatestore"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/database"
	"github.com/custodian-matrix/custodian/appservice/e2ee"
)

const (
	botTestDomain  = "example.org"
	botTestASToken = "bot-test-as-token"

	botTestBot   = id.UserID("@custodian:example.org")
	botTestAlice = id.UserID("@alice:example.org")
	botTestBob   = id.UserID("@bob:example.org")
	botTestRoom  = id.RoomID("!room:example.org")
)

// botTestBridge is a bridge with commands that records what the bot asks of it.
type botTestBridge struct {
	purged   []id.RoomID
	ran      []string // full names of commands run, with RawArgs
	purgeErr error
	// keeps are the rooms the bridge keeps (RoomKeeper); keepErr is KeepsRoom's error.
	keeps   map[id.RoomID]bool
	keepErr error
}

var (
	_ RoomPurger      = (*botTestBridge)(nil)
	_ RoomKeeper      = (*botTestBridge)(nil)
	_ CommandProvider = (*botTestBridge)(nil)
)

func (br *botTestBridge) ID() string                                             { return "test" }
func (br *botTestBridge) Namespaces() Namespaces                                 { return Namespaces{UserPrefix: "test_"} }
func (br *botTestBridge) Config() (string, any)                                  { return "", nil }
func (br *botTestBridge) Migrations() dbutil.UpgradeTable                        { return dbutil.UpgradeTable{} }
func (br *botTestBridge) PersonalData() []UserTable                              { return nil }
func (br *botTestBridge) Init(Host) error                                        { return nil }
func (br *botTestBridge) Start(context.Context) error                            { return nil }
func (br *botTestBridge) Stop(context.Context) error                             { return nil }
func (br *botTestBridge) HandleEvent(context.Context, *event.Event, Route) error { return nil }
func (br *botTestBridge) PurgeRoom(_ context.Context, roomID id.RoomID) error {
	br.purged = append(br.purged, roomID)
	return br.purgeErr
}

func (br *botTestBridge) KeepsRoom(_ context.Context, roomID id.RoomID) (bool, error) {
	return br.keeps[roomID], br.keepErr
}

func (br *botTestBridge) Commands() []*Command {
	record := func(ctx context.Context, ce *CommandEvent) error {
		br.ran = append(br.ran, strings.TrimSpace(ce.FullName()+" "+ce.RawArgs))
		return ce.Reply(ctx, "Done")
	}
	return []*Command{
		{Name: "configure", RoomConfig: true, Handler: record},
		{Name: "login", Args: "<password>", Sensitive: true, Handler: record},
		{Name: "fail", Handler: func(context.Context, *CommandEvent) error { return errors.New("database on fire") }},
		{Name: "refuse", Handler: func(context.Context, *CommandEvent) error {
			return fmt.Errorf("wrapped: %w", &UserError{Message: "You can't do that here.", Err: errors.New("cause")})
		}},
	}
}

// botEnv is a Service with only what the bot needs, on SQLite, talking to a fake homeserver.
type botEnv struct {
	t      *testing.T
	ctx    context.Context
	svc    *Service
	hs     *astest.FakeHomeserver
	bridge *botTestBridge
	seq    int
}

func newBotEnv(t *testing.T, configure func(cfg *Config)) *botEnv {
	t.Helper()
	return newBotEnvOn(t, astest.SQLite, configure)
}

// newBotEnvOn is newBotEnv on the given database dialect.
func newBotEnvOn(t *testing.T, dialect string, configure func(cfg *Config)) *botEnv {
	t.Helper()
	log := zerolog.New(astest.LogWriter(t)).Level(zerolog.DebugLevel)
	ctx := log.WithContext(context.Background())
	hs := astest.NewFakeHomeserver(t, botTestDomain, botTestASToken)

	db := astest.CoreDB(t, dialect)
	stateStore := sqlstatestore.NewSQLStateStore(db.Database, dbutil.ZeroLogger(log), false)
	if err := stateStore.Upgrade(ctx); err != nil {
		t.Fatal(err)
	}
	as := mxas.Create()
	as.HomeserverDomain = botTestDomain
	as.Registration = &mxas.Registration{
		ID: "custodian", SenderLocalpart: "custodian", AppToken: botTestASToken, ServerToken: "bot-test-hs-token",
	}
	as.StateStore = stateStore
	as.Log = log
	if err := as.SetHomeserverURL(hs.URL()); err != nil {
		t.Fatal(err)
	}
	cfg := &Config{
		Homeserver: HomeserverConfig{Address: hs.URL(), Domain: botTestDomain},
		AppService: AppServiceConfig{ID: "custodian", BotUsername: "custodian"},
		Bot:        BotConfig{CommandPrefix: "!"},
	}
	if configure != nil {
		configure(cfg)
	}
	svc := &Service{
		cfg: cfg, log: log, rawDB: db.Database, db: db, as: as,
		metrics: newMetrics(), bridgeByID: make(map[string]*bridgeHost),
	}
	svc.stateStore = newWatchedStateStore(stateStore, &svc.directChats)
	as.StateStore = svc.stateStore
	// As newService does: the bot's sends go through the plaintext guard.
	svc.guardClientSends()
	bridge := &botTestBridge{}
	bh := &bridgeHost{svc: svc, br: bridge, id: bridge.ID(), ns: bridge.Namespaces(), log: log}
	svc.bridges = append(svc.bridges, bh)
	svc.bridgeByID[bh.id] = bh
	svc.bot = newBotHost(svc)
	svc.bot.init(ctx)
	return &botEnv{t: t, ctx: ctx, svc: svc, hs: hs, bridge: bridge}
}

// event builds an event the way the dispatcher hands it over: decoded from JSON, content parsed.
func (env *botEnv) event(roomID id.RoomID, evtType event.Type, sender id.UserID, stateKey *string, content map[string]any) *event.Event {
	env.t.Helper()
	env.seq++
	raw := map[string]any{
		"type": evtType.Type, "event_id": fmt.Sprintf("$event%d", env.seq), "room_id": roomID,
		"sender": sender, "origin_server_ts": 1700000000000 + env.seq, "content": content,
	}
	if stateKey != nil {
		raw["state_key"] = *stateKey
	}
	data, err := json.Marshal(raw)
	if err != nil {
		env.t.Fatal(err)
	}
	var evt event.Event
	if err = json.Unmarshal(data, &evt); err != nil {
		env.t.Fatal(err)
	}
	evt.Type.Class = event.MessageEventType
	if stateKey != nil {
		evt.Type.Class = event.StateEventType
	}
	if err = evt.Content.ParseRaw(evt.Type); err != nil {
		env.t.Fatal(err)
	}
	return &evt
}

func (env *botEnv) member(roomID id.RoomID, sender, target id.UserID, membership event.Membership, extra map[string]any) *event.Event {
	content := map[string]any{"membership": membership}
	for k, v := range extra {
		content[k] = v
	}
	stateKey := target.String()
	return env.event(roomID, event.StateMember, sender, &stateKey, content)
}

func (env *botEnv) text(roomID id.RoomID, sender id.UserID, body string) *event.Event {
	return env.event(roomID, event.EventMessage, sender, nil, map[string]any{"msgtype": "m.text", "body": body})
}

// deliver hands evt to the bot as the dispatcher does: state first goes into the cache, echoes
// of our own users are dropped.
func (env *botEnv) deliver(evt *event.Event) error {
	env.t.Helper()
	if evt.Type.IsState() {
		mautrix.UpdateStateStore(env.ctx, env.svc.stateStore, evt)
	}
	if env.svc.isOwnUser(evt.Sender) {
		return nil
	}
	return env.svc.bot.handleEvent(env.ctx, evt)
}

func (env *botEnv) mustDeliver(evt *event.Event) {
	env.t.Helper()
	if err := env.deliver(evt); err != nil {
		env.t.Fatalf("handling %s (%s) failed: %v", evt.ID, evt.Type.Type, err)
	}
}

// setUpRoom creates botTestRoom on the fake homeserver with members joined, has alice invite
// the bot and lets the bot accept. It returns the invite event.
func (env *botEnv) setUpRoom(isDirect bool, members ...id.UserID) *event.Event {
	env.t.Helper()
	for _, userID := range members {
		env.hs.SetMembership(botTestRoom, userID, event.MembershipJoin)
	}
	env.hs.SetMembership(botTestRoom, botTestBot, event.MembershipInvite)
	invite := env.member(botTestRoom, botTestAlice, botTestBot, event.MembershipInvite, map[string]any{"is_direct": isDirect})
	env.mustDeliver(invite)
	if got := env.hs.Membership(botTestRoom, botTestBot); got != event.MembershipJoin {
		env.t.Fatalf("bot membership after allowed invite = %q, want join", got)
	}
	return invite
}

// messages returns the bot's messages in the room, decoded.
func (env *botEnv) messages() []*event.MessageEventContent {
	env.t.Helper()
	var out []*event.MessageEventContent
	for _, sent := range env.hs.Messages(botTestRoom) {
		var content event.MessageEventContent
		if err := sent.Decode(&content); err != nil {
			env.t.Fatal(err)
		}
		out = append(out, &content)
	}
	return out
}

// onlyReply checks that the bot sent exactly one notice, in reply to to, and returns its body.
func (env *botEnv) onlyReply(to *event.Event) string {
	env.t.Helper()
	msgs := env.messages()
	if len(msgs) != 1 {
		env.t.Fatalf("bot sent %d messages, want exactly 1", len(msgs))
	}
	msg := msgs[0]
	if msg.MsgType != event.MsgNotice || msg.Format != event.FormatHTML || msg.FormattedBody == "" {
		env.t.Errorf("reply is %s with format %q, want m.notice with HTML", msg.MsgType, msg.Format)
	}
	if got := msg.RelatesTo.GetReplyTo(); got != to.ID {
		env.t.Errorf("reply's in_reply_to = %q, want %q", got, to.ID)
	}
	return msg.Body
}

func (env *botEnv) setup() *database.BotSetup {
	env.t.Helper()
	setup, err := env.svc.db.BotSetup.Get(env.ctx, botTestRoom, botTestBot)
	if err != nil {
		env.t.Fatal(err)
	}
	return setup
}

func sendTxnIDs(hs *astest.FakeHomeserver) []string {
	var out []string
	for _, req := range hs.RequestsTo(astest.PatternSend) {
		out = append(out, req.PathValues["txnID"])
	}
	return out
}

func TestBotAcceptsAllowedInvite(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) { testBotAcceptsAllowedInvite(t, dialect) })
	}
}

func testBotAcceptsAllowedInvite(t *testing.T, dialect string) {
	env := newBotEnvOn(t, dialect, nil)
	invite := env.setUpRoom(false, botTestAlice, botTestBob)

	setup := env.setup()
	if setup == nil {
		t.Fatal("no setup row after an allowed invite")
	}
	if setup.Inviter != botTestAlice || setup.InviteEventID != invite.ID || setup.InvitedAt.UnixMilli() != invite.Timestamp || setup.IsDirect {
		t.Errorf("setup = %+v, want inviter %s, invite %s at %d, not direct", setup, botTestAlice, invite.ID, invite.Timestamp)
	}
	var cfg botSetupConfig
	if err := json.Unmarshal(setup.Config, &cfg); err != nil || cfg.CommandPrefix != "!" || !slices.Equal(cfg.CommandGroups, []string{"test"}) {
		t.Errorf("setup config = %s (%v), want prefix ! and group test", setup.Config, err)
	}
	if exists, err := env.svc.db.User.Exists(env.ctx, botTestAlice); err != nil || !exists {
		t.Errorf("users row for the inviter exists = %v (%v), want true", exists, err)
	}

	msgs := env.messages()
	if len(msgs) != 1 || msgs[0].MsgType != event.MsgNotice || msgs[0].Format != event.FormatHTML || !strings.Contains(msgs[0].Body, "!help") {
		t.Fatalf("welcome = %+v, want one HTML notice mentioning !help", msgs)
	}

	// The invite is handled again after a crash: nothing new appears, and the welcome is sent
	// with the same transaction ID.
	env.mustDeliver(invite)
	if n := len(env.messages()); n != 1 {
		t.Errorf("bot sent %d messages after replaying the invite, want 1", n)
	}
	txnIDs := sendTxnIDs(env.hs)
	if len(txnIDs) != 2 || txnIDs[0] != txnIDs[1] || txnIDs[0] != TxnIDFor(invite.ID, "welcome") {
		t.Errorf("welcome transaction IDs = %v, want the same derived ID twice", txnIDs)
	}
}

func TestBotWelcomeInDirectChat(t *testing.T) {
	env := newBotEnv(t, nil)
	env.setUpRoom(true, botTestAlice)
	if setup := env.setup(); setup == nil || !setup.IsDirect {
		t.Fatalf("setup = %+v, want a direct one", setup)
	}
	if msgs := env.messages(); len(msgs) != 1 || !strings.Contains(msgs[0].Body, "`help`") || strings.Contains(msgs[0].Body, "!help") {
		t.Errorf("DM welcome = %+v, want one telling to send help without prefix", msgs)
	}
}

// TestBotWarnsAboutEncryptedRoom checks that the welcome in an encrypted room warns that the
// bot cannot read it exactly while encryption is not active: off, or found broken by the
// start-up probe.
func TestBotWarnsAboutEncryptedRoom(t *testing.T) {
	cases := []struct {
		name     string
		crypto   bool
		broken   bool
		wantWarn bool
	}{
		{"encryption off", false, false, true},
		{"encryption active", true, false, false},
		{"homeserver withholds to-device events", true, true, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := newBotEnv(t, nil)
			if tc.crypto {
				// A machine that is never started: the welcome only asks whether encryption
				// is active, and the bot's client does not encrypt with it.
				if err := e2ee.Upgrade(env.ctx, env.svc.rawDB, env.svc.log); err != nil {
					t.Fatal(err)
				}
				store := crypto.NewSQLCryptoStore(env.svc.rawDB, dbutil.ZeroLogger(env.svc.log), e2ee.AccountID, "", make([]byte, 32))
				env.svc.crypto = e2ee.NewMachine(env.svc.as.BotClient(), store, env.svc.stateStore, env.svc.log)
				env.svc.cryptoState.broken.Store(tc.broken)
			}
			env.hs.SetState(botTestRoom, event.StateEncryption, "", botTestAlice, map[string]any{"algorithm": "m.megolm.v1.aes-sha2"})
			env.setUpRoom(false, botTestAlice)
			msgs := env.messages()
			if len(msgs) != 1 {
				t.Fatalf("welcome messages = %+v, want one", msgs)
			}
			if warned := strings.Contains(msgs[0].Body, "can't read encrypted messages"); warned != tc.wantWarn {
				t.Errorf("welcome in encrypted room = %q; warning = %t, want %t", msgs[0].Body, warned, tc.wantWarn)
			}
		})
	}
}

func TestBotRejectsDisallowedInvite(t *testing.T) {
	tests := []struct {
		name       string
		policy     InvitePolicy
		inviter    id.UserID
		wantReason string
	}{
		{name: "other server by default", inviter: "@mallory:evil.example", wantReason: "Custodian only accepts invites from users of example.org"},
		{name: "not listed", policy: InvitePolicy{AllowedUsers: []string{"@bob:example.org"}}, inviter: botTestAlice, wantReason: "Custodian only accepts invites from approved users"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := newBotEnv(t, func(cfg *Config) { cfg.Bot.InvitePolicy = tt.policy })
			env.hs.SetMembership(botTestRoom, tt.inviter, event.MembershipJoin)
			env.hs.SetMembership(botTestRoom, botTestBot, event.MembershipInvite)
			env.mustDeliver(env.member(botTestRoom, tt.inviter, botTestBot, event.MembershipInvite, nil))

			leaves := env.hs.RequestsTo(astest.PatternLeave)
			if len(leaves) != 1 {
				t.Fatalf("bot made %d leave requests, want 1", len(leaves))
			}
			var body mautrix.ReqLeave
			if err := leaves[0].DecodeBody(&body); err != nil || body.Reason != tt.wantReason {
				t.Errorf("leave reason = %q (%v), want %q", body.Reason, err, tt.wantReason)
			}
			if leaves[0].UserID != botTestBot {
				t.Errorf("leave was made as %s, want the bot", leaves[0].UserID)
			}
			if joins := env.hs.RequestsTo(astest.PatternJoin); len(joins) != 0 {
				t.Errorf("bot made %d join requests, want none", len(joins))
			}
			if setup := env.setup(); setup != nil {
				t.Errorf("setup row after a rejected invite = %+v, want none", setup)
			}
			if exists, _ := env.svc.db.User.Exists(env.ctx, tt.inviter); exists {
				t.Error("a users row was created for a rejected inviter")
			}
			if n := len(env.messages()); n != 0 {
				t.Errorf("bot sent %d messages, want none", n)
			}
		})
	}
}

func TestBotIgnoresInviteToGoneRoom(t *testing.T) {
	env := newBotEnv(t, nil)
	env.hs.SetRoomGone(botTestRoom)
	if err := env.deliver(env.member(botTestRoom, botTestAlice, botTestBot, event.MembershipInvite, nil)); err != nil {
		t.Fatalf("invite to a gone room returned %v, want nil", err)
	}
	if setup := env.setup(); setup != nil {
		t.Errorf("setup row for a gone room = %+v, want none", setup)
	}
}

func TestBotSetupEndsWhenKickedOrBanned(t *testing.T) {
	for _, membership := range []event.Membership{event.MembershipLeave, event.MembershipBan} {
		t.Run(string(membership), func(t *testing.T) {
			env := newBotEnv(t, nil)
			env.setUpRoom(false, botTestAlice, botTestBob)
			if err := env.svc.bridges[0].ClaimRoom(env.ctx, botTestRoom, Provenance{Actor: botTestAlice}); err != nil {
				t.Fatal(err)
			}
			env.hs.SetMembership(botTestRoom, botTestBot, membership)
			kick := env.member(botTestRoom, botTestAlice, botTestBot, membership, map[string]any{"reason": "bye"})
			env.mustDeliver(kick)

			if setup := env.setup(); setup != nil {
				t.Errorf("setup row after %s = %+v, want none", membership, setup)
			}
			if !slices.Equal(env.bridge.purged, []id.RoomID{botTestRoom}) {
				t.Errorf("PurgeRoom calls = %v, want [%s]", env.bridge.purged, botTestRoom)
			}
			if owner, err := env.svc.roomBridges(env.ctx, botTestRoom); err != nil || len(owner) != 0 {
				t.Errorf("room owner after %s = %q (%v), want none", membership, owner, err)
			}
			// Replaying the kick is harmless.
			env.mustDeliver(kick)
			if len(env.bridge.purged) != 2 {
				t.Errorf("PurgeRoom calls after replay = %d, want 2", len(env.bridge.purged))
			}
			if n := len(env.hs.RequestsTo(astest.PatternLeave)); n != 0 {
				t.Errorf("bot made %d leave requests after being removed, want none", n)
			}
		})
	}
}

func TestBotSetupEndReportsBridgeFailure(t *testing.T) {
	env := newBotEnv(t, nil)
	env.setUpRoom(false, botTestAlice, botTestBob)
	env.bridge.purgeErr = errors.New("remote unreachable")
	err := env.deliver(env.member(botTestRoom, botTestAlice, botTestBot, event.MembershipLeave, nil))
	var bridgeErr *BridgeError
	if !errors.As(err, &bridgeErr) || bridgeErr.Bridge != "test" {
		t.Errorf("kick with a failing bridge returned %v, want a BridgeError for test", err)
	}
	if setup := env.setup(); setup != nil {
		t.Error("setup row survived a failing bridge purge")
	}
}

func TestBotLeavesWhenLastMemberLeaves(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) { testBotLeavesWhenLastMemberLeaves(t, dialect) })
	}
}

func testBotLeavesWhenLastMemberLeaves(t *testing.T, dialect string) {
	env := newBotEnvOn(t, dialect, nil)
	env.hs.SetMembership(botTestRoom, "@test_ghost:example.org", event.MembershipJoin)
	env.setUpRoom(false, botTestAlice, botTestBob)
	leaves := func() []astest.Request {
		return env.hs.RequestsTo(astest.PatternLeave)
	}

	env.hs.SetMembership(botTestRoom, botTestBob, event.MembershipLeave)
	env.mustDeliver(env.member(botTestRoom, botTestBob, botTestBob, event.MembershipLeave, nil))
	if n := len(leaves()); n != 0 || env.setup() == nil {
		t.Fatalf("after bob left: %d leave requests, setup %v; want the bot to stay", n, env.setup())
	}

	// Only our own users (the bot, a ghost) remain once alice leaves.
	env.hs.SetMembership(botTestRoom, botTestAlice, event.MembershipLeave)
	env.mustDeliver(env.member(botTestRoom, botTestAlice, botTestAlice, event.MembershipLeave, nil))
	if n := len(leaves()); n != 1 {
		t.Fatalf("after the last member left: %d leave requests, want 1", n)
	}
	if setup := env.setup(); setup != nil {
		t.Errorf("setup row after the room emptied = %+v, want none", setup)
	}
	if !slices.Equal(env.bridge.purged, []id.RoomID{botTestRoom}) {
		t.Errorf("PurgeRoom calls = %v, want [%s]", env.bridge.purged, botTestRoom)
	}
}

func TestBotStaysInRoomABridgeKeeps(t *testing.T) {
	tests := []struct {
		name    string
		claimed bool
		keeps   bool
		keepErr error
		want    bool // the bot stays
	}{
		{name: "claimed and kept", claimed: true, keeps: true, want: true},
		{name: "claimed, the bridge cannot tell", claimed: true, keepErr: errors.New("database on fire"), want: true},
		{name: "claimed, not kept", claimed: true, want: false},
		{name: "kept by a bridge that did not claim it", keeps: true, want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := newBotEnv(t, nil)
			env.hs.SetMembership(botTestRoom, "@test_ghost:example.org", event.MembershipJoin)
			env.setUpRoom(false, botTestAlice)
			if tt.claimed {
				if err := env.svc.bridges[0].ClaimRoom(env.ctx, botTestRoom, Provenance{}); err != nil {
					t.Fatal(err)
				}
			}
			env.bridge.keeps = map[id.RoomID]bool{botTestRoom: tt.keeps}
			env.bridge.keepErr = tt.keepErr
			env.hs.SetMembership(botTestRoom, botTestAlice, event.MembershipLeave)
			env.mustDeliver(env.member(botTestRoom, botTestAlice, botTestAlice, event.MembershipLeave, nil))
			leaves := len(env.hs.RequestsTo(astest.PatternLeave))
			if tt.want {
				if leaves != 0 || len(env.bridge.purged) != 0 || env.setup() == nil {
					t.Errorf("%d leave requests, PurgeRoom calls %v, setup %v; want the bot to stay with its setup", leaves, env.bridge.purged, env.setup())
				}
				if owners, err := env.svc.roomBridges(env.ctx, botTestRoom); err != nil || len(owners) != 1 {
					t.Errorf("room owners = %q (%v), want the bridge", owners, err)
				}
			} else if leaves != 1 || len(env.bridge.purged) != 1 {
				t.Errorf("%d leave requests, PurgeRoom calls %v; want the bot to leave and purge", leaves, env.bridge.purged)
			}
		})
	}
}

func TestBotPingRepliesOnceToEachPing(t *testing.T) {
	env := newBotEnv(t, nil)
	env.setUpRoom(false, botTestAlice, botTestBob)
	env.hs.Reset()

	ping := env.text(botTestRoom, botTestBob, "!ping 17")
	env.mustDeliver(ping)
	if body := env.onlyReply(ping); body != "Pong" {
		t.Errorf("ping reply = %q, want Pong", body)
	}
	// Handled again after a crash: the same transaction ID, so the homeserver keeps one reply.
	env.mustDeliver(ping)
	env.onlyReply(ping)
	if txnIDs := sendTxnIDs(env.hs); len(txnIDs) != 2 || txnIDs[0] != txnIDs[1] {
		t.Errorf("ping reply transaction IDs = %v, want the same one twice", txnIDs)
	}

	// Another ping gets its own reply.
	second := env.text(botTestRoom, botTestBob, "!ping 18")
	env.mustDeliver(second)
	if msgs := env.messages(); len(msgs) != 2 || msgs[1].RelatesTo.GetReplyTo() != second.ID {
		t.Errorf("after a second ping the bot sent %d messages, want 2, the last replying to it", len(msgs))
	}
}

func TestBotIgnoresNonCommands(t *testing.T) {
	env := newBotEnv(t, nil)
	env.setUpRoom(false, botTestAlice, botTestBob)
	env.hs.Reset()
	tests := []struct {
		name    string
		content map[string]any
	}{
		{"no prefix in a group room", map[string]any{"msgtype": "m.text", "body": "ping"}},
		{"notice", map[string]any{"msgtype": "m.notice", "body": "!ping"}},
		{"emote", map[string]any{"msgtype": "m.emote", "body": "!ping"}},
		{"edit", map[string]any{
			"msgtype": "m.text", "body": "* !ping",
			"m.new_content": map[string]any{"msgtype": "m.text", "body": "!ping"},
			"m.relates_to":  map[string]any{"rel_type": "m.replace", "event_id": "$original"},
		}},
		{"double-puppeted from another bridge", map[string]any{"msgtype": "m.text", "body": "!ping", "fi.mau.double_puppet_source": "mautrix-whatsapp"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env.mustDeliver(env.event(botTestRoom, event.EventMessage, botTestBob, nil, tt.content))
			if n := len(env.messages()); n != 0 {
				t.Errorf("bot sent %d messages, want none", n)
			}
		})
	}
	t.Run("room without the bot", func(t *testing.T) {
		env.mustDeliver(env.text("!elsewhere:example.org", botTestBob, "!ping"))
		if n := len(env.hs.Requests()); n != 0 {
			t.Errorf("bot made %d requests for a room it is not in, want none", n)
		}
	})
}

func TestBotCommandsInDirectChat(t *testing.T) {
	t.Run("is_direct invite", func(t *testing.T) {
		env := newBotEnv(t, nil)
		env.setUpRoom(true, botTestAlice)
		env.hs.Reset()
		help := env.text(botTestRoom, botTestAlice, "help")
		env.mustDeliver(help)
		if body := env.onlyReply(help); !strings.Contains(body, "ping") || !strings.Contains(body, "test") {
			t.Errorf("help reply = %q, want it to list ping and the test group", body)
		}
	})
	t.Run("two members without a setup record", func(t *testing.T) {
		env := newBotEnv(t, nil)
		env.setUpRoom(false, botTestAlice)
		if _, err := env.svc.db.BotSetup.Delete(env.ctx, botTestRoom, botTestBot); err != nil {
			t.Fatal(err)
		}
		env.hs.Reset()
		ping := env.text(botTestRoom, botTestAlice, "ping")
		env.mustDeliver(ping)
		if body := env.onlyReply(ping); body != "Pong" {
			t.Errorf("ping reply = %q, want Pong", body)
		}
	})
	t.Run("two members in a room set up as a group", func(t *testing.T) {
		// A private room of one user and the bot (say for their webhooks) is a group room: the
		// prefix is needed, and room commands work there.
		env := newBotEnv(t, nil)
		env.setUpRoom(false, botTestAlice)
		env.hs.Reset()
		env.mustDeliver(env.text(botTestRoom, botTestAlice, "ping"))
		if got := env.messages(); len(got) != 0 {
			t.Fatalf("bot answered an unprefixed message in a group room: %d messages", len(got))
		}
		ping := env.text(botTestRoom, botTestAlice, "!ping")
		env.mustDeliver(ping)
		if body := env.onlyReply(ping); body != "Pong" {
			t.Errorf("ping reply = %q, want Pong", body)
		}
	})
}

func TestBotCommandReplies(t *testing.T) {
	tests := []struct {
		name      string
		body      string
		wantReply string // substring
		wantErr   bool
		wantRan   []string
	}{
		{name: "unknown with suggestion", body: "!hlep", wantReply: "Unknown command `hlep`. Did you mean `help`?"},
		{name: "unknown without suggestion", body: "!foo", wantReply: "Unknown command `foo`. Send `!help` for the list of commands."},
		{name: "unknown in group", body: "!test confgure", wantReply: "Did you mean `test configure`?"},
		{name: "group alone", body: "!test", wantReply: "test commands"},
		{name: "help for group", body: "!help test", wantReply: "test login"},
		{name: "help for command", body: "!help ping", wantReply: "Check that I am alive"},
		{name: "help for unknown", body: "!help pnig", wantReply: "Did you mean `ping`?"},
		{name: "bridge command", body: "!test configure  now", wantReply: "Done", wantRan: []string{"test configure now"}},
		{name: "internal error", body: "!test fail", wantReply: "Something went wrong, the error was logged (event `$event", wantErr: true},
		{name: "user error", body: "!test refuse", wantReply: "You can't do that here."},
		{name: "setup in room", body: "!setup", wantReply: "set up in this room by `@alice:example.org`"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := newBotEnv(t, nil)
			env.hs.SetState(botTestRoom, event.StatePowerLevels, "", botTestAlice, map[string]any{"users": map[string]int{botTestBob.String(): 50}})
			env.hs.SetState(botTestRoom, event.StateCreate, "", botTestAlice, map[string]any{"room_version": "10"})
			env.setUpRoom(false, botTestAlice, botTestBob)
			env.hs.Reset()
			cmd := env.text(botTestRoom, botTestBob, tt.body)
			err := env.deliver(cmd)
			if (err != nil) != tt.wantErr {
				t.Errorf("handling %q returned %v, want error: %v", tt.body, err, tt.wantErr)
			}
			if body := env.onlyReply(cmd); !strings.Contains(body, tt.wantReply) {
				t.Errorf("reply to %q = %q, want it to contain %q", tt.body, body, tt.wantReply)
			}
			if !slices.Equal(env.bridge.ran, tt.wantRan) {
				t.Errorf("commands run = %q, want %q", env.bridge.ran, tt.wantRan)
			}
		})
	}
}

func TestBotRoomConfigNeedsPowerLevel(t *testing.T) {
	tests := []struct {
		name      string
		overrides map[string]int
		sender    id.UserID
		wantRan   bool
		wantReply string
	}{
		{name: "state_default met", sender: botTestBob, wantRan: true, wantReply: "Done"},
		{name: "below state_default", sender: "@carol:example.org", wantReply: "You need power level 50 in this room to use `test configure` (you have 0)."},
		{name: "override above", overrides: map[string]int{"test configure": 75}, sender: botTestBob, wantReply: "You need power level 75"},
		{name: "override below", overrides: map[string]int{"test configure": 0}, sender: "@carol:example.org", wantRan: true, wantReply: "Done"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := newBotEnv(t, func(cfg *Config) { cfg.Bot.CommandPowerLevels = tt.overrides })
			env.hs.SetState(botTestRoom, event.StatePowerLevels, "", botTestAlice, map[string]any{
				"users": map[string]int{botTestAlice.String(): 100, botTestBob.String(): 50},
			})
			env.hs.SetState(botTestRoom, event.StateCreate, "", botTestAlice, map[string]any{"room_version": "10"})
			env.setUpRoom(false, botTestAlice, botTestBob, "@carol:example.org")
			env.hs.Reset()
			cmd := env.text(botTestRoom, tt.sender, "!test configure")
			env.mustDeliver(cmd)
			if ran := len(env.bridge.ran) == 1; ran != tt.wantRan {
				t.Errorf("command ran = %v, want %v", ran, tt.wantRan)
			}
			if body := env.onlyReply(cmd); !strings.Contains(body, tt.wantReply) {
				t.Errorf("reply = %q, want it to contain %q", body, tt.wantReply)
			}
		})
	}
}

func TestBotRedactsSensitiveCommands(t *testing.T) {
	env := newBotEnv(t, nil)
	env.setUpRoom(true, botTestAlice)
	env.hs.Reset()
	login := env.text(botTestRoom, botTestAlice, "test login hunter2")
	env.mustDeliver(login)

	events := env.hs.Events(botTestRoom)
	if len(events) != 2 || events[0].Type != event.EventRedaction || events[0].Redacts != login.ID {
		t.Fatalf("bot's events = %+v, want a redaction of the command first, then the reply", events)
	}
	if !slices.Equal(env.bridge.ran, []string{"test login hunter2"}) {
		t.Errorf("commands run = %q, want the login with its argument", env.bridge.ran)
	}

	// A mistyped sensitive command is redacted too.
	typo := env.text(botTestRoom, botTestAlice, "test lgoin hunter2")
	env.mustDeliver(typo)
	var redacted []id.EventID
	for _, evt := range env.hs.Events(botTestRoom) {
		if evt.Type == event.EventRedaction {
			redacted = append(redacted, evt.Redacts)
		}
	}
	if !slices.Equal(redacted, []id.EventID{login.ID, typo.ID}) {
		t.Errorf("redacted events = %v, want [%s %s]", redacted, login.ID, typo.ID)
	}
}

func TestBotSetupCommandWithoutRecord(t *testing.T) {
	env := newBotEnv(t, nil)
	env.setUpRoom(false, botTestAlice, botTestBob)
	if _, err := env.svc.db.BotSetup.Delete(env.ctx, botTestRoom, botTestBot); err != nil {
		t.Fatal(err)
	}
	env.hs.Reset()
	cmd := env.text(botTestRoom, botTestAlice, "!setup")
	env.mustDeliver(cmd)
	if body := env.onlyReply(cmd); body != "This bot has no setup record in this room." {
		t.Errorf("setup reply = %q, want the no-record notice", body)
	}
}

func TestBotAfterConnectSetsProfileOnce(t *testing.T) {
	env := newBotEnv(t, func(cfg *Config) {
		cfg.AppService.BotDisplayname = "Custodian"
		cfg.AppService.BotAvatar = "mxc://example.org/avatar"
	})
	putProfile := func() []astest.Request {
		return env.hs.RequestsTo(astest.PatternPutProfile)
	}
	env.svc.bot.afterConnect(env.ctx)
	if n := len(putProfile()); n != 2 {
		t.Fatalf("first afterConnect made %d profile updates, want 2", n)
	}
	profile := env.hs.Profile(botTestBot)
	if profile["displayname"] != "Custodian" || profile["avatar_url"] != "mxc://example.org/avatar" {
		t.Errorf("bot profile = %v, want the configured name and avatar", profile)
	}
	env.svc.bot.afterConnect(env.ctx)
	if n := len(putProfile()); n != 2 {
		t.Errorf("second afterConnect made %d more profile updates, want none", n-2)
	}
}

// TestBotAfterConnectRegistersTheBot: the bot user is registered before its profile is set, since
// Synapse has no profile for an unregistered sender_localpart user; a bot registered before
// (M_USER_IN_USE) still gets its profile.
func TestBotAfterConnectRegistersTheBot(t *testing.T) {
	env := newBotEnv(t, func(cfg *Config) { cfg.AppService.BotDisplayname = "Custodian" })
	for run := 1; run <= 2; run++ {
		env.hs.Reset()
		env.svc.bot.afterConnect(env.ctx)
		var order []string
		for _, req := range env.hs.Requests() {
			switch req.Pattern {
			case astest.PatternRegister:
				var body struct {
					Username string `json:"username"`
					Type     string `json:"type"`
				}
				if err := req.DecodeBody(&body); err != nil || body.Username != botTestBot.Localpart() || body.Type != "m.login.application_service" {
					t.Errorf("run %d: register request %s, want the bot's localpart with m.login.application_service", run, req.Body)
				}
				order = append(order, "register")
			case astest.PatternPutProfile:
				order = append(order, "profile")
			}
		}
		want := []string{"register", "profile"}
		if run == 2 {
			want = []string{"register"} // the name is set already
		}
		if !slices.Equal(order, want) {
			t.Errorf("run %d: afterConnect requests %v, want %v", run, order, want)
		}
	}
	if name := env.hs.Profile(botTestBot)["displayname"]; name != "Custodian" {
		t.Errorf("bot display name = %v, want Custodian", name)
	}
}

func TestBotDoesNotRunSensitiveCommandItCannotRedact(t *testing.T) {
	env := newBotEnv(t, nil)
	env.setUpRoom(true, botTestAlice)
	env.hs.Reset()
	env.hs.Fail(astest.PatternRedact, http.StatusForbidden, "M_FORBIDDEN")
	login := env.text(botTestRoom, botTestAlice, "test login hunter2")
	if err := env.deliver(login); err == nil {
		t.Error("handling a sensitive command that could not be redacted returned nil, want an error")
	}
	if len(env.bridge.ran) != 0 {
		t.Errorf("commands run = %q, want none", env.bridge.ran)
	}
	if body := env.onlyReply(login); !strings.Contains(body, "I could not remove your message") {
		t.Errorf("reply = %q, want a warning that the secret is exposed", body)
	}
}

func TestBotRepliesInThread(t *testing.T) {
	env := newBotEnv(t, nil)
	env.setUpRoom(false, botTestAlice, botTestBob)
	env.hs.Reset()
	ping := env.event(botTestRoom, event.EventMessage, botTestBob, nil, map[string]any{
		"msgtype": "m.text", "body": "!ping",
		"m.relates_to": map[string]any{
			"rel_type": "m.thread", "event_id": "$root", "is_falling_back": true,
			"m.in_reply_to": map[string]any{"event_id": "$root"},
		},
	})
	env.mustDeliver(ping)
	env.onlyReply(ping)
	if rel := env.messages()[0].RelatesTo; rel.GetThreadParent() != "$root" || rel.IsFallingBack {
		t.Errorf("reply relation = %+v, want a non-fallback reply in thread $root", rel)
	}
}

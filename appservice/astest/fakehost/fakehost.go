// Package fakehost provides a test implementation of [appservice.Host] for bridge tests: a real
// test database with the core's, the vault's, the state store's and the bridge's migrations,
// intents that talk to an [astest.FakeHomeserver], an in-memory credential vault, and the core's
// real personal-data engine ([privacy.Engine]): [Host.EraseUser], [Host.Export] and
// [Host.PurgeRedacted] run the same erasure, export and redaction purge as the service, and
// [New] fails the test when the bridge's inventory does not match its schema.
//
// It lives outside package astest because it imports package appservice, whose own tests
// import astest.
package fakehost

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	mxas "maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
	"maunium.net/go/mautrix/sqlstatestore"

	"github.com/custodian-matrix/custodian/appservice"
	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/database"
	"github.com/custodian-matrix/custodian/appservice/e2ee"
	"github.com/custodian-matrix/custodian/appservice/privacy"
	"github.com/custodian-matrix/custodian/appservice/vault"
)

// Defaults of a [Host].
const (
	Domain       = "example.org"
	ASToken      = "fakehost-as-token"
	BotLocalpart = "custodian"
)

// Host is an [appservice.Host] for one bridge, backed by a real database and a fake homeserver.
// Create it with [New]. Its methods are safe for concurrent use.
type Host struct {
	// HS is the fake homeserver the intents talk to (through Front).
	HS *astest.FakeHomeserver
	// AS is the mautrix appservice the intents come from.
	AS *mxas.AppService
	// RawDB is the whole database; CoreDB the core's queries on it; BridgeDB the bridge's child.
	RawDB    *dbutil.Database
	CoreDB   *database.Database
	BridgeDB *dbutil.Database
	// Secrets is the in-memory vault behind Vault.
	Secrets *MemoryVault
	// CommandPowerLevels overrides, per command, the power level MayConfigureRoom requires,
	// like bot.command_power_levels. Set it before the bridge starts.
	CommandPowerLevels map[string]int
	// Engine is the core's real personal-data engine over the database, with the bridge as its
	// only module; Erase, Export and PurgeRedacted run it.
	Engine *privacy.Engine
	// Front serves the endpoints the fake homeserver lacks (createRoom, invite) and passes
	// everything else on to HS.
	Front *httptest.Server

	t        testing.TB
	br       appservice.Bridge
	bridgeID string
	ns       appservice.Namespaces
	log      zerolog.Logger

	logs *syncBuffer
	// logWriter writes to the test log and to logs; made once, so that it is set up before the
	// bridge's cleanups and its lines while the bridge stops still reach the test.
	logWriter zerolog.LevelWriter

	secretsOnce sync.Once
	secrets     *appservice.SecretDetector

	notifier *appservice.Notifier

	// crypto is the bot's olm machine once EnableCrypto ran; guarded by lock.
	crypto *e2ee.Machine

	lock    sync.Mutex
	notices []SentNotice
	created []CreatedRoom
	invites []Invite
	events  map[id.EventID]json.RawMessage
	nextID  int
}

var _ appservice.Host = (*Host)(nil)

// CreatedRoom is a room created through the front's createRoom endpoint.
type CreatedRoom struct {
	RoomID   id.RoomID
	Creator  id.UserID
	Invite   []id.UserID
	IsDirect bool
	Preset   string
	// Encryption is the m.room.encryption event of the request's initial_state, nil if none.
	Encryption *event.EncryptionEventContent
}

// SentNotice is a notice the homeserver accepted through [Host.NotifyUser].
type SentNotice struct {
	User    id.UserID
	RoomID  id.RoomID
	EventID id.EventID
	// TxnID is the send's transaction ID (see [appservice.NoticeTxnID]).
	TxnID  string
	Notice appservice.Notice
}

// Invite is an invite sent through the front's invite endpoint.
type Invite struct {
	RoomID  id.RoomID
	Inviter id.UserID
	Invitee id.UserID
}

// New returns a Host for br on a fresh database of the given dialect (see
// [astest.Dialects]): the core's and the state store's migrations and then br's have run. It
// does not call br.Init.
func New(t testing.TB, dialect string, br appservice.Bridge) *Host {
	t.Helper()
	logs := &syncBuffer{}
	logWriter := zerolog.MultiLevelWriter(astest.LogWriter(t), logs)
	log := zerolog.New(logWriter).Level(zerolog.DebugLevel)
	ctx := log.WithContext(context.Background())
	h := &Host{
		logs:      logs,
		logWriter: logWriter,
		t:         t,
		br:        br,
		HS:        astest.NewFakeHomeserver(t, Domain, ASToken),
		RawDB:     astest.TestDB(t, dialect),
		Secrets:   NewMemoryVault(),
		bridgeID:  br.ID(),
		ns:        br.Namespaces(),
		log:       log.With().Str("bridge", br.ID()).Logger(),
	}
	h.CoreDB = database.New(h.RawDB)
	if err := h.CoreDB.Upgrade(ctx); err != nil {
		t.Fatalf("fakehost: %v", err)
	}
	// The vault's tables too, as the core migrates them: the schema check needs the whole schema.
	if err := vault.ChildDB(h.RawDB, log).Upgrade(ctx); err != nil {
		t.Fatalf("fakehost: failed to upgrade vault database: %v", err)
	}
	stateStore := sqlstatestore.NewSQLStateStore(h.RawDB, dbutil.ZeroLogger(log), true)
	if err := stateStore.Upgrade(ctx); err != nil {
		t.Fatalf("fakehost: failed to upgrade state store: %v", err)
	}
	h.BridgeDB = h.RawDB.Child(br.ID()+"_version", br.Migrations(), dbutil.ZeroLogger(h.log))
	if err := h.BridgeDB.Upgrade(ctx); err != nil {
		t.Fatalf("fakehost: failed to upgrade %s database: %v", br.ID(), err)
	}

	h.Front = httptest.NewServer(h.frontHandler())
	t.Cleanup(h.Front.Close)

	h.AS = mxas.Create()
	h.AS.Log = log.With().Str("component", "mautrix").Logger()
	h.AS.HomeserverDomain = Domain
	h.AS.Registration = &mxas.Registration{ID: "custodian", AppToken: ASToken, SenderLocalpart: BotLocalpart}
	h.AS.StateStore = stateStore
	// Injected failures should fail at once, not after mautrix's retries.
	h.AS.DefaultHTTPRetries = 0
	if err := h.AS.SetHomeserverURL(h.Front.URL); err != nil {
		t.Fatalf("fakehost: %v", err)
	}
	// As the core: no client sends plaintext into a room the state cache knows as encrypted.
	h.AS.HTTPClient.Transport = appservice.GuardPlaintext(h.AS.HTTPClient.Transport, stateStore)
	h.notifier = appservice.NewNotifier(h.AS.BotIntent(), h.CoreDB.User)
	h.Engine = privacy.New(privacy.Options{DB: h.CoreDB, Host: engineHost{h}, Log: log.With().Str("component", "privacy").Logger()})
	h.notifier.RefuseDuringErasure(h.Engine.Store().HasPendingErasure)
	// As the core with encryption.default_encrypted on.
	h.notifier.EncryptRooms(h.EncryptionActive)
	// As at the core's start: the bridge's inventory must match its schema.
	if err := h.Engine.CheckSchema(ctx); err != nil {
		t.Fatalf("fakehost: %v", err)
	}
	return h
}

// Logger returns a logger that writes to the test log and to [Host.Logs], for the contexts a
// test passes to the bridge.
func (h *Host) Logger() zerolog.Logger {
	return zerolog.New(h.logWriter).Level(zerolog.DebugLevel)
}

// Logs returns everything logged so far through the host's loggers (the bridge's, mautrix's
// and [Host.Logger]'s), at debug level and above, for tests that check what logs never hold.
func (h *Host) Logs() string {
	return h.logs.String()
}

// Intent returns an intent for localpart, which must be in the bridge's user namespace.
func (h *Host) Intent(localpart string) (*mxas.IntentAPI, error) {
	if h.ns.UserPrefix == "" || len(localpart) <= len(h.ns.UserPrefix) || !strings.HasPrefix(localpart, h.ns.UserPrefix) {
		return nil, appservice.ErrOutsideNamespace
	}
	userID := id.NewUserID(localpart, Domain)
	if _, _, err := userID.ParseAndValidateStrict(); err != nil {
		return nil, err
	}
	intent := h.AS.Intent(userID)
	h.lock.Lock()
	if h.crypto != nil {
		intent.Client.Crypto = h.crypto
	}
	h.lock.Unlock()
	return intent, nil
}

// BotDevice is the bot's device ID once [Host.EnableCrypto] ran.
const BotDevice = id.DeviceID("CUSTODIANBOT")

// EnableCrypto turns end-to-end encryption on as the core's start-up does once the bot's device
// is set up: an olm machine for the bot's device [BotDevice] on a crypto store in the host's
// database, its device keys uploaded to HS, set as Crypto on the bot's client and on the
// client of every intent [Host.Intent] returns from then on. [Host.EncryptionActive] then
// reports true, and management rooms are created encrypted. Call it before the bridge starts.
func (h *Host) EnableCrypto(t testing.TB) *e2ee.Machine {
	t.Helper()
	log := h.Logger().With().Str("component", "crypto").Logger()
	ctx := log.WithContext(context.Background())
	if err := e2ee.Upgrade(ctx, h.RawDB, log); err != nil {
		t.Fatalf("fakehost: %v", err)
	}
	store := crypto.NewSQLCryptoStore(h.RawDB, dbutil.ZeroLogger(log), e2ee.AccountID, BotDevice, []byte("fakehost pickle key, 32 bytes!!!"))
	cli := h.AS.BotClient()
	cli.DeviceID = BotDevice
	mach := e2ee.NewMachine(cli, store, h.AS.StateStore.(e2ee.StateStore), log)
	if err := mach.Olm().Load(ctx); err != nil {
		t.Fatalf("fakehost: failed to load the bot's account: %v", err)
	}
	if err := mach.Olm().ShareKeys(ctx, -1); err != nil {
		t.Fatalf("fakehost: failed to upload the bot's device keys: %v", err)
	}
	cli.Crypto = mach
	h.lock.Lock()
	h.crypto = mach
	h.lock.Unlock()
	return mach
}

// EncryptionActive reports whether [Host.EnableCrypto] ran.
func (h *Host) EncryptionActive() bool {
	h.lock.Lock()
	defer h.lock.Unlock()
	return h.crypto != nil
}

// Bot returns the bot's intent.
func (h *Host) Bot() *mxas.IntentAPI { return h.AS.BotIntent() }

// BotID returns the bot's user ID.
func (h *Host) BotID() id.UserID { return h.AS.BotMXID() }

// DB returns the bridge's child database.
func (h *Host) DB() *dbutil.Database { return h.BridgeDB }

// Log returns a logger that writes to the test log.
func (h *Host) Log() *zerolog.Logger { return &h.log }

// Domain returns [Domain].
func (h *Host) Domain() string { return Domain }

// Vault returns the in-memory vault, scoped to the bridge.
func (h *Host) Vault() appservice.SecretStore { return h.Secrets.For(h.bridgeID) }

// EnsureUser creates the users row.
func (h *Host) EnsureUser(ctx context.Context, userID id.UserID) error {
	return h.CoreDB.User.Ensure(ctx, userID)
}

// MayConfigureRoom reports whether userID is joined to roomID in the state store and has the
// power level CommandPowerLevels sets for command, else the room's state_default, by the power
// levels in the state store. A room without cached power levels lets every joined member
// configure it, so tests that do not care about power levels need not set any.
func (h *Host) MayConfigureRoom(ctx context.Context, roomID id.RoomID, userID id.UserID, command string) (bool, error) {
	if !h.AS.StateStore.IsInRoom(ctx, roomID, userID) {
		return false, nil
	}
	pl, err := h.AS.StateStore.GetPowerLevels(ctx, roomID)
	if err != nil || pl == nil {
		return err == nil, err
	}
	h.lock.Lock()
	required, ok := h.CommandPowerLevels[command]
	h.lock.Unlock()
	if !ok {
		required = pl.StateDefault()
	}
	return pl.GetUserLevel(userID) >= required, nil
}

// IsPrivateWith asks the fake homeserver for roomID's joined members and applies the core's
// rule, [appservice.OnlyBotAnd], as the real host does.
func (h *Host) IsPrivateWith(ctx context.Context, roomID id.RoomID, userID id.UserID) (bool, error) {
	resp, err := h.Bot().JoinedMembers(ctx, roomID)
	if err != nil {
		return false, err
	}
	members := make([]id.UserID, 0, len(resp.Joined))
	for member := range resp.Joined {
		members = append(members, member)
	}
	return appservice.OnlyBotAnd(members, h.BotID(), userID, true), nil
}

// NotifyUser runs the core's notifier ([appservice.Notifier]) against the fake homeserver: the
// user's management room is kept on their users row, reopened when they left it or others
// joined, and every send carries the transaction ID the core would use. Each notice the
// homeserver posted is recorded once (see [Host.Notices]): a replay of the same Cause and
// Purpose into the same room is one message.
func (h *Host) NotifyUser(ctx context.Context, userID id.UserID, n appservice.Notice) (id.RoomID, id.EventID, error) {
	roomID, eventID, err := h.notifier.Notify(ctx, userID, h.bridgeID, n)
	if err != nil {
		return roomID, eventID, err
	}
	h.lock.Lock()
	defer h.lock.Unlock()
	for _, sent := range h.notices {
		if sent.EventID == eventID {
			return roomID, eventID, nil
		}
	}
	h.notices = append(h.notices, SentNotice{
		User: userID, RoomID: roomID, EventID: eventID, TxnID: appservice.NoticeTxnID(h.bridgeID, n), Notice: n,
	})
	return roomID, eventID, nil
}

// Notices returns the notices posted through NotifyUser to userID, oldest first.
func (h *Host) Notices(userID id.UserID) []SentNotice {
	h.lock.Lock()
	defer h.lock.Unlock()
	var out []SentNotice
	for _, sent := range h.notices {
		if sent.User == userID {
			out = append(out, sent)
		}
	}
	return out
}

// ManagementRoom returns the management room recorded for userID, "" if none.
func (h *Host) ManagementRoom(t testing.TB, userID id.UserID) id.RoomID {
	t.Helper()
	roomID, err := h.CoreDB.User.ManagementRoom(context.Background(), userID)
	if err != nil {
		t.Fatalf("fakehost: %v", err)
	}
	return roomID
}

// SetPowerLevels sets roomID's power levels on the fake homeserver and in the state store, as
// when the homeserver sends the power levels event.
func (h *Host) SetPowerLevels(t testing.TB, roomID id.RoomID, pl *event.PowerLevelsEventContent) {
	t.Helper()
	h.HS.SetState(roomID, event.StatePowerLevels, "", h.BotID(), pl)
	if err := h.AS.StateStore.SetPowerLevels(context.Background(), roomID, pl); err != nil {
		t.Fatal(err)
	}
}

// IsPaused reports the users row's paused flag.
func (h *Host) IsPaused(ctx context.Context, userID id.UserID) (bool, error) {
	return h.CoreDB.User.IsPaused(ctx, userID)
}

// CarriesSecret answers with the core's [appservice.SecretDetector] for the bridge's commands
// (if it is an [appservice.CommandProvider]) under the default prefix. The detector is built on
// the first call, so that it sees the commands of an initialised bridge.
func (h *Host) CarriesSecret(evt *event.Event) bool {
	h.secretsOnce.Do(func() {
		groups := map[string][]*appservice.Command{}
		if cp, ok := h.br.(appservice.CommandProvider); ok {
			groups[h.bridgeID] = cp.Commands()
		}
		h.secrets = appservice.NewSecretDetector("", nil, groups)
	})
	return h.secrets.CarriesSecret(evt)
}

// ClaimRoom records the claim in as_room, like the core.
func (h *Host) ClaimRoom(ctx context.Context, roomID id.RoomID, prov appservice.Provenance) error {
	at := prov.At
	if at.IsZero() {
		at = time.Now()
	}
	return h.CoreDB.DoTxn(ctx, nil, func(ctx context.Context) error {
		if prov.Actor != "" {
			if err := h.CoreDB.User.Ensure(ctx, prov.Actor); err != nil {
				return err
			}
		}
		return h.CoreDB.Room.Claim(ctx, roomID, h.bridgeID, prov.Actor, prov.EventID, at)
	})
}

// ReleaseRoom forgets the claim.
func (h *Host) ReleaseRoom(ctx context.Context, roomID id.RoomID) error {
	return h.CoreDB.Room.Release(ctx, roomID, h.bridgeID)
}

// Claimed reports whether the bridge has claimed roomID.
func (h *Host) Claimed(t testing.TB, roomID id.RoomID) bool {
	t.Helper()
	owners, err := h.CoreDB.Room.GetClaims(context.Background(), roomID)
	if err != nil {
		t.Fatal(err)
	}
	for _, owner := range owners {
		if owner.BridgeID == h.bridgeID {
			return true
		}
	}
	return false
}

// Route returns the route the core would hand the bridge with evt: the bridge's claim on the
// event's room, with its provenance, and the bridge's ghost a membership event is about. Tests
// pass it to HandleEvent.
func (h *Host) Route(evt *event.Event) appservice.Route {
	h.t.Helper()
	var route appservice.Route
	if evt.Type == event.StateMember && evt.StateKey != nil && h.ns.UserPrefix != "" {
		target := id.UserID(*evt.StateKey)
		if localpart, server, err := target.Parse(); err == nil && server == Domain && strings.HasPrefix(localpart, h.ns.UserPrefix) {
			route.Ghost = target
		}
	}
	claims, err := h.CoreDB.Room.GetClaims(context.Background(), evt.RoomID)
	if err != nil {
		h.t.Fatalf("fakehost: %v", err)
	}
	for _, c := range claims {
		if c.BridgeID == h.bridgeID {
			route.Claim = &appservice.Provenance{Actor: c.Actor, RoomID: evt.RoomID, EventID: c.EventID, At: c.CreatedAt}
		}
	}
	return route
}

// Erase runs the core's real erasure ([privacy.Engine.Erase]) of userID: the bridge's
// EraseRemote (if it is an [appservice.Eraser]), then the one transaction that deletes the users
// row and everything cascading from it, the state cache's entries and the bridge's declared
// rows, and records the tombstone. The in-memory vault forgets the user's data key, as the real
// vault's cache does. It fails the test on error and returns the receipt.
func (h *Host) Erase(t testing.TB, userID id.UserID, req appservice.EraseRequest) *appservice.EraseReceipt {
	t.Helper()
	if req.Trigger == "" {
		req.Trigger = appservice.TriggerAdmin
	}
	receipt, err := h.Engine.Erase(h.Logger().WithContext(context.Background()), userID, req)
	if err != nil {
		t.Fatalf("fakehost: erasure = %v", err)
	}
	return receipt
}

// EraseUser erases everything about userID, as an admin's erasure does (see [Host.Erase]).
func (h *Host) EraseUser(t testing.TB, userID id.UserID) *appservice.EraseReceipt {
	t.Helper()
	return h.Erase(t, userID, appservice.EraseRequest{Trigger: appservice.TriggerAdmin})
}

// Export runs the core's real export ([privacy.Engine.Export]) of userID and fails the test on
// error.
func (h *Host) Export(t testing.TB, userID id.UserID) *appservice.Export {
	t.Helper()
	export, err := h.Engine.Export(h.Logger().WithContext(context.Background()), userID)
	if err != nil {
		t.Fatalf("fakehost: export = %v", err)
	}
	return export
}

// PurgeRedacted runs the core's real redaction purge ([privacy.Engine.PurgeRedacted]) for
// redaction, as the core does before it hands the redaction to the bridge: with its permission
// checks (the sender created the rows, or may redact others' events by the room's power levels),
// its room check (tables without a RoomColumn ask the fake homeserver for the event; see
// [Host.AddEvent]) and its call of the bridge's RedactionPurged. It returns the bridge's rows
// purged per table.
func (h *Host) PurgeRedacted(t testing.TB, redaction *event.Event) map[string]int64 {
	t.Helper()
	ctx := h.Logger().WithContext(context.Background())
	purged, err := h.Engine.PurgeRedacted(ctx, redaction.RoomID, redaction.Sender, appservice.RedactedEventID(redaction))
	if err != nil {
		t.Fatalf("fakehost: redaction purge = %v", err)
	}
	out := purged[h.bridgeID]
	if out == nil {
		out = map[string]int64{}
	}
	return out
}

// Defaults of privacy.activity_retention and privacy.network_retention, which the fake host's
// engine uses.
const (
	ActivityRetention = 14 * 24 * time.Hour
	NetworkRetention  = 60 * 24 * time.Hour
)

// engineHost is the fake host as the engine's [privacy.Host]: the core's inventory and the
// bridge's, the bridge's remote undo and purge notification, the fake homeserver's events and
// power levels. It has no bot rooms to leave and sends no receipts.
type engineHost struct{ h *Host }

var _ privacy.Host = engineHost{}

func (e engineHost) Inventory() map[string][]appservice.UserTable {
	return map[string][]appservice.UserTable{appservice.CoreModule: privacy.CoreInventory(), e.h.bridgeID: e.h.br.PersonalData()}
}

func (e engineHost) Retention(class appservice.RetentionClass) time.Duration {
	switch class {
	case appservice.RetentionActivity:
		return ActivityRetention
	case appservice.RetentionNetwork:
		return NetworkRetention
	}
	return 0
}

func (e engineHost) KeyDeriver() privacy.KeyDeriver { return nil }

func (e engineHost) EraseRemote(ctx context.Context, module string, user id.UserID) error {
	if eraser, ok := e.h.br.(appservice.Eraser); ok && module == e.h.bridgeID {
		return eraser.EraseRemote(ctx, user)
	}
	return nil
}

func (e engineHost) PrepareFullErasure(context.Context, id.UserID) []id.RoomID { return nil }

func (e engineHost) InFullErasure(context.Context) error { return nil }

func (e engineHost) WithdrawExport(context.Context, *database.ExportFile) error { return nil }

func (e engineHost) FullErasureCommitted(_ context.Context, user id.UserID) bool {
	e.h.Secrets.Forget(user)
	return false
}

func (e engineHost) SendErasureReceipt(context.Context, id.RoomID, string, string, string) error {
	return nil
}

func (e engineHost) LeaveAfterErasure(context.Context, id.RoomID, string) {}

func (e engineHost) EventInRoom(ctx context.Context, roomID id.RoomID, eventID id.EventID) bool {
	_, err := e.h.Bot().GetEvent(ctx, roomID, eventID)
	return err == nil
}

func (e engineHost) MayRedactOthers(ctx context.Context, roomID id.RoomID, user id.UserID) (bool, error) {
	pl, err := e.h.AS.StateStore.GetPowerLevels(ctx, roomID)
	if err != nil {
		return false, err
	}
	if pl == nil {
		if pl, err = e.h.Bot().PowerLevels(ctx, roomID); err != nil {
			return false, err
		}
	}
	return pl.GetUserLevel(user) >= pl.Redact(), nil
}

func (e engineHost) RedactionPurged(ctx context.Context, module string, roomID id.RoomID, redacted id.EventID, purged map[string]int64) error {
	if purger, ok := e.h.br.(appservice.RedactionPurger); ok && module == e.h.bridgeID {
		return purger.RedactionPurged(ctx, roomID, redacted, purged)
	}
	return nil
}

// SetPaused sets userID's paused flag, as !pause does.
func (h *Host) SetPaused(t testing.TB, userID id.UserID, paused bool) {
	t.Helper()
	if err := h.CoreDB.User.SetPaused(context.Background(), userID, paused); err != nil {
		t.Fatal(err)
	}
}

// SetUpRoom makes the bot and members joined members of roomID on the fake homeserver and in
// the state store, as after the bot accepted an invite.
func (h *Host) SetUpRoom(t testing.TB, roomID id.RoomID, members ...id.UserID) {
	t.Helper()
	ctx := context.Background()
	for _, userID := range append([]id.UserID{h.BotID()}, members...) {
		h.HS.SetMembership(roomID, userID, event.MembershipJoin)
		if err := h.AS.StateStore.SetMembership(ctx, roomID, userID, event.MembershipJoin); err != nil {
			t.Fatal(err)
		}
	}
}

// SetMembership changes userID's membership on the fake homeserver and in the state store, as
// when the homeserver sends the member event.
func (h *Host) SetMembership(t testing.TB, roomID id.RoomID, userID id.UserID, membership event.Membership) {
	t.Helper()
	h.HS.SetMembership(roomID, userID, membership)
	if err := h.AS.StateStore.SetMembership(context.Background(), roomID, userID, membership); err != nil {
		t.Fatal(err)
	}
}

// CreatedRooms returns the rooms created so far.
func (h *Host) CreatedRooms() []CreatedRoom {
	h.lock.Lock()
	defer h.lock.Unlock()
	return append([]CreatedRoom(nil), h.created...)
}

// Invites returns the invites sent so far.
func (h *Host) Invites() []Invite {
	h.lock.Lock()
	defer h.lock.Unlock()
	return append([]Invite(nil), h.invites...)
}

// AddEvent makes evt known to the front's GET /rooms/{roomID}/event/{eventID}, as if it were in
// the room's history: tests add the events a bridge handles that it may later fetch (the event
// a reply answers). evt must have an ID, a room ID, a type and parsed or raw content.
func (h *Host) AddEvent(t testing.TB, evt *event.Event) {
	t.Helper()
	data, err := json.Marshal(evt)
	if err != nil {
		t.Fatalf("fakehost: failed to encode event: %v", err)
	}
	h.lock.Lock()
	defer h.lock.Unlock()
	if h.events == nil {
		h.events = make(map[id.EventID]json.RawMessage)
	}
	h.events[evt.ID] = data
}

func (h *Host) getEvent(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+ASToken {
		writeError(w, http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "Unknown access token")
		return
	}
	h.lock.Lock()
	data, ok := h.events[id.EventID(r.PathValue("eventID"))]
	h.lock.Unlock()
	var evt struct {
		RoomID id.RoomID `json:"room_id"`
	}
	if !ok || json.Unmarshal(data, &evt) != nil || evt.RoomID != id.RoomID(r.PathValue("roomID")) {
		writeError(w, http.StatusNotFound, "M_NOT_FOUND", "Event not found")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(data)
}

// frontHandler serves createRoom, invite and event, which the fake homeserver lacks, and proxies the
// rest to it.
func (h *Host) frontHandler() http.Handler {
	target, _ := url.Parse(h.HS.URL())
	proxy := httputil.NewSingleHostReverseProxy(target)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /_matrix/client/v3/createRoom", h.createRoom)
	mux.HandleFunc("POST /_matrix/client/v3/rooms/{roomID}/invite", h.invite)
	mux.HandleFunc("GET /_matrix/client/v3/rooms/{roomID}/event/{eventID}", h.getEvent)
	mux.Handle("/", proxy)
	return mux
}

func (h *Host) createRoom(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+ASToken {
		writeError(w, http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "Unknown access token")
		return
	}
	var req struct {
		Invite       []id.UserID `json:"invite"`
		IsDirect     bool        `json:"is_direct"`
		Preset       string      `json:"preset"`
		InitialState []struct {
			Type     string          `json:"type"`
			StateKey string          `json:"state_key"`
			Content  json.RawMessage `json:"content"`
		} `json:"initial_state"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "M_NOT_JSON", "Body is not JSON")
		return
	}
	creator := id.UserID(r.URL.Query().Get("user_id"))
	h.lock.Lock()
	h.nextID++
	roomID := id.RoomID(fmt.Sprintf("!created%d:%s", h.nextID, Domain))
	created := CreatedRoom{RoomID: roomID, Creator: creator, Invite: req.Invite, IsDirect: req.IsDirect, Preset: req.Preset}
	for _, st := range req.InitialState {
		if st.Type == event.StateEncryption.Type && st.StateKey == "" {
			var content event.EncryptionEventContent
			if err := json.Unmarshal(st.Content, &content); err == nil {
				created.Encryption = &content
			}
		}
	}
	h.created = append(h.created, created)
	h.lock.Unlock()
	h.HS.SetMembership(roomID, creator, event.MembershipJoin)
	for _, st := range req.InitialState {
		h.HS.SetState(roomID, event.Type{Type: st.Type, Class: event.StateEventType}, st.StateKey, creator, st.Content)
	}
	for _, invitee := range req.Invite {
		h.HS.SetMembership(roomID, invitee, event.MembershipInvite)
	}
	writeJSON(w, http.StatusOK, map[string]any{"room_id": roomID})
}

func (h *Host) invite(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+ASToken {
		writeError(w, http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "Unknown access token")
		return
	}
	var req struct {
		UserID id.UserID `json:"user_id"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "M_NOT_JSON", "Body is not JSON")
		return
	}
	roomID := id.RoomID(r.PathValue("roomID"))
	inviter := id.UserID(r.URL.Query().Get("user_id"))
	if h.HS.Membership(roomID, inviter) != event.MembershipJoin {
		writeError(w, http.StatusForbidden, "M_FORBIDDEN", "You are not in this room.")
		return
	}
	h.lock.Lock()
	h.invites = append(h.invites, Invite{RoomID: roomID, Inviter: inviter, Invitee: req.UserID})
	h.lock.Unlock()
	h.HS.SetMembership(roomID, req.UserID, event.MembershipInvite)
	writeJSON(w, http.StatusOK, map[string]any{})
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	lock sync.Mutex
	buf  bytes.Buffer
}

func (sb *syncBuffer) Write(p []byte) (int, error) {
	sb.lock.Lock()
	defer sb.lock.Unlock()
	return sb.buf.Write(p)
}

func (sb *syncBuffer) String() string {
	sb.lock.Lock()
	defer sb.lock.Unlock()
	return sb.buf.String()
}

func writeJSON(w http.ResponseWriter, status int, data any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(data)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]string{"errcode": code, "error": msg})
}

package appservice

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/format"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/clock"
	"github.com/custodian-matrix/custodian/appservice/database"
	"github.com/custodian-matrix/custodian/appservice/e2ee"
	"github.com/custodian-matrix/custodian/appservice/privacy"
)

// The personal-data engine lives in package privacy; these names keep the bridges' and the
// commands' view of it in package appservice.
type (
	// UserTable is [privacy.UserTable].
	UserTable = privacy.UserTable
	// ErasePolicy is [privacy.ErasePolicy].
	ErasePolicy = privacy.ErasePolicy
	// RetentionClass is [privacy.RetentionClass].
	RetentionClass = privacy.RetentionClass
	// Provenance is [privacy.Provenance].
	Provenance = privacy.Provenance
	// EraseRequest is [privacy.EraseRequest].
	EraseRequest = privacy.EraseRequest
	// EraseReceipt is [privacy.EraseReceipt].
	EraseReceipt = privacy.EraseReceipt
	// Export is [privacy.Export].
	Export = privacy.Export
	// ExportTable is [privacy.ExportTable].
	ExportTable = privacy.ExportTable
	// KeyDeriver is [privacy.KeyDeriver].
	KeyDeriver = privacy.KeyDeriver
)

// Erase policies, retention classes, triggers and the core's module name; see package privacy.
const (
	EraseCascade        = privacy.EraseCascade
	EraseDeleteRows     = privacy.EraseDeleteRows
	EraseSetNull        = privacy.EraseSetNull
	EraseRetain         = privacy.EraseRetain
	RetentionActivity   = privacy.RetentionActivity
	RetentionNetwork    = privacy.RetentionNetwork
	TriggerUser         = privacy.TriggerUser
	TriggerAdmin        = privacy.TriggerAdmin
	TriggerDeactivation = privacy.TriggerDeactivation
	CoreModule          = privacy.CoreModule
	ExportSchemaVersion = privacy.ExportSchemaVersion
)

// Errors of the privacy operations; see package privacy.
var (
	ErrUnknownModule  = privacy.ErrUnknownModule
	ErrUnknownErasure = privacy.ErrUnknownErasure
)

// RedactedEventID returns the event a redaction redacts (see [privacy.RedactedEventID]), for
// the core and the bridges alike.
func RedactedEventID(evt *event.Event) id.EventID { return privacy.RedactedEventID(evt) }

// privacyState is the core's own state for the privacy operations that stay in the core
// (command confirmations, deactivation detection, export files, the admin API); the engine keeps
// the rest. Its zero value is ready to use, so tests that build a Service by hand get working
// privacy commands.
type privacyState struct {
	lock sync.Mutex
	// confirms holds !forget requests waiting for confirmation, by user.
	confirms map[id.UserID]pendingForget
	// deactChecks remembers when each user's deactivation was last checked, so that the burst
	// of leave events of one deactivation causes one check.
	deactChecks map[id.UserID]time.Time

	// hsAdmin is the client for Synapse's admin API, nil without admin access.
	hsAdmin *mautrix.Client

	adminServer *http.Server
	adminAddr   net.Addr

	// scrubUsers holds, by erasure job whose scope covers the crypto store or the state cache,
	// the erased users its scrubs delete again (see scrubAfterErasure), until its last scrub
	// ran. It lives in memory only: after a restart, the scrub finds the users once from the
	// rows that name them (usersOfErasure) and keeps them here for its retries.
	scrubUsers map[string][]id.UserID
	// finalScrubs holds the final scrubs armed and not yet run, by erasure job.
	finalScrubs map[string]*armedScrub
	// scrubRun is held by the final scrub that runs: they run one at a time, also the many a
	// start may find past due.
	scrubRun sync.Mutex
	// scrubCtx is the context final scrubs run in: the service's, from start on; nil before.
	// Once scrubsStopped is set, no final scrub starts.
	scrubCtx      context.Context
	scrubsStopped bool
	// scrubLookups counts the scrubs that had to find the erased users from the rows
	// (usersOfErasure), a scan of the state cache and the crypto store.
	scrubLookups int
	// scrubRan, if set, is called after each final scrub attempt (tests).
	scrubRan func(jobID string, err error)

	// erasureRan, if set, is called after each attempt of the erasure runner at a job (tests).
	erasureRan func(jobID string, state privacy.ErasureState, err error)
	loops      sync.WaitGroup
}

// newEngine builds the service's personal-data engine over its database, with the service as
// its host.
func (svc *Service) newEngine() *privacy.Engine {
	return privacy.New(privacy.Options{
		DB:    svc.db,
		Host:  engineHost{svc},
		Log:   svc.log,
		Clock: engineClock{svc},
		AfterErasureAttempt: func(jobID string, state privacy.ErasureState, err error) {
			if hook := svc.privacy.erasureRan; hook != nil {
				hook(jobID, state, err)
			}
		},
	})
}

// startPrivacy sets up admin access to the homeserver, starts the admin API, the engine's
// erasure runner (which first finishes the erasures an earlier run left unfinished), retention
// sweeper and expiry of export files, and the deactivation sweep. It is called by
// start once the bridges have started, so that their EraseRemote works.
func (svc *Service) startPrivacy(ctx context.Context) error {
	if err := svc.setUpDeactivation(ctx); err != nil {
		return err
	}
	if err := svc.startAdminAPI(ctx); err != nil {
		return err
	}
	svc.startFinalScrubs(ctx)
	svc.engine.Start(ctx, svc.cfg.Privacy.sweepInterval())
	svc.privacy.loops.Add(1)
	go func() {
		defer svc.privacy.loops.Done()
		svc.deactivationLoop(ctx)
	}()
	return nil
}

// stopPrivacy stops the admin API and the final scrubs not yet due. The loops end with the
// service's context.
func (svc *Service) stopPrivacy(ctx context.Context) {
	if srv := svc.privacy.adminServer; srv != nil {
		_ = srv.Shutdown(ctx)
	}
	svc.stopFinalScrubs()
}

// handlePrivacyEvent is the core's privacy handler, run for every event that is not an echo of
// our own users, before the bot and the bridges: redactions may purge configuration (the
// engine's [privacy.Engine.PurgeRedacted], then the bot says in the room what was removed), and
// a user's own leave may mean their account was deactivated.
func (svc *Service) handlePrivacyEvent(ctx context.Context, evt *event.Event) error {
	switch evt.Type {
	case event.EventRedaction:
		purged, err := svc.engine.PurgeRedacted(ctx, evt.RoomID, evt.Sender, RedactedEventID(evt))
		if err != nil || len(purged) == 0 {
			return err
		}
		return svc.announcePurge(ctx, evt, purged)
	case event.StateMember:
		if evt.StateKey != nil && *evt.StateKey == evt.Sender.String() &&
			evt.Content.AsMember().Membership == event.MembershipLeave {
			return svc.checkDeactivationAfterLeave(ctx, evt.Sender)
		}
	}
	return nil
}

// announcePurge tells the room what a redaction purged, in kinds and counts, if the bot is
// there, through [SendMessageSensitive] (encrypted in an encrypted room, never sent there
// without crypto). The transaction ID is derived from the redaction, so a replay posts nothing
// new.
func (svc *Service) announcePurge(ctx context.Context, evt *event.Event, purged map[string]map[string]int64) error {
	bot := svc.as.BotIntent()
	if !svc.botInRoom(ctx, evt.RoomID) {
		return nil
	}
	var parts []string
	for _, module := range slices.Sorted(maps.Keys(purged)) {
		var n int64
		for _, c := range purged[module] {
			n += c
		}
		parts = append(parts, fmt.Sprintf("%s (%s)", format.SafeMarkdownCode(module), privacy.Plural(n, "entry", "entries")))
	}
	content := format.RenderMarkdown("Removed the configuration created by that message: "+strings.Join(parts, ", ")+".", true, false)
	content.MsgType = event.MsgNotice
	// It says what configuration the redacted message held: never in plaintext into an
	// encrypted room.
	_, err := SendMessageSensitive(ctx, bot.Client, evt.RoomID, event.EventMessage, &content, TxnIDFor(evt.ID, "redaction-purge"))
	if err != nil {
		return fmt.Errorf("failed to announce purged configuration: %w", err)
	}
	return nil
}

// inventory returns every module's declared personal-data tables, keyed by module (the core and
// each bridge ID).
func (svc *Service) inventory() map[string][]UserTable {
	inv := map[string][]UserTable{CoreModule: privacy.CoreInventory(), e2ee.Module: e2ee.Inventory()}
	for _, bh := range svc.bridges {
		inv[bh.id] = bh.br.PersonalData()
	}
	return inv
}

// engineHost is the service as the engine's [privacy.Host].
type engineHost struct{ svc *Service }

var (
	_ privacy.Host               = engineHost{}
	_ privacy.ErasureCommitter   = engineHost{}
	_ privacy.RetentionCommitter = engineHost{}
	_ privacy.ErasureScrubber    = engineHost{}
)

// Inventory returns the core's and every bridge's declared tables.
func (h engineHost) Inventory() map[string][]UserTable { return h.svc.inventory() }

// Retention returns privacy.activity_retention, privacy.network_retention or
// encryption.session_retention.
func (h engineHost) Retention(class RetentionClass) time.Duration {
	switch class {
	case privacy.RetentionSessions:
		return h.svc.cfg.sessionRetention()
	case RetentionActivity:
		return h.svc.cfg.Privacy.activityRetention()
	case RetentionNetwork:
		return h.svc.cfg.Privacy.networkRetention()
	}
	return 0
}

// KeyDeriver returns the vault if it can derive keys.
func (h engineHost) KeyDeriver() KeyDeriver {
	if h.svc.vault == nil {
		return nil
	}
	kd, _ := any(h.svc.vault).(KeyDeriver)
	return kd
}

// EraseRemote calls the bridge's [Eraser.EraseRemote], if it implements it.
func (h engineHost) EraseRemote(ctx context.Context, module string, user id.UserID) error {
	bh := h.svc.bridgeByID[module]
	if bh == nil {
		return nil
	}
	if eraser, ok := bh.br.(Eraser); ok {
		return eraser.EraseRemote(ctx, user)
	}
	return nil
}

// PrepareFullErasure returns the rooms the bot shares with nobody but the user (read from the
// homeserver before the erasure clears the state cache).
func (h engineHost) PrepareFullErasure(ctx context.Context, user id.UserID) []id.RoomID {
	return h.svc.privateRoomsOf(ctx, user)
}

// WithdrawExport redacts the export file's message and deletes its upload.
func (h engineHost) WithdrawExport(ctx context.Context, ef *database.ExportFile) error {
	return h.svc.withdrawExport(ctx, ef)
}

// InFullErasure records the backup shred request in the erasing transaction.
func (h engineHost) InFullErasure(ctx context.Context) error { return h.svc.recordShredRequest(ctx) }

// FullErasureCommitted drops the vault's cached data key of user and the dispatcher's record
// of user's to-device rows kept for a start with encryption, and wakes the shredder.
func (h engineHost) FullErasureCommitted(_ context.Context, user id.UserID) bool {
	if forgetter, ok := any(h.svc.vault).(interface{ Forget(id.UserID) }); ok && h.svc.vault != nil {
		forgetter.Forget(user)
	}
	h.svc.dispatcher.forgetKept(user)
	return h.svc.requestShred()
}

// ErasureCommitted, after an erasure that covered the crypto store (a full one, or one of the
// e2ee module), drops the olm sessions the crypto store keeps in memory and the service's
// in-memory references to the user's encrypted events and olm messages. For a scope ScrubsAfterErasure covers,
// it remembers the user for the job's scrubs (see erasureCommittedScrub; the cleanup's scrub
// arms the final one). After every erasure it drops the direct-chat verdicts ([directChats]):
// the erasure scrubbed the state cache they may have been read from, and the user's private
// rooms change members. See [privacy.ErasureCommitter].
func (h engineHost) ErasureCommitted(_ context.Context, c privacy.CommittedErasure) {
	h.svc.directChats.invalidateAll()
	if crypto, _ := scrubScope(c.Modules); crypto {
		h.svc.evictOlmSessions()
		h.svc.e2ee.forgetUser(c.User)
		h.svc.olmSenders.forgetUser(c.User)
	}
	h.svc.erasureCommittedScrub(c)
}

// RetentionCommitted empties the crypto store's decryption cache after a sweep that deleted
// crypto rows (expired inbound megolm sessions), so that the machine no longer decrypts with a
// session the database no longer holds (see [privacy.RetentionCommitter]).
func (h engineHost) RetentionCommitted(_ context.Context, modules []string) {
	if slices.Contains(modules, e2ee.Module) {
		h.svc.evictCryptoCache()
	}
}

// SendErasureReceipt posts the receipt as a notice from the bot, through
// [SendMessageSensitive]: in an encrypted room it is encrypted, even when the state cache does
// not know the room is, and without crypto it is not sent but given up with a warning (nil:
// the engine goes on with the cleanup rather than wait for encryption). In an encrypted room,
// while encryption is on, it first makes the receipt readable to the erased user (see
// prepareEncryptedReceipt). It logs through the service's logger, never the job's.
func (h engineHost) SendErasureReceipt(ctx context.Context, roomID id.RoomID, jobID, userHash, markdown string) error {
	modules, err := h.svc.receiptJobScope(ctx, jobID)
	if err != nil {
		return err
	}
	// In an encrypted room mautrix logs the users it shares the room key with, the erased user
	// among them: not next to the job's fields (its user hash).
	ctx = h.svc.log.With().Str("action", "send erasure receipt").Logger().WithContext(ctx)
	if err = h.svc.prepareEncryptedReceipt(ctx, roomID, jobID, userHash, modules); err != nil {
		return err
	}
	content := format.RenderMarkdown(markdown, true, false)
	content.MsgType = event.MsgNotice
	// Encrypted in an encrypted room, whatever the state cache knows, and never sent there in
	// plaintext: it tells what Custodian held about the user.
	_, err = SendMessageSensitive(ctx, h.svc.as.BotIntent().Client, roomID, event.EventMessage, &content,
		TxnIDFor(id.EventID("erasure:"+jobID), "receipt"))
	if errors.Is(err, ErrNoEncryption) {
		// Retrying until encryption comes back (it may never, in this run or at all) would hold
		// up the rest of the cleanup: leaving the rooms, the scrub, the WAL checkpoint.
		zerolog.Ctx(ctx).Warn().Stringer("room_id", roomID).
			Msg("Erasure receipt not sent: its room is encrypted and encryption is not available")
		return nil
	} else if err != nil {
		// mautrix's errors may name users (the devices it failed to get): log the detail here,
		// away from the job's hash, and hand the engine, which logs next to it, a plain error.
		zerolog.Ctx(ctx).Warn().Err(err).Stringer("room_id", roomID).Msg("Failed to send an erasure receipt")
		return errReceiptNotSent
	}
	return nil
}

// errReceiptNotSent is what the engine sees of a failed receipt send; it names nobody.
var errReceiptNotSent = errors.New("failed to send the erasure receipt (see the previous log line)")

// ScrubsAfterErasure reports whether an erasure of modules covered the crypto store or the state
// cache (see scrubScope).
func (h engineHost) ScrubsAfterErasure(modules []string) bool {
	crypto, stateCache := scrubScope(modules)
	return crypto || stateCache
}

// ScrubAfterErasure deletes what was stored about the erased user since the erasure (see
// scrubAfterErasure).
func (h engineHost) ScrubAfterErasure(ctx context.Context, jobID, userHash string, modules []string) error {
	return h.svc.scrubAfterErasure(ctx, jobID, userHash, modules)
}

// LeaveAfterErasure leaves roomID and ends the bot's setup there, if the room is still private
// to the bot and the erased user and no bridge keeps it (see [RoomKeeper]).
func (h engineHost) LeaveAfterErasure(ctx context.Context, roomID id.RoomID, userHash string) {
	svc := h.svc
	log := zerolog.Ctx(ctx)
	if !svc.stillPrivateAfterErasure(ctx, roomID, userHash) {
		log.Info().Stringer("room_id", roomID).Msg("Not leaving a room others joined since the erasure")
		return
	}
	if svc.roomKept(ctx, roomID) {
		// A bridge keeps it for whoever comes later (an IRC portal of a channel).
		log.Info().Stringer("room_id", roomID).Msg("Not leaving a room a bridge keeps")
		return
	}
	svc.botRooms.Delete(roomID)
	_, err := svc.as.BotIntent().LeaveRoom(ctx, roomID, &mautrix.ReqLeave{Reason: "Custodian erased the data of the only other member"})
	if err != nil && !isRoomGone(err) {
		log.Warn().Err(err).Stringer("room_id", roomID).Msg("Failed to leave direct chat after erasure")
		return
	}
	if err = svc.bot.endSetup(ctx, roomID, "user erased"); err != nil {
		log.Warn().Err(err).Stringer("room_id", roomID).Msg("Failed to end setup of direct chat after erasure")
	}
}

// EventInRoom asks the homeserver for eventID in roomID.
func (h engineHost) EventInRoom(ctx context.Context, roomID id.RoomID, eventID id.EventID) bool {
	_, err := h.svc.as.BotIntent().GetEvent(ctx, roomID, eventID)
	return err == nil
}

// MayRedactOthers compares user's power level with the room's redact level.
func (h engineHost) MayRedactOthers(ctx context.Context, roomID id.RoomID, user id.UserID) (bool, error) {
	pl, err := h.svc.bot.roomPowerLevels(ctx, roomID)
	if err != nil {
		return false, err
	}
	return pl.GetUserLevel(user) >= pl.Redact(), nil
}

// RedactionPurged calls the bridge's [RedactionPurger.RedactionPurged], if it implements it.
func (h engineHost) RedactionPurged(ctx context.Context, module string, roomID id.RoomID, redacted id.EventID, purged map[string]int64) error {
	if bh := h.svc.bridgeByID[module]; bh != nil {
		if purger, ok := bh.br.(RedactionPurger); ok {
			return purger.RedactionPurged(ctx, roomID, redacted, purged)
		}
	}
	return nil
}

// engineClock is the service's clock as the engine's: it follows Service.clk, which tests set
// after the engine is built.
type engineClock struct{ svc *Service }

var _ clock.Clock = engineClock{}

func (c engineClock) Now() time.Time { return c.svc.clock().Now() }

func (c engineClock) NewTimer(d time.Duration) clock.Timer { return c.svc.clock().NewTimer(d) }

func (c engineClock) NewTicker(d time.Duration) clock.Ticker { return c.svc.clock().NewTicker(d) }

func (c engineClock) AfterFunc(d time.Duration, f func()) clock.Timer {
	return c.svc.clock().AfterFunc(d, f)
}

// privacyDB returns the privacy queries.
func (svc *Service) privacyDB() *database.PrivacyQuery {
	return svc.db.Privacy()
}

// The admin API's handler is the engine's ([privacy.Engine.AdminHandler]); the core runs its
// listener. These names keep its types in package appservice.
type (
	// AdminForgetRequest is [privacy.AdminForgetRequest].
	AdminForgetRequest = privacy.AdminForgetRequest
	// AdminKeyStatus is [privacy.AdminKeyStatus].
	AdminKeyStatus = privacy.AdminKeyStatus
	// AdminTombstones is [privacy.AdminTombstones].
	AdminTombstones = privacy.AdminTombstones
	// AdminSuspects is [privacy.AdminSuspects].
	AdminSuspects = privacy.AdminSuspects
)

// AdminAPIPrefix is the path prefix of every admin API endpoint.
const AdminAPIPrefix = privacy.AdminAPIPrefix

// minAdminTokenLength is the shortest admin API token accepted from admin_api.token_file.
const minAdminTokenLength = 32

// adminVault returns the vault for the admin API's key status, nil when it is off.
func (svc *Service) adminVault() any {
	if svc.vault == nil {
		return nil
	}
	return svc.vault
}

// startAdminAPI starts the admin API listener if admin_api.listen is set.
func (svc *Service) startAdminAPI(ctx context.Context) error {
	cfg := &svc.cfg.AdminAPI
	if cfg.Listen == nil || *cfg.Listen == "" {
		return nil
	}
	if cfg.TokenFile == nil {
		return fmt.Errorf("admin_api.token_file must be set when admin_api.listen is set")
	}
	token, err := readTokenFile(*cfg.TokenFile, minAdminTokenLength)
	if err != nil {
		return fmt.Errorf("admin_api.token_file: %w", err)
	}
	ln, err := net.Listen("tcp", *cfg.Listen)
	if err != nil {
		return fmt.Errorf("failed to listen on admin_api.listen %s: %w", *cfg.Listen, err)
	}
	log := zerolog.Ctx(ctx).With().Str("component", "admin_api").Logger()
	svc.privacy.adminAddr = ln.Addr()
	// Erasures wait for the bridges' remote side effects.
	svc.privacy.adminServer = NewHTTPServer(svc.engine.AdminHandler(privacy.AdminAPIOptions{
		Token: token, Log: log, Vault: svc.adminVault(),
		Mount: func(mux *http.ServeMux) { svc.mountBridgeAdminRoutes(mux, log) },
	}), time.Minute, 5*time.Minute)
	go func() {
		if err := svc.privacy.adminServer.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Msg("Admin API listener failed")
		}
	}()
	if !isLoopbackListen(ln.Addr().String()) {
		log.Warn().Str("address", ln.Addr().String()).Msg("Admin API listens beyond loopback; make sure only admins can reach it")
	}
	log.Info().Str("address", ln.Addr().String()).Msg("Admin API listener started")
	return nil
}

// recordShredRequest records, in the erasing transaction in ctx, that the full erasure being
// committed needs a shred rotation. It does nothing when shredding is off.
func (svc *Service) recordShredRequest(ctx context.Context) error {
	if svc.shredder == nil {
		return nil
	}
	return svc.shredder.RecordRequest(ctx)
}

// requestShred wakes the shredder after a full erasure has committed. It never blocks, and
// reports whether shredding is on.
func (svc *Service) requestShred() bool {
	if svc.shredder == nil {
		return false
	}
	svc.shredder.Kick()
	return true
}

// mountBridgeAdminRoutes adds every [AdminAPIProvider] bridge's endpoints to the admin API's mux,
// under AdminAPIPrefix/bridges/<bridge id>. A route with a bad method or path is logged and left
// out; it never stops the admin API.
func (svc *Service) mountBridgeAdminRoutes(mux *http.ServeMux, log zerolog.Logger) {
	for _, bridge := range svc.bridges {
		provider, ok := bridge.br.(AdminAPIProvider)
		if !ok {
			continue
		}
		for _, route := range provider.AdminRoutes() {
			if route.Method == "" || !strings.HasPrefix(route.Path, "/") || route.Handler == nil {
				log.Error().Str("bridge", bridge.id).Str("method", route.Method).Str("path", route.Path).
					Msg("Bridge admin route is invalid; leaving it out")
				continue
			}
			pattern := route.Method + " " + AdminAPIPrefix + "/bridges/" + bridge.id + route.Path
			if err := registerPattern(mux, pattern, route.Handler); err != nil {
				log.Error().Err(err).Str("bridge", bridge.id).Str("method", route.Method).Str("path", route.Path).
					Msg("Bridge admin route conflicts; leaving it out")
			}
		}
	}
}

// registerPattern is mux.HandleFunc, turning its panic on a bad or conflicting pattern into an
// error.
func registerPattern(mux *http.ServeMux, pattern string, handler http.HandlerFunc) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("invalid admin route pattern %q: %v", pattern, r)
		}
	}()
	mux.HandleFunc(pattern, handler)
	return nil
}

package appservice

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix"
	mxas "maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/id"
	"maunium.net/go/mautrix/sqlstatestore"

	"github.com/custodian-matrix/custodian/appservice/clock"
	"github.com/custodian-matrix/custodian/appservice/database"
	"github.com/custodian-matrix/custodian/appservice/e2ee"
	"github.com/custodian-matrix/custodian/appservice/privacy"
	"github.com/custodian-matrix/custodian/appservice/vault"
)

// Service is one running Custodian: the appservice listener, the durable inbox and its
// dispatcher, the hosted bridges and bots. Create it with [New] and run it with [Service.Run].
type Service struct {
	cfg *Config
	reg *mxas.Registration
	log zerolog.Logger

	rawDB      *dbutil.Database
	db         *database.Database
	as         *mxas.AppService
	stateStore *watchedStateStore
	metrics    *metrics
	// directChats remembers which rooms isDirectChat found to be no direct chat, until their
	// members change (stateStore and ingest drop a room's verdict).
	directChats directChats

	bridges    []*bridgeHost
	bridgeByID map[string]*bridgeHost

	bot        *botHost
	dispatcher *dispatcher
	roomOwners roomOwnerCache
	// botRooms caches whether the bot is joined to a room (see botInRoom).
	botRooms sync.Map
	// notifier sends private notices in users' management rooms (Host.NotifyUser).
	notifier *Notifier
	// vault is nil when no master key is configured.
	vault vaultBackend
	// inboxKeys seals the inbox's event content (inboxseal.go); nil when the vault is off.
	inboxKeys *vault.Vault
	// crypto is the bot's end-to-end encryption device; nil while encryption is off (see
	// encryptionActive).
	crypto *e2ee.Machine
	// cryptoState is the rest of the encryption state: whether the start-up probe found it
	// broken, and the lock that attaches crypto to ghosts' clients (cryptosetup.go).
	cryptoState cryptoState
	// e2ee is the in-memory state of encrypted events (cryptoevents.go).
	e2ee encryptedEvents
	// erasureGate keeps a user's to-device handling and the deletion of their crypto rows by
	// an erasure apart (cryptoprivacy.go).
	erasureGate erasureGate
	// senderFetchFailed holds the servers whose senders' device fetches the to-device lane
	// skips for a while after one failed (cryptoevents.go).
	senderFetchFailed serverBackoff
	// keyRequests answers room key requests off the to-device lane (keyrequests.go).
	keyRequests *keyRequestPool
	// olmSenders maps the sender keys of recent olm messages to their senders, for the olm
	// sessions the olm machine asks to unwedge (keyrequests.go).
	olmSenders olmSenders
	// cryptoKeyLock keeps a shred rotation from replacing the crypto store's pickle key while
	// the store is being opened: start-up holds it from e2ee.OpenStore until crypto is set, and
	// replaceCryptoKey and evictOlmSessions read crypto under it (cryptoprivacy.go).
	cryptoKeyLock sync.Mutex
	// shredder rotates the master key after erasures; nil unless vault.shred_backups.
	shredder *privacy.BackupShredder
	// engine is the personal-data engine (package privacy).
	engine *privacy.Engine
	// privacy is the core's state of the privacy operations (privacy.go).
	privacy privacyState

	// clk is the service's clock (see clock); nil means the real one. Tests set a fake one
	// before start.
	clk clock.Clock

	ingestLock sync.Mutex
	// bgCancel stops the background loops started by start; bg waits for them.
	bgCancel  context.CancelFunc
	bg        sync.WaitGroup
	ready     bool
	readyLock sync.RWMutex

	server        *http.Server
	metricsServer *http.Server
	listenAddr    net.Addr
	metricsAddr   net.Addr
}

// New validates the configuration and the registration against each other, opens the database
// and prepares (but does not start) every bridge. Bridges must already have had their config
// sections decoded into their targets (see [Config.DecodeBridges]). New does no network I/O
// towards the homeserver.
//
// log must come from [NewLogger]: the service hands it to mautrix, whose clients log every
// request with its body (a message's text, uploaded keys), and only NewLogger's writer removes
// those bodies before they are written.
func New(cfg *Config, reg *mxas.Registration, bridges []Bridge, log zerolog.Logger) (*Service, error) {
	rawDB, err := openDatabase(&cfg.Database, log)
	if err != nil {
		return nil, err
	}
	svc, err := newService(cfg, reg, bridges, log, rawDB)
	if err != nil {
		_ = rawDB.Close()
		return nil, err
	}
	return svc, nil
}

// newService builds a Service on an already opened database; tests use it directly.
func newService(cfg *Config, reg *mxas.Registration, bridges []Bridge, log zerolog.Logger, rawDB *dbutil.Database) (*Service, error) {
	// The to-device lane learns of crypto store writes that failed inside its transaction
	// through the database's logger (see recordWriteErrors).
	recordWriteErrors(rawDB)
	svc := &Service{
		cfg:        cfg,
		reg:        reg,
		log:        log,
		rawDB:      rawDB,
		bridgeByID: make(map[string]*bridgeHost),
	}
	svc.e2ee.setHome(cfg.Homeserver.Domain)
	svc.db = database.New(svc.rawDB)
	svc.as = mxas.Create()
	svc.as.Log = log.With().Str("component", "mautrix").Logger()
	svc.as.HomeserverDomain = cfg.Homeserver.Domain
	svc.as.Registration = reg
	if err := svc.as.SetHomeserverURL(cfg.Homeserver.Address); err != nil {
		return nil, fmt.Errorf("invalid homeserver.address: %w", err)
	}
	// isBridge false: with true, mautrix's FindSharedRooms (used by the olm machine to rotate
	// a room's outbound session when a member's devices change) reads a "portal" table that
	// only mautrix's bridges have.
	svc.stateStore = newWatchedStateStore(sqlstatestore.NewSQLStateStore(svc.rawDB, dbutil.ZeroLogger(log.With().Str("db_section", "state_store").Logger()), false), &svc.directChats)
	svc.as.StateStore = svc.stateStore
	// Before any client exists: every client mautrix makes shares this HTTP client, so no send
	// puts plaintext into a room the state cache knows as encrypted (plaintextguard.go).
	svc.guardClientSends()
	// mautrix creates the bot's client and intent lazily and without locking; create them now,
	// before any goroutine can race to.
	// The sender_localpart user exists as soon as the homeserver loads the registration, so
	// the bot never needs registering; marking it so also keeps mautrix's unlocked Registered
	// flag from being written while handlers read it.
	svc.as.BotIntent().Registered = true
	svc.notifier = NewNotifier(svc.as.BotIntent(), svc.db.User)
	svc.metrics = newMetrics()
	for _, br := range bridges {
		if id := br.ID(); id == CoreModule || id == e2ee.Module {
			return nil, fmt.Errorf("bridge ID %q is reserved for the core's personal-data tables", id)
		}
		bh := &bridgeHost{svc: svc, br: br, id: br.ID(), ns: br.Namespaces()}
		bh.log = log.With().Str("bridge", bh.id).Logger()
		svc.bridges = append(svc.bridges, bh)
		svc.metrics.handlerErrors.WithLabelValues(bh.id)
		svc.bridgeByID[bh.id] = bh
	}
	svc.engine = svc.newEngine()
	svc.notifier.RefuseDuringErasure(svc.engine.Store().HasPendingErasure)
	svc.notifier.EncryptRooms(svc.encryptOpenedRooms)
	svc.bot = newBotHost(svc)
	svc.dispatcher = newDispatcher(svc)
	svc.keyRequests = newKeyRequestPool()
	return svc, nil
}

// Run starts the service and blocks until ctx is cancelled or a fatal error happens; then it
// stops everything, giving handlers up to 30 seconds to finish. It returns nil after a clean
// shutdown.
func (svc *Service) Run(ctx context.Context) error {
	ctx = svc.log.WithContext(ctx)
	if err := svc.start(ctx); err != nil {
		svc.stop()
		if ctx.Err() != nil {
			// Asked to stop while starting (start's queries fail with the cancelled context):
			// that is a shutdown, not a failure.
			svc.log.Info().Msg("Shut down while starting")
			return nil
		}
		return err
	}
	<-ctx.Done()
	svc.log.Info().Msg("Shutting down")
	svc.stop()
	return nil
}

func (svc *Service) start(ctx context.Context) error {
	// Everything start launches in the background ends when stopServing cancels this context,
	// and stopServing waits for it, so nothing outlives the service.
	ctx, svc.bgCancel = context.WithCancel(ctx)
	if err := svc.upgradeDatabases(ctx); err != nil {
		return err
	}
	if err := svc.engine.CheckSchema(ctx); err != nil {
		return err
	}
	// A missing or wrong master key is logged and leaves the vault unable to open the affected
	// secrets; it never stops the service.
	svc.setupVault(ctx)
	// Needs the vault (the crypto store's pickle key); before the bridges and the bot, which
	// send through clients it attaches the bot's device to. Problems leave encryption off.
	svc.setupCrypto(ctx)
	if svc.cryptoPresent() {
		svc.startKeyRequestWorkers(ctx)
	}
	for _, bh := range svc.bridges {
		if err := bh.br.Init(bh); err != nil {
			return &BridgeError{Bridge: bh.id, Op: "initialize", Err: err}
		}
	}
	svc.bot.init(ctx)
	if err := svc.startListeners(ctx); err != nil {
		return err
	}
	for _, bh := range svc.bridges {
		if err := bh.br.Start(ctx); err != nil {
			return &BridgeError{Bridge: bh.id, Op: "start", Err: err}
		}
	}
	// Replay what an earlier run acknowledged but did not finish, before new transactions come
	// in, so events of one room stay in order. Bridges have started, so they can handle it.
	if err := svc.dispatcher.start(ctx); err != nil {
		return err
	}
	// After the bridges: interrupted erasures resume, and they need EraseRemote.
	if err := svc.startPrivacy(ctx); err != nil {
		return err
	}
	svc.setReady(true)
	svc.goBackground(ctx, svc.connectHomeserver)
	// Listeners are up: check that to-device events reach us (only with encryption on). The
	// machine is read here, once: the probe runs with the one start-up set.
	if mach := svc.crypto; mach != nil {
		svc.goBackground(ctx, func(ctx context.Context) { svc.probeToDevice(ctx, mach) })
	}
	svc.goBackground(ctx, svc.pruneLoop)
	if svc.inboxKeys != nil {
		svc.goBackground(ctx, svc.inboxRetryLoop)
	}
	return nil
}

// goBackground runs fn in a goroutine that stopServing waits for.
func (svc *Service) goBackground(ctx context.Context, fn func(ctx context.Context)) {
	svc.bg.Add(1)
	go func() {
		defer svc.bg.Done()
		fn(ctx)
	}()
}

// pruneLoop forgets old transaction and event IDs once they are past database.processed_ttl.
// It runs on the service's clock.
func (svc *Service) pruneLoop(ctx context.Context) {
	ttl := svc.cfg.Database.ProcessedTTL
	if ttl <= 0 {
		ttl = 24 * time.Hour
	}
	ticker := svc.clock().NewTicker(min(ttl/4, 10*time.Minute))
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C():
		}
		txns, events, err := svc.db.Inbox.Prune(ctx, svc.now().Add(-ttl))
		if err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to prune processed transaction and event IDs")
		} else {
			// Every round, also an empty one: a debug log shows the loop is alive.
			zerolog.Ctx(ctx).Debug().Int64("transactions", txns).Int64("events", events).Msg("Pruned processed IDs")
		}
	}
}

func (svc *Service) stop() {
	svc.stopServing()
	if err := svc.rawDB.Close(); err != nil {
		svc.log.Warn().Err(err).Msg("Failed to close database")
	}
}

// stopServing stops the listeners, the dispatcher and the bridges, leaving the database open.
func (svc *Service) stopServing() {
	svc.setReady(false)
	ctx, cancel := context.WithTimeout(svc.log.WithContext(context.Background()), 30*time.Second)
	defer cancel()
	if svc.server != nil {
		_ = svc.server.Shutdown(ctx)
	}
	if svc.metricsServer != nil {
		_ = svc.metricsServer.Shutdown(ctx)
	}
	svc.stopPrivacy(ctx)
	svc.dispatcher.stop(ctx)
	for _, bh := range svc.bridges {
		if err := bh.br.Stop(ctx); err != nil {
			svc.log.Warn().Err(err).Str("bridge", bh.id).Msg("Failed to stop bridge cleanly")
		}
	}
	if svc.bgCancel != nil {
		svc.bgCancel()
	}
	svc.bg.Wait()
	svc.engine.Wait()
	svc.privacy.loops.Wait()
}

func (svc *Service) setReady(ready bool) {
	svc.readyLock.Lock()
	svc.ready = ready
	svc.readyLock.Unlock()
}

func (svc *Service) isReady() bool {
	svc.readyLock.RLock()
	defer svc.readyLock.RUnlock()
	return svc.ready
}

func (svc *Service) upgradeDatabases(ctx context.Context) error {
	if err := svc.db.Upgrade(ctx); err != nil {
		return err
	}
	if err := svc.stateStore.Upgrade(ctx); err != nil {
		return fmt.Errorf("failed to upgrade state store: %w", err)
	}
	if err := svc.upgradeVault(ctx); err != nil {
		return err
	}
	// The crypto store's tables exist with encryption on or off, so the personal-data inventory
	// can declare them.
	if err := e2ee.Upgrade(ctx, svc.rawDB, svc.log); err != nil {
		return err
	}
	for _, bh := range svc.bridges {
		bh.db = svc.rawDB.Child(bh.id+"_version", bh.br.Migrations(), dbutil.ZeroLogger(bh.log))
		if err := bh.db.Upgrade(ctx); err != nil {
			return &BridgeError{Bridge: bh.id, Op: "upgrade database", Err: err}
		}
	}
	return nil
}

func (svc *Service) startListeners(ctx context.Context) error {
	addr := net.JoinHostPort(svc.cfg.AppService.Hostname, fmt.Sprint(svc.cfg.AppService.Port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("failed to listen on %s: %w", addr, err)
	}
	// Transactions can be large and the database slow; the body size is bounded separately.
	svc.server = NewHTTPServer(svc.router(), 2*time.Minute, 2*time.Minute)
	go func() {
		if err := svc.server.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			svc.log.Error().Err(err).Msg("Appservice listener failed")
		}
	}()
	svc.listenAddr = ln.Addr()
	svc.log.Info().Str("address", ln.Addr().String()).Msg("Appservice listener started")
	if svc.cfg.Metrics.Listen != nil && *svc.cfg.Metrics.Listen != "" {
		mln, err := net.Listen("tcp", *svc.cfg.Metrics.Listen)
		if err != nil {
			return fmt.Errorf("failed to listen on metrics.listen %s: %w", *svc.cfg.Metrics.Listen, err)
		}
		svc.metricsAddr = mln.Addr()
		svc.metricsServer = NewHTTPServer(svc.metrics.handler(), 30*time.Second, time.Minute)
		go func() {
			if err := svc.metricsServer.Serve(mln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				svc.log.Error().Err(err).Msg("Metrics listener failed")
			}
		}()
		svc.log.Info().Str("address", mln.Addr().String()).Msg("Metrics listener started")
	}
	return nil
}

// connectHomeserver checks that the homeserver is reachable and that it can reach us, retrying
// with capped exponential backoff on the service's clock for as long as the service runs: an
// unreachable homeserver is reported (a Warn per failed attempt), not fatal. The ping also makes
// Synapse flush transactions it was holding back after earlier failures.
func (svc *Service) connectHomeserver(ctx context.Context) {
	log := zerolog.Ctx(ctx)
	backoff := time.Second
	const maxBackoff = 2 * time.Minute
	for attempt := 1; ; attempt++ {
		start := time.Now()
		resp, err := svc.as.BotIntent().AppservicePing(ctx, svc.reg.ID, "")
		if err == nil {
			log.Info().
				Int64("duration_ms", resp.DurationMS).
				Dur("round_trip", time.Since(start)).
				Int("attempts", attempt).
				Msg("Homeserver ping succeeded")
			svc.bot.afterConnect(ctx)
			return
		}
		var httpErr mautrix.HTTPError
		if errors.As(err, &httpErr) && httpErr.RespError != nil && httpErr.RespError.ErrCode == mautrix.MUnrecognized.ErrCode {
			// Homeservers without the ping endpoint (older Synapse, Dendrite): check
			// reachability with whoami instead.
			if _, err = svc.as.BotIntent().Whoami(ctx); err == nil {
				log.Info().Int("attempts", attempt).Msg("Homeserver has no appservice ping; whoami succeeded")
				svc.bot.afterConnect(ctx)
				return
			}
		}
		if ctx.Err() != nil {
			return
		}
		log.Warn().Err(err).Int("attempt", attempt).Dur("retry_in", backoff).Msg("Homeserver ping failed")
		if !svc.sleep(ctx, backoff) {
			return
		}
		backoff = min(backoff*2, maxBackoff)
	}
}

// isOwnUser reports whether userID is the Custodian bot or in any bridge's user namespace.
func (svc *Service) isOwnUser(userID id.UserID) bool {
	if userID == svc.as.BotMXID() {
		return true
	}
	return svc.bridgeForUser(userID) != nil
}

// bridgeForUser returns the bridge whose user namespace contains userID, or nil.
func (svc *Service) bridgeForUser(userID id.UserID) *bridgeHost {
	localpart, server, err := userID.Parse()
	if err != nil || server != svc.cfg.Homeserver.Domain {
		return nil
	}
	for _, bh := range svc.bridges {
		if bh.ns.UserPrefix != "" && len(localpart) >= len(bh.ns.UserPrefix) && localpart[:len(bh.ns.UserPrefix)] == bh.ns.UserPrefix {
			return bh
		}
	}
	return nil
}

// clock returns the service's clock: the one tests set in Service.clk (a [clock.Fake]), or the
// real one. Every time-driven behaviour of the core (retention, sweeps, confirmation expiry,
// pruning of processed IDs, debounces and retries, the homeserver connection's backoff) runs on
// it, so tests drive it without sleeping.
func (svc *Service) clock() clock.Clock {
	if svc.clk != nil {
		return svc.clk
	}
	return clock.Real()
}

// now returns the service's current time.
func (svc *Service) now() time.Time {
	return svc.clock().Now()
}

// sleep waits d on the service's clock. It reports false if ctx ended first.
func (svc *Service) sleep(ctx context.Context, d time.Duration) bool {
	return clock.Sleep(ctx, svc.clock(), d) == nil
}

// encryptionActive reports whether the bot can read and write encrypted rooms: encryption is
// configured, the crypto store opened and the bot's device is set up (svc.crypto), and the
// start-up probe did not find that the homeserver withholds to-device events.
func (svc *Service) encryptionActive() bool {
	return svc.crypto != nil && !svc.cryptoState.broken.Load()
}

// Package webhook is Custodian's webhook bridge. Inbound webhooks are secret URLs on a public
// listener: what callers POST to them appears in a Matrix room as the hook's ghost. Outbound
// webhooks POST a room's messages, signed, to a URL. Room members manage both with !webhook
// commands; URLs and signing secrets reach their creator only in a direct chat with the bot.
//
// Secrets are never stored in plain text: inbound tokens only as SHA-256 hashes, outbound URLs
// and signing secrets sealed in the credential vault. Every hook records its provenance, so
// redacting the command that created it removes it, and erasing its creator revokes it.
package webhook

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice"
	"github.com/custodian-matrix/custodian/appservice/clock"
	"github.com/custodian-matrix/custodian/bridges/webhook/webhookdb"
	"github.com/custodian-matrix/custodian/bridges/webhook/webhookid"
)

// BridgeID is the webhook bridge's permanent ID: its config key, table prefix and log field.
const BridgeID = "webhook"

// Bridge is the webhook bridge. Create it with [New]; the core drives it through the
// [appservice.Bridge] interface and its optional interfaces.
type Bridge struct {
	cfg    Config
	clock  clock.Clock
	jitter func() float64 // in [0, 1), for backoff

	host    appservice.Host
	db      *webhookdb.Database
	log     zerolog.Logger
	limiter *rateLimiter
	client  *http.Client

	serverLock sync.Mutex // guards server and listener, which Start sets
	server     *http.Server
	listener   net.Listener

	// runCtx lives from Init to Stop; delivery workers run on it.
	runCtx    context.Context
	runCancel context.CancelFunc

	queuesLock sync.Mutex
	queues     map[string]*deliveryQueue // hook ID → queue
	workers    sync.WaitGroup

	// profiles caches the display name and avatar each ghost was last given (hook ID →
	// ghostProfile), so that posts do not set the profile again every time.
	profiles sync.Map

	// purged holds commands whose redaction recently purged hooks (see rememberPurged).
	purgedLock sync.Mutex
	purged     map[id.EventID]struct{}
}

var (
	_ appservice.Bridge          = (*Bridge)(nil)
	_ appservice.ConfigValidator = (*Bridge)(nil)
	_ appservice.CommandProvider = (*Bridge)(nil)
	_ appservice.Eraser          = (*Bridge)(nil)
	_ appservice.RoomPurger      = (*Bridge)(nil)
	_ appservice.RedactionPurger = (*Bridge)(nil)
)

// New returns a webhook bridge with the example configuration's defaults and the system clock.
func New() *Bridge {
	return &Bridge{
		cfg:    defaultConfig(),
		clock:  clock.Real(),
		jitter: rand.Float64,
		queues: make(map[string]*deliveryQueue),
		purged: make(map[id.EventID]struct{}),
	}
}

// SetClock replaces the bridge's clock, which delivery backoff and rate limits read, for tests
// (a [clock.Fake]). It must be called before Init.
func (br *Bridge) SetClock(clk clock.Clock) {
	br.clock = clk
}

// ID returns "webhook".
func (br *Bridge) ID() string { return BridgeID }

// Namespaces claims the ghosts @webhook_<hook id>.
func (br *Bridge) Namespaces() appservice.Namespaces {
	return appservice.Namespaces{UserPrefix: webhookid.GhostPrefix}
}

// Config returns the embedded example configuration and the bridge's config, which holds the
// defaults until the core decodes the bridges.webhook section over it.
func (br *Bridge) Config() (example string, target any) {
	return exampleConfig, &br.cfg
}

// Migrations returns the bridge's schema upgrades (tables webhook_*).
func (br *Bridge) Migrations() dbutil.UpgradeTable {
	return webhookdb.UpgradeTable()
}

// PersonalData declares the bridge's tables about Matrix users.
func (br *Bridge) PersonalData() []appservice.UserTable {
	return []appservice.UserTable{
		{
			Table: "webhook_hook", UserColumn: "actor_mxid",
			Export: []string{
				"id", "room_id", "name", "kind", "source_event_id", "created_at", "updated_at",
				"secret_sent", "revoked_at", "last_success_at", "last_failure_at", "last_error",
				"consecutive_failures", "dropped_count", "vault_notice_at",
			},
			Secret:            []string{"token_hash", "outbound_url", "signing_secret"},
			SourceEventColumn: "source_event_id",
			RoomColumn:        "room_id",
			Description: "webhooks you created or last rotated: their room, name and kind, when and with which command, " +
				"and delivery status; their URLs and secrets are kept only hashed or sealed",
		},
	}
}

// Init stores the host and prepares the bridge. It does no I/O.
func (br *Bridge) Init(host appservice.Host) error {
	br.host = host
	br.db = webhookdb.New(host.DB())
	br.log = *host.Log()
	br.limiter = newRateLimiter(br.clock, br.cfg.RateLimit.PerSecond, br.cfg.RateLimit.Burst)
	br.client = newOutboundClient(&br.cfg)
	// Delivery may start before Start: the core replays unfinished events before starting
	// bridges.
	br.runCtx, br.runCancel = context.WithCancel(br.log.WithContext(context.Background()))
	return nil
}

// Start opens the public listener for inbound webhooks.
func (br *Bridge) Start(ctx context.Context) error {
	ln, err := net.Listen("tcp", br.cfg.Listen)
	if err != nil {
		return fmt.Errorf("failed to listen on %s: %w", br.cfg.Listen, err)
	}
	server := appservice.NewHTTPServer(br.router(), 30*time.Second, time.Minute)
	br.serverLock.Lock()
	br.listener, br.server = ln, server
	br.serverLock.Unlock()
	go func() {
		if err := server.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			br.log.Error().Err(err).Msg("Webhook listener failed")
		}
	}()
	br.log.Info().Str("address", ln.Addr().String()).Msg("Webhook listener started")
	return nil
}

// Addr returns the address the public listener is bound to, or nil before Start. With port 0
// in listen, this is where the chosen port can be read.
func (br *Bridge) Addr() net.Addr {
	br.serverLock.Lock()
	defer br.serverLock.Unlock()
	if br.listener == nil {
		return nil
	}
	return br.listener.Addr()
}

// Stop closes the listener, waiting for requests in flight until ctx ends, and stops outbound
// delivery. Messages still queued for delivery are dropped.
func (br *Bridge) Stop(ctx context.Context) error {
	var err error
	br.serverLock.Lock()
	server := br.server
	br.serverLock.Unlock()
	if server != nil {
		err = server.Shutdown(ctx)
	}
	if br.runCancel != nil {
		br.runCancel()
	}
	done := make(chan struct{})
	go func() {
		br.workers.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		err = errors.Join(err, errors.New("outbound delivery did not stop before the deadline"))
	}
	return err
}

// HandleEvent handles an event in a room with webhooks: room messages go to the room's
// outbound hooks, redactions remove the hooks their command created and are passed on to
// outbound hooks as deletion notices, and member and power level changes suspend the outbound
// hooks whose owner lost the right to them. Other events are ignored.
func (br *Bridge) HandleEvent(ctx context.Context, evt *event.Event, route appservice.Route) error {
	if route.Claim == nil {
		// Only about one of its ghosts, in a room without hooks (the bridge releases a room when
		// its last hook goes): nothing to deliver, no owner to check.
		return nil
	}
	switch evt.Type {
	case event.EventMessage:
		return br.handleMessage(ctx, evt)
	case event.EventRedaction:
		return br.handleRedaction(ctx, evt)
	case event.StateMember, event.StatePowerLevels:
		return br.checkOwners(ctx, evt)
	}
	return nil
}

// removeHook deletes hook, stops everything the bridge does for it, has its ghost leave the
// room and releases the room once it has no hooks left. It is safe to call for a hook that is
// already gone.
func (br *Bridge) removeHook(ctx context.Context, hook *webhookdb.Hook, reason string) error {
	if _, err := br.db.Hook.Delete(ctx, hook.ID); err != nil {
		return fmt.Errorf("failed to delete hook: %w", err)
	}
	br.forgetHook(hook.ID)
	br.ghostLeave(ctx, hook.RoomID, hook.ID, reason)
	return br.releaseRoomIfEmpty(ctx, hook.RoomID)
}

// forgetHook drops the bridge's in-memory state about a hook: its delivery queue (with the
// messages in it), its rate-limit bucket and its cached ghost profile.
func (br *Bridge) forgetHook(hookID string) {
	br.stopQueue(hookID)
	br.limiter.forget(hookID)
	br.profiles.Delete(hookID)
}

// ghostLeave makes the hook's ghost leave the room, if it is in it. Failures are logged: a
// leftover ghost is untidy but harmless, as it can no longer post.
func (br *Bridge) ghostLeave(ctx context.Context, roomID id.RoomID, hookID, reason string) {
	intent, err := br.host.Intent(webhookid.GhostLocalpart(hookID))
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Str("hook_id", hookID).Msg("Failed to get the hook's ghost")
		return
	}
	if intent.StateStore != nil && !intent.StateStore.IsMembership(ctx, roomID, intent.UserID, event.MembershipJoin, event.MembershipInvite) {
		return
	}
	if _, err = intent.LeaveRoom(ctx, roomID, &mautrix.ReqLeave{Reason: reason}); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Str("hook_id", hookID).Stringer("room_id", roomID).
			Msg("Failed to make the hook's ghost leave the room")
	}
}

// releaseRoomIfEmpty releases the bridge's claim on roomID if it has no hooks left (revoked
// ones, about to be erased, do not count).
func (br *Bridge) releaseRoomIfEmpty(ctx context.Context, roomID id.RoomID) error {
	count, err := br.db.Hook.CountActiveInRoom(ctx, roomID)
	if err != nil {
		return fmt.Errorf("failed to count the room's hooks: %w", err)
	} else if count > 0 {
		return nil
	}
	if err = br.host.ReleaseRoom(ctx, roomID); err != nil {
		return fmt.Errorf("failed to release room: %w", err)
	}
	return nil
}

// EraseRemote revokes every hook userID created or last rotated, before the core erases them:
// inbound URLs answer 404 and outbound deliveries stop at once, queued messages are dropped and
// ghosts leave. Messages the user wrote that still wait for delivery to other people's outbound
// hooks are dropped too. The rows themselves are deleted by the core's erase transaction (they
// cascade from the users row), so its receipt counts them; the direct chat in which the bot sent
// the user secrets is left by the core after it posted the receipt, which may be in that very
// chat. It is idempotent.
func (br *Bridge) EraseRemote(ctx context.Context, userID id.UserID) error {
	log := zerolog.Ctx(ctx)
	hooks, err := br.db.Hook.GetByActor(ctx, userID)
	if err != nil {
		return fmt.Errorf("failed to get the user's hooks: %w", err)
	}
	now := br.clock.Now()
	var errs []error
	rooms := make(map[id.RoomID]struct{})
	for _, hook := range hooks {
		if err = br.db.Hook.Revoke(ctx, hook.ID, now); err != nil {
			errs = append(errs, fmt.Errorf("failed to revoke hook %s: %w", hook.ID, err))
			continue
		}
		br.forgetHook(hook.ID)
		br.ghostLeave(ctx, hook.RoomID, hook.ID, "The webhook's owner asked to be forgotten")
		rooms[hook.RoomID] = struct{}{}
	}
	for roomID := range rooms {
		if err = br.releaseRoomIfEmpty(ctx, roomID); err != nil {
			errs = append(errs, err)
		}
	}
	dropped := br.dropQueuedFrom(userID)
	log.Info().
		Int("hooks_revoked", len(hooks)).
		Int("queued_messages_dropped", dropped).
		Int("errors", len(errs)).
		Msg("Revoked the user's webhooks for erasure")
	return errors.Join(errs...)
}

// RedactionPurged cleans up after the core purged hooks because the command that created or last
// rotated them was redacted: their delivery queues stop, their ghosts leave, and the room is
// released once it has no hooks left. The core has already deleted the rows, so the bridge
// compares what it keeps about the room with what is left.
func (br *Bridge) RedactionPurged(ctx context.Context, roomID id.RoomID, redacted id.EventID, purged map[string]int64) error {
	br.rememberPurged(redacted)
	br.reconcileRoom(ctx, roomID)
	zerolog.Ctx(ctx).Info().Stringer("room_id", roomID).Int64("hooks_purged", purged["webhook_hook"]).
		Msg("Cleaned up after webhooks were purged by a redaction")
	return br.releaseRoomIfEmpty(ctx, roomID)
}

// PurgeRoom deletes the room's hooks when the bot's setup there ended: it stops their delivery
// and has their ghosts leave. It is idempotent and succeeds for rooms without hooks.
func (br *Bridge) PurgeRoom(ctx context.Context, roomID id.RoomID) error {
	hooks, err := br.db.Hook.GetAllInRoom(ctx, roomID)
	if err != nil {
		return fmt.Errorf("failed to get the room's hooks: %w", err)
	}
	var errs []error
	for _, hook := range hooks {
		if _, err = br.db.Hook.Delete(ctx, hook.ID); err != nil {
			errs = append(errs, fmt.Errorf("failed to delete hook %s: %w", hook.ID, err))
			continue
		}
		br.forgetHook(hook.ID)
		br.ghostLeave(ctx, roomID, hook.ID, "The webhook was removed with the bot")
	}
	if len(hooks) > 0 {
		zerolog.Ctx(ctx).Info().Stringer("room_id", roomID).Int("hooks_deleted", len(hooks)).
			Msg("Purged the room's webhooks")
	}
	// The core releases the room's claim itself.
	return errors.Join(errs...)
}

package appservice

import (
	"context"
	"fmt"
	"net/http"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	mxas "maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/vault"
)

// Bridge is the contract between the core and one bridge or bot. The core owns transactions,
// deduplication, routing, intents, storage and everything to do with personal data; a bridge only
// sees events for the rooms, ghosts and aliases it owns.
//
// The describing methods (ID, Namespaces, Config, Migrations, PersonalData) return constant data
// and are called before the configuration is loaded; they must not depend on Init having run.
//
// A bridge adds capabilities by implementing optional interfaces, all declared in this file:
// [ConfigValidator] (check its decoded section), [OptInBridge] (off in the example config),
// [UserQuerier] and [AliasQuerier] (answer the homeserver's queries for its namespace),
// [CommandProvider] (bot commands), [Eraser] (undo remote side effects before an erasure),
// [RoomPurger] (forget a room when the bot's setup there ends) and [RedactionPurger] (learn that
// rows of its were purged by a redaction).
type Bridge interface {
	// ID returns the bridge's permanent short name ("irc", "webhook"). It is the config key under
	// bridges:, the table prefix, the version table name (<id>_version), the log field "bridge"
	// and the default ghost localpart prefix. It never changes once released.
	ID() string

	// Namespaces returns the Matrix user and alias namespaces this bridge claims. The core puts
	// them into the generated registration as exclusive namespaces and refuses to start if two
	// bridges overlap.
	Namespaces() Namespaces

	// Config returns the bridge's commented example configuration (YAML, embedded in the binary)
	// and a pointer the core decodes the bridge's section into, strictly. A bridge without
	// configuration returns "" and nil.
	Config() (example string, target any)

	// Migrations returns the bridge's schema upgrades. The core runs them after its own, on a
	// child database with the version table <id>_version. A bridge without tables returns an
	// empty table.
	Migrations() dbutil.UpgradeTable

	// PersonalData declares every table this bridge keeps about Matrix users. Erasure and export
	// are generic over this inventory; a schema test fails on any table that references users
	// or holds a user-ID column without being declared here.
	PersonalData() []UserTable

	// Init hands the bridge its Host. It is called once, after the configuration was decoded
	// and validated and the migrations ran. It must not do network I/O or block.
	Init(host Host) error

	// Start starts the bridge's background work. It is called after Init and before the core
	// starts delivering events. It may block briefly for connections but should return once the
	// bridge is running; long-lived loops run in goroutines the bridge stops in Stop.
	Start(ctx context.Context) error

	// Stop stops the bridge. ctx carries the shutdown deadline; Stop should return by then.
	Stop(ctx context.Context) error

	// HandleEvent handles one Matrix event routed to this bridge: an event in a room the bridge
	// owns, or one that concerns one of its ghosts (an invite, a DM). Events of one room arrive
	// in order; events of different rooms may arrive concurrently. The core has already dropped
	// echoes of the bridge's own ghosts and events it has handled before, but after a crash an
	// event whose handler had not returned is delivered again, so side effects must be
	// idempotent on evt.ID (for example, send with a transaction ID derived from it, see
	// [TxnIDFor]). A returned error is logged once by the core with all context fields; the event
	// is not retried.
	//
	// route says which of the bridge's claims the event belongs to (its claim on the room, with
	// provenance, and/or the ghost a membership event is about), so the bridge need not look
	// that up again; at least one of them is set.
	HandleEvent(ctx context.Context, evt *event.Event, route Route) error
}

// Route tells a bridge why the core delivered an event to it. The core routes an event to a
// bridge because the bridge claimed the event's room ([Host.ClaimRoom]), or because the event is
// a membership event about one of the bridge's ghosts (an invite into a room it has not claimed
// yet, a kick), or both. Aliases route no events: the homeserver asks about them through
// [AliasQuerier] only.
type Route struct {
	// Claim is the bridge's claim on the event's room as recorded by ClaimRoom: who asked for
	// it, through which event and when (RoomID is the event's room). Nil when the bridge has not
	// claimed the room.
	Claim *Provenance
	// Ghost is the bridge's ghost whose membership the event changes (its state key); empty
	// unless the event is an m.room.member event about a user in the bridge's namespace.
	Ghost id.UserID
}

// Namespaces are the parts of the Matrix namespace a bridge claims.
type Namespaces struct {
	// UserPrefix is the localpart prefix of the bridge's ghosts and bots ("irc_"). Every user
	// whose localpart starts with it belongs to the bridge exclusively. Empty means the bridge has
	// no ghosts.
	UserPrefix string
	// AliasPrefix is the localpart prefix of room aliases the bridge answers for ("irc_").
	// Empty means none.
	AliasPrefix string
}

// ConfigValidator is an optional interface that bridges can implement to check their decoded
// configuration. The core calls ValidateConfig after decoding and before starting anything, and
// reports every problem of every bridge at once.
type ConfigValidator interface {
	Bridge
	// ValidateConfig returns nil or the problems found: one [*ConfigError] per problem, joined
	// with errors.Join when there are several. Path is relative to the bridge's section
	// ("networks[0].address"; empty for the section as a whole) and Line is left 0: the core
	// prefixes bridges.<id>. and adds the key's line in the file where the key is present. Any
	// other error is reported as a problem of the whole section.
	ValidateConfig() error
}

// OptInBridge is an optional interface that bridges can implement to be off in the example
// configuration: [ExampleConfig] prints their section commented out, so that Custodian run from
// the example as printed never connects to a third party's network. The admin turns such a
// bridge on by uncommenting its section and editing it.
type OptInBridge interface {
	Bridge
	// OptIn reports whether the example prints the bridge's section commented out. It returns
	// constant data and is called before the configuration loads.
	OptIn() bool
}

// RoomKeeper is an optional interface that bridges can implement to keep rooms that must outlive
// their members: an IRC portal stays bridged while its channel exists, so that a user who joins
// later finds it working. Before the bot leaves a room because only the service's own users are
// left in it, or because it was a direct chat with a user being erased, the core asks each
// bridge that claimed the room (Host.ClaimRoom); if one keeps it, the bot stays and the room's
// configuration is not purged. Kicking or banning the bot still ends its setup.
type RoomKeeper interface {
	Bridge
	// KeepsRoom reports whether the bridge keeps roomID. It should be cheap (a database lookup)
	// and do no network I/O. An error counts as keeping the room, since leaving cannot be
	// undone; the core logs it.
	KeepsRoom(ctx context.Context, roomID id.RoomID) (bool, error)
}

// AdminAPIProvider is an optional interface that bridges can implement to add endpoints to the
// admin API, for what an administrator manages in the bridge (the IRC bridge's portals). The
// core mounts each route under <AdminAPIPrefix>/bridges/<bridge id>, behind the same bearer
// token as its own endpoints: a handler never sees a request without it.
type AdminAPIProvider interface {
	Bridge
	// AdminRoutes returns the bridge's admin endpoints. It is called once, after Init, when the
	// admin API starts.
	AdminRoutes() []AdminRoute
}

// AdminRoute is one admin API endpoint of a bridge (see [AdminAPIProvider]).
type AdminRoute struct {
	// Method is the HTTP method, http.MethodGet and the like.
	Method string
	// Path is the path below <AdminAPIPrefix>/bridges/<bridge id>, starting with "/". It may
	// hold net/http pattern wildcards ("/portals/{room}/unlink"), which the handler reads with
	// r.PathValue.
	Path string
	// Handler answers the request. Its context carries the admin API's logger. It should answer
	// JSON, errors as {"errcode", "error"} like the core's endpoints, and log what it changed.
	Handler http.HandlerFunc
}

// UserQuerier is an optional interface that bridges can implement to answer the homeserver's
// user queries (GET /_matrix/app/v1/users/{userId}) for users in their namespace.
type UserQuerier interface {
	Bridge
	// QueryUser reports whether the user exists on the bridge's side; if so the bridge should
	// have registered it (Host.Intent(...).EnsureRegistered) before returning true.
	QueryUser(ctx context.Context, userID id.UserID) (bool, error)
}

// AliasQuerier is an optional interface that bridges can implement to answer the homeserver's
// room alias queries (GET /_matrix/app/v1/rooms/{alias}) for aliases in their namespace.
type AliasQuerier interface {
	Bridge
	// QueryAlias reports whether the alias exists; if so the bridge must have created the room
	// and pointed the alias at it before returning true.
	QueryAlias(ctx context.Context, alias id.RoomAlias) (bool, error)
}

// CommandProvider is an optional interface that bridges can implement to add commands to the
// Custodian bot. Commands are grouped under the bridge's ID: a bridge "irc" with a command
// "login" is invoked as "!irc login …".
type CommandProvider interface {
	Bridge
	// Commands returns the bridge's commands. It is called once, after Init.
	Commands() []*Command
}

// Host is the only handle a bridge gets on the core. It is safe for concurrent use.
type Host interface {
	// Intent returns an intent for the user with the given full localpart, which must start with
	// the bridge's UserPrefix. Any other localpart is refused with [ErrOutsideNamespace]. The
	// intent is not yet registered; call EnsureRegistered or EnsureJoined before acting.
	Intent(localpart string) (*mxas.IntentAPI, error)
	// Bot returns the intent of the Custodian bot, for replies and notices.
	Bot() *mxas.IntentAPI
	// DB returns the bridge's database: a child of the core database that shares its pool and
	// its transactions (db.DoTxn in the core and in the bridge see the same transaction).
	DB() *dbutil.Database
	// Log returns the bridge's logger, with the field bridge=<id>.
	Log() *zerolog.Logger
	// ClaimRoom records that the bridge owns the room, so its events are routed to the bridge.
	// Provenance fields record who asked and through which event.
	ClaimRoom(ctx context.Context, roomID id.RoomID, prov Provenance) error
	// ReleaseRoom forgets the room's ownership.
	ReleaseRoom(ctx context.Context, roomID id.RoomID) error
	// EnsureUser makes sure the users row for a real Matrix user exists, so the bridge can
	// reference it from its own tables. It must be called (in the same transaction, if any)
	// before inserting a row that references users(mxid).
	EnsureUser(ctx context.Context, userID id.UserID) error
	// Domain returns the homeserver's server name.
	Domain() string
	// Vault returns the credential vault, scoped to the bridge: what it seals is bound to the
	// bridge's ID, the user and the secret's name.
	Vault() SecretStore
	// IsPaused reports whether the user has paused Custodian (!pause). While paused, bridges
	// must not act for the user (relay their messages, keep remote connections for them), but
	// keep their data. The core already withholds a paused user's Matrix events from bridges.
	IsPaused(ctx context.Context, userID id.UserID) (bool, error)
	// CarriesSecret reports whether evt is an m.room.message that carries a secret: a text of
	// it (body, formatted body, an edit's new content, line by line, without reply fallbacks,
	// white space or case) parses as a Sensitive command of the core or any bridge, or a likely
	// typo of one (see [SecretDetector]). The core already withholds such messages from bridges;
	// a bridge that relays messages anywhere checks again before it does, and relays nothing
	// for which this is true.
	CarriesSecret(evt *event.Event) bool
	// MayConfigureRoom reports whether userID is joined to roomID and has the power level the
	// room configuration command needs there: bot.command_power_levels for command (its full
	// name without prefix, "webhook out"), else the room's state_default. It reads the state
	// cache, which the core keeps current from the room's events while the bot is in the room
	// and drops when the bot leaves, and asks the homeserver for what the cache lacks. An error
	// means it could not tell: treat the user as not allowed.
	MayConfigureRoom(ctx context.Context, roomID id.RoomID, userID id.UserID, command string) (bool, error)
	// IsPrivateWith reports whether roomID is private to userID and the bot: its joined members,
	// read now from the homeserver, are the bot and at most userID (who may still be only
	// invited). A bridge that opened a room to tell userID something meant for them alone
	// (secrets, notices) checks it before each later send into that room, and opens a new room
	// when it is false, since the user may have invited others meanwhile. An error means it
	// could not tell: treat the room as shared.
	IsPrivateWith(ctx context.Context, roomID id.RoomID, userID id.UserID) (bool, error)
	// NotifyUser sends n.Content from the bot to userID alone, in the user's management room:
	// the one way to reach a user privately (invariant 10). The room is kept on the user's
	// users row (created if needed), so it is exported and erased with the rest of their data.
	// When there is none, the user left it, or anyone but the bot and the user joined it, the
	// core opens a new private room, invites the user and records it; concurrent first notices
	// to one user open one room. The send's transaction ID is derived from the bridge, n.Cause
	// and n.Purpose, so a notice sent again for the same cause and purpose (a replay after a
	// crash) is posted once; only if the room was reopened in between is it posted again, in the
	// new room. It returns the room and the event ID of the message. While the user's erasure is
	// queued or running it sends nothing and returns [ErrUserBeingErased].
	NotifyUser(ctx context.Context, userID id.UserID, n Notice) (id.RoomID, id.EventID, error)
	// EncryptionActive reports whether the core can read and write encrypted rooms now: its
	// device is set up, so the bot's and the ghosts' messages into encrypted rooms are
	// encrypted, and encrypted events reach the bridge decrypted. A bridge that creates rooms
	// may make them encrypted (see [EncryptionInitialState]) only while it is true; otherwise
	// nobody on Custodian's side could read them. It may change at run time, so ask before
	// each room is created.
	EncryptionActive() bool
}

// Notice is a private message to one user, for [Host.NotifyUser].
type Notice struct {
	// Cause is what led to the notice: the Matrix event ID being handled, or another key that
	// is stable and unique for the occasion (a stored row's ID and version). Required.
	Cause string
	// Purpose tells apart several notices of one cause ("url", "signing-secret"). Cause and
	// Purpose together must name one message: the same pair is posted once.
	Purpose string
	// Content is the message, usually an m.notice rendered with format.RenderMarkdown. Required.
	Content *event.MessageEventContent
}

// SecretStore seals and opens one bridge's secrets for users, with AES-256-GCM under each user's
// data key. A sealed value is bound to (user, bridge, name): opened under any other triple it
// fails, so copying a ciphertext to another row or user does not work. Name the secret after
// the row it belongs to ("sasl_password/libera", "outbound_url/<hook id>"). Bridges store the
// sealed bytes in their own tables and declare those columns as Secret in their inventory.
// Erasing the user destroys their data key, so every ciphertext of theirs, in any backup,
// becomes unreadable. Safe for concurrent use.
type SecretStore interface {
	// Seal encrypts secret for user under name. It creates the user's data key if needed; the
	// users row must exist (see Host.EnsureUser).
	Seal(ctx context.Context, user id.UserID, name string, secret vault.Secret) ([]byte, error)
	// Open decrypts a value Seal returned for the same user and name. It fails with
	// vault.ErrKeyUnavailable if the master key that wraps the user's data key is missing or
	// wrong (the bridge should tell the user to link again), and vault.ErrDecrypt if the value
	// was tampered with or belongs to another user, bridge or name.
	Open(ctx context.Context, user id.UserID, name string, sealed []byte) (vault.Secret, error)
}

// Eraser is an optional interface that bridges can implement to undo a user's remote side
// effects before their data is erased: quit their IRC connections, revoke their webhooks. The
// core calls EraseRemote first, logs a failure with the bridge ID and goes on; then it deletes
// the user's rows in one transaction. EraseRemote must be idempotent: an erasure interrupted by
// a crash is resumed and calls it again.
type Eraser interface {
	Bridge
	EraseRemote(ctx context.Context, user id.UserID) error
}

// RoomPurger is an optional interface that bridges can implement to forget a room's
// configuration when the Custodian bot's setup there ends: the bot was kicked or banned, or
// everyone else left. The core calls PurgeRoom for every bridge that implements it, whether or
// not the bridge owns the room, and then releases the room's ownership claim itself.
type RoomPurger interface {
	Bridge
	// PurgeRoom deletes everything the bridge keeps about roomID's configuration, and undoes its
	// side effects where it can (leave with its ghosts, stop feeds, revoke webhooks). It may be
	// called again for the same room, also for a room the bridge knows nothing about, and must
	// then succeed without doing anything. An error is logged by the core; the other bridges
	// are purged regardless.
	PurgeRoom(ctx context.Context, roomID id.RoomID) error
}

// RedactionPurger is an optional interface that bridges can implement to learn that rows of
// theirs were purged because the event that created them was redacted: to drop what they cache
// about those rows and stop what the rows set going (an outbound hook's deliveries, a feed's
// polling). The rows are already gone when it is called; rows derived from them went with them
// through their cascades.
//
// The redaction event itself still reaches the bridges that own the room through HandleEvent,
// after the purge; bridges that delete a remote copy of a bridged message do that there.
type RedactionPurger interface {
	Bridge
	// RedactionPurged is called once the core has deleted, in one transaction, the rows of the
	// bridge's declared tables whose SourceEventColumn is redacted; purged maps each table to
	// the number of rows deleted. An error is logged by the core. It is not called when nothing
	// was deleted, so an event handled again after a crash may not call it again.
	RedactionPurged(ctx context.Context, roomID id.RoomID, redacted id.EventID, purged map[string]int64) error
}

// ErrOutsideNamespace is returned by [Host.Intent] when a bridge asks for a user outside its own
// namespace. It is a programming error in the bridge.
var ErrOutsideNamespace = fmt.Errorf("appservice: localpart outside the bridge's namespace")

// BridgeError is an error that happened in one bridge while the core was doing something with
// it (decoding its config, upgrading its database, starting it).
type BridgeError struct {
	Bridge string
	Op     string
	Err    error
}

func (e *BridgeError) Error() string {
	return fmt.Sprintf("bridge %s: failed to %s: %v", e.Bridge, e.Op, e.Err)
}

// Unwrap returns the underlying error.
func (e *BridgeError) Unwrap() error { return e.Err }

package appservice

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	mxas "maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/database"
	"github.com/custodian-matrix/custodian/appservice/vault"
)

// bridgeHost is the [Host] one bridge gets: everything it may do, scoped to its namespace.
type bridgeHost struct {
	svc *Service
	br  Bridge
	id  string
	ns  Namespaces
	log zerolog.Logger
	db  *dbutil.Database
}

var _ Host = (*bridgeHost)(nil)

func (bh *bridgeHost) Intent(localpart string) (*mxas.IntentAPI, error) {
	if bh.ns.UserPrefix == "" || len(localpart) <= len(bh.ns.UserPrefix) || !strings.HasPrefix(localpart, bh.ns.UserPrefix) {
		return nil, ErrOutsideNamespace
	}
	userID := id.NewUserID(localpart, bh.svc.cfg.Homeserver.Domain)
	if _, _, err := userID.ParseAndValidateStrict(); err != nil {
		return nil, err
	}
	return bh.svc.intent(userID), nil
}

func (bh *bridgeHost) Bot() *mxas.IntentAPI { return bh.svc.as.BotIntent() }

func (bh *bridgeHost) DB() *dbutil.Database { return bh.db }

func (bh *bridgeHost) Log() *zerolog.Logger { return &bh.log }

func (bh *bridgeHost) Domain() string { return bh.svc.cfg.Homeserver.Domain }

func (bh *bridgeHost) IsPaused(ctx context.Context, userID id.UserID) (bool, error) {
	return bh.svc.db.User.IsPaused(ctx, userID)
}

// CarriesSecret answers with the bot's commands, by the one definition the dispatcher uses.
func (bh *bridgeHost) CarriesSecret(evt *event.Event) bool { return bh.svc.bot.carriesSecret(evt) }

func (bh *bridgeHost) Vault() SecretStore {
	return scopedVault{svc: bh.svc, bridge: bh.id}
}

// vaultBackend is what the core needs of the credential vault (package vault).
type vaultBackend interface {
	Seal(ctx context.Context, user id.UserID, bridge, name string, secret vault.Secret) ([]byte, error)
	Open(ctx context.Context, user id.UserID, bridge, name string, sealed []byte) (vault.Secret, error)
}

// ErrVaultDisabled is returned by a bridge's [SecretStore] when no master key is configured
// (vault.key_file). Bridges should tell the user that this Custodian cannot store credentials.
var ErrVaultDisabled = errors.New("appservice: the credential vault has no master key configured")

// scopedVault is one bridge's view of the vault.
type scopedVault struct {
	svc    *Service
	bridge string
}

func (sv scopedVault) Seal(ctx context.Context, user id.UserID, name string, secret vault.Secret) ([]byte, error) {
	if sv.svc.vault == nil {
		return nil, ErrVaultDisabled
	}
	return sv.svc.vault.Seal(ctx, user, sv.bridge, name, secret)
}

func (sv scopedVault) Open(ctx context.Context, user id.UserID, name string, sealed []byte) (vault.Secret, error) {
	if sv.svc.vault == nil {
		return vault.Secret{}, ErrVaultDisabled
	}
	return sv.svc.vault.Open(ctx, user, sv.bridge, name, sealed)
}

func (bh *bridgeHost) EnsureUser(ctx context.Context, userID id.UserID) error {
	return bh.svc.db.User.Ensure(ctx, userID)
}

func (bh *bridgeHost) ClaimRoom(ctx context.Context, roomID id.RoomID, prov Provenance) error {
	at := prov.At
	if at.IsZero() {
		at = time.Now()
	}
	err := bh.svc.db.DoTxn(ctx, nil, func(ctx context.Context) error {
		if prov.Actor != "" {
			if err := bh.svc.db.User.Ensure(ctx, prov.Actor); err != nil {
				return err
			}
		}
		return bh.svc.db.Room.Claim(ctx, roomID, bh.id, prov.Actor, prov.EventID, at)
	})
	bh.svc.roomOwners.Delete(roomID)
	return err
}

func (bh *bridgeHost) ReleaseRoom(ctx context.Context, roomID id.RoomID) error {
	err := bh.svc.db.Room.Release(ctx, roomID, bh.id)
	bh.svc.roomOwners.Delete(roomID)
	return err
}

// roomBridges returns the claims on roomID, with their provenance. The answer is cached; claims
// change only through ClaimRoom, ReleaseRoom and the end of a setup, which invalidate it.
func (svc *Service) roomBridges(ctx context.Context, roomID id.RoomID) ([]database.RoomClaim, error) {
	if owners, ok := svc.roomOwners.Load(roomID); ok {
		return owners.([]database.RoomClaim), nil
	}
	owners, err := svc.db.Room.GetClaims(ctx, roomID)
	if err != nil {
		return nil, err
	}
	svc.roomOwners.Store(roomID, owners)
	return owners, nil
}

// bridgeForAlias returns the bridge whose alias namespace contains alias, or nil.
func (svc *Service) bridgeForAlias(alias id.RoomAlias) *bridgeHost {
	localpart, server, ok := strings.Cut(strings.TrimPrefix(string(alias), "#"), ":")
	if !ok || server != svc.cfg.Homeserver.Domain {
		return nil
	}
	for _, bh := range svc.bridges {
		if bh.ns.AliasPrefix != "" && strings.HasPrefix(localpart, bh.ns.AliasPrefix) {
			return bh
		}
	}
	return nil
}

// TxnIDFor returns a transaction ID for a Matrix send caused by handling event evtID, for the
// given purpose ("reply", "welcome"). The same inputs always give the same ID, so when a handler
// runs again after a crash the homeserver recognises the repeated send and does not post it
// twice.
func TxnIDFor(evtID id.EventID, purpose string) string {
	sum := sha256.Sum256([]byte(string(evtID) + "\x00" + purpose))
	return "custodian_" + base64.RawURLEncoding.EncodeToString(sum[:18])
}

// roomOwnerCache is the type of Service.roomOwners.
type roomOwnerCache = sync.Map

// botInRoom reports whether the Custodian bot is joined to roomID, from an in-memory cache in
// front of the state store: every message asks, and a database query per message would cost more
// than the rest of handling it. The dispatcher drops a room's entry whenever a membership event
// of the bot passes through the state cache, so the answer follows the room's state.
func (svc *Service) botInRoom(ctx context.Context, roomID id.RoomID) bool {
	if joined, ok := svc.botRooms.Load(roomID); ok {
		return joined.(bool)
	}
	joined := svc.stateStore.IsInRoom(ctx, roomID, svc.as.BotMXID())
	svc.botRooms.Store(roomID, joined)
	return joined
}

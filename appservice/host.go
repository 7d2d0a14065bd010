package appservice

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	mxas "maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/id"
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
	return bh.svc.as.Intent(userID), nil
}

func (bh *bridgeHost) Bot() *mxas.IntentAPI { return bh.svc.as.BotIntent() }

func (bh *bridgeHost) DB() *dbutil.Database { return bh.db }

func (bh *bridgeHost) Log() *zerolog.Logger { return &bh.log }

func (bh *bridgeHost) Domain() string { return bh.svc.cfg.Homeserver.Domain }

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
	if err == nil {
		bh.svc.roomOwners.Store(roomID, bh.id)
	}
	return err
}

func (bh *bridgeHost) ReleaseRoom(ctx context.Context, roomID id.RoomID) error {
	err := bh.svc.db.Room.Delete(ctx, roomID)
	bh.svc.roomOwners.Delete(roomID)
	return err
}

// roomOwner returns the ID of the bridge that owns roomID, or "". Owners are cached; a room's
// owner changes only through ClaimRoom and ReleaseRoom, which update the cache.
func (svc *Service) roomOwner(ctx context.Context, roomID id.RoomID) (string, error) {
	if owner, ok := svc.roomOwners.Load(roomID); ok {
		return owner.(string), nil
	}
	owner, err := svc.db.Room.GetBridge(ctx, roomID)
	if err != nil {
		return "", err
	}
	svc.roomOwners.Store(roomID, owner)
	return owner, nil
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

package appservice

import (
	"context"
	"fmt"
	"slices"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/e2ee"
)

// prepareEncryptedReceipt makes the receipt of erasure jobID readable to the erased user
// (keyed hash userHash) when roomID is encrypted and encryption is on. The erasure deleted the
// user's member row in the state cache, so the room key would go to the bot's own device only:
// it reads the room's joined members from the homeserver, records the one whose keyed hash is
// userHash as joined, remembers them for the scrub after the receipt (see scrubAfterReceipt)
// and drops the room's outbound megolm session, so that the receipt goes out under a fresh room
// key shared with the user's devices. The user ID is never logged.
func (svc *Service) prepareEncryptedReceipt(ctx context.Context, roomID id.RoomID, jobID, userHash string, modules []string) error {
	if !svc.encryptionActive() || userHash == "" {
		return nil
	}
	if crypto, stateCache := receiptScrubScope(modules); !crypto && !stateCache {
		// The erasure left the user's member row and devices: the room key reaches them.
		return nil
	}
	encrypted, err := roomEncrypted(ctx, svc.as.BotClient(), roomID)
	if err != nil {
		return fmt.Errorf("failed to check whether the receipt room is encrypted: %w", err)
	} else if !encrypted {
		return nil
	}
	members, err := svc.joinedMembersNow(ctx, roomID)
	if err != nil {
		return err
	}
	botID := svc.as.BotMXID()
	var user id.UserID
	for _, member := range members {
		if member == botID {
			continue
		}
		hash, _, err := svc.engine.UserHash(ctx, member)
		if err != nil {
			return err
		}
		if hash == userHash {
			user = member
			break
		}
	}
	if user == "" {
		// The user left: nobody to make the receipt readable to.
		zerolog.Ctx(ctx).Info().Stringer("room_id", roomID).Msg("Erased user is not in the encrypted receipt room")
		return nil
	}
	svc.privacy.lock.Lock()
	if svc.privacy.receiptUsers == nil {
		svc.privacy.receiptUsers = make(map[string]id.UserID)
	}
	svc.privacy.receiptUsers[jobID] = user
	svc.privacy.lock.Unlock()
	if err = svc.stateStore.SetMembership(ctx, roomID, user, event.MembershipJoin); err != nil {
		return fmt.Errorf("failed to record the erased user's membership for the receipt: %w", err)
	}
	if err = svc.crypto.Store().RemoveOutboundGroupSession(ctx, roomID); err != nil {
		return fmt.Errorf("failed to drop the receipt room's outbound session: %w", err)
	}
	return nil
}

// scrubAfterReceipt deletes again, after the receipt of erasure jobID was sent and the rooms were
// left, every row naming the erased user (keyed hash userHash) in the crypto store's tables and
// in the state cache (each only if the job's scope modules covered it), in one transaction ([privacy.Engine.EraseAgain]), and then drops the olm
// sessions and the decryption cache kept in memory. The user is the one prepareEncryptedReceipt
// found in the room's members in this run; after a restart (or when the receipt was sent in an
// earlier run) it is every user the state cache's member rows or the crypto store's user
// columns name whose keyed hash is userHash: those rows are exactly what there is to delete, and
// the bot may have left the room since. It is idempotent: with nothing left to delete it does
// nothing.
func (svc *Service) scrubAfterReceipt(ctx context.Context, jobID, userHash string, modules []string) error {
	crypto, stateCache := receiptScrubScope(modules)
	if userHash == "" || (!crypto && !stateCache) {
		return nil
	}
	var cryptoModules []string
	if crypto {
		cryptoModules = []string{e2ee.Module}
	}
	svc.privacy.lock.Lock()
	remembered, ok := svc.privacy.receiptUsers[jobID]
	svc.privacy.lock.Unlock()
	users := []id.UserID{remembered}
	if !ok {
		var err error
		if users, err = svc.engine.UsersWithHash(ctx, userHash, cryptoModules); err != nil {
			return err
		}
	}
	var changed int64
	for _, user := range users {
		n, err := svc.engine.EraseAgain(ctx, user, cryptoModules, stateCache)
		if err != nil {
			return err
		}
		changed += n
	}
	svc.evictOlmSessions()
	svc.privacy.lock.Lock()
	delete(svc.privacy.receiptUsers, jobID)
	svc.privacy.lock.Unlock()
	zerolog.Ctx(ctx).Debug().Int64("rows", changed).Msg("Scrubbed the rows the erasure receipt stored")
	return nil
}

// receiptScrubScope reports which of what an encrypted receipt stores about the erased user an
// erasure of modules (empty: full) erased: the crypto store's rows, the state cache's (the
// core's).
func receiptScrubScope(modules []string) (crypto, stateCache bool) {
	if len(modules) == 0 {
		return true, true
	}
	return slices.Contains(modules, e2ee.Module), slices.Contains(modules, CoreModule)
}

// receiptJobScope returns the scope modules of erasure job jobID (empty: a full erasure).
func (svc *Service) receiptJobScope(ctx context.Context, jobID string) ([]string, error) {
	job, err := svc.engine.Store().GetErasure(ctx, jobID)
	if err != nil {
		return nil, err
	} else if job == nil {
		return nil, fmt.Errorf("erasure job %s not found", jobID)
	}
	return job.Modules, nil
}

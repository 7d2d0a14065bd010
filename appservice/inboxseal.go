package appservice

import (
	"context"
	"time"

	"github.com/rs/zerolog"

	"github.com/custodian-matrix/custodian/appservice/vault"
)

// inboxRetryInterval is how often the service retries, while it has any, the inbox events it
// could not open (their inbox key's master key is missing or wrong), and tries to create an
// inbox key while it has none; the vault re-reads its key file at the same pace.
const inboxRetryInterval = vault.DefaultReloadInterval

// setupInboxSealing makes the inbox seal event content with the vault's inbox keys (v nil: the
// vault is off, and the inbox stores it unsealed), loads the keys and seals the rows an earlier
// version (or a run without a key) stored unsealed. It runs at start, before the dispatcher
// replays the inbox. Nothing here stops the service: a missing key is logged, new events are
// stored unsealed until a key is back, and rows that cannot be opened stay in the inbox.
func (svc *Service) setupInboxSealing(ctx context.Context, v *vault.Vault) {
	log := zerolog.Ctx(ctx)
	if v == nil {
		log.Warn().Msg("The inbox stores event content unsealed, because the vault is off: message bodies and commands (IRC passwords, webhook URLs) sit in the database and its WAL until handled, and in PostgreSQL's WAL archives and replicas for good; set vault.key_file")
		return
	}
	svc.inboxKeys = v
	svc.db.Inbox.SetSealer(v)
	svc.loadInboxKeys(ctx)
	if !v.HasInboxKey() {
		return
	}
	if n, err := svc.db.Inbox.SealPlaintext(ctx); err != nil {
		log.Error().Err(err).Msg("Failed to seal inbox events stored unsealed; they stay as they are and are sealed at the next start")
	} else if n > 0 {
		log.Info().Int("events", n).Msg("Sealed inbox events that were stored unsealed")
	}
}

// loadInboxKeys loads the vault's inbox keys and logs what is wrong.
func (svc *Service) loadInboxKeys(ctx context.Context) {
	log := zerolog.Ctx(ctx)
	had := svc.inboxKeys.HasInboxKey()
	st, err := svc.inboxKeys.LoadInboxKeys(ctx)
	switch {
	case err != nil && had:
		log.Error().Err(err).Msg("Failed to reload the inbox keys")
	case err != nil:
		log.Error().Err(err).Str("key_source", svc.inboxKeys.KeySource().String()).
			Str("fix", "make the vault's master key available (see the vault's errors above); new events are sealed once it is").
			Msg("No inbox key: new inbox events are stored unsealed until the master key is loaded")
	case st.Created:
		log.Info().Uint32("inbox_key_id", st.CurrentID).Msg("Created a new inbox key")
	case !had:
		log.Info().Uint32("inbox_key_id", st.CurrentID).Msg("Loaded the inbox keys")
	}
	if len(st.Unavailable) > 0 {
		ids := make([]int, len(st.Unavailable))
		for i, keyID := range st.Unavailable {
			ids[i] = int(keyID)
		}
		log.Error().Ints("inbox_key_ids", ids).
			Str("fix", "put back the master key that wraps them (see 'custodian keys status'); the events sealed under them stay in the inbox and are handled once it is back").
			Msg("Inbox keys cannot be unwrapped: their master key is missing or wrong")
	}
}

// inboxRetryLoop retries, every inboxRetryInterval on the service's clock, the inbox events the
// dispatcher held back because their content could not be opened, and the creation of an inbox
// key while there is none. It runs until ctx ends.
func (svc *Service) inboxRetryLoop(ctx context.Context) {
	ticker := svc.clock().NewTicker(inboxRetryInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C():
		}
		held := svc.dispatcher.heldSeqs()
		if len(held) == 0 && svc.inboxKeys.HasInboxKey() {
			continue
		}
		hadKey := svc.inboxKeys.HasInboxKey()
		// Re-read the key file now rather than wait for the vault's own reload: an admin who
		// put a key back expects the held events within one interval. Reload logs its errors.
		_ = svc.inboxKeys.Reload(ctx)
		svc.loadInboxKeys(ctx)
		if !hadKey && svc.inboxKeys.HasInboxKey() {
			if n, err := svc.db.Inbox.SealPlaintext(ctx); err != nil {
				zerolog.Ctx(ctx).Error().Err(err).Msg("Failed to seal inbox events stored unsealed")
			} else if n > 0 {
				zerolog.Ctx(ctx).Info().Int("events", n).Msg("Sealed inbox events that were stored unsealed")
			}
		}
		if len(held) > 0 {
			svc.dispatcher.retryHeld(ctx, held)
		}
	}
}

// replaceInboxKey retires the inbox keys after an erasure (vault.shred_backups): a new inbox key
// under the current master key, every pending row re-sealed under it, the old keys deleted, all
// in one transaction. Ingest waits meanwhile, so nothing is sealed under a key being deleted.
// Once the shredder retires the old master key, inbox content in old WAL frames, dead tuples and
// backups cannot be opened any more.
func (svc *Service) replaceInboxKey(ctx context.Context) error {
	if svc.inboxKeys == nil {
		return nil
	}
	svc.ingestLock.Lock()
	defer svc.ingestLock.Unlock()
	start := time.Now()
	var resealed, kept int
	err := svc.inboxKeys.ReplaceInboxKey(ctx, func(ctx context.Context, seal vault.InboxSealFunc) (err error) {
		resealed, kept, err = svc.db.Inbox.Reseal(ctx, seal)
		return err
	})
	if err != nil {
		return err
	}
	zerolog.Ctx(ctx).Info().Int("resealed", resealed).Int("kept", kept).Dur("duration", time.Since(start)).
		Msg("Replaced the inbox key and re-sealed the pending inbox events under it")
	return nil
}

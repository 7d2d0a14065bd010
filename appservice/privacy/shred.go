package privacy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/custodian-matrix/custodian/appservice/clock"
	"github.com/custodian-matrix/custodian/appservice/database"
	"github.com/custodian-matrix/custodian/appservice/vault"
)

// Timing of the backup shredder (vault.shred_backups).
const (
	// ShredDebounce is how long the shredder waits after an erasure before rotating, so that a
	// burst of erasures costs one rotation.
	ShredDebounce = 2 * time.Second
	// shredRetryMin and shredRetryMax bound the wait before a failed shred rotation is retried;
	// it doubles from the one to the other.
	shredRetryMin = 10 * time.Second
	shredRetryMax = 30 * time.Minute
	// shredAttempts bounds the rotate-check-retire rounds of one shred rotation, for data keys
	// another process wraps with an old key meanwhile.
	shredAttempts = 5
)

// BackupShredder rotates the master key after erasures, so that database backups taken before
// an erasure cannot be opened with the keys Custodian holds (vault.shred_backups). One goroutine
// (Run) does every rotation, so two never run at once.
//
// A request is recorded in the database (as_shred_request) by the erasing transaction itself,
// so it survives a stop or a crash in the debounce window or during a retry's backoff: Run
// resumes it at start, and only a rotation that started after the request was recorded clears
// it. The in-memory kick only wakes Run sooner.
type BackupShredder struct {
	v    *vault.Vault
	path string
	// db records and clears the persisted request.
	db *database.PrivacyQuery
	// kick holds one pending request: erasures arriving while one is pending coalesce.
	kick chan struct{}
	// clk times the debounce and the retries.
	clk clock.Clock
	// replaceInboxKey, if set, retires the inbox keys (Service.replaceInboxKey); rotate calls it
	// once the new master key is loaded, so the old ones no longer wrap any inbox key.
	replaceInboxKey func(ctx context.Context) error
	// replaceCryptoKey, if set, replaces the crypto store's pickle key and re-pickles its rows
	// (Service.replaceCryptoKey); rotate calls it once the new master key is loaded.
	replaceCryptoKey func(ctx context.Context) error
}

// ShredResult reports one shred rotation.
type ShredResult struct {
	// KeyID is the current master key, which every data key is wrapped by afterwards.
	KeyID string
	// Retired are the master keys removed from the key file.
	Retired []string
	// Rewrapped counts the data keys re-wrapped.
	Rewrapped int
	// Kept are master keys left in the key file because data keys under them could not be
	// re-wrapped (the key is wrong).
	Kept []string
}

// ShredderOptions configure a [BackupShredder].
type ShredderOptions struct {
	// Vault is the vault whose master key is rotated.
	Vault *vault.Vault
	// KeyFile is vault.key_file, where the new master key is written and old ones are retired.
	KeyFile string
	// DB records and clears the persisted request (as_shred_request).
	DB *database.PrivacyQuery
	// Clock times the debounce and the retries; nil means the wall clock.
	Clock clock.Clock
	// ReplaceInboxKey, if set, retires the inbox keys; Rotate calls it once the new master key
	// is loaded, so the old ones no longer wrap any inbox key.
	ReplaceInboxKey func(ctx context.Context) error
	// ReplaceCryptoKey, if set, replaces the vault's crypto key (the end-to-end encryption
	// store's pickle key) and re-pickles every pickled crypto row under it; Rotate calls it once
	// the new master key is loaded, so that a backup taken before the erasure, whose crypto key
	// only an old master key wraps, no longer opens with the current keys.
	ReplaceCryptoKey func(ctx context.Context) error
}

// NewBackupShredder returns a shredder; start it with [BackupShredder.Run].
func NewBackupShredder(opts ShredderOptions) *BackupShredder {
	clk := opts.Clock
	if clk == nil {
		clk = clock.Real()
	}
	return &BackupShredder{
		v: opts.Vault, path: opts.KeyFile, db: opts.DB, kick: make(chan struct{}, 1), clk: clk,
		replaceInboxKey: opts.ReplaceInboxKey, replaceCryptoKey: opts.ReplaceCryptoKey,
	}
}

// RecordRequest records, in the erasing transaction in ctx, that the full erasure being
// committed needs a shred rotation. The request's time is the wall clock's, like the rotation's
// start it is compared with.
func (bs *BackupShredder) RecordRequest(ctx context.Context) error {
	return bs.db.RequestShred(ctx, time.Now())
}

// Kick wakes the shredder after a full erasure has committed (the request itself is in the
// database already). It never blocks.
func (bs *BackupShredder) Kick() {
	select {
	case bs.kick <- struct{}{}:
	default:
	}
}

// Run waits for requests and rotates, until ctx ends. A failed rotation is logged and retried
// with a growing delay; the keys stay usable throughout.
func (bs *BackupShredder) Run(ctx context.Context) {
	log := zerolog.Ctx(ctx)
	retry := shredRetryMin
	if _, pending, err := bs.db.PendingShred(ctx); err != nil {
		log.Error().Err(err).Msg("Failed to read the pending shred request; it is resumed at the next erasure or start")
	} else if pending {
		log.Info().Msg("Resuming a shred rotation requested before the last stop")
		select {
		case bs.kick <- struct{}{}:
		default:
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-bs.kick:
		}
		// needKey: an erasure committed since the current key was generated. A retry after a
		// failure that had already added a key reuses it, unless another erasure came since.
		// keyAt is when the attempt that generates the key started: requests recorded before it
		// are served by the rotation.
		needKey := true
		var keyAt time.Time
		for {
			if !bs.sleep(ctx, ShredDebounce) {
				return
			}
			if needKey {
				keyAt = time.Now()
			}
			res, err := bs.Rotate(ctx, needKey)
			if err == nil {
				if _, clearErr := bs.db.ClearShred(ctx, keyAt); clearErr != nil {
					// The request stays: the next start rotates once more, which is harmless.
					log.Warn().Err(clearErr).Msg("Failed to clear the served shred request")
				}
			}
			if err == nil {
				retry = shredRetryMin
				log.Info().Str("key_id", res.KeyID).Strs("retired_key_ids", res.Retired).
					Int("rewrapped", res.Rewrapped).Str("key_file", bs.path).
					Msg("Shredded database backups: rotated the vault's master key after an erasure; backups taken before it cannot be opened with the current keys")
				break
			}
			if ctx.Err() != nil {
				return
			}
			if res.KeyID != "" {
				needKey = false
			}
			log.Error().Err(err).Str("key_id", res.KeyID).Strs("retired_key_ids", res.Retired).
				Strs("kept_key_ids", res.Kept).Str("key_file", bs.path).Dur("retry_in", retry).
				Str("fix", "make sure the key file and its directory are writable by the user Custodian runs as, and that 'custodian keys status' shows every key available; the current keys stay usable").
				Msg("Failed to rotate the vault's master key after an erasure: database backups from before it can still be opened with the key file")
			if !bs.sleep(ctx, retry) {
				return
			}
			retry = min(retry*2, shredRetryMax)
			select {
			case <-bs.kick:
				needKey = true
			default:
			}
		}
	}
}

// Rotate makes one shred rotation. With newKey, it first writes a new key in front of the key
// file (atomically, the old keys kept as previous). Then, up to shredAttempts times: it reloads
// the keys, replaces the inbox keys and the crypto key once (see [ShredderOptions]), re-wraps every data key under the current one, and retires every other key no data
// key needs any more (its check value, then the key file line). Keys are removed from the file
// only once no data key uses them, and put back if one appeared meanwhile (another process
// still wrapping with an old key), so no key that wraps a data key is ever lost.
// res.KeyID is set once the key file holds the new key.
func (bs *BackupShredder) Rotate(ctx context.Context, newKey bool) (res ShredResult, err error) {
	if newKey {
		keys, err := vault.FileKeys(bs.path).LoadKeys()
		if err != nil {
			return res, err
		}
		k, err := vault.GenerateKey()
		if err != nil {
			return res, err
		}
		if err = vault.ReplaceKeyFile(bs.path, slices.Concat([]vault.Key{k}, keys)...); err != nil {
			return res, err
		}
		res.KeyID = k.ID()
	}
	inboxReplaced := bs.replaceInboxKey == nil
	cryptoReplaced := bs.replaceCryptoKey == nil
	for range shredAttempts {
		if err = bs.v.Reload(ctx); err != nil {
			return res, err
		}
		if !inboxReplaced {
			if err = bs.replaceInboxKey(ctx); err != nil {
				return res, err
			}
			inboxReplaced = true
		}
		if !cryptoReplaced {
			if err = bs.replaceCryptoKey(ctx); err != nil {
				return res, err
			}
			cryptoReplaced = true
		}
		keys, err := vault.FileKeys(bs.path).LoadKeys()
		if err != nil {
			return res, err
		}
		cur := keys[0]
		res.KeyID = cur.ID()
		rot, err := bs.v.Rotate(ctx, vault.RotateOptions{})
		res.Rewrapped += rot.Rewrapped
		if err != nil {
			return res, err
		}
		if rot.KeyID != cur.ID() {
			// The file changed after the reload: start over with it.
			continue
		}
		statuses, err := bs.v.Status(ctx)
		if err != nil {
			return res, err
		}
		inUse := make(map[string]bool)
		for _, st := range statuses {
			if !st.Current && st.Wraps() > 0 {
				inUse[st.ID] = true
			}
		}
		keep := []vault.Key{cur}
		var retire []vault.Key
		retry := false
		for _, k := range keys[1:] {
			if inUse[k.ID()] {
				keep = append(keep, k)
				if st := statusOf(statuses, k.ID()); st.Available() {
					// Wrapped by another process since the rotation: rotate again.
					retry = true
				}
				continue
			}
			if err = bs.v.RetireKey(ctx, k.ID()); errors.Is(err, vault.ErrKeyInUse) {
				keep = append(keep, k)
				retry = true
				continue
			} else if err != nil {
				return res, err
			}
			retire = append(retire, k)
		}
		if len(retire) > 0 {
			if err = vault.ReplaceKeyFile(bs.path, keep...); err != nil {
				return res, err
			}
			if err = bs.v.Reload(ctx); err != nil {
				return res, err
			}
			// A data key wrapped by a retired key since RetireKey checked (another process that
			// had not re-read the key file): put those keys back and go round again.
			statuses, err = bs.v.Status(ctx)
			if err != nil {
				return res, err
			}
			var back []vault.Key
			for _, k := range retire {
				if statusOf(statuses, k.ID()).Wraps() > 0 {
					back = append(back, k)
				} else {
					res.Retired = append(res.Retired, k.ID())
				}
			}
			if len(back) > 0 {
				keep = append(keep, back...)
				if err = vault.ReplaceKeyFile(bs.path, keep...); err != nil {
					return res, err
				}
				retry = true
			}
		}
		if retry {
			continue
		}
		res.Kept = nil
		for _, k := range keep[1:] {
			res.Kept = append(res.Kept, k.ID())
		}
		if len(res.Kept) > 0 {
			return res, fmt.Errorf("data keys under master keys %s could not be re-wrapped (the keys are wrong); they stay in the key file", strings.Join(res.Kept, ", "))
		}
		return res, nil
	}
	return res, fmt.Errorf("data keys kept being wrapped by old master keys after %d rounds (another process uses an old copy of the key file)", shredAttempts)
}

// statusOf returns the status of key kekID among statuses (the zero status if absent).
func statusOf(statuses []vault.KeyStatus, kekID string) vault.KeyStatus {
	for _, st := range statuses {
		if st.ID == kekID {
			return st
		}
	}
	return vault.KeyStatus{ID: kekID}
}

// sleep waits for d on the shredder's clock or until ctx ends; it reports whether d passed.
func (bs *BackupShredder) sleep(ctx context.Context, d time.Duration) bool {
	return clock.Sleep(ctx, bs.clk, d) == nil
}

package appservice

import (
	"context"
	"time"

	"github.com/rs/zerolog"

	"github.com/custodian-matrix/custodian/appservice/e2ee"
	"github.com/custodian-matrix/custodian/appservice/vault"
)

// cryptoKeyReplacer is the vault's replacement of the crypto key ([vault.Vault.ReplaceCryptoKey]).
type cryptoKeyReplacer interface {
	ReplaceCryptoKey(ctx context.Context, repickle func(ctx context.Context, oldKey, newKey []byte) error) (bool, error)
}

var _ cryptoKeyReplacer = (*vault.Vault)(nil)

// evictOlmSessions drops the olm sessions the bot's crypto store keeps in memory and empties its
// decryption cache, after an erasure deleted some of their rows from the database. It does
// nothing while encryption is off.
func (svc *Service) evictOlmSessions() {
	svc.cryptoKeyLock.Lock()
	defer svc.cryptoKeyLock.Unlock()
	if svc.crypto != nil {
		svc.crypto.EvictOlmSessions()
		svc.crypto.Evict()
	}
}

// evictCryptoCache empties the bot's decryption cache ([e2ee.Machine.Evict]) after a change to
// the crypto tables that did not go through the machine. It does nothing while encryption is
// off.
func (svc *Service) evictCryptoCache() {
	svc.cryptoKeyLock.Lock()
	defer svc.cryptoKeyLock.Unlock()
	if svc.crypto != nil {
		svc.crypto.Evict()
	}
}

// replaceCryptoKey replaces the vault's crypto key (the crypto store's pickle key) after an
// erasure (vault.shred_backups) and re-pickles every pickled crypto row under it, in one
// transaction. With encryption on, the bot's store waits meanwhile and then uses the new key;
// a store being opened (cryptoKeyLock) is waited for.
// Once the shredder retires the old master key, a backup taken before the erasure holds the
// crypto rows under a pickle key that no key Custodian holds unwraps, so the erased user's olm
// and megolm sessions in it stay closed (invariant 2). Without a vault or a crypto key it does
// nothing.
func (svc *Service) replaceCryptoKey(ctx context.Context) error {
	v, ok := svc.vault.(cryptoKeyReplacer)
	if !ok || svc.vault == nil {
		return nil
	}
	svc.cryptoKeyLock.Lock()
	defer svc.cryptoKeyLock.Unlock()
	start := time.Now()
	var res e2ee.RepickleResult
	var replaced bool
	var err error
	if svc.crypto != nil {
		res, err = svc.crypto.ReplacePickleKey(ctx, func(ctx context.Context, repickle func(ctx context.Context, oldKey, newKey []byte) error) error {
			var replaceErr error
			replaced, replaceErr = v.ReplaceCryptoKey(ctx, repickle)
			return replaceErr
		})
	} else {
		replaced, err = v.ReplaceCryptoKey(ctx, func(ctx context.Context, oldKey, newKey []byte) error {
			var repickleErr error
			res, repickleErr = e2ee.Repickle(ctx, svc.rawDB, oldKey, newKey)
			return repickleErr
		})
	}
	if err != nil {
		return err
	}
	if !replaced {
		return nil
	}
	log := zerolog.Ctx(ctx)
	log.Info().Int("repickled", res.Repickled).Int("unreadable", res.Unreadable).Dur("duration", time.Since(start)).
		Msg("Replaced the crypto store's pickle key and re-pickled its rows under it")
	if res.Unreadable > 0 {
		log.Warn().Int("unreadable", res.Unreadable).
			Msg("Some crypto store rows did not open with the old pickle key and were left as they were")
	}
	return nil
}

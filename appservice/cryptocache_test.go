package appservice

import (
	"errors"
	"testing"
	"time"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/e2ee"
)

// TestCryptoErasureEvictsDecryptionCache decrypts a message of alice's megolm session with the
// decryption cache on, so the session is cached, erases alice, and checks that her session no
// longer decrypts: the erasure empties the cache, not only the database.
func TestCryptoErasureEvictsDecryptionCache(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			// Not started: the service's background goroutines read svc.crypto, set here.
			env := newPrivacyEnv(t, dialect, nil)
			if err := env.svc.upgradeDatabases(env.ctx); err != nil {
				t.Fatal(err)
			}
			env.seedUser(pvAlice, pvDM)
			m := env.newTestMachine(randomKey(t))
			m.EnableCache(0)
			env.svc.crypto = m
			sender := env.newMegolmSender(m, pvAlice, pvDM, time.Now())
			if _, err := m.Decrypt(env.ctx, sender.encrypt(t, "$before", "hello")); err != nil {
				t.Fatalf("Decrypt() before the erasure = %v", err)
			}
			if _, err := env.svc.engine.Erase(env.ctx, pvAlice, EraseRequest{Trigger: TriggerAdmin}); err != nil {
				t.Fatal(err)
			}
			if _, err := m.Decrypt(env.ctx, sender.encrypt(t, "$after", "hello again")); !errors.Is(err, e2ee.ErrNoSession) {
				t.Fatalf("Decrypt() of alice's session after her erasure = %v, want ErrNoSession", err)
			}
		})
	}
}

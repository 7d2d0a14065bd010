package fakehost

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"sync"

	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice"
	"github.com/custodian-matrix/custodian/appservice/vault"
)

// MemoryVault is an in-memory credential vault with the real one's semantics and errors:
// AES-256-GCM under a random key per user, with (user, bridge, name) as associated data, so a
// value opens only where it was sealed ([vault.ErrDecrypt] elsewhere); [MemoryVault.Forget]
// destroys a user's key (crypto-shredding, after which their values fail with
// [vault.ErrDecrypt]). It is safe for concurrent use.
type MemoryVault struct {
	lock           sync.Mutex
	keys           map[id.UserID][]byte
	disabled       bool
	keyUnavailable bool
	seals          int
	opens          int
}

// NewMemoryVault returns an empty vault.
func NewMemoryVault() *MemoryVault {
	return &MemoryVault{keys: make(map[id.UserID][]byte)}
}

// For returns the vault scoped to bridge, as [appservice.Host.Vault] does.
func (mv *MemoryVault) For(bridge string) appservice.SecretStore {
	return scopedVault{mv: mv, bridge: bridge}
}

// SetDisabled makes Seal and Open fail with [appservice.ErrVaultDisabled], as when no master
// key is configured.
func (mv *MemoryVault) SetDisabled(disabled bool) {
	mv.lock.Lock()
	mv.disabled = disabled
	mv.lock.Unlock()
}

// SetKeyUnavailable makes Open fail with [vault.ErrKeyUnavailable] and Seal with
// [vault.ErrNoKey], as when the master key file is missing.
func (mv *MemoryVault) SetKeyUnavailable(unavailable bool) {
	mv.lock.Lock()
	mv.keyUnavailable = unavailable
	mv.lock.Unlock()
}

// Forget destroys userID's data key: everything sealed for them no longer opens.
func (mv *MemoryVault) Forget(userID id.UserID) {
	mv.lock.Lock()
	delete(mv.keys, userID)
	mv.lock.Unlock()
}

// Counts returns how many values were sealed and opened so far.
func (mv *MemoryVault) Counts() (seals, opens int) {
	mv.lock.Lock()
	defer mv.lock.Unlock()
	return mv.seals, mv.opens
}

func (mv *MemoryVault) aead(userID id.UserID, create bool) (cipher.AEAD, error) {
	mv.lock.Lock()
	defer mv.lock.Unlock()
	if mv.disabled {
		return nil, appservice.ErrVaultDisabled
	} else if mv.keyUnavailable && create {
		return nil, vault.ErrNoKey
	} else if mv.keyUnavailable {
		return nil, vault.ErrKeyUnavailable
	}
	key, ok := mv.keys[userID]
	if !ok {
		if !create {
			return nil, vault.ErrDecrypt
		}
		key = make([]byte, 32)
		_, _ = rand.Read(key)
		mv.keys[userID] = key
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

type scopedVault struct {
	mv     *MemoryVault
	bridge string
}

func associatedData(user id.UserID, bridge, name string) []byte {
	return []byte(string(user) + "\x00" + bridge + "\x00" + name)
}

func (sv scopedVault) Seal(_ context.Context, user id.UserID, name string, secret vault.Secret) ([]byte, error) {
	aead, err := sv.mv.aead(user, true)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize())
	_, _ = rand.Read(nonce)
	sv.mv.lock.Lock()
	sv.mv.seals++
	sv.mv.lock.Unlock()
	return aead.Seal(nonce, nonce, []byte(secret.Reveal()), associatedData(user, sv.bridge, name)), nil
}

func (sv scopedVault) Open(_ context.Context, user id.UserID, name string, sealed []byte) (vault.Secret, error) {
	aead, err := sv.mv.aead(user, false)
	if err != nil {
		return vault.Secret{}, err
	}
	if len(sealed) < aead.NonceSize() {
		return vault.Secret{}, vault.ErrDecrypt
	}
	plain, err := aead.Open(nil, sealed[:aead.NonceSize()], sealed[aead.NonceSize():], associatedData(user, sv.bridge, name))
	if err != nil {
		return vault.Secret{}, vault.ErrDecrypt
	}
	sv.mv.lock.Lock()
	sv.mv.opens++
	sv.mv.lock.Unlock()
	return vault.NewSecret(string(plain)), nil
}

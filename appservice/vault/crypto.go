package vault

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"

	"maunium.net/go/mautrix/id"
)

// sealedVersion is the first byte of every sealed value; the layout after it is
// dek_id (uint32, big endian) || nonce (12 bytes) || ciphertext and GCM tag (16 bytes).
const sealedVersion = 1

const (
	headerSize = 1 + 4
	nonceSize  = 12
	tagSize    = 16
	// wrappedSize is the size of a wrapped data key: nonce || encrypted key || tag.
	wrappedSize = nonceSize + KeySize + tagSize
)

// appendField appends s with a 4-byte length prefix, so that fields cannot run into each other:
// ("ab", "c") and ("a", "bc") give different bytes.
func appendField(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// secretAAD is the associated data of a sealed value: a domain label, the header (version and
// data key ID) and the (user, bridge, name) triple it is bound to.
func secretAAD(header []byte, user id.UserID, bridge, name string) []byte {
	b := make([]byte, 0, 24+len(header)+12+len(user)+len(bridge)+len(name))
	b = append(b, "custodian-secret\x00"...)
	b = append(b, header...)
	b = appendField(b, string(user))
	b = appendField(b, bridge)
	return appendField(b, name)
}

// wrapAAD is the associated data of a wrapped data key: it binds the wrapping to the master key
// ID, the user and the data key ID, so a wrapped key moved to another row does not unwrap.
func wrapAAD(kekID string, user id.UserID, dekID uint32) []byte {
	b := make([]byte, 0, 32+len(kekID)+len(user))
	b = append(b, "custodian-dek v1\x00"...)
	b = appendField(b, kekID)
	b = appendField(b, string(user))
	return binary.BigEndian.AppendUint32(b, dekID)
}

// wrapDEK encrypts dek under the master key mk for (user, dekID).
func wrapDEK(mk *masterKey, user id.UserID, dekID uint32, dek []byte) ([]byte, error) {
	out := make([]byte, nonceSize, wrappedSize)
	if _, err := rand.Read(out); err != nil {
		return nil, fmt.Errorf("failed to generate nonce: %w", err)
	}
	return mk.aead.Seal(out, out[:nonceSize], dek, wrapAAD(mk.ID(), user, dekID)), nil
}

// unwrapDEK decrypts a wrapped data key. The caller clears the result after use.
func unwrapDEK(mk *masterKey, user id.UserID, dekID uint32, wrapped []byte) ([]byte, error) {
	if len(wrapped) != wrappedSize {
		return nil, fmt.Errorf("wrapped data key has %d bytes, want %d", len(wrapped), wrappedSize)
	}
	dek, err := mk.aead.Open(nil, wrapped[:nonceSize], wrapped[nonceSize:], wrapAAD(mk.ID(), user, dekID))
	if err != nil {
		return nil, err
	}
	return dek, nil
}

// parseSealed splits a sealed value into header, data key ID, nonce and ciphertext.
func parseSealed(sealed []byte) (header []byte, dekID uint32, nonce, ciphertext []byte, err error) {
	if len(sealed) < headerSize+nonceSize+tagSize {
		return nil, 0, nil, nil, fmt.Errorf("%w: too short", ErrDecrypt)
	}
	if sealed[0] != sealedVersion {
		return nil, 0, nil, nil, fmt.Errorf("%w: unknown format version %d", ErrDecrypt, sealed[0])
	}
	header = sealed[:headerSize]
	dekID = binary.BigEndian.Uint32(sealed[1:headerSize])
	nonce = sealed[headerSize : headerSize+nonceSize]
	return header, dekID, nonce, sealed[headerSize+nonceSize:], nil
}

// Package webhookid makes and checks the webhook bridge's identifiers and secrets: hook IDs,
// inbound tokens and their hashes, outbound signing secrets, hook names and ghost localparts.
// It is pure: no I/O beyond reading crypto/rand.
package webhookid

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"strings"
	"unicode/utf8"
)

// GhostPrefix is the localpart prefix of the bridge's ghosts; it is also the bridge's user
// namespace. A hook's ghost is GhostPrefix + its hook ID.
const GhostPrefix = "webhook_"

const (
	// hookIDBytes is the random size of a hook ID. Hook IDs are not secret (they appear in
	// URLs, localparts and logs); they only need to be unique.
	hookIDBytes = 8
	// tokenBytes is the random size of an inbound token: 256 bits, far above the 128 the
	// design requires.
	tokenBytes = 32
	// signingSecretBytes is the random size of an outbound signing secret.
	signingSecretBytes = 32
)

// HookIDLength is the length of a hook ID: lowercase hex.
const HookIDLength = 2 * hookIDBytes

// TokenLength is the length of an inbound token: unpadded base64url.
var TokenLength = base64.RawURLEncoding.EncodedLen(tokenBytes)

// MaxNameLength is the longest hook name accepted, in characters.
const MaxNameLength = 32

// NewHookID returns a fresh random hook ID (16 lowercase hex digits).
func NewHookID() string {
	return hex.EncodeToString(random(hookIDBytes))
}

// ValidHookID reports whether s has the form of a hook ID.
func ValidHookID(s string) bool {
	if len(s) != HookIDLength {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isLowerHex(s[i]) {
			return false
		}
	}
	return true
}

// NewToken returns a fresh random inbound token (256 bits, unpadded base64url). Only its
// [HashToken] is ever stored.
func NewToken() string {
	return base64.RawURLEncoding.EncodeToString(random(tokenBytes))
}

// ValidToken reports whether s has the form of an inbound token. It looks only at the form,
// so it leaks nothing about any real token.
func ValidToken(s string) bool {
	if len(s) != TokenLength {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// HashToken returns the SHA-256 of token as lowercase hex: the form tokens are stored in.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// TokenMatches reports whether token hashes to storedHash, in time that does not depend on
// where the two differ. An empty storedHash never matches; callers that have no stored hash
// (an unknown hook) should still call it with [DummyHash], so that unknown and known hooks take
// the same time to refuse.
func TokenMatches(token, storedHash string) bool {
	presented := HashToken(token)
	match := subtle.ConstantTimeCompare([]byte(presented), []byte(storedHash)) == 1
	return match && storedHash != ""
}

// DummyHash is a well-formed hash that no token has in practice, for [TokenMatches] on unknown
// hooks.
var DummyHash = strings.Repeat("0", sha256.Size*2)

// NewSigningSecret returns a fresh random signing secret for an outbound hook (64 lowercase hex
// digits). Receivers use its text, as shown, as the HMAC-SHA256 key.
func NewSigningSecret() string {
	return hex.EncodeToString(random(signingSecretBytes))
}

// GhostLocalpart returns the localpart of hookID's ghost.
func GhostLocalpart(hookID string) string {
	return GhostPrefix + hookID
}

// ParseGhostLocalpart returns the hook ID of a ghost's localpart, and whether localpart is one.
func ParseGhostLocalpart(localpart string) (string, bool) {
	hookID, ok := strings.CutPrefix(localpart, GhostPrefix)
	if !ok || !ValidHookID(hookID) {
		return "", false
	}
	return hookID, true
}

// NormalizeName returns name lowercased, and whether it is a valid hook name: 1 to
// [MaxNameLength] characters, each a letter, digit, "-", "_" or ".", starting with a letter or
// digit. Names are shown in room messages, so the charset keeps them free of markup.
func NormalizeName(name string) (string, bool) {
	name = strings.ToLower(name)
	if name == "" || utf8.RuneCountInString(name) > MaxNameLength {
		return "", false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case (c == '-' || c == '_' || c == '.') && i > 0:
		default:
			return "", false
		}
	}
	return name, true
}

// SecretNameOutboundURL is the vault name of an outbound hook's URL.
func SecretNameOutboundURL(hookID string) string { return "outbound_url/" + hookID }

// SecretNameSigningSecret is the vault name of an outbound hook's signing secret.
func SecretNameSigningSecret(hookID string) string { return "signing_secret/" + hookID }

func isLowerHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f'
}

func random(n int) []byte {
	buf := make([]byte, n)
	// crypto/rand.Read never fails (Go 1.24+: it crashes the program irrecoverably instead).
	_, _ = rand.Read(buf)
	return buf
}

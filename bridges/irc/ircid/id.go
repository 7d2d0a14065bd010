// Package ircid maps IRC identities to Matrix identifiers and back: ghost localparts
// (irc_<network>_<nick>) and portal alias localparts (irc_<network>_<channel>). It is pure: no
// I/O, no state.
//
// IRC nicks and channel names are case-insensitive under the network's CASEMAPPING, so both are
// folded before they are encoded: "Alice" and "alice" are one ghost, whose display name keeps
// the case the network last showed. The casemapping must come from the network's configuration,
// not from what the server advertises at connect time, because a ghost's localpart must never
// change.
//
// Encoding: the folded name's bytes in [a-z0-9._-] are kept; every other byte (including '=')
// becomes '=' followed by two lowercase hex digits, the escaping mautrix uses for localparts.
// Each name has exactly one encoding, and the Parse functions accept only that one, so a
// localpart and an IRC identity correspond one to one.
package ircid

import (
	"errors"
	"strings"
)

// Prefix is the localpart prefix of every ghost and portal alias of the IRC bridge: its user and
// alias namespace. It is the bridge ID followed by '_' and never changes.
const Prefix = "irc_"

// MaxNetworkLength is the longest network ID accepted, in bytes.
const MaxNetworkLength = 32

// MaxNickLength is the longest nick accepted, in bytes. Networks cap nicks far lower (NICKLEN is
// typically 9 to 32); the limit keeps an escaped localpart well inside Matrix's 255-byte user ID.
const MaxNickLength = 64

// MaxChannelLength is the longest channel name accepted, in bytes (RFC 1459's 200).
const MaxChannelLength = 200

// Errors returned by the functions of this package. They describe the input's form only and
// never contain it, so callers may log them.
var (
	// ErrInvalidNetwork is returned for a network ID that is empty, too long, or has a byte
	// outside [a-z0-9-]. Network IDs come from the configuration, which should reject them.
	ErrInvalidNetwork = errors.New("ircid: invalid network ID")
	// ErrInvalidNick is returned for a nick that IRC would not accept: empty, too long, with a
	// space, control character or one of ",*?!@", or starting with ':', '$', a channel prefix or
	// a digit or '-'.
	ErrInvalidNick = errors.New("ircid: invalid nick")
	// ErrInvalidChannel is returned for a channel name that is empty, too long, does not start
	// with a channel prefix, or has a space, comma, BEL or other control character.
	ErrInvalidChannel = errors.New("ircid: invalid channel name")
	// ErrNotOurs is returned by the Parse functions for a localpart that does not have the form
	// Prefix + network + "_" + encoded name, or whose encoding is not the canonical one.
	ErrNotOurs = errors.New("ircid: not an IRC bridge localpart")
)

// CaseMapping is an IRC casemapping: the rule by which a network compares nicks and channel
// names. The zero value is [RFC1459], the default RFC 1459 prescribes.
type CaseMapping int

const (
	// RFC1459 folds A-Z to a-z and []\~ to {}|^ (ISUPPORT CASEMAPPING=rfc1459).
	RFC1459 CaseMapping = iota
	// ASCII folds only A-Z to a-z (CASEMAPPING=ascii).
	ASCII
	// RFC1459Strict folds A-Z to a-z and []\ to {}| but leaves ~ alone
	// (CASEMAPPING=strict-rfc1459 or rfc1459-strict).
	RFC1459Strict
)

// ParseCaseMapping returns the casemapping for an ISUPPORT CASEMAPPING or configuration value.
// It reports false for a value it does not know (such as rfc8265/precis, which fold Unicode);
// the caller decides what to fall back to.
func ParseCaseMapping(s string) (CaseMapping, bool) {
	switch strings.ToLower(s) {
	case "rfc1459", "":
		return RFC1459, true
	case "ascii":
		return ASCII, true
	case "strict-rfc1459", "rfc1459-strict":
		return RFC1459Strict, true
	}
	return RFC1459, false
}

// String returns the casemapping's ISUPPORT name.
func (cm CaseMapping) String() string {
	switch cm {
	case ASCII:
		return "ascii"
	case RFC1459Strict:
		return "rfc1459-strict"
	default:
		return "rfc1459"
	}
}

// Fold returns s folded under the casemapping: the form two names are equal in if the network
// considers them the same. Bytes outside ASCII are unchanged.
func (cm CaseMapping) Fold(s string) string {
	var b *strings.Builder
	for i := 0; i < len(s); i++ {
		c := cm.foldByte(s[i])
		if c == s[i] && b == nil {
			continue
		}
		if b == nil {
			b = &strings.Builder{}
			b.Grow(len(s))
			b.WriteString(s[:i])
		}
		b.WriteByte(c)
	}
	if b == nil {
		return s
	}
	return b.String()
}

// Equal reports whether a and b name the same nick or channel under the casemapping.
func (cm CaseMapping) Equal(a, b string) bool {
	return len(a) == len(b) && cm.Fold(a) == cm.Fold(b)
}

func (cm CaseMapping) foldByte(c byte) byte {
	switch {
	case c >= 'A' && c <= 'Z':
		return c + ('a' - 'A')
	case cm == ASCII:
		return c
	case c == '[' || c == ']' || c == '\\':
		return c + ('{' - '[')
	case c == '~' && cm == RFC1459:
		return '^'
	}
	return c
}

// ValidNetwork reports whether s can be a network ID: 1 to [MaxNetworkLength] bytes of
// [a-z0-9-]. Network IDs have no '_', which separates them from the name in a localpart.
func ValidNetwork(s string) bool {
	if s == "" || len(s) > MaxNetworkLength {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// ValidNick reports whether IRC could accept s as a nick (see [ErrInvalidNick]). Bytes
// outside ASCII are allowed, since some networks accept UTF-8 nicks.
func ValidNick(s string) bool {
	if s == "" || len(s) > MaxNickLength {
		return false
	}
	switch c := s[0]; {
	case c == ':' || c == '$' || c == '-' || isChanPrefix(c) || c >= '0' && c <= '9':
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c == 0x7f || strings.IndexByte(",*?!@", c) >= 0 {
			return false
		}
	}
	return true
}

// ValidChannel reports whether s is a channel name (see [ErrInvalidChannel]). The channel
// prefixes accepted are '#', '&', '+' and '!'; the bridge checks the network's CHANTYPES itself.
func ValidChannel(s string) bool {
	if len(s) < 2 || len(s) > MaxChannelLength || !isChanPrefix(s[0]) {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c == ',' || c == 0x7f {
			return false
		}
	}
	return true
}

func isChanPrefix(c byte) bool { return c == '#' || c == '&' || c == '+' || c == '!' }

// GhostLocalpart returns the localpart of the ghost for nick on network: Prefix + network + "_"
// + the escaped, folded nick. It returns [ErrInvalidNetwork] or [ErrInvalidNick] for input
// that cannot be an IRC identity.
func GhostLocalpart(network string, cm CaseMapping, nick string) (string, error) {
	if !ValidNetwork(network) {
		return "", ErrInvalidNetwork
	}
	if !ValidNick(nick) {
		return "", ErrInvalidNick
	}
	return Prefix + network + "_" + escape(cm.Fold(nick)), nil
}

// ParseGhost returns the network and folded nick a ghost localpart stands for: the inverse of
// [GhostLocalpart]. It returns [ErrNotOurs] for anything GhostLocalpart cannot have produced
// under cm.
func ParseGhost(localpart string, cm CaseMapping) (network, nick string, err error) {
	network, nick, ok := parse(localpart)
	if !ok || !ValidNick(nick) || cm.Fold(nick) != nick {
		return "", "", ErrNotOurs
	}
	return network, nick, nil
}

// AliasLocalpart returns the localpart of the portal alias for channel on network: Prefix +
// network + "_" + the escaped, folded channel name, with the leading '#' left out when what
// follows does not itself start with a channel prefix, so "#go-nuts" on "libera" is
// "irc_libera_go-nuts" while "##java" is "irc_libera_=23=23java" and "&ops" "irc_libera_=26ops".
func AliasLocalpart(network string, cm CaseMapping, channel string) (string, error) {
	if !ValidNetwork(network) {
		return "", ErrInvalidNetwork
	}
	if !ValidChannel(channel) {
		return "", ErrInvalidChannel
	}
	name := cm.Fold(channel)
	if name[0] == '#' && !isChanPrefix(name[1]) {
		name = name[1:]
	}
	return Prefix + network + "_" + escape(name), nil
}

// ParseAlias returns the network and folded channel name a portal alias localpart stands for:
// the inverse of [AliasLocalpart]. It returns [ErrNotOurs] for anything AliasLocalpart cannot
// have produced under cm (for example an alias typed with capitals).
func ParseAlias(localpart string, cm CaseMapping) (network, channel string, err error) {
	network, name, ok := parse(localpart)
	if !ok || name == "" {
		return "", "", ErrNotOurs
	}
	if !isChanPrefix(name[0]) {
		name = "#" + name
	} else if name[0] == '#' && len(name) > 1 && !isChanPrefix(name[1]) {
		// AliasLocalpart would have dropped this '#'.
		return "", "", ErrNotOurs
	}
	if !ValidChannel(name) || cm.Fold(name) != name {
		return "", "", ErrNotOurs
	}
	return network, name, nil
}

// parse splits Prefix + network + "_" + escaped into the network and the unescaped name, and
// checks the escaping is canonical.
func parse(localpart string) (network, name string, ok bool) {
	rest, found := strings.CutPrefix(localpart, Prefix)
	if !found {
		return "", "", false
	}
	network, escaped, found := strings.Cut(rest, "_")
	if !found || !ValidNetwork(network) {
		return "", "", false
	}
	name, ok = unescape(escaped)
	if !ok || escape(name) != escaped {
		return "", "", false
	}
	return network, name, true
}

const hexDigits = "0123456789abcdef"

func escape(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('=')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&0xf])
	}
	return b.String()
}

func unescape(s string) (string, bool) {
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '=' {
			b.WriteByte(c)
			continue
		}
		if i+2 >= len(s) {
			return "", false
		}
		hi, lo := unhex(s[i+1]), unhex(s[i+2])
		if hi < 0 || lo < 0 {
			return "", false
		}
		b.WriteByte(byte(hi<<4 | lo))
		i += 2
	}
	return b.String(), true
}

func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c - 'a' + 10)
	}
	return -1
}

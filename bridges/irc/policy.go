package irc

import (
	"errors"
	"strings"

	"maunium.net/go/mautrix/id"
)

// ChannelPolicy decides which channels of a network may be bridged, through their alias or with
// !irc link (bridges.irc.networks.<id>.channels). Patterns are globs (* any run of characters,
// ? one character, everything else literal), compared under the network's casemapping. A
// channel is allowed if no deny pattern matches it and, when allow is not empty, an allow
// pattern does.
type ChannelPolicy struct {
	// Allow, if not empty, lists the only channels that may be bridged.
	Allow []string `yaml:"allow"`
	// Deny lists channels that may not be bridged; it wins over Allow.
	Deny []string `yaml:"deny"`
}

// ErrPuppetNotAllowed is returned for a user whose server may not have puppets on a network
// (puppet_servers).
var ErrPuppetNotAllowed = errors.New("irc: users of this server get no connection to this network")

// channelAllowed reports whether channel may be bridged on n (its channels policy). Portals made
// before a channel was denied stay until unlinked.
func (n *network) channelAllowed(channel string) bool {
	folded := n.fold(channel)
	match := func(patterns []string) bool {
		for _, pattern := range patterns {
			if globMatch(n.fold(pattern), folded) {
				return true
			}
		}
		return false
	}
	if match(n.cfg.Channels.Deny) {
		return false
	}
	return len(n.cfg.Channels.Allow) == 0 || match(n.cfg.Channels.Allow)
}

// puppetAllowed reports whether userID's server may have puppets on n (puppet_servers; empty
// means this homeserver's users only). Users of other servers share the bridge's address and
// its max_puppets, and the homeserver admin answers for them to the network only when they are
// local.
func (n *network) puppetAllowed(userID id.UserID) bool {
	_, server, err := userID.Parse()
	if err != nil {
		return false
	}
	server = strings.ToLower(server)
	if len(n.cfg.PuppetServers) == 0 {
		return n.br != nil && n.br.host != nil && server == strings.ToLower(n.br.host.Domain())
	}
	for _, pattern := range n.cfg.PuppetServers {
		if globMatch(strings.ToLower(pattern), server) {
			return true
		}
	}
	return false
}

// globMatch reports whether s matches pattern, where * stands for any run of characters
// (also none) and ? for one character; every other character, brackets included, stands for
// itself.
func globMatch(pattern, s string) bool {
	p, str := []rune(pattern), []rune(s)
	// Backtracking over the last star only: linear in practice, no recursion.
	pi, si, star, mark := 0, 0, -1, 0
	for si < len(str) {
		switch {
		case pi < len(p) && (p[pi] == '?' || p[pi] == str[si]):
			pi++
			si++
		case pi < len(p) && p[pi] == '*':
			star, mark = pi, si
			pi++
		case star >= 0:
			pi = star + 1
			mark++
			si = mark
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}

// validChannelPattern reports whether pattern may be a channels pattern: not empty, and without
// the characters a channel name cannot hold (space, comma, control characters).
func validChannelPattern(pattern string) bool {
	return pattern != "" && !strings.ContainsFunc(pattern, func(r rune) bool { return r <= ' ' || r == ',' || r == 0x7f })
}

// validServerPattern reports whether pattern may be a puppet_servers pattern: a server name
// (host, optionally :port) that may hold * and ?.
func validServerPattern(pattern string) bool {
	if pattern == "" {
		return false
	}
	for _, r := range pattern {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		case strings.ContainsRune(".-:[]*?", r):
		default:
			return false
		}
	}
	return true
}

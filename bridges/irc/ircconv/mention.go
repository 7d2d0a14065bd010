package ircconv

import (
	"strings"
)

// Mentioned returns which of nicks plain text (from [ToMatrix]) names, as words: the nick
// compared under fold (the network's casemapping, which must keep lengths, as IRC casemappings
// do), and neither preceded nor followed by a character IRC allows in nicks, so "alice[m]:",
// "alice[m]," and "thanks alice[m]!" name alice[m], while "malice[m]" and "alice[m]s" do not. It
// returns the nicks as given, each once, in the order of nicks.
func Mentioned(plain string, nicks []string, fold func(string) string) []string {
	text := fold(plain)
	var out []string
	for _, nick := range nicks {
		f := fold(nick)
		if f == "" {
			continue
		}
		for from := 0; from < len(text); {
			i := strings.Index(text[from:], f)
			if i < 0 {
				break
			}
			start, end := from+i, from+i+len(f)
			if (start == 0 || !isNickByte(text[start-1])) && (end == len(text) || !isNickByte(text[end])) {
				out = append(out, nick)
				break
			}
			from = start + 1
		}
	}
	return out
}

// LeadingNick reports whether plain starts by addressing nick, "nick: …" or "nick, …", under
// fold, and returns how many bytes the nick takes.
func LeadingNick(plain, nick string, fold func(string) string) (int, bool) {
	if len(plain) <= len(nick) || fold(plain[:len(nick)]) != fold(nick) {
		return 0, false
	}
	switch plain[len(nick)] {
	case ':', ',':
		return len(nick), true
	}
	return 0, false
}

// isNickByte reports whether c can be part of a nick: letters, digits and the special
// characters of RFC 2812 ([]\`_^{|}-), in either case of the casemappings' folding.
func isNickByte(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("[]\\`_^{|}-~", c) >= 0
}

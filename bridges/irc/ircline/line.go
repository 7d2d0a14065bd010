// Package ircline parses IRC lines from servers and builds the lines the bridge sends, on top of
// github.com/ergochat/irc-go/ircmsg. It is the bridge's one boundary with raw IRC syntax:
//
//   - [Parse] accepts anything a hostile or broken server may send (overlong lines, bad tags,
//     missing parameters, NUL, stray CR) and returns an error rather than panicking; [Param]
//     and [ServerTime] read a parsed message without index or format surprises.
//   - [Build] is the only way the bridge turns a command into bytes. It refuses CR, LF and NUL
//     anywhere and parameters that would shift the ones after them, so text from Matrix can never
//     smuggle a second IRC command onto the wire. [Clean] makes arbitrary text safe for a
//     parameter where refusing is not an option (topics, quit and part messages).
//
// It is pure: no I/O, no state.
package ircline

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ergochat/irc-go/ircmsg"
)

// MaxLineLen is the longest line, without tags and CRLF, that [Build] produces: RFC 1459's 512
// bytes including the CRLF.
const MaxLineLen = 510

// MaxTagsLen is the longest tag section, with its '@' and trailing space, that [Parse] accepts
// (IRCv3 message-tags: 8191 bytes).
const MaxTagsLen = ircmsg.MaxlenTags

// MaxInboundLen is the longest line [Parse] accepts: tags plus a body. Servers sending more are
// broken or hostile; the connection's reader stops at this size too.
const MaxInboundLen = MaxTagsLen + 512

// Errors returned by this package. They never contain line content, so callers may log them.
var (
	// ErrTooLong is returned by [Parse] for a line over [MaxInboundLen] bytes, and by [Build]
	// for a line that would exceed [MaxLineLen]; the caller must split the text first.
	ErrTooLong = errors.New("ircline: line too long")
	// ErrUnsafe is returned by [Build] when a parameter holds CR, LF or NUL, or a non-final
	// parameter is empty, holds a space or starts with ':'. It means a bug in the caller, or
	// text from a user that was not passed through [Clean] or the converter.
	ErrUnsafe = errors.New("ircline: unsafe parameter")
	// ErrMalformed is returned by [Parse] for a line that is not an IRC message.
	ErrMalformed = errors.New("ircline: malformed line")
)

// Parse parses one line as received from a server, with or without its CRLF. It never panics;
// lines that are empty, overlong, carry NUL or inner CR/LF, have invalid tags or no command are
// rejected with [ErrTooLong] or [ErrMalformed]. The command is upper-cased. A missing parameter
// is simply absent: read parameters with [Param].
func Parse(line string) (msg ircmsg.Message, err error) {
	if len(line) > MaxInboundLen {
		return ircmsg.Message{}, ErrTooLong
	}
	defer func() {
		// ircmsg is fuzzed upstream and here; this is the last line of defence for a
		// long-running bridge against an input nobody thought of.
		if r := recover(); r != nil {
			msg, err = ircmsg.Message{}, ErrMalformed
		}
	}()
	msg, err = ircmsg.ParseLineStrict(line, false, 0)
	if err != nil {
		if errors.Is(err, ircmsg.ErrorTagsTooLong) {
			return ircmsg.Message{}, ErrTooLong
		}
		return ircmsg.Message{}, ErrMalformed
	}
	for _, c := range []byte(msg.Command) {
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return ircmsg.Message{}, ErrMalformed
		}
	}
	return msg, nil
}

// Param returns the i-th parameter of msg, or "" if the server sent fewer. Handlers use it so a
// truncated reply cannot index out of range.
func Param(msg *ircmsg.Message, i int) string {
	if i < 0 || i >= len(msg.Params) {
		return ""
	}
	return msg.Params[i]
}

// ServerTime returns the time of the IRCv3 server-time tag of msg, or fallback (normally the
// receive time) when the tag is absent or not a valid timestamp.
func ServerTime(msg *ircmsg.Message, fallback time.Time) time.Time {
	present, value := msg.GetTag("time")
	if !present {
		return fallback
	}
	t, err := time.Parse(time.RFC3339Nano, value)
	if err != nil {
		return fallback
	}
	return t
}

// Build serializes a command and its parameters into a line ending in CRLF. Only the last
// parameter may be empty, hold spaces or start with ':'. Tags may be nil. It returns [ErrUnsafe]
// if any parameter or tag value holds CR, LF or NUL (or a middle parameter is malformed), and
// [ErrTooLong] if the line without tags would exceed [MaxLineLen]; it never truncates.
func Build(tags map[string]string, command string, params ...string) ([]byte, error) {
	if command == "" {
		return nil, ErrUnsafe
	}
	for _, c := range []byte(command) {
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return nil, ErrUnsafe
		}
	}
	for i, p := range params {
		if strings.ContainsAny(p, "\r\n\x00") {
			return nil, ErrUnsafe
		}
		if i < len(params)-1 && (p == "" || p[0] == ':' || strings.IndexByte(p, ' ') >= 0) {
			return nil, ErrUnsafe
		}
	}
	for k, v := range tags {
		if strings.ContainsAny(k, "\r\n\x00 ;=") || strings.ContainsAny(v, "\x00") {
			return nil, ErrUnsafe
		}
	}
	msg := ircmsg.MakeMessage(tags, "", command, params...)
	b, err := msg.LineBytesStrict(true, MaxLineLen+2)
	switch {
	case errors.Is(err, ircmsg.ErrorBodyTooLong):
		return nil, ErrTooLong
	case errors.Is(err, ircmsg.ErrorTagsTooLong):
		return nil, ErrTooLong
	case err != nil:
		return nil, fmt.Errorf("%w: %w", ErrUnsafe, err)
	}
	return b, nil
}

// Clean returns s made safe for use as an IRC parameter: each CR, LF or CRLF becomes a space and
// NUL is removed. Use it for free text that may be shortened or reflowed (topics, part and quit
// messages, real names); message bodies go through the converter, which splits on newlines.
func Clean(s string) string {
	if !strings.ContainsAny(s, "\r\n\x00") {
		return s
	}
	s = strings.ReplaceAll(s, "\r\n", " ")
	return strings.Map(func(r rune) rune {
		switch r {
		case '\r', '\n':
			return ' '
		case 0:
			return -1
		}
		return r
	}, s)
}

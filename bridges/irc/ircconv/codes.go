// Package ircconv converts message text between Matrix and IRC. It is pure: no I/O, no state.
//
// IRC → Matrix: [ToMatrix] turns mIRC formatting codes (bold \x02, italic \x1d, underline \x1f,
// strikethrough \x1e, monospace \x11, colours \x03NN[,NN] and \x04RRGGBB, reset \x0f) into
// Matrix HTML (<b>, <i>, <u>, <del>, <code>, <font data-mx-color>) and a plain body;
// [DecodeText] makes text from non-UTF-8 networks valid; [ParseCTCP] recognises ACTION and
// other CTCP messages.
//
// Matrix → IRC: [HTMLToIRC] and [PlainToIRC] turn a message into formatted IRC text, and
// [Render] turns that into the trailing parameters of PRIVMSG or NOTICE lines that fit the
// server's 512-byte limit (see [Budget]), splitting at spaces where possible and never inside a
// UTF-8 sequence or a formatting code, carrying formatting over to the next line, and never
// dropping text. How Matrix features appear on IRC (decided here, documented for users):
//
//   - emotes are CTCP ACTION (\x01ACTION text\x01), each line its own ACTION;
//   - notices are NOTICE;
//   - replies are one line made from a template ([DefaultReplyFormat], configurable): the
//     replied-to sender's nick first, a short quote of the replied-to message (its first line,
//     cut to a configurable length), then the reply; reply fallbacks of older clients
//     (<mx-reply>, "> <@user> …" lines) are never repeated, neither in the reply nor in a quote;
//     emotes are not quoted;
//   - edits are sent as a sed-style correction of the words that changed, "s/old/new/"
//     ([EditLine]), or whole prefixed with [EditPrefix] ("* ") when much changed or the
//     previous version is not known; replies are not quoted again on an edit;
//   - long messages (see [IsLong]) become their first line and a link to the full text
//     ([Condense]), or are cut with a marker when there is no link ([Truncate]);
//   - IRC lines that name a Matrix user's puppet nick mention that user ([Mentioned]);
//   - media become a link: [MediaText];
//   - newlines split messages into several lines; empty lines are not sent (IRC cannot send an
//     empty message).
package ircconv

import "unicode/utf8"

// mIRC formatting codes (https://modern.ircdocs.horse/formatting).
const (
	codeBold      = '\x02'
	codeColour    = '\x03'
	codeHexColour = '\x04'
	codeReset     = '\x0f'
	codeMono      = '\x11'
	codeReverse   = '\x16'
	codeItalic    = '\x1d'
	codeStrike    = '\x1e'
	codeUnderline = '\x1f'
)

// state is the formatting in effect at a point of IRC text.
type state struct {
	bold, italic, underline, strike, mono, reverse bool
	// colour is the raw code that set the current colours ("\x0304,02", "\x04ff0000"), or "".
	colour string
	// fg and bg are the mIRC colour numbers in effect, -1 for none; hex colours use fgHex/bgHex.
	fg, bg       int
	fgHex, bgHex string
}

func plainState() state { return state{fg: -1, bg: -1} }

// apply updates s for the formatting code tok (as returned by nextToken).
func (s *state) apply(tok string) {
	switch tok[0] {
	case codeBold:
		s.bold = !s.bold
	case codeItalic:
		s.italic = !s.italic
	case codeUnderline:
		s.underline = !s.underline
	case codeStrike:
		s.strike = !s.strike
	case codeMono:
		s.mono = !s.mono
	case codeReverse:
		s.reverse = !s.reverse
	case codeReset:
		*s = plainState()
	case codeColour:
		fg, bg, hasBG := parseColourCode(tok)
		if fg < 0 {
			s.colour, s.fg, s.bg, s.fgHex, s.bgHex = "", -1, -1, "", ""
			return
		}
		// Numeric and hex colours are not mixed: a background of the other kind is dropped.
		s.fg, s.fgHex, s.bgHex = fg, "", ""
		if hasBG {
			s.bg = bg
		}
		s.colour = colourCode(s)
	case codeHexColour:
		fg, bg := tok[1:], ""
		if fg == "" {
			s.colour, s.fg, s.bg, s.fgHex, s.bgHex = "", -1, -1, "", ""
			return
		}
		if i := indexByte(fg, ','); i >= 0 {
			fg, bg = fg[:i], fg[i+1:]
		}
		s.fgHex, s.fg, s.bg = fg, -1, -1
		if bg != "" {
			s.bgHex = bg
		}
		s.colour = colourCode(s)
	}
}

// colourCode returns the code that sets the colours of s from nothing.
func colourCode(s *state) string {
	code := ""
	switch {
	case s.fg >= 0:
		code = "\x03" + twoDigits(s.fg)
		if s.bg >= 0 {
			code += "," + twoDigits(s.bg)
		}
	case s.fgHex != "":
		code = "\x04" + s.fgHex
		if s.bgHex != "" {
			code += "," + s.bgHex
		}
	}
	return code
}

// codes returns the formatting codes that establish s from plain text.
func (s *state) codes() string {
	var b []byte
	if s.bold {
		b = append(b, codeBold)
	}
	if s.italic {
		b = append(b, codeItalic)
	}
	if s.underline {
		b = append(b, codeUnderline)
	}
	if s.strike {
		b = append(b, codeStrike)
	}
	if s.mono {
		b = append(b, codeMono)
	}
	if s.reverse {
		b = append(b, codeReverse)
	}
	return string(b) + s.colour
}

// nextToken returns the length of the token at the start of s (which must not be empty) and
// whether it is a formatting code. A token is a whole formatting code (with its digits) or one
// UTF-8 sequence (one byte if invalid), so cutting text between tokens never breaks either.
func nextToken(s string) (n int, isCode bool) {
	switch s[0] {
	case codeBold, codeItalic, codeUnderline, codeStrike, codeMono, codeReverse, codeReset:
		return 1, true
	case codeColour:
		n = 1 + countDigits(s[1:], 2)
		if n > 1 && n+1 < len(s) && s[n] == ',' {
			if d := countDigits(s[n+1:], 2); d > 0 {
				n += 1 + d
			}
		}
		return n, true
	case codeHexColour:
		n = 1
		if countHex(s[1:], 6) == 6 {
			n += 6
			if n+1 < len(s) && s[n] == ',' && countHex(s[n+1:], 6) == 6 {
				n += 7
			}
		}
		return n, true
	}
	if s[0] < 0x80 {
		return 1, false
	}
	_, size := utf8.DecodeRuneInString(s)
	return size, false
}

// parseColourCode returns the colours of a \x03 token; fg is -1 for a bare \x03.
func parseColourCode(tok string) (fg, bg int, hasBG bool) {
	fg, bg = -1, -1
	d := countDigits(tok[1:], 2)
	if d == 0 {
		return
	}
	fg = atoi(tok[1 : 1+d])
	if rest := tok[1+d:]; len(rest) > 1 && rest[0] == ',' {
		return fg, atoi(rest[1:]), true
	}
	return fg, -1, false
}

// Strip returns text without its formatting codes: what an IRC user reads.
func Strip(text string) string {
	b := make([]byte, 0, len(text))
	for len(text) > 0 {
		n, isCode := nextToken(text)
		if !isCode {
			b = append(b, text[:n]...)
		}
		text = text[n:]
	}
	return string(b)
}

func countDigits(s string, most int) int {
	n := 0
	for n < len(s) && n < most && s[n] >= '0' && s[n] <= '9' {
		n++
	}
	return n
}

func countHex(s string, most int) int {
	n := 0
	for n < len(s) && n < most && unhex(s[n]) >= 0 {
		n++
	}
	return n
}

func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

func atoi(s string) int {
	n := 0
	for i := 0; i < len(s); i++ {
		n = n*10 + int(s[i]-'0')
	}
	return n
}

func twoDigits(n int) string { return string([]byte{byte('0' + n/10%10), byte('0' + n%10)}) }

func indexByte(s string, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return -1
}

package ircconv

import (
	"fmt"
	"html"
	"strings"
	"unicode/utf8"
)

// palette is the hex value of mIRC colours 0-15. Colours 16-98 (the extended palette) and 99
// (default) are shown without colour.
var palette = [16]string{
	"#ffffff", "#000000", "#00007f", "#009300", "#ff0000", "#7f0000", "#9c009c", "#fc7f00",
	"#ffff00", "#00fc00", "#009393", "#00ffff", "#0000fc", "#ff00ff", "#7f7f7f", "#d2d2d2",
}

// DecodeText returns text from IRC as valid UTF-8. IRC has no fixed encoding; networks that are
// not UTF-8 are mostly Latin-1, so each byte that is not part of a valid UTF-8 sequence is read
// as the Latin-1 character it would be.
func DecodeText(text string) string {
	if utf8.ValidString(text) {
		return text
	}
	var b strings.Builder
	b.Grow(len(text) + 8)
	for len(text) > 0 {
		r, size := utf8.DecodeRuneInString(text)
		if r == utf8.RuneError && size == 1 {
			b.WriteRune(rune(text[0]))
		} else {
			b.WriteString(text[:size])
		}
		text = text[size:]
	}
	return b.String()
}

// ParseCTCP reports whether a PRIVMSG or NOTICE text is a CTCP message and returns its command
// (upper-cased) and argument: "\x01ACTION waves\x01" is ("ACTION", "waves"). The closing \x01 is
// optional, as many clients omit it.
func ParseCTCP(text string) (command, arg string, ok bool) {
	if len(text) < 2 || text[0] != '\x01' {
		return "", "", false
	}
	text = strings.TrimSuffix(text[1:], "\x01")
	command, arg, _ = strings.Cut(text, " ")
	if command == "" {
		return "", "", false
	}
	return strings.ToUpper(command), arg, true
}

// ToMatrix converts IRC text (after [DecodeText]) to a Matrix body: plain is the text without
// formatting codes and without other control characters; formatted is HTML for
// formatted_body, or "" when no formatting applies to any visible text, in which case the
// message should be sent as plain text only.
func ToMatrix(text string) (plain, formatted string) {
	var pb, hb strings.Builder
	st := plainState()
	formattedAny := false
	for len(text) > 0 {
		n, isCode := nextToken(text)
		tok := text[:n]
		text = text[n:]
		if isCode {
			st.apply(tok)
			continue
		}
		if tok[0] < 0x20 && tok[0] != '\t' || tok[0] == 0x7f {
			continue
		}
		// Gather the run of text with this formatting.
		run := tok
		for len(text) > 0 {
			n, isCode := nextToken(text)
			if isCode || text[0] < 0x20 && text[0] != '\t' || text[0] == 0x7f {
				break
			}
			run += text[:n]
			text = text[n:]
		}
		pb.WriteString(run)
		open, close := tags(&st)
		if open != "" {
			formattedAny = true
		}
		hb.WriteString(open)
		hb.WriteString(html.EscapeString(run))
		hb.WriteString(close)
	}
	if !formattedAny {
		return pb.String(), ""
	}
	return pb.String(), hb.String()
}

// tags returns the HTML that opens and closes the formatting of st.
func tags(st *state) (open, close string) {
	var o, c []string
	add := func(on bool, tag string) {
		if on {
			o = append(o, "<"+tag+">")
			c = append([]string{"</" + tag + ">"}, c...)
		}
	}
	add(st.bold, "b")
	add(st.italic, "i")
	add(st.underline, "u")
	add(st.strike, "del")
	add(st.mono, "code")
	fg, bg := colourHex(st.fg, st.fgHex), colourHex(st.bg, st.bgHex)
	if fg != "" || bg != "" {
		attrs := ""
		if fg != "" {
			attrs += fmt.Sprintf(` data-mx-color="%s"`, fg)
		}
		if bg != "" {
			attrs += fmt.Sprintf(` data-mx-bg-color="%s"`, bg)
		}
		o = append(o, "<font"+attrs+">")
		c = append([]string{"</font>"}, c...)
	}
	return strings.Join(o, ""), strings.Join(c, "")
}

func colourHex(n int, hex string) string {
	switch {
	case hex != "":
		return "#" + strings.ToLower(hex)
	case n >= 0 && n < len(palette):
		return palette[n]
	}
	return ""
}

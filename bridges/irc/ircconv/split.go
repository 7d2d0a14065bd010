package ircconv

import (
	"errors"
	"strings"
	"unicode/utf8"
)

// MaxLine is the IRC line limit, including the CRLF (RFC 1459).
const MaxLine = 512

// MinBudget is the smallest text budget [Split] and [Render] accept: room for the longest run
// of formatting codes carried over to a new line plus a few characters.
const MinBudget = 64

// EditPrefix starts the line an edit is sent as when it is sent whole (see [EditLine]).
const EditPrefix = "* "

// Assumed lengths of the user and host parts of our own source, for [ConservativeSource], when
// the server has not told us what it shows: USERLEN is commonly 10, and hostnames are at most
// 63 bytes per label; cloaks are usually shorter.
const (
	assumedUserLen = 10
	assumedHostLen = 63
)

// ErrBudget is returned by [Split] and [Render] when the budget is below [MinBudget]: the
// caller computed it from an absurdly long nick, host or target and should not send.
var ErrBudget = errors.New("ircconv: line budget too small")

// Budget returns how many bytes of text fit in the trailing parameter of one command line as the
// server relays it to others, ":source command target :text\r\n" within [MaxLine]; source is
// our nick!user@host as the server shows it (see [ConservativeSource] when it is not known).
func Budget(source, command, target string) int {
	return MaxLine - len(":"+source+" "+command+" "+target+" :\r\n")
}

// ConservativeSource returns a stand-in for nick's nick!user@host that is at least as long as
// what a server would show, for computing a [Budget] before the real one is known.
func ConservativeSource(nick string) string {
	return nick + "!" + strings.Repeat("u", assumedUserLen) + "@" + strings.Repeat("h", assumedHostLen)
}

// Split cuts IRC text (with formatting codes and newlines) into lines of at most budget bytes.
// Each newline ends a line; a line that is too long is cut after its last space that fits,
// or, if there is none, between two characters. Cuts never fall inside a UTF-8 sequence or a
// formatting code, and the formatting in effect at a cut is repeated at the start of the next
// line (formatting also carries over newlines, as it would in one HTML message). CR and NUL are
// removed first (so "\x03\x000" reads as a colour code); lines without visible text are left
// out. Apart from that, stripping the formatting from the lines and joining them gives back the
// input's stripped text without its newlines.
func Split(text string, budget int) ([]string, error) {
	if budget < MinBudget {
		return nil, ErrBudget
	}
	// Bytewise, so invalid UTF-8 passes through unchanged (Render replaces it before).
	text = crNul.Replace(text)
	sp := splitter{budget: budget, st: plainState()}
	for i, line := range strings.Split(text, "\n") {
		if i > 0 {
			sp.flush()
		}
		for len(line) > 0 {
			n, isCode := nextToken(line)
			sp.add(line[:n], isCode)
			line = line[n:]
		}
	}
	sp.flush()
	return sp.out, nil
}

var crNul = strings.NewReplacer("\r", "", "\x00", "")

type splitter struct {
	budget int
	out    []string

	st      state           // formatting after the last token added
	buf     strings.Builder // the line being built
	visible bool            // whether buf holds any text beyond codes
	// The last place the line could be cut at a space: the length of buf after the space, and
	// the formatting in effect there. cut is 0 when there is none.
	cut   int
	cutSt state
}

func (sp *splitter) add(tok string, isCode bool) {
	for sp.buf.Len()+len(tok) > sp.budget {
		if sp.cut > 0 && sp.softCut(tok) {
			continue
		}
		sp.hardCut(tok)
	}
	sp.buf.WriteString(tok)
	if isCode {
		sp.st.apply(tok)
		return
	}
	sp.visible = true
	if tok == " " || tok == "\t" {
		sp.cut, sp.cutSt = sp.buf.Len(), sp.st
	}
}

// softCut ends the line at the last space and starts the next with the rest, if the rest fits.
func (sp *splitter) softCut(tok string) bool {
	line := sp.buf.String()
	head, tail := line[:sp.cut], line[sp.cut:]
	prefix := sp.cutSt.codes()
	if tail != "" {
		prefix = guard(prefix, tail)
	}
	if len(prefix)+len(tail)+len(tok) > sp.budget {
		sp.cut = 0
		return false
	}
	sp.emit(head, true)
	sp.buf.Reset()
	sp.buf.WriteString(prefix)
	sp.buf.WriteString(tail)
	sp.visible = Strip(tail) != ""
	sp.cut = 0
	return true
}

// hardCut ends the line where it is and starts the next with the formatting in effect.
func (sp *splitter) hardCut(tok string) {
	sp.emit(sp.buf.String(), sp.visible)
	sp.buf.Reset()
	sp.buf.WriteString(guard(sp.st.codes(), tok))
	sp.visible = false
	sp.cut = 0
}

// flush ends the current line (at a newline or the end) and starts the next, keeping the
// formatting.
func (sp *splitter) flush() {
	sp.emit(sp.buf.String(), sp.visible)
	sp.buf.Reset()
	sp.buf.WriteString(sp.st.codes())
	sp.visible = false
	sp.cut = 0
}

func (sp *splitter) emit(line string, visible bool) {
	if visible {
		sp.out = append(sp.out, line)
	}
}

// guard returns prefix, followed by an empty bold toggle if prefix ends in a colour code and
// next starts with a digit or a comma, which would otherwise be read as part of the code.
func guard(prefix, next string) string {
	if prefix == "" || next == "" || !(next[0] >= '0' && next[0] <= '9' || next[0] == ',') {
		return prefix
	}
	if i := strings.LastIndexAny(prefix, "\x03\x04"); i >= 0 {
		return prefix + "\x02\x02"
	}
	return prefix
}

// Kind is the kind of a Matrix message sent to IRC.
type Kind int

const (
	// KindText is an m.text message, sent as PRIVMSG.
	KindText Kind = iota
	// KindNotice is an m.notice, sent as NOTICE.
	KindNotice
	// KindEmote is an m.emote, sent as CTCP ACTION in PRIVMSG.
	KindEmote
)

// Message is a Matrix message ready for IRC.
type Message struct {
	Kind Kind
	// Text is the body as IRC text, from [HTMLToIRC] or [PlainToIRC]; it may hold newlines.
	Text string
	// Reply, if not nil, is the message this one replies to.
	Reply *Reply
	// Edit reports whether the message replaces an earlier one (Text is the new text).
	Edit bool
	// Previous is, for an edit, the IRC text of the version it replaces, or "" if unknown; see
	// [EditLine].
	Previous string
	// EditMaxChange is the share of words an edit may change and still be sent as a correction
	// (see [EditLine]); 0 sends every edit whole.
	EditMaxChange float64
	// ReplyFormat is the template of a reply (see [DefaultReplyFormat]); "" means the default.
	ReplyFormat string
	// ReplyQuoteLen is the longest quote in a reply, in bytes; 0 means [DefaultReplyQuoteLen].
	ReplyQuoteLen int
}

// Reply describes the message a reply answers.
type Reply struct {
	// Nick is the IRC nick of the replied-to message's sender; empty if unknown.
	Nick string
	// Text is the replied-to message's plain text; only an excerpt of its first line is sent.
	Text string
}

// Line is one IRC command to send: Command is "PRIVMSG" or "NOTICE", Text its trailing
// parameter (already wrapped in CTCP for emotes).
type Line struct {
	Command string
	Text    string
}

// Render turns a message into the lines to send, each fitting budget bytes of text (see
// [Budget]; compute it for PRIVMSG, the longest command name used). Control characters other
// than formatting codes and tabs are removed from the text, so it can never start a CTCP or
// inject a command, and invalid UTF-8 is replaced. A reply (not an emote) is formatted with its
// ReplyFormat, an edit with [EditLine]. It returns no lines for a message without visible text
// or an edit that changes no word, and [ErrBudget] if budget is below [MinBudget]. Long
// messages are the caller's to shorten ([IsLong], [Condense], [Truncate]).
func Render(m Message, budget int) ([]Line, error) {
	if budget < MinBudget {
		return nil, ErrBudget
	}
	command := "PRIVMSG"
	if m.Kind == KindNotice {
		command = "NOTICE"
	}
	body := sanitize(m.Text)
	switch {
	case m.Edit:
		line, ok := EditLine(sanitize(m.Previous), body, m.EditMaxChange)
		if !ok {
			return nil, nil
		}
		body = line
	case m.Reply != nil && m.Kind != KindEmote:
		body = formatReply(m.ReplyFormat, m.ReplyQuoteLen, m.Reply, body)
	}
	var out []Line
	if m.Kind == KindEmote {
		lines, err := Split(body, budget-len("\x01ACTION \x01"))
		if err != nil {
			return nil, err
		}
		for _, l := range lines {
			out = append(out, Line{Command: command, Text: "\x01ACTION " + l + "\x01"})
		}
		return out, nil
	}
	lines, err := Split(body, budget)
	if err != nil {
		return nil, err
	}
	for _, l := range lines {
		out = append(out, Line{Command: command, Text: l})
	}
	return out, nil
}

// sanitize makes text safe to send: valid UTF-8, and no control characters other than
// formatting codes, tab and newline (CR, NUL, and \x01, which would start a CTCP, included).
func sanitize(text string) string {
	text = strings.ToValidUTF8(text, "\uFFFD")
	text = strings.ReplaceAll(text, "\r\n", "\n")
	return strings.Map(func(r rune) rune {
		switch r {
		case codeBold, codeColour, codeHexColour, codeReset, codeMono, codeReverse, codeItalic, codeStrike, codeUnderline, '\t', '\n':
			return r
		}
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, text)
}

// PlainToIRC turns a plain Matrix body into IRC text: control characters, including any
// formatting codes a user pasted, are removed, and tabs become spaces.
func PlainToIRC(body string) string {
	body = strings.ToValidUTF8(body, "\uFFFD")
	body = strings.ReplaceAll(body, "\r\n", "\n")
	return strings.Map(func(r rune) rune {
		switch {
		case r == '\n':
			return r
		case r == '\t':
			return ' '
		case r < 0x20 || r == 0x7f:
			return -1
		}
		return r
	}, body)
}

// MediaText returns the IRC text for a media message: its name (or caption) and its URL, or
// just the URL if there is no name or the name is the URL.
func MediaText(name, url string) string {
	name = strings.TrimSpace(PlainToIRC(name))
	if name == "" || name == url {
		return url
	}
	return name + ": " + url
}

// truncateUTF8 returns the longest prefix of s of at most n bytes that does not cut a UTF-8
// sequence.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

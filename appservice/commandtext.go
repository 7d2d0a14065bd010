package appservice

import (
	"strings"
	"unicode"

	"golang.org/x/net/html"
	"maunium.net/go/mautrix/event"
)

// This file holds the one definition of "this message carries a secret". The dispatcher uses it
// to withhold messages from bridges, the bot to redact them, and bridges (through
// [Host.CarriesSecret]) as a second line of defence before they relay anything. A secret is
// whatever a Sensitive command takes as arguments, so the question is whether any text a client
// may show for the message parses as a Sensitive command, or a likely typo of one.

// maxCommandLines bounds how many lines of one text are looked at as possible commands. Matrix
// events are at most 64 KiB, so this only bounds the work for messages of many short lines.
const maxCommandLines = 4096

// messageTexts returns the texts a client may show for content, raw and untrimmed: the body, the
// formatted body as plain text (without its <mx-reply> block), and for an edit the same two of
// m.new_content. Media count by their body, which is the caption or the file name.
func messageTexts(content *event.MessageEventContent) []string {
	texts := make([]string, 0, 4)
	add := func(c *event.MessageEventContent) {
		if c == nil {
			return
		}
		if c.Body != "" {
			texts = append(texts, c.Body)
		}
		if c.FormattedBody != "" {
			// Clients render formatted_body whatever "format" says; treat it as HTML either way.
			texts = append(texts, htmlText(c.FormattedBody))
		}
	}
	add(content)
	if content.NewContent != nil {
		add(content.NewContent)
	}
	return texts
}

// htmlText returns the text of a formatted body as a reader sees it: the text of every element
// but the reply fallback (<mx-reply>), with a line break for every block element and <br>, and
// no markup. Unlike a conversion to Markdown it adds no marks, so "<b>!irc</b> login" reads as
// "!irc login".
func htmlText(formatted string) string {
	var sb strings.Builder
	z := html.NewTokenizer(strings.NewReader(formatted))
	inReply := 0
	for {
		tt := z.Next()
		switch tt {
		case html.ErrorToken:
			return sb.String()
		case html.TextToken:
			if inReply == 0 {
				sb.Write(z.Text())
			}
		case html.StartTagToken, html.EndTagToken, html.SelfClosingTagToken:
			name, _ := z.TagName()
			switch string(name) {
			case "mx-reply":
				if tt == html.StartTagToken {
					inReply++
				} else if tt == html.EndTagToken && inReply > 0 {
					inReply--
				}
			case "br", "p", "div", "li", "ul", "ol", "pre", "blockquote", "tr", "table",
				"h1", "h2", "h3", "h4", "h5", "h6", "hr", "details", "summary":
				sb.WriteByte('\n')
			}
		}
	}
}

// commandCandidates returns every normalised text of content that may be read as a command:
// each line of each of [messageTexts], so that a reply's "> <@user> …" fallback lines, an
// edit's "* " mark and any quoted or preceding lines do not hide a command below them. A reply
// fallback's quote of a message that carried a secret carries it too, so a quoted line counts
// also without its "<@sender>" tag. Each line
// is normalised by [normalizeCommandText]; a line with format characters (zero-width spaces and
// joiners) in it is added both with them read as spaces and with them removed, since either
// may be what the sender meant.
func commandCandidates(content *event.MessageEventContent) []string {
	var out []string
	for _, text := range messageTexts(content) {
		lines := strings.SplitN(text, "\n", maxCommandLines+1)
		var nonEmpty []string
		for i, line := range lines {
			if i == maxCommandLines {
				break
			}
			variants := []string{normalizeCommandText(line, ' ')}
			if strings.IndexFunc(line, isFormatChar) >= 0 {
				variants = append(variants, normalizeCommandText(line, -1))
			}
			if variants[0] != "" {
				nonEmpty = append(nonEmpty, variants[0])
			}
			for _, n := range variants {
				if n == "" {
					continue
				}
				out = append(out, n)
				// A reply fallback quotes its original as "> <@sender:server> text".
				if after, ok := cutSenderTag(n); ok {
					out = append(out, after)
				}
			}
		}
		// The bot reads a line break as a space ("!irc\nlogin net acct pw" runs irc login),
		// while a bridge relays each line on its own, so a command split over lines must count
		// too: each line joined with the next few non-empty ones. The window is bounded so a
		// long message costs linear time.
		for i := range nonEmpty {
			if end := min(i+joinedCommandLines, len(nonEmpty)); end > i+1 {
				out = append(out, strings.Join(nonEmpty[i:end], " "))
			}
		}
	}
	return out
}

// joinedCommandLines is how many consecutive non-empty lines [commandCandidates] joins into one
// candidate: a command word, a subcommand and its arguments, one per line.
const joinedCommandLines = 10

// cutSenderTag returns the rest of a normalised line that starts with a sender's tag
// ("<@bob:example.org> …", as reply fallbacks quote), normalised again.
func cutSenderTag(line string) (string, bool) {
	if !strings.HasPrefix(line, "<@") {
		return "", false
	}
	end := strings.IndexByte(line, '>')
	if end < 0 {
		return "", false
	}
	rest := normalizeCommandText(line[end+1:], ' ')
	return rest, rest != ""
}

// normalizeCommandText prepares one line of a message for command parsing: every Unicode white
// space (no-break spaces, ideographic spaces, …) becomes an ASCII space; format characters
// (zero-width spaces and joiners, byte order marks, soft hyphens, direction marks) become
// formatAs, or are dropped if formatAs is negative; and leading and trailing spaces are trimmed
// together with the marks a quote, an edit or Markdown put in front of a command ("> ", "* ",
// "`", "_", "~", "|"). Case is left as it is: parseCommand compares command words and the
// prefix without case.
func normalizeCommandText(line string, formatAs rune) string {
	mapped := strings.Map(func(r rune) rune {
		switch {
		case isFormatChar(r):
			return formatAs
		case unicode.IsSpace(r):
			return ' '
		}
		return r
	}, line)
	return strings.TrimFunc(mapped, isCommandMark)
}

// isFormatChar reports whether r is an invisible format character (Unicode category Cf), such as
// U+200B ZERO WIDTH SPACE or U+FEFF.
func isFormatChar(r rune) bool { return unicode.Is(unicode.Cf, r) }

// isCommandMark reports whether r may surround a command without being part of it: white space,
// and the marks of quotes, edits and inline Markdown.
func isCommandMark(r rune) bool {
	switch r {
	case ' ', '>', '*', '`', '_', '~', '|':
		return true
	}
	return unicode.IsSpace(r) || isFormatChar(r)
}

// carriesSecret reports whether evt is a room message any of whose candidate texts (see
// [commandCandidates]) parses as a Sensitive command of reg or a likely typo of one, with or
// without prefix, in any msgtype and whatever it relates to.
func carriesSecret(reg *commandRegistry, prefix string, evt *event.Event) bool {
	if evt == nil || evt.Type != event.EventMessage || reg == nil {
		return false
	}
	content, ok := evt.Content.Parsed.(*event.MessageEventContent)
	if !ok {
		// The dispatcher hands over events whose content did not parse; read what it can.
		if evt.Content.Parsed != nil || evt.Content.VeryRaw == nil {
			return false
		}
		if err := evt.Content.ParseRaw(evt.Type); err != nil {
			return false
		}
		if content, ok = evt.Content.Parsed.(*event.MessageEventContent); !ok {
			return false
		}
	}
	for _, text := range commandCandidates(content) {
		if textIsSensitive(reg, prefix, text) {
			return true
		}
	}
	return false
}

// textIsSensitive reports whether one normalised text parses as a Sensitive command of reg, or
// a likely typo of one.
func textIsSensitive(reg *commandRegistry, prefix, text string) bool {
	pc, ok := parseCommand(text, prefix, true, reg.isGroup)
	return ok && reg.sensitive(pc)
}

// SecretDetector decides whether a Matrix message carries a secret: whether any text a client
// may show for it (its body and formatted body, without reply fallbacks, and an edit's new
// content, line by line, ignoring white space, invisible characters and case) parses as a
// Sensitive [Command], or a likely typo of one, with or without the command prefix. It is the
// one definition the core's dispatcher and bot use; [Host.CarriesSecret] answers with it for
// the running service's commands. Create it with [NewSecretDetector]. It is safe for concurrent
// use.
type SecretDetector struct {
	prefix string
	reg    *commandRegistry
}

// NewSecretDetector returns a SecretDetector for the given core commands and command groups
// (bridge ID to the bridge's commands), with the command prefix used in group rooms ("" for the
// default "!"). Commands that could not be registered are ignored, as the bot ignores them.
func NewSecretDetector(prefix string, core []*Command, groups map[string][]*Command) *SecretDetector {
	if prefix == "" {
		prefix = defaultCommandPrefix
	}
	reg, _ := newCommandRegistry(core, groups)
	return &SecretDetector{prefix: prefix, reg: reg}
}

// CarriesSecret reports whether evt is an m.room.message that carries a secret (see
// [SecretDetector]). Any other event, or nil, does not.
func (sd *SecretDetector) CarriesSecret(evt *event.Event) bool {
	return carriesSecret(sd.reg, sd.prefix, evt)
}

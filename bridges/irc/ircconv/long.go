package ircconv

import (
	"strings"
)

// Defaults of when a message counts as long (see [IsLong]).
const (
	// DefaultLongLines is the default largest number of IRC lines a message is sent as.
	DefaultLongLines = 3
	// DefaultLongBytes is the default largest size of a message's text sent to IRC, in bytes.
	DefaultLongBytes = 1024
)

// TruncatedMarker ends the last line of a long message that was cut because there is no link to
// its full text.
const TruncatedMarker = " [message truncated]"

// IsLong reports whether rendered lines make a long message: more than maxLines lines, or more
// than maxBytes bytes of text in all. A limit of 0 or less is not checked.
func IsLong(lines []Line, maxLines, maxBytes int) bool {
	if maxLines > 0 && len(lines) > maxLines {
		return true
	}
	if maxBytes > 0 {
		total := 0
		for _, l := range lines {
			total += len(l.Text)
		}
		return total > maxBytes
	}
	return false
}

// Condense replaces a long message's lines with one: its first line, cut if needed, followed by
// link (the URL of the full text), as "first line… (full message: URL)". Emotes stay emotes.
// The line fits budget (the same budget the lines were rendered for), or is cut until it does;
// a link that alone leaves no room for text is sent without any.
func Condense(lines []Line, budget int, link string) []Line {
	if len(lines) == 0 {
		return nil
	}
	first := lines[0]
	text, action := unwrapAction(first.Text)
	if action {
		budget -= len("\x01ACTION \x01")
	}
	suffix := "\x0f… (full message: " + link + ")"
	room := budget - len(suffix)
	text = cutLine(text, room)
	out := strings.TrimRight(text, " ") + suffix
	if text == "" {
		out = "(full message: " + link + ")"
	}
	if action {
		out = "\x01ACTION " + out + "\x01"
	}
	return []Line{{Command: first.Command, Text: out}}
}

// Truncate keeps a long message's first maxLines lines (at least one) and ends the last with
// [TruncatedMarker], cutting it to make room within budget.
func Truncate(lines []Line, budget, maxLines int) []Line {
	if maxLines < 1 {
		maxLines = 1
	}
	if len(lines) <= maxLines {
		lines = append([]Line(nil), lines...)
	} else {
		lines = append([]Line(nil), lines[:maxLines]...)
	}
	last := &lines[len(lines)-1]
	text, action := unwrapAction(last.Text)
	if action {
		budget -= len("\x01ACTION \x01")
	}
	text = strings.TrimRight(cutLine(text, budget-len("\x0f"+TruncatedMarker)), " ") + "\x0f" + TruncatedMarker
	if action {
		text = "\x01ACTION " + text + "\x01"
	}
	last.Text = text
	return lines
}

// unwrapAction returns the text inside a CTCP ACTION, and whether text was one.
func unwrapAction(text string) (string, bool) {
	if inner, ok := strings.CutPrefix(text, "\x01ACTION "); ok {
		return strings.TrimSuffix(inner, "\x01"), true
	}
	return text, false
}

// cutLine returns text cut to at most n bytes, at its last space if there is one in the second
// half, never inside a UTF-8 sequence or a formatting code.
func cutLine(text string, n int) string {
	if n <= 0 {
		return ""
	}
	if len(text) <= n {
		return text
	}
	// Split cuts at spaces and formatting codes; its first line is the longest prefix that fits.
	parts, err := Split(text, max(n, MinBudget))
	if err != nil || len(parts) == 0 {
		return ""
	}
	head := parts[0]
	if len(head) > n {
		head = truncateUTF8(Strip(head), n)
	}
	return head
}

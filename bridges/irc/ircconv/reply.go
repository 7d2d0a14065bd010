package ircconv

import (
	"strings"
)

// DefaultReplyFormat is the reply format used when none is configured: the replied-to sender's
// nick first (IRC clients highlight a line that starts with one's nick), a short quote, then the
// reply, all on one line: `bob: "is it ready?" <- yes, merged`.
const DefaultReplyFormat = `{nick}: "{quote}" <- {text}`

// DefaultReplyQuoteLen is the default longest quote of the replied-to message in a reply, in
// bytes before the ellipsis.
const DefaultReplyQuoteLen = 40

// ValidReplyFormat reports whether format can be used as a reply format: it must contain {text},
// so that the reply itself is never lost.
func ValidReplyFormat(format string) bool {
	return strings.Contains(format, "{text}")
}

// formatReply fills a reply format: {nick} is the replied-to sender's nick, {quote} an excerpt
// of the first line of the replied-to message, at most quoteLen bytes and ended with "…" when
// cut, and {text} the reply. A quote without visible text becomes "…". The nick and quote are
// plain (formatting codes removed) and single-line; text keeps its formatting and newlines.
func formatReply(format string, quoteLen int, r *Reply, text string) string {
	if !ValidReplyFormat(format) {
		format = DefaultReplyFormat
	}
	if quoteLen <= 0 {
		quoteLen = DefaultReplyQuoteLen
	}
	nick := strings.Map(func(r rune) rune {
		if r == '\n' || r == ' ' || r == '\t' {
			return -1
		}
		return r
	}, Strip(sanitize(r.Nick)))
	quote := quoteExcerpt(r.Text, quoteLen)
	if quote == "" {
		quote = "…"
	}
	// One pass, so that a nick or quote containing "{text}" is not expanded again.
	return strings.NewReplacer("{nick}", nick, "{quote}", quote, "{text}", text).Replace(format)
}

// quoteExcerpt returns the first line of text with visible content, without formatting and
// without a reply fallback, cut to at most n bytes plus "…" when anything was left out.
func quoteExcerpt(text string, n int) string {
	text = Strip(sanitize(StripReplyFallback(text)))
	text = strings.TrimLeft(text, " \t\n")
	excerpt, rest, more := strings.Cut(text, "\n")
	excerpt = strings.Join(strings.Fields(excerpt), " ")
	more = more && strings.TrimSpace(rest) != ""
	if len(excerpt) > n {
		excerpt, more = strings.TrimRight(truncateUTF8(excerpt, n), " "), true
	}
	if more && excerpt != "" {
		excerpt += "…"
	}
	return excerpt
}

// StripReplyFallback removes the reply fallback that older Matrix clients put at the start of a
// reply's plain body: lines starting with "> " (the first one "> <@user:server> …" or
// "> * <@user:server> …"), followed by an empty line. A body that does not start like that is
// returned unchanged, so quotes a user wrote themselves stay.
func StripReplyFallback(body string) string {
	if !strings.HasPrefix(body, "> <") && !strings.HasPrefix(body, "> * <") {
		return body
	}
	rest := body
	for strings.HasPrefix(rest, ">") {
		_, after, found := strings.Cut(rest, "\n")
		if !found {
			// Nothing but the fallback: there is no reply text.
			return ""
		}
		rest = after
	}
	if r, ok := strings.CutPrefix(rest, "\n"); ok {
		return r
	}
	if r, ok := strings.CutPrefix(rest, "\r\n"); ok {
		return r
	}
	return rest
}

package webhookmsg

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzParsePayload feeds arbitrary bodies and content types through Parse and Content: nothing
// may panic, every error must be an *Error with a 4xx status, and whatever reaches Matrix must be
// valid UTF-8 with only allowlisted HTML.
//
//	go test ./bridges/webhook/webhookmsg -run '^$' -fuzz FuzzParsePayload -fuzztime 1m
func FuzzParsePayload(f *testing.F) {
	seeds := []struct{ contentType, body string }{
		{"text/plain", "hello"},
		{"application/json", `{"text": "hi", "html": "<b>hi</b><script>x</script>", "username": "u", "avatar_url": "mxc://a/b"}`},
		{"application/json", `{"html": "<a href=\"javascript:x\">l</a><svg><foreignObject><p>x</p></foreignObject></svg>"}`},
		{"", `{"text": 1}`},
		{"", "\xff"},
		{"application/x-www-form-urlencoded", "payload=%7B%22text%22%3A%22a%22%7D"},
		{"text/plain; charset", "x"},
		{"application/json", `{"html": "<table><td><ol start=9999999><li><code class='language-x'>` + strings.Repeat("<i>", 100) + `</code>"}`},
	}
	for _, seed := range seeds {
		f.Add(seed.contentType, []byte(seed.body))
	}
	f.Fuzz(func(t *testing.T, contentType string, body []byte) {
		p, err := Parse(contentType, body)
		if err != nil {
			var perr *Error
			if !errors.As(err, &perr) || perr.Status < 400 || perr.Status > 499 || perr.Reason == "" {
				t.Fatalf("Parse error %v is not an *Error with a 4xx status and a reason", err)
			}
			return
		}
		if p.Text == "" && strings.TrimSpace(p.HTML) == "" {
			t.Fatalf("Parse accepted an empty message: %+v", p)
		}
		content := Content(p)
		if !utf8.ValidString(content.Body) || !utf8.ValidString(content.FormattedBody) {
			t.Fatalf("Content is not valid UTF-8: %q / %q", content.Body, content.FormattedBody)
		}
		if strings.TrimSpace(content.Body) == "" {
			t.Fatalf("Content has an empty body")
		}
		checkSanitized(t, content.FormattedBody)
	})
}

package webhookmsg

import (
	"errors"
	"strings"
	"testing"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name        string
		contentType string
		body        string
		want        Payload
		wantStatus  int // 0: no error
	}{
		{name: "plain text", contentType: "text/plain", body: "hello\n", want: Payload{Text: "hello"}},
		{name: "plain text with charset", contentType: "text/plain; charset=UTF-8", body: "héllo", want: Payload{Text: "héllo"}},
		{name: "plain text, other charset", contentType: "text/plain; charset=latin1", body: "x", wantStatus: 415},
		{name: "plain text, invalid UTF-8", contentType: "text/plain", body: "\xff\xfe", wantStatus: 400},
		{name: "plain text, empty", contentType: "text/plain", body: "  \n", wantStatus: 400},
		{name: "json text", contentType: "application/json", body: `{"text": "hi"}`, want: Payload{Text: "hi"}},
		{name: "json with charset", contentType: "application/json; charset=utf-8", body: `{"text": "hi"}`, want: Payload{Text: "hi"}},
		{name: "json vendor type", contentType: "application/vnd.example+json", body: `{"text": "hi"}`, want: Payload{Text: "hi"}},
		{
			name: "json all fields", contentType: "application/json",
			body: `{"text": "hi", "html": "<b>hi</b>", "username": "CI bot", "avatar_url": "mxc://example.org/abc"}`,
			want: Payload{Text: "hi", HTML: "<b>hi</b>", Username: "CI bot", AvatarURL: id.ContentURI{Homeserver: "example.org", FileID: "abc"}},
		},
		{name: "json html only", contentType: "application/json", body: `{"html": "<i>x</i>"}`, want: Payload{HTML: "<i>x</i>"}},
		{name: "json html sanitized", contentType: "application/json", body: `{"text": "x", "html": "<script>alert(1)</script><a href=\"javascript:alert(1)\" onclick=\"x\">y</a>"}`, want: Payload{Text: "x", HTML: "<a>y</a>"}},
		{name: "json html sanitized to nothing", contentType: "application/json", body: `{"text": "x", "html": "<script>alert(1)</script>"}`, want: Payload{Text: "x"}},
		{name: "json only html that sanitizes to nothing", contentType: "application/json", body: `{"html": "<style>p{}</style>"}`, wantStatus: 400},
		{name: "json html too deep", contentType: "application/json", body: `{"text": "x", "html": "` + strings.Repeat("<b>", 600) + `"}`, wantStatus: 400},
		{name: "json non-mxc avatar ignored", contentType: "application/json", body: `{"text": "a", "avatar_url": "https://evil.example/a.png"}`, want: Payload{Text: "a"}},
		{name: "json unknown fields ignored", contentType: "application/json", body: `{"text": "a", "channel": "#x", "attachments": [1]}`, want: Payload{Text: "a"}},
		{name: "json nulls", contentType: "application/json", body: `{"text": "a", "html": null, "username": null}`, want: Payload{Text: "a"}},
		{name: "json username cleaned", contentType: "application/json", body: `{"text": "a", "username": " A\u0000\u202eB \t C "}`, want: Payload{Text: "a", Username: "AB C"}},
		{name: "json username cut", contentType: "application/json", body: `{"text": "a", "username": "` + strings.Repeat("x", 150) + `"}`, want: Payload{Text: "a", Username: strings.Repeat("x", MaxUsernameLength)}},
		{name: "json empty text", contentType: "application/json", body: `{"text": "  "}`, wantStatus: 400},
		{name: "json empty object", contentType: "application/json", body: `{}`, wantStatus: 400},
		{name: "json text not a string", contentType: "application/json", body: `{"text": 5}`, wantStatus: 400},
		{name: "json username not a string", contentType: "application/json", body: `{"text": "a", "username": {}}`, wantStatus: 400},
		{name: "json array", contentType: "application/json", body: `["a"]`, wantStatus: 400},
		{name: "json string", contentType: "application/json", body: `"a"`, wantStatus: 400},
		{name: "json malformed", contentType: "application/json", body: `{"text": "a"`, wantStatus: 400},
		{name: "json trailing data", contentType: "application/json", body: `{"text": "a"} {"text": "b"}`, wantStatus: 400},
		{name: "json trailing space ok", contentType: "application/json", body: "{\"text\": \"a\"}\n", want: Payload{Text: "a"}},
		{name: "no content type, json", body: ` {"text": "a"}`, want: Payload{Text: "a"}},
		{name: "no content type, text", body: `plain words`, want: Payload{Text: "plain words"}},
		{name: "form with payload", contentType: "application/x-www-form-urlencoded", body: `payload=%7B%22text%22%3A%22a%22%7D`, want: Payload{Text: "a"}},
		{name: "form without payload", contentType: "application/x-www-form-urlencoded", body: `hello`, wantStatus: 415},
		{name: "unsupported type", contentType: "image/png", body: "x", wantStatus: 415},
		{name: "malformed content type", contentType: "text/plain; charset", body: "x", wantStatus: 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.contentType, []byte(tt.body))
			if tt.wantStatus != 0 {
				var perr *Error
				if !errors.As(err, &perr) || perr.Status != tt.wantStatus {
					t.Fatalf("Parse(%q, %q) = %+v, %v; want an *Error with status %d", tt.contentType, tt.body, got, err, tt.wantStatus)
				}
				if strings.Contains(perr.Reason, tt.body) && len(tt.body) > 3 {
					t.Errorf("error reason %q quotes the payload", perr.Reason)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q, %q) = %v, want no error", tt.contentType, tt.body, err)
			}
			if *got != tt.want {
				t.Errorf("Parse(%q, %q) = %+v, want %+v", tt.contentType, tt.body, *got, tt.want)
			}
		})
	}
}

func TestContent(t *testing.T) {
	tests := []struct {
		name          string
		in            Payload
		wantBody      string
		wantFormatted string
	}{
		{name: "text only", in: Payload{Text: "hello"}, wantBody: "hello"},
		{name: "text and html", in: Payload{Text: "hello", HTML: "<b>hello</b>"}, wantBody: "hello", wantFormatted: "<b>hello</b>"},
		{name: "html only", in: Payload{HTML: "<p>one <b>two</b></p>"}, wantBody: "one **two**", wantFormatted: "<p>one <b>two</b></p>"},
		{name: "html without text", in: Payload{HTML: `<br>`}, wantBody: "(empty message)", wantFormatted: "<br>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Content(&tt.in)
			if got.MsgType != event.MsgText {
				t.Errorf("msgtype = %q, want m.text", got.MsgType)
			}
			if got.Body != tt.wantBody || got.FormattedBody != tt.wantFormatted {
				t.Errorf("Content(%+v) = body %q, formatted %q; want %q, %q", tt.in, got.Body, got.FormattedBody, tt.wantBody, tt.wantFormatted)
			}
			if (got.FormattedBody != "") != (got.Format == event.FormatHTML) {
				t.Errorf("format = %q with formatted body %q", got.Format, got.FormattedBody)
			}
			if got.Mentions == nil || got.Mentions.Room || len(got.Mentions.UserIDs) > 0 {
				t.Errorf("mentions = %+v, want set and empty", got.Mentions)
			}
		})
	}
}

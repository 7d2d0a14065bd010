// Package webhookmsg converts what callers POST to inbound webhooks into Matrix message content,
// and sanitizes the HTML they may send. It is pure: no I/O, safe for concurrent use, and every
// function must cope with arbitrary input without panicking (see FuzzParsePayload).
package webhookmsg

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/url"
	"strings"
	"unicode"
	"unicode/utf8"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/format"
	"maunium.net/go/mautrix/id"
)

// MaxUsernameLength is the longest username kept, in characters; longer ones are cut.
const MaxUsernameLength = 100

// Payload is one message posted to an inbound webhook, after parsing and validation.
type Payload struct {
	// Text is the plain-text message; it may be empty when HTML is set.
	Text string
	// HTML is the formatted message, already reduced by [SanitizeHTML]; empty if none (or if
	// nothing survived sanitizing).
	HTML string
	// Username is the name the message should appear under; empty means the hook's default.
	// Control characters are removed and it is at most MaxUsernameLength characters.
	Username string
	// AvatarURL is the avatar the message should appear with; the zero value means none. Only
	// mxc:// URIs are kept: fetching other URLs would let callers make the server fetch
	// arbitrary addresses.
	AvatarURL id.ContentURI
}

// Error is a problem with a payload that the caller should be told about: the HTTP status to
// answer with and a reason safe to show (it never quotes the payload).
type Error struct {
	Status int
	Reason string
}

func (e *Error) Error() string { return e.Reason }

// HTTP statuses used by Error; kept here so the package needs no net/http.
const (
	statusBadRequest           = 400
	statusUnsupportedMediaType = 415
)

func badRequest(reason string) *Error {
	return &Error{Status: statusBadRequest, Reason: reason}
}

// jsonPayload is the JSON form of a payload. Unknown fields are ignored, so that payloads
// written for other services (Slack-style "channel", "icon_emoji") still post their text.
type jsonPayload struct {
	Text      json.RawMessage `json:"text"`
	HTML      json.RawMessage `json:"html"`
	Username  json.RawMessage `json:"username"`
	AvatarURL json.RawMessage `json:"avatar_url"`
}

// Parse parses a request body according to its Content-Type header:
//
//   - text/plain (UTF-8): the body is the message text.
//   - application/json, or any */*+json: an object with "text" and optional "html",
//     "username" and "avatar_url" strings; at least one of text and html must be non-empty.
//   - application/x-www-form-urlencoded with a "payload" field holding such a JSON object.
//   - no Content-Type: JSON if the body starts with "{", else text.
//
// Any other type is an [*Error] with status 415; a malformed body is an [*Error] with status
// 400. Every error Parse returns is an [*Error].
func Parse(contentType string, body []byte) (*Payload, error) {
	mediaType := ""
	params := map[string]string{}
	if strings.TrimSpace(contentType) != "" {
		var err error
		mediaType, params, err = mime.ParseMediaType(contentType)
		if err != nil {
			return nil, badRequest("the Content-Type header is malformed")
		}
	} else if trimmed := bytes.TrimLeftFunc(body, unicode.IsSpace); len(trimmed) > 0 && trimmed[0] == '{' {
		mediaType = "application/json"
	} else {
		mediaType = "text/plain"
	}
	switch {
	case mediaType == "text/plain":
		if charset := strings.ToLower(params["charset"]); charset != "" && charset != "utf-8" && charset != "us-ascii" {
			return nil, &Error{Status: statusUnsupportedMediaType, Reason: "text must be UTF-8 (charset=utf-8)"}
		}
		return parseText(body)
	case mediaType == "application/json" || strings.HasSuffix(mediaType, "+json"):
		return parseJSON(body)
	case mediaType == "application/x-www-form-urlencoded":
		form, err := url.ParseQuery(string(body))
		if err != nil || !form.Has("payload") {
			return nil, &Error{Status: statusUnsupportedMediaType,
				Reason: "form bodies need a payload field holding JSON; or send text/plain or application/json"}
		}
		return parseJSON([]byte(form.Get("payload")))
	default:
		return nil, &Error{Status: statusUnsupportedMediaType, Reason: "send text/plain or application/json"}
	}
}

func parseText(body []byte) (*Payload, error) {
	if !utf8.Valid(body) {
		return nil, badRequest("the body is not valid UTF-8")
	}
	text := strings.TrimSpace(string(body))
	if text == "" {
		return nil, badRequest("the message is empty")
	}
	return &Payload{Text: text}, nil
}

func parseJSON(body []byte) (*Payload, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	var raw jsonPayload
	if err := dec.Decode(&raw); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field == "" {
			return nil, badRequest("the body must be a JSON object")
		}
		return nil, badRequest("the body is not valid JSON")
	}
	if rest := body[dec.InputOffset():]; len(bytes.TrimSpace(rest)) > 0 {
		return nil, badRequest("the body must hold a single JSON object")
	}
	var p Payload
	var err error
	if p.Text, err = stringField("text", raw.Text); err != nil {
		return nil, err
	}
	if p.HTML, err = stringField("html", raw.HTML); err != nil {
		return nil, err
	}
	username, err := stringField("username", raw.Username)
	if err != nil {
		return nil, err
	}
	p.Username = cleanUsername(username)
	avatar, err := stringField("avatar_url", raw.AvatarURL)
	if err != nil {
		return nil, err
	}
	if uri, err := id.ParseContentURI(strings.TrimSpace(avatar)); err == nil && uri.IsValid() {
		p.AvatarURL = uri
	}
	p.Text = strings.TrimSpace(p.Text)
	if p.HTML != "" {
		if p.HTML, err = SanitizeHTML(p.HTML); err != nil {
			return nil, badRequest(`"html" is nested too deeply`)
		}
	}
	if p.Text == "" && p.HTML == "" {
		return nil, badRequest(`the message is empty: set "text" (or "html")`)
	}
	return &p, nil
}

// stringField decodes a JSON string or null; anything else is an error naming the field.
func stringField(name string, raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", badRequest(fmt.Sprintf("%q must be a string", name))
	}
	return s, nil
}

// cleanUsername removes control and format characters (which could reorder or hide text in
// clients), collapses white space and cuts the name to MaxUsernameLength characters.
func cleanUsername(name string) string {
	var sb strings.Builder
	n := 0
	for _, r := range strings.Join(strings.Fields(name), " ") {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || r == utf8.RuneError {
			continue
		}
		if n == MaxUsernameLength {
			break
		}
		sb.WriteRune(r)
		n++
	}
	return strings.TrimSpace(sb.String())
}

// Content returns the Matrix message content for p, a payload [Parse] returned: an m.text whose
// body is p.Text (or, for an HTML-only payload, the text of the HTML) and whose formatted_body
// is p.HTML, which Parse has sanitized. Mentions are set and empty, so a webhook never pings
// anyone (not even with @room) in clients that honour m.mentions.
func Content(p *Payload) *event.MessageEventContent {
	content := &event.MessageEventContent{
		MsgType:  event.MsgText,
		Body:     p.Text,
		Mentions: &event.Mentions{},
	}
	if p.HTML != "" {
		content.Format = event.FormatHTML
		content.FormattedBody = p.HTML
		if content.Body == "" {
			content.Body = format.HTMLToText(p.HTML)
		}
	}
	if strings.TrimSpace(content.Body) == "" {
		// HTML without any text (only a rule, say): say so rather than post an empty message.
		content.Body = "(empty message)"
	}
	return content
}

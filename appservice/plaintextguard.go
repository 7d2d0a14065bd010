package appservice

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// PlaintextRefusedCode is the errcode of the error a send refused by the plaintext guard (see
// [GuardPlaintext]) returns. It never comes from a homeserver: the guard answers in its place.
const PlaintextRefusedCode = "COM.GITHUB.CUSTODIAN_MATRIX.PLAINTEXT_REFUSED"

// ErrPlaintextRefused matches (with errors.Is) the error of a send the plaintext guard refused:
// an event that is not m.room.encrypted, into a room the state cache knows as encrypted or
// when the state cache could not be read. It names neither the room nor the content.
var ErrPlaintextRefused = mautrix.RespError{ErrCode: PlaintextRefusedCode}

// plaintextRefusedBody is the guard's answer; its message names no room, event or content.
var plaintextRefusedBody = mustJSON(map[string]string{
	"errcode": PlaintextRefusedCode,
	"error":   "refused to send an unencrypted event into a room the state cache knows as encrypted (or could not tell); nothing was sent",
})

func mustJSON(v any) []byte {
	data, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return data
}

// plaintextGuard is the http.RoundTripper of [GuardPlaintext].
type plaintextGuard struct {
	base  http.RoundTripper
	store mautrix.StateStore
}

// GuardPlaintext wraps base (http.DefaultTransport when nil) so that no client sharing the
// resulting transport can put plaintext into an encrypted room, whatever path it sends by: a
// PUT to /_matrix/client/{version}/rooms/{roomID}/send/{type}/{txnID} whose type is not
// m.room.encrypted, into a room store (the state cache) records as encrypted, never leaves the
// process. It is answered in the homeserver's place with HTTP 400 and errcode
// [PlaintextRefusedCode] (so mautrix neither retries it nor takes it for a network failure);
// errors.Is(err, [ErrPlaintextRefused]) matches what the send returns. Reactions are refused
// too: they are encrypted in an encrypted room. A send is refused as well when store fails to
// answer, since the room may be encrypted. State events (/state), redactions (/redact) and
// every other request pass untouched; the guard makes no request of its own. The core's
// welcome without crypto, which holds nothing private, is the one send let through (see
// allowPlaintext). A client with Crypto set encrypts before sending into a room the state cache
// knows as encrypted, so the guard stops only sends without encryption: a client without the
// olm machine (encryption off, or its set-up failed), a reaction through mautrix's
// SendMessageEvent, or a send that asked not to be encrypted.
// Each send costs one state-store read; other requests cost none.
func GuardPlaintext(base http.RoundTripper, store mautrix.StateStore) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return &plaintextGuard{base: base, store: store}
}

// RoundTrip implements http.RoundTripper.
func (g *plaintextGuard) RoundTrip(req *http.Request) (*http.Response, error) {
	if allowed, _ := req.Context().Value(plaintextAllowedKey{}).(bool); allowed {
		return g.base.RoundTrip(req)
	}
	if req.Method == http.MethodPut && g.store != nil {
		if roomID, evtType, ok := parseSendPath(req.URL); ok && evtType != event.EventEncrypted.Type {
			// A failed lookup refuses too: the room may be encrypted.
			if encrypted, err := g.store.IsEncrypted(req.Context(), roomID); err != nil || encrypted {
				if req.Body != nil {
					_ = req.Body.Close()
				}
				return refusedResponse(req), nil
			}
		}
	}
	return g.base.RoundTrip(req)
}

// plaintextAllowedKey marks a context whose sends the guard lets through (see allowPlaintext).
type plaintextAllowedKey struct{}

// allowPlaintext returns ctx marked so that the plaintext guard lets its sends through. Only the
// core can mark a context, and only for a message that holds nothing private and must reach an
// encrypted room although the bot cannot encrypt: the bot's welcome without crypto, which warns
// that the bot cannot read the room (botHost.sendWelcome). Bridges cannot.
func allowPlaintext(ctx context.Context) context.Context {
	return context.WithValue(ctx, plaintextAllowedKey{}, true)
}

// refusedResponse is the guard's answer to req.
func refusedResponse(req *http.Request) *http.Response {
	return &http.Response{
		Status:        "400 Bad Request",
		StatusCode:    http.StatusBadRequest,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        http.Header{"Content-Type": []string{"application/json"}},
		Body:          io.NopCloser(bytes.NewReader(plaintextRefusedBody)),
		ContentLength: int64(len(plaintextRefusedBody)),
		Request:       req,
	}
}

// parseSendPath returns the room ID and event type of a room event send,
// {prefix}/_matrix/client/{version}/rooms/{roomID}/send/{type}/{txnID}, with the path segments
// unescaped; ok is false for any other path.
func parseSendPath(u *url.URL) (roomID id.RoomID, evtType string, ok bool) {
	path := u.EscapedPath()
	i := strings.Index(path, "/_matrix/client/")
	if i < 0 {
		return "", "", false
	}
	// version, "rooms", room ID, "send", type, txnID
	parts := strings.Split(path[i+len("/_matrix/client/"):], "/")
	if len(parts) != 6 || parts[1] != "rooms" || parts[3] != "send" {
		return "", "", false
	}
	room, err := url.PathUnescape(parts[2])
	if err != nil {
		return "", "", false
	}
	typ, err := url.PathUnescape(parts[4])
	if err != nil {
		return "", "", false
	}
	return id.RoomID(room), typ, true
}

// guardClientSends installs [GuardPlaintext] on the HTTP client every mautrix client of the
// service shares (the bot's, every ghost's intent, the bot device's set-up client): mautrix
// builds them all on svc.as.HTTPClient.
func (svc *Service) guardClientSends() {
	svc.as.HTTPClient.Transport = GuardPlaintext(svc.as.HTTPClient.Transport, svc.stateStore)
}

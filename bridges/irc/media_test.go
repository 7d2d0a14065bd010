package irc

import (
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/bridges/irc/irctest"
)

func TestMediaFileName(t *testing.T) {
	tests := []struct{ in, want string }{
		{"tiny.png", "tiny.png"},
		{"holiday photo.jpg", "holiday_photo.jpg"},
		{"../../etc/passwd", "etcpasswd"},
		{"résumé?.pdf", "rsum.pdf"},
		{"", "file"},
		{"...", "file"},
		{strings.Repeat("a", 100) + ".txt", strings.Repeat("a", 60) + ".txt"},
	}
	for _, tt := range tests {
		if got := mediaFileName(tt.in); got != tt.want {
			t.Errorf("mediaFileName(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestInlineSafe(t *testing.T) {
	tests := []struct {
		contentType string
		want        bool
	}{
		{"image/png", true},
		{"video/mp4", true},
		{"audio/ogg", true},
		{"text/plain", true},
		{"image/svg+xml", false},
		{"text/html", false},
		{"application/javascript", false},
		{"application/octet-stream", false},
	}
	for _, tt := range tests {
		if got := inlineSafe(tt.contentType); got != tt.want {
			t.Errorf("inlineSafe(%q) = %v, want %v", tt.contentType, got, tt.want)
		}
	}
}

func TestHashMediaTokenIsNotTheToken(t *testing.T) {
	token := "abcdefghijklmnopqrstuv"
	h := hashMediaToken(token)
	if len(h) != 64 || strings.Contains(h, token) || h != hashMediaToken(token) {
		t.Errorf("hashMediaToken(%q) = %q, want a stable 64-hex-digit SHA-256", token, h)
	}
}

func TestMediaProxyConfig(t *testing.T) {
	tests := []struct {
		name, src string
		wantErr   string
	}{
		{"valid", "media_proxy: {listen: '127.0.0.1:0', public_url: 'https://m.example.org/irc'}\n", ""},
		{"bad listen", "media_proxy: {listen: nope, public_url: 'https://m.example.org'}\n", "media_proxy.listen"},
		{"bad url", "media_proxy: {listen: '127.0.0.1:1', public_url: 'ftp://x'}\n", "media_proxy.public_url"},
		{"query", "media_proxy: {listen: '127.0.0.1:1', public_url: 'https://x/?a=b'}\n", "media_proxy.public_url"},
		{"negative size", "media_proxy: {listen: '127.0.0.1:1', public_url: 'https://x', max_bytes: -1}\n", "media_proxy.max_bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := decodeConfig(t, tt.src+"networks:\n  testnet:\n    address: 127.0.0.1:6667\n")
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("decodeConfig = %v, want no error", err)
				}
				if cfg.MediaProxy.MaxBytes != defaultMediaMaxBytes {
					t.Errorf("max_bytes = %d, want the default %d", cfg.MediaProxy.MaxBytes, defaultMediaMaxBytes)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("decodeConfig error = %v, want one about %s", err, tt.wantErr)
			}
		})
	}
}

// TestRedactingOriginalRemovesEditsMediaLinks: an edit that sends new media gets its link and
// message rows keyed to the original it edits, so redacting the original makes the edit's link
// answer 404 and leaves no rows of either.
func TestRedactingOriginalRemovesEditsMediaLinks(t *testing.T) {
	ec := envConfig{configure: func(cfg *Config) {
		cfg.MediaProxy = &MediaProxyConfig{Listen: "127.0.0.1:0", PublicURL: "https://m.example.org/irc", MaxBytes: defaultMediaMaxBytes}
	}}
	linkRe := regexp.MustCompile(`https://m\.example\.org/irc(/media/\S+)`)
	forEachDialect(t, ec, func(t *testing.T, env *testEnv) {
		watcher := env.ircUser("watcher")
		status := func(path string) int {
			rec := httptest.NewRecorder()
			env.br.serveMedia(rec, httptest.NewRequest(http.MethodGet, path, nil))
			return rec.Code
		}
		sendMedia := func(content *event.MessageEventContent, name string) (*event.Event, string) {
			t.Helper()
			evt := env.event(testPortalRoom, testAlice, content)
			env.handle(evt)
			l := watcher.MustWaitFor(t, irctest.Match("alice[m]", "PRIVMSG", testChannel))
			m := linkRe.FindStringSubmatch(l.Param(1))
			if m == nil || !strings.Contains(l.Param(1), name) {
				t.Fatalf("relayed %q, want a media link for %s", l.Param(1), name)
			}
			return evt, m[1]
		}
		original, originalLink := sendMedia(&event.MessageEventContent{
			MsgType: event.MsgImage, Body: "first.png", URL: "mxc://example.org/first",
		}, "first.png")
		edit, editLink := sendMedia(&event.MessageEventContent{
			MsgType: event.MsgImage, Body: "* second.png", URL: "mxc://example.org/second",
			NewContent: &event.MessageEventContent{MsgType: event.MsgImage, Body: "second.png", URL: "mxc://example.org/second"},
			RelatesTo:  &event.RelatesTo{Type: event.RelReplace, EventID: original.ID},
		}, "second.png")
		// Live before: the listener tries to fetch the media (the fake homeserver has none).
		for _, link := range []string{originalLink, editLink} {
			if code := status(link); code == http.StatusNotFound {
				t.Fatalf("link %s answers 404 before any redaction", link)
			}
		}
		env.handle(&event.Event{
			ID: env.newEventID(), RoomID: testPortalRoom, Sender: testAlice, Type: event.EventRedaction,
			Redacts: original.ID, Content: event.Content{Parsed: &event.RedactionEventContent{Redacts: original.ID}},
		})
		for _, link := range []string{originalLink, editLink} {
			if code := status(link); code != http.StatusNotFound && code != http.StatusGone {
				t.Errorf("link %s answers %d after the original was redacted, want 404 or 410", link, code)
			}
		}
		for _, evtID := range []id.EventID{original.ID, edit.ID} {
			if rows, err := env.br.db.Message.Get(env.ctx, evtID); err != nil || len(rows) != 0 {
				t.Errorf("irc_message rows of %s after redacting the original = %d, %v; want none", evtID, len(rows), err)
			}
		}
		var media int
		if err := env.host.RawDB.QueryRow(env.ctx, "SELECT COUNT(*) FROM irc_media").Scan(&media); err != nil || media != 0 {
			t.Errorf("irc_media rows after redacting the original = %d, %v; want none", media, err)
		}
	})
}

package irc

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice"
	"github.com/custodian-matrix/custodian/bridges/irc/ircdb"
)

// mediaPathPrefix is where the media listener serves links: <public_url>/media/<token>/<name>.
const mediaPathPrefix = "/media/"

// mediaLink returns the link IRC users get for a Matrix user's media. With media_proxy, it is a
// link of the bridge's own media listener, recorded in irc_media; without, the homeserver's
// download URL (which needs a Matrix access token to open). For the media of an edit, original
// is the event it edits, so that redacting the original removes the link too.
func (br *Bridge) mediaLink(ctx context.Context, evt *event.Event, original id.EventID, uri id.ContentURI, name string) (string, error) {
	mp := br.cfg.MediaProxy
	if mp == nil {
		base := strings.TrimSuffix(br.host.Bot().Client.HomeserverURL.String(), "/")
		return base + "/_matrix/client/v1/media/download/" + uri.Homeserver + "/" + uri.FileID, nil
	}
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	token := base64.RawURLEncoding.EncodeToString(raw[:])
	err := br.db.DoTxn(ctx, nil, func(ctx context.Context) error {
		if err := br.host.EnsureUser(ctx, evt.Sender); err != nil {
			return err
		}
		return br.db.Media.Put(ctx, &ircdb.Media{
			TokenHash: hashMediaToken(token), EventID: evt.ID, RoomID: evt.RoomID, MXC: uri.CUString(),
			Sender: evt.Sender, CreatedAt: br.clock.Now(), Original: original,
		})
	})
	if err != nil {
		return "", fmt.Errorf("failed to record media link: %w", err)
	}
	return strings.TrimSuffix(mp.PublicURL, "/") + mediaPathPrefix + token + "/" + mediaFileName(name), nil
}

// hashMediaToken returns how a media link's token is stored.
func hashMediaToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// mediaFileName makes the last path segment of a media link from the file's name: only
// letters, digits and . - _, at most 64 bytes, "file" if nothing is left. It is for the reader
// and for clients that guess types from it; the listener ignores it.
func mediaFileName(name string) string {
	clean := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-', r == '_':
			return r
		case r == ' ':
			return '_'
		}
		return -1
	}, name)
	clean = strings.TrimLeft(clean, ".")
	if len(clean) > 64 {
		clean = clean[len(clean)-64:]
	}
	if clean == "" {
		return "file"
	}
	return clean
}

// startMediaProxy opens the media listener, if configured.
func (br *Bridge) startMediaProxy() error {
	mp := br.cfg.MediaProxy
	if mp == nil {
		return nil
	}
	ln, err := net.Listen("tcp", mp.Listen)
	if err != nil {
		return fmt.Errorf("failed to listen on %s: %w", mp.Listen, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc(mediaPathPrefix, br.serveMedia)
	// Requests are GETs without a body; a large file may take a while to send.
	br.mediaServer = appservice.NewHTTPServer(mux, 30*time.Second, 5*time.Minute)
	br.mediaListener = ln
	go func() {
		if err := br.mediaServer.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			br.log.Error().Err(err).Msg("Media listener failed")
		}
	}()
	br.log.Info().Str("address", ln.Addr().String()).Msg("Media listener started")
	return nil
}

// MediaAddr returns the address the media listener is bound to, or nil if it is off or not
// started. With port 0 in media_proxy.listen, this is where the chosen port can be read.
func (br *Bridge) MediaAddr() net.Addr {
	if br.mediaListener == nil {
		return nil
	}
	return br.mediaListener.Addr()
}

// serveMedia answers GET /media/<token>/<name>: the media the token was made for, fetched from
// the homeserver as the bot. Unknown, expired and redacted links answer 404, all alike.
func (br *Bridge) serveMedia(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	token, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, mediaPathPrefix), "/")
	if len(token) != 22 {
		http.NotFound(w, r)
		return
	}
	ctx := br.log.WithContext(r.Context())
	m, err := br.db.Media.Get(ctx, hashMediaToken(token))
	if err != nil {
		br.log.Err(err).Msg("Failed to look up media link")
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	} else if m == nil || br.clock.Now().Sub(m.CreatedAt) > br.cfg.MessageTTL {
		http.NotFound(w, r)
		return
	}
	uri, err := m.MXC.Parse()
	if err != nil {
		http.NotFound(w, r)
		return
	}
	resp, err := br.host.Bot().Download(ctx, uri)
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Stringer("event_id", m.EventID).Msg("Failed to download media for IRC")
		http.Error(w, "the media is not available", http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	max := br.cfg.MediaProxy.MaxBytes
	if resp.ContentLength > max {
		http.Error(w, "the media is too large", http.StatusRequestEntityTooLarge)
		return
	}
	contentType := "application/octet-stream"
	if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err == nil {
		contentType = mt
	}
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "default-src 'none'; sandbox")
	h.Set("Cache-Control", "private, max-age=300")
	if inlineSafe(contentType) {
		h.Set("Content-Disposition", "inline")
	} else {
		h.Set("Content-Disposition", "attachment")
	}
	if resp.ContentLength >= 0 {
		h.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	if _, err = io.Copy(w, io.LimitReader(resp.Body, max)); err != nil {
		zerolog.Ctx(ctx).Debug().Err(err).Msg("Media download to IRC user ended early")
	}
}

// inlineSafe reports whether a browser may show a file of this type in place: media and plain
// text, never HTML, SVG or anything that runs.
func inlineSafe(contentType string) bool {
	switch {
	case contentType == "image/svg+xml":
		return false
	case strings.HasPrefix(contentType, "image/"), strings.HasPrefix(contentType, "audio/"),
		strings.HasPrefix(contentType, "video/"), contentType == "text/plain":
		return true
	}
	return false
}

package webhook

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/bridges/webhook/webhookdb"
	"github.com/custodian-matrix/custodian/bridges/webhook/webhookid"
	"github.com/custodian-matrix/custodian/bridges/webhook/webhookmsg"
)

// maxMatrixContentBytes bounds the JSON of a message's content. Matrix limits a whole event to
// 65536 bytes; the rest is left for the event's envelope and signatures.
const maxMatrixContentBytes = 60000

// postTimeout bounds the Matrix side of one inbound post (joining the ghost, setting its profile,
// sending).
const postTimeout = 30 * time.Second

// maxIdempotencyKey bounds the Idempotency-Key header callers may send.
const maxIdempotencyKey = 256

// router returns the public listener's handler: POST <path>/hooks/{hook id}/{token}, where
// <path> is public_url's path or nothing. Every answer is JSON.
func (br *Bridge) router() http.Handler {
	mux := http.NewServeMux()
	prefixes := []string{""}
	if path := br.cfg.publicPath(); path != "" {
		prefixes = append(prefixes, path)
	}
	for _, prefix := range prefixes {
		mux.HandleFunc(http.MethodPost+" "+prefix+"/hooks/{hookID}/{token}", br.postHook)
		mux.HandleFunc(prefix+"/hooks/{hookID}/{token}", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", http.MethodPost)
			writeJSONError(w, http.StatusMethodNotAllowed, "use POST")
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSONError(w, http.StatusNotFound, "unknown webhook")
	})
	return mux
}

// postAnswer is what one inbound post gets: its status and, for errors, a reason safe to show
// (it never quotes the request).
type postAnswer struct {
	status     int
	reason     string
	eventID    id.EventID
	retryAfter time.Duration
	hook       *webhookdb.Hook
	bodyBytes  int
}

// postHook serves one inbound post.
func (br *Bridge) postHook(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	// The Matrix side runs to completion even if the caller hangs up, so that a message is
	// either posted or not, never left half done; the logger comes from the bridge.
	ctx, cancel := context.WithTimeout(br.log.WithContext(context.WithoutCancel(r.Context())), postTimeout)
	defer cancel()
	ans := br.servePost(ctx, w, r)
	if ans.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(ans.retryAfter.Seconds()))))
	}
	if ans.status == http.StatusOK {
		writeJSON(w, http.StatusOK, map[string]any{"event_id": ans.eventID})
	} else {
		writeJSONError(w, ans.status, ans.reason)
	}
	logEvt := zerolog.Ctx(ctx).Debug()
	if ans.status >= http.StatusInternalServerError {
		logEvt = zerolog.Ctx(ctx).Warn()
	}
	if ans.hook != nil {
		logEvt = logEvt.Str("hook_id", ans.hook.ID).Stringer("room_id", ans.hook.RoomID)
	}
	logEvt.Int("status", ans.status).Int("body_bytes", ans.bodyBytes).Dur("duration", time.Since(start)).
		Msg("Handled inbound webhook request")
}

func (br *Bridge) servePost(ctx context.Context, w http.ResponseWriter, r *http.Request) postAnswer {
	hookID, token := r.PathValue("hookID"), r.PathValue("token")
	notFound := postAnswer{status: http.StatusNotFound, reason: "unknown webhook"}
	if !webhookid.ValidHookID(hookID) || !webhookid.ValidToken(token) {
		return notFound
	}
	if r.ContentLength > br.cfg.MaxBodyBytes {
		return postAnswer{status: http.StatusRequestEntityTooLarge, reason: "the body is larger than " + strconv.FormatInt(br.cfg.MaxBodyBytes, 10) + " bytes"}
	}
	hook, err := br.db.Hook.GetActive(ctx, hookID)
	if err != nil {
		zerolog.Ctx(ctx).Err(err).Msg("Failed to look up inbound webhook")
		return postAnswer{status: http.StatusInternalServerError, reason: "internal error"}
	}
	storedHash := webhookid.DummyHash
	if hook != nil && hook.Kind == webhookdb.KindInbound && hook.TokenHash != "" {
		storedHash = hook.TokenHash
	}
	// Unknown hooks and wrong tokens get the same answer after the same work.
	if !webhookid.TokenMatches(token, storedHash) || hook == nil || hook.Kind != webhookdb.KindInbound {
		return notFound
	}
	ctx = zerolog.Ctx(ctx).With().Str("hook_id", hook.ID).Stringer("room_id", hook.RoomID).Logger().WithContext(ctx)
	if paused, err := br.host.IsPaused(ctx, hook.Actor); err != nil {
		zerolog.Ctx(ctx).Err(err).Msg("Failed to check whether the hook's owner paused Custodian")
		return postAnswer{status: http.StatusInternalServerError, reason: "internal error", hook: hook}
	} else if paused {
		return postAnswer{status: http.StatusForbidden, reason: "this webhook is paused by its owner", hook: hook}
	}
	if ok, wait := br.limiter.allow(hook.ID); !ok {
		return postAnswer{status: http.StatusTooManyRequests, reason: "too many requests; slow down", retryAfter: wait, hook: hook}
	}

	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, br.cfg.MaxBodyBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return postAnswer{status: http.StatusRequestEntityTooLarge, reason: "the body is larger than " + strconv.FormatInt(br.cfg.MaxBodyBytes, 10) + " bytes", hook: hook}
		}
		return postAnswer{status: http.StatusBadRequest, reason: "could not read the body", hook: hook}
	}
	payload, err := webhookmsg.Parse(r.Header.Get("Content-Type"), body)
	if err != nil {
		var payloadErr *webhookmsg.Error
		if errors.As(err, &payloadErr) {
			return postAnswer{status: payloadErr.Status, reason: payloadErr.Reason, hook: hook, bodyBytes: len(body)}
		}
		return postAnswer{status: http.StatusBadRequest, reason: "invalid payload", hook: hook, bodyBytes: len(body)}
	}
	content := webhookmsg.Content(payload)
	if data, err := json.Marshal(content); err != nil || len(data) > maxMatrixContentBytes {
		return postAnswer{status: http.StatusRequestEntityTooLarge, reason: "the message is too large for Matrix", hook: hook, bodyBytes: len(body)}
	}
	eventID, err := br.postToRoom(ctx, hook, payload, content, idempotencyTxnID(hook.ID, r.Header.Get("Idempotency-Key")))
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to post inbound webhook message to Matrix")
		switch {
		case errors.Is(err, mautrix.MTooLarge):
			return postAnswer{status: http.StatusRequestEntityTooLarge, reason: "the message is too large for Matrix", hook: hook, bodyBytes: len(body)}
		case errors.Is(err, mautrix.MForbidden):
			return postAnswer{status: http.StatusBadGateway, reason: "the webhook may not post in its room", hook: hook, bodyBytes: len(body)}
		default:
			return postAnswer{status: http.StatusBadGateway, reason: "could not post the message to Matrix; try again later", hook: hook, bodyBytes: len(body)}
		}
	}
	return postAnswer{status: http.StatusOK, eventID: eventID, hook: hook, bodyBytes: len(body)}
}

// idempotencyTxnID turns a caller's Idempotency-Key into a Matrix transaction ID, so a caller
// that retries a post with the same key gets the same event instead of a duplicate. Without a
// key (or with an unusable one) it returns "", and every post is a new message.
func idempotencyTxnID(hookID, key string) string {
	if key == "" || len(key) > maxIdempotencyKey {
		return ""
	}
	sum := sha256.Sum256([]byte(hookID + "\x00" + key))
	return "custodian_wh_" + base64.RawURLEncoding.EncodeToString(sum[:18])
}

// ghostProfile is what a hook's ghost was last set to; its lock also serializes the hook's posts,
// so that each message appears under the name it was sent with.
type ghostProfile struct {
	lock        sync.Mutex
	displayname string
	avatar      id.ContentURI
}

// postToRoom sends content into the hook's room as the hook's ghost, after giving the ghost the
// payload's name and avatar (or the hook's name). The ghost joins the room first if needed; the
// bot invites it when the room requires an invite.
func (br *Bridge) postToRoom(ctx context.Context, hook *webhookdb.Hook, payload *webhookmsg.Payload, content *event.MessageEventContent, txnID string) (id.EventID, error) {
	intent, err := br.host.Intent(webhookid.GhostLocalpart(hook.ID))
	if err != nil {
		return "", err
	}
	value, _ := br.profiles.LoadOrStore(hook.ID, &ghostProfile{})
	profile := value.(*ghostProfile)
	profile.lock.Lock()
	defer profile.lock.Unlock()
	if err = intent.EnsureRegistered(ctx); err != nil {
		return "", err
	}
	displayname := payload.Username
	if displayname == "" {
		displayname = hook.Name
	}
	if profile.displayname != displayname {
		if err = setProfileSensitive(ctx, intent, "displayname", displayname); err != nil {
			// The message matters more than the name it appears under.
			zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to set the webhook ghost's display name")
		} else {
			profile.displayname = displayname
		}
	}
	if !payload.AvatarURL.IsEmpty() && profile.avatar != payload.AvatarURL {
		if err = setProfileSensitive(ctx, intent, "avatar_url", payload.AvatarURL.String()); err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to set the webhook ghost's avatar")
		} else {
			profile.avatar = payload.AvatarURL
		}
	}
	resp, err := sendSensitive(ctx, intent, hook.RoomID, content, txnID)
	if err != nil {
		return "", err
	}
	return resp.EventID, nil
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

func writeJSONError(w http.ResponseWriter, status int, reason string) {
	writeJSON(w, status, map[string]string{"error": reason})
}

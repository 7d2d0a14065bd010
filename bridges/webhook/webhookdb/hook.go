package webhookdb

import (
	"context"
	"database/sql"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"
)

// Kind says which way a hook carries messages.
type Kind string

const (
	// KindInbound hooks post what callers send to their URL into the room.
	KindInbound Kind = "in"
	// KindOutbound hooks send the room's messages to a URL.
	KindOutbound Kind = "out"
)

// String returns the kind as shown to users: "incoming" or "outgoing".
func (k Kind) String() string {
	switch k {
	case KindInbound:
		return "incoming"
	case KindOutbound:
		return "outgoing"
	default:
		return "unknown"
	}
}

// Hook is one webhook_hook row. Its secrets are never in plain text: TokenHash is a hash, and
// OutboundURL and SigningSecret are sealed by the vault under Actor's data key.
type Hook struct {
	ID     string
	RoomID id.RoomID
	Name   string
	Kind   Kind
	// Actor created the hook or last rotated it; SourceEventID is that command's event.
	Actor         id.UserID
	SourceEventID id.EventID
	CreatedAt     time.Time
	UpdatedAt     time.Time

	// TokenHash is the SHA-256 (hex) of an inbound hook's token.
	TokenHash string
	// OutboundURL and SigningSecret are an outbound hook's sealed URL and signing secret.
	OutboundURL   []byte
	SigningSecret []byte
	// SecretSent is whether Actor was sent the current secret in a direct chat.
	SecretSent bool
	// RevokedAt is set when the hook was revoked because its actor is being erased.
	RevokedAt time.Time

	// Delivery status of an outbound hook.
	LastSuccessAt       time.Time
	LastFailureAt       time.Time
	LastError           string
	ConsecutiveFailures int
	DroppedCount        int64
	// VaultNoticeAt is when Actor was told that the hook's secrets cannot be opened; zero if
	// they were not, or opened again since.
	VaultNoticeAt time.Time
	// SuspendedAt is when an outbound hook was suspended because its owner (Actor) lost the
	// right to it: they left, were banned or lost the power level; zero while it is not.
	// SuspendedReason says which, in words shown by !webhook list.
	SuspendedAt     time.Time
	SuspendedReason string
}

// MarshalZerologObject writes the hook's IDs and kind, never its name or secrets.
func (h *Hook) MarshalZerologObject(e *zerolog.Event) {
	e.Str("hook_id", h.ID).Stringer("room_id", h.RoomID).Str("kind", string(h.Kind))
}

func newHook(_ *dbutil.QueryHelper[*Hook]) *Hook { return &Hook{} }

const hookColumns = `
	id, room_id, name, kind, actor_mxid, source_event_id, created_at, updated_at, token_hash,
	outbound_url, signing_secret, secret_sent, revoked_at, last_success_at, last_failure_at,
	last_error, consecutive_failures, dropped_count, vault_notice_at, suspended_at, suspended_reason
`

// Scan reads one webhook_hook row selected with hookColumns.
func (h *Hook) Scan(row dbutil.Scannable) (*Hook, error) {
	var createdAt, updatedAt int64
	var tokenHash, lastError, suspendedReason sql.NullString
	var revokedAt, lastSuccess, lastFailure, vaultNotice, suspendedAt sql.NullInt64
	err := row.Scan(
		&h.ID, &h.RoomID, &h.Name, &h.Kind, &h.Actor, &h.SourceEventID, &createdAt, &updatedAt,
		&tokenHash, &h.OutboundURL, &h.SigningSecret, &h.SecretSent, &revokedAt, &lastSuccess,
		&lastFailure, &lastError, &h.ConsecutiveFailures, &h.DroppedCount, &vaultNotice,
		&suspendedAt, &suspendedReason,
	)
	if err != nil {
		return nil, err
	}
	h.CreatedAt = time.UnixMilli(createdAt)
	h.UpdatedAt = time.UnixMilli(updatedAt)
	h.TokenHash = tokenHash.String
	h.LastError = lastError.String
	h.RevokedAt = millis(revokedAt)
	h.LastSuccessAt = millis(lastSuccess)
	h.LastFailureAt = millis(lastFailure)
	h.VaultNoticeAt = millis(vaultNotice)
	h.SuspendedAt = millis(suspendedAt)
	h.SuspendedReason = suspendedReason.String
	return h, nil
}

func millis(v sql.NullInt64) time.Time {
	if !v.Valid {
		return time.Time{}
	}
	return time.UnixMilli(v.Int64)
}

// HookQuery reads and writes webhook_hook.
type HookQuery struct {
	*dbutil.QueryHelper[*Hook]
}

const (
	insertHookQuery = `
		INSERT INTO webhook_hook (
			id, room_id, name, kind, actor_mxid, source_event_id, created_at, updated_at,
			token_hash, outbound_url, signing_secret
		) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
	`
	getActiveHookQuery      = `SELECT ` + hookColumns + ` FROM webhook_hook WHERE id=$1 AND revoked_at IS NULL`
	getHookByNameQuery      = `SELECT ` + hookColumns + ` FROM webhook_hook WHERE room_id=$1 AND name=$2`
	getActiveHooksInRoom    = `SELECT ` + hookColumns + ` FROM webhook_hook WHERE room_id=$1 AND revoked_at IS NULL ORDER BY name`
	getAllHooksInRoom       = `SELECT ` + hookColumns + ` FROM webhook_hook WHERE room_id=$1 ORDER BY name`
	getActiveOutboundInRoom = `SELECT ` + hookColumns + ` FROM webhook_hook WHERE room_id=$1 AND kind='out' AND revoked_at IS NULL ORDER BY id`
	getDeliveringInRoom     = `SELECT ` + hookColumns + ` FROM webhook_hook WHERE room_id=$1 AND kind='out' AND revoked_at IS NULL AND suspended_at IS NULL ORDER BY id`
	getHooksBySourceQuery   = `SELECT ` + hookColumns + ` FROM webhook_hook WHERE room_id=$1 AND source_event_id=$2`
	getHooksByActorQuery    = `SELECT ` + hookColumns + ` FROM webhook_hook WHERE actor_mxid=$1 ORDER BY id`
	countHooksInRoomQuery   = `SELECT COUNT(*) FROM webhook_hook WHERE room_id=$1 AND revoked_at IS NULL`
	deleteHookQuery         = `DELETE FROM webhook_hook WHERE id=$1`
	revokeHookQuery         = `UPDATE webhook_hook SET revoked_at=$2 WHERE id=$1 AND revoked_at IS NULL`
	setTokenQuery           = `
		UPDATE webhook_hook SET token_hash=$2, actor_mxid=$3, source_event_id=$4, updated_at=$5, secret_sent=false
		WHERE id=$1 AND kind='in'
	`
	setOutboundSecretsQuery = `
		UPDATE webhook_hook SET outbound_url=$2, signing_secret=$3, actor_mxid=$4, source_event_id=$5,
			updated_at=$6, secret_sent=false, vault_notice_at=NULL
		WHERE id=$1 AND kind='out'
	`
	markSecretSentQuery = `UPDATE webhook_hook SET secret_sent=true WHERE id=$1`
	recordSuccessQuery  = `
		UPDATE webhook_hook SET last_success_at=$2, consecutive_failures=0, last_error=NULL WHERE id=$1
	`
	recordFailureQuery = `
		UPDATE webhook_hook SET last_failure_at=$2, last_error=$3, consecutive_failures=consecutive_failures+1
		WHERE id=$1
	`
	setVaultNoticeQuery = `UPDATE webhook_hook SET vault_notice_at=$2 WHERE id=$1`
	suspendQuery        = `
		UPDATE webhook_hook SET suspended_at=$2, suspended_reason=$3
		WHERE id=$1 AND kind='out' AND suspended_at IS NULL AND revoked_at IS NULL
	`
	resumeQuery     = `UPDATE webhook_hook SET suspended_at=NULL, suspended_reason=NULL WHERE id=$1`
	addDroppedQuery = `
		UPDATE webhook_hook SET dropped_count=dropped_count+$2, last_failure_at=$3, last_error=$4 WHERE id=$1
	`
)

// Insert adds a new hook. The actor's users row must exist (Host.EnsureUser, in the same
// transaction). Status columns start empty.
func (hq *HookQuery) Insert(ctx context.Context, h *Hook) error {
	return hq.Exec(ctx, insertHookQuery,
		h.ID, h.RoomID, h.Name, h.Kind, h.Actor, h.SourceEventID, h.CreatedAt.UnixMilli(),
		h.UpdatedAt.UnixMilli(), dbutil.StrPtr(h.TokenHash), h.OutboundURL, h.SigningSecret,
	)
}

// GetActive returns the hook with the given ID unless it does not exist or was revoked (then
// nil).
func (hq *HookQuery) GetActive(ctx context.Context, hookID string) (*Hook, error) {
	return hq.QueryOne(ctx, getActiveHookQuery, hookID)
}

// GetByName returns the room's hook with the given name, revoked or not, or nil.
func (hq *HookQuery) GetByName(ctx context.Context, roomID id.RoomID, name string) (*Hook, error) {
	return hq.QueryOne(ctx, getHookByNameQuery, roomID, name)
}

// GetActiveInRoom returns the room's hooks that are not revoked, sorted by name.
func (hq *HookQuery) GetActiveInRoom(ctx context.Context, roomID id.RoomID) ([]*Hook, error) {
	return hq.QueryMany(ctx, getActiveHooksInRoom, roomID)
}

// GetAllInRoom returns every hook of the room, revoked or not, sorted by name.
func (hq *HookQuery) GetAllInRoom(ctx context.Context, roomID id.RoomID) ([]*Hook, error) {
	return hq.QueryMany(ctx, getAllHooksInRoom, roomID)
}

// GetActiveOutboundInRoom returns the room's outbound hooks that are not revoked.
func (hq *HookQuery) GetActiveOutboundInRoom(ctx context.Context, roomID id.RoomID) ([]*Hook, error) {
	return hq.QueryMany(ctx, getActiveOutboundInRoom, roomID)
}

// GetDeliveringInRoom returns the room's outbound hooks that are neither revoked nor suspended:
// those that receive the room's messages.
func (hq *HookQuery) GetDeliveringInRoom(ctx context.Context, roomID id.RoomID) ([]*Hook, error) {
	return hq.QueryMany(ctx, getDeliveringInRoom, roomID)
}

// GetBySourceEvent returns the room's hooks whose provenance is eventID.
func (hq *HookQuery) GetBySourceEvent(ctx context.Context, roomID id.RoomID, eventID id.EventID) ([]*Hook, error) {
	return hq.QueryMany(ctx, getHooksBySourceQuery, roomID, eventID)
}

// GetByActor returns every hook userID created or last rotated, revoked or not.
func (hq *HookQuery) GetByActor(ctx context.Context, userID id.UserID) ([]*Hook, error) {
	return hq.QueryMany(ctx, getHooksByActorQuery, userID)
}

// CountActiveInRoom returns how many hooks the room has that are not revoked.
func (hq *HookQuery) CountActiveInRoom(ctx context.Context, roomID id.RoomID) (count int, err error) {
	err = hq.GetDB().QueryRow(ctx, countHooksInRoomQuery, roomID).Scan(&count)
	return
}

// Delete deletes the hook and reports whether it existed.
func (hq *HookQuery) Delete(ctx context.Context, hookID string) (bool, error) {
	res, err := hq.GetDB().Exec(ctx, deleteHookQuery, hookID)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n > 0, err
}

// Revoke marks the hook revoked at at, unless it already is.
func (hq *HookQuery) Revoke(ctx context.Context, hookID string, at time.Time) error {
	return hq.Exec(ctx, revokeHookQuery, hookID, at.UnixMilli())
}

// SetToken replaces an inbound hook's token hash after a rotation by actor with event
// eventID, which become the hook's provenance; the new secret is marked not yet sent. The
// actor's users row must exist.
func (hq *HookQuery) SetToken(ctx context.Context, hookID, tokenHash string, actor id.UserID, eventID id.EventID, at time.Time) error {
	return hq.Exec(ctx, setTokenQuery, hookID, tokenHash, actor, eventID, at.UnixMilli())
}

// SetOutboundSecrets replaces an outbound hook's sealed URL and signing secret after a
// rotation by actor with event eventID, like SetToken. Freshly sealed secrets open, so any
// record of a notice that they did not (SetVaultNotice) is cleared.
func (hq *HookQuery) SetOutboundSecrets(ctx context.Context, hookID string, sealedURL, sealedSecret []byte, actor id.UserID, eventID id.EventID, at time.Time) error {
	return hq.Exec(ctx, setOutboundSecretsQuery, hookID, sealedURL, sealedSecret, actor, eventID, at.UnixMilli())
}

// MarkSecretSent records that the hook's current secret reached its actor.
func (hq *HookQuery) MarkSecretSent(ctx context.Context, hookID string) error {
	return hq.Exec(ctx, markSecretSentQuery, hookID)
}

// RecordSuccess records a successful outbound delivery at at.
func (hq *HookQuery) RecordSuccess(ctx context.Context, hookID string, at time.Time) error {
	return hq.Exec(ctx, recordSuccessQuery, hookID, at.UnixMilli())
}

// RecordFailure records a failed outbound delivery attempt at at. reason is shown in
// !webhook list, so it must be a fixed description ("HTTP 503", "timed out"), never an error
// string that could quote the URL.
func (hq *HookQuery) RecordFailure(ctx context.Context, hookID string, at time.Time, reason string) error {
	return hq.Exec(ctx, recordFailureQuery, hookID, at.UnixMilli(), reason)
}

// AddDropped records that n messages were dropped for the hook at at, for reason (a fixed
// description, as in RecordFailure).
func (hq *HookQuery) AddDropped(ctx context.Context, hookID string, n int, at time.Time, reason string) error {
	return hq.Exec(ctx, addDroppedQuery, hookID, n, at.UnixMilli(), reason)
}

// SetVaultNotice records that the hook's actor was told at at that its secrets cannot be
// opened; a zero at clears the record, when they open again.
func (hq *HookQuery) SetVaultNotice(ctx context.Context, hookID string, at time.Time) error {
	var v *int64
	if !at.IsZero() {
		ms := at.UnixMilli()
		v = &ms
	}
	return hq.Exec(ctx, setVaultNoticeQuery, hookID, v)
}

// Suspend suspends the outbound hook at at, for reason (a fixed description shown by !webhook
// list, never a URL). It reports whether it did: false if the hook is already suspended,
// revoked, inbound or gone.
func (hq *HookQuery) Suspend(ctx context.Context, hookID string, at time.Time, reason string) (bool, error) {
	res, err := hq.GetDB().Exec(ctx, suspendQuery, hookID, at.UnixMilli(), reason)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n > 0, err
}

// Resume clears the hook's suspension.
func (hq *HookQuery) Resume(ctx context.Context, hookID string) error {
	return hq.Exec(ctx, resumeQuery, hookID)
}

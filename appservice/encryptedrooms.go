package appservice

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// RoomKeyRotation is how long one megolm session encrypts the messages of a room Custodian
// creates encrypted (its m.room.encryption rotation_period_ms): after a day the bot starts a
// new session, so a session leaked or kept past its retention covers at most a day.
const RoomKeyRotation = 24 * time.Hour

// EncryptionInitialState returns a new m.room.encryption state event (megolm, rotated after
// [RoomKeyRotation]) for the initial_state of a createRoom request. mautrix's CreateRoom records
// the initial state in the state cache as soon as the room exists, so the first message sent
// there is already encrypted. Each call returns a new event, since CreateRoom fills in its
// room ID.
func EncryptionInitialState() *event.Event {
	return &event.Event{
		Type: event.StateEncryption,
		Content: event.Content{Parsed: &event.EncryptionEventContent{
			Algorithm:            id.AlgorithmMegolmV1,
			RotationPeriodMillis: RoomKeyRotation.Milliseconds(),
		}},
	}
}

// ErrNoEncryption is returned by [SendMessageSensitive] for an encrypted room when the client
// has no Crypto helper (encryption is off, or the vault's master key was unavailable at start):
// the content is not sent rather than sent in plaintext into a room its members believe private.
var ErrNoEncryption = errors.New("the room is encrypted and encryption is not available, so nothing was sent")

// SendMessageSensitive sends content as an event of type evtType into roomID through cli,
// under transaction ID txnID, like mautrix's SendMessageEvent but without ever logging the
// content: notices and bridged messages carry secrets and message bodies, and mautrix logs
// request bodies unless a request is marked sensitive. Whether the room is encrypted it learns
// from the state cache or, when the cache does not say so, from the homeserver (see
// roomEncrypted): a cache that is stale or empty (after a restart, an erasure's scrub, a room
// just joined) never lets content out in plaintext. In an encrypted room it encrypts the
// content with cli's Crypto helper, so the homeserver gets m.room.encrypted, or, when cli has
// none, refuses with [ErrNoEncryption] and sends nothing. A failed lookup is an error too, and
// nothing is sent. Content already of type m.room.encrypted goes out as it is; reactions are
// encrypted like any other event (the core's plaintext guard, [GuardPlaintext], refuses them
// in plaintext). It does not join the room first.
func SendMessageSensitive(ctx context.Context, cli *mautrix.Client, roomID id.RoomID, evtType event.Type, content any, txnID string) (*mautrix.RespSendEvent, error) {
	return SendMessageSensitiveAt(ctx, cli, roomID, evtType, content, txnID, time.Time{})
}

// SendMessageSensitiveAt is [SendMessageSensitive] with the event's origin_server_ts set to ts
// (the appservice API's ts parameter, for bridged messages that carry their own time); a zero
// ts leaves it to the homeserver.
func SendMessageSensitiveAt(ctx context.Context, cli *mautrix.Client, roomID id.RoomID, evtType event.Type, content any, txnID string, ts time.Time) (*mautrix.RespSendEvent, error) {
	if evtType != event.EventEncrypted {
		encrypted, err := roomEncrypted(ctx, cli, roomID)
		if err != nil {
			return nil, fmt.Errorf("failed to check whether the room is encrypted: %w", err)
		}
		if encrypted {
			if cli.Crypto == nil {
				return nil, ErrNoEncryption
			}
			if content, err = cli.Crypto.Encrypt(ctx, roomID, evtType, content); err != nil {
				return nil, fmt.Errorf("failed to encrypt event: %w", err)
			}
			evtType = event.EventEncrypted
		}
	}
	var resp mautrix.RespSendEvent
	_, err := cli.MakeFullRequest(ctx, mautrix.FullRequest{
		Method:           http.MethodPut,
		URL:              sendURL(cli, roomID, evtType, txnID, ts),
		RequestJSON:      content,
		ResponseJSON:     &resp,
		SensitiveContent: true,
	})
	if err != nil {
		return nil, err
	}
	return &resp, nil
}

// sendURL is the URL of a room event send, with the ts parameter when ts is set.
func sendURL(cli *mautrix.Client, roomID id.RoomID, evtType event.Type, txnID string, ts time.Time) string {
	var query map[string]string
	if !ts.IsZero() {
		query = map[string]string{"ts": strconv.FormatInt(ts.UnixMilli(), 10)}
	}
	return cli.BuildURLWithQuery(mautrix.ClientURLPath{"v3", "rooms", roomID, "send", evtType.Type, txnID}, query)
}

// roomEncrypted reports whether roomID is encrypted: by cli's state cache if it says so, else by
// the room's m.room.encryption state on the homeserver (none: not encrypted). mautrix's
// StateEvent records what the homeserver returned in the state cache, so the olm machine then
// finds the room's settings (its rotation period) and mautrix's own sends through cli encrypt
// there too.
func roomEncrypted(ctx context.Context, cli *mautrix.Client, roomID id.RoomID) (bool, error) {
	if cli.StateStore != nil {
		if encrypted, err := cli.StateStore.IsEncrypted(ctx, roomID); err != nil || encrypted {
			return encrypted, err
		}
	}
	var content event.EncryptionEventContent
	err := cli.StateEvent(ctx, roomID, event.StateEncryption, "", &content)
	if errors.Is(err, mautrix.MNotFound) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	return content.Algorithm != "", nil
}

// EncryptionActive implements [Host.EncryptionActive].
func (bh *bridgeHost) EncryptionActive() bool { return bh.svc.encryptionActive() }

// encryptOpenedRooms reports whether the rooms Custodian opens itself (management rooms) are
// created encrypted: encryption.default_encrypted, while the bot can read and write encrypted
// rooms.
func (svc *Service) encryptOpenedRooms() bool {
	return svc.cfg.Encryption.DefaultEncrypted && svc.encryptionActive()
}

package appservice

import (
	"context"
	"fmt"
	"net/http"
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

// SendMessageSensitive sends content as an event of type evtType into roomID through cli,
// under transaction ID txnID, like mautrix's SendMessageEvent but without ever logging the
// content: notices and bridged messages carry secrets and message bodies, and mautrix logs
// request bodies unless a request is marked sensitive. Like SendMessageEvent, it encrypts the
// content when cli has a Crypto helper and the state cache says the room is encrypted, so the
// homeserver gets m.room.encrypted. It does not join the room first.
func SendMessageSensitive(ctx context.Context, cli *mautrix.Client, roomID id.RoomID, evtType event.Type, content any, txnID string) (*mautrix.RespSendEvent, error) {
	if cli.Crypto != nil && evtType != event.EventReaction && evtType != event.EventEncrypted {
		encrypted, err := cli.StateStore.IsEncrypted(ctx, roomID)
		if err != nil {
			return nil, fmt.Errorf("failed to check whether the room is encrypted: %w", err)
		}
		if encrypted {
			if content, err = cli.Crypto.Encrypt(ctx, roomID, evtType, content); err != nil {
				return nil, fmt.Errorf("failed to encrypt event: %w", err)
			}
			evtType = event.EventEncrypted
		}
	}
	var resp mautrix.RespSendEvent
	_, err := cli.MakeFullRequest(ctx, mautrix.FullRequest{
		Method:           http.MethodPut,
		URL:              cli.BuildClientURL("v3", "rooms", roomID, "send", evtType.Type, txnID),
		RequestJSON:      content,
		ResponseJSON:     &resp,
		SensitiveContent: true,
	})
	if err != nil {
		return nil, err
	}
	return &resp, nil
}

// EncryptionActive implements [Host.EncryptionActive].
func (bh *bridgeHost) EncryptionActive() bool { return bh.svc.encryptionActive() }

// encryptOpenedRooms reports whether the rooms Custodian opens itself (management rooms) are
// created encrypted: encryption.default_encrypted, while the bot can read and write encrypted
// rooms.
func (svc *Service) encryptOpenedRooms() bool {
	return svc.cfg.Encryption.DefaultEncrypted && svc.encryptionActive()
}

package webhook

import (
	"context"
	"errors"
	"fmt"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/format"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/bridges/webhook/webhookdb"
)

// dmTopic is the topic of the direct chats the bot opens to send secrets.
const dmTopic = "Custodian sends you your webhooks' URLs and signing secrets here. Treat them like passwords."

// sendPrivately sends markdown to userID as a notice in their direct chat with the bot, opening
// one (and recording it) if there is none the user is still in. txnID makes the send safe to
// repeat: the homeserver posts a repeated transaction once.
func (br *Bridge) sendPrivately(ctx context.Context, userID id.UserID, markdown, txnID string) error {
	content := format.RenderMarkdown(markdown, true, false)
	content.MsgType = event.MsgNotice
	content.Mentions = &event.Mentions{}
	bot := br.host.Bot()
	roomID, fresh, err := br.dmRoom(ctx, userID)
	if err != nil {
		return err
	}
	_, err = sendSensitive(ctx, bot, roomID, &content, txnID)
	if err != nil && !fresh && isRoomGone(err) {
		// The recorded chat is no longer usable (the bot left or was removed): open a new one.
		if roomID, err = br.createDM(ctx, userID); err != nil {
			return err
		}
		_, err = sendSensitive(ctx, bot, roomID, &content, txnID)
	}
	if err != nil {
		return fmt.Errorf("failed to send direct message: %w", err)
	}
	return nil
}

// dmRoom returns userID's direct chat with the bot, creating one if none is recorded or the
// recorded one was left by either side. fresh reports whether it was just created.
func (br *Bridge) dmRoom(ctx context.Context, userID id.UserID) (roomID id.RoomID, fresh bool, err error) {
	dm, err := br.db.DM.Get(ctx, userID)
	if err != nil {
		return "", false, fmt.Errorf("failed to get direct chat: %w", err)
	}
	if dm != nil {
		store := br.host.Bot().StateStore
		if store == nil || (store.IsInRoom(ctx, dm.RoomID, br.host.Bot().UserID) &&
			store.IsMembership(ctx, dm.RoomID, userID, event.MembershipJoin, event.MembershipInvite)) {
			// The user may have invited others since (trusted_private_chat lets them): a room
			// anyone else joined is no place for their secrets any more.
			private, err := br.host.IsPrivateWith(ctx, dm.RoomID, userID)
			if err != nil {
				zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to check who is in the secrets room; opening a new one")
			} else if private {
				return dm.RoomID, false, nil
			}
		}
	}
	roomID, err = br.createDM(ctx, userID)
	return roomID, true, err
}

// createDM opens a direct chat between the bot and userID and records it. If Custodian crashes
// between the two, the next secret opens another chat; nothing is lost.
func (br *Bridge) createDM(ctx context.Context, userID id.UserID) (id.RoomID, error) {
	resp, err := br.host.Bot().CreateRoom(ctx, &mautrix.ReqCreateRoom{
		Preset:   "trusted_private_chat",
		IsDirect: true,
		Invite:   []id.UserID{userID},
		Topic:    dmTopic,
		// Someone the user invites later sees nothing sent before their own invite.
		InitialState: []*event.Event{{
			Type:    event.StateHistoryVisibility,
			Content: event.Content{Parsed: &event.HistoryVisibilityEventContent{HistoryVisibility: event.HistoryVisibilityInvited}},
		}},
	})
	if err != nil {
		return "", fmt.Errorf("failed to create direct chat: %w", err)
	}
	err = br.db.DoTxn(ctx, nil, func(ctx context.Context) error {
		if err := br.host.EnsureUser(ctx, userID); err != nil {
			return err
		}
		return br.db.DM.Put(ctx, &webhookdb.DM{UserID: userID, RoomID: resp.RoomID, CreatedAt: br.clock.Now()})
	})
	if err != nil {
		return "", fmt.Errorf("failed to record direct chat: %w", err)
	}
	zerolog.Ctx(ctx).Info().Stringer("dm_room_id", resp.RoomID).Stringer("user_id", userID).
		Msg("Opened a direct chat to send webhook secrets")
	return resp.RoomID, nil
}

// isRoomGone reports whether err says the bot cannot act in the room any more.
func isRoomGone(err error) bool {
	return errors.Is(err, mautrix.MForbidden) || errors.Is(err, mautrix.MNotFound)
}

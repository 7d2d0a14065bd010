package database

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"
)

// BotSetupQuery reads and writes bots' setups in rooms (table as_bot_setup). A setup exists from
// the moment a bot joins a room on someone's invite until it is kicked, banned or left alone
// there. All methods join the transaction in ctx, if any, and are safe for concurrent use.
type BotSetupQuery struct {
	db *dbutil.Database
}

// BotSetup is one bot's setup in one room: who invited it, through which event, when, and the
// configuration it had then.
type BotSetup struct {
	// RoomID and Bot identify the setup; Bot is the bot's Matrix user ID.
	RoomID id.RoomID
	Bot    id.UserID
	// Inviter is the user whose invite the bot accepted. It is empty when that user's data has
	// been erased since (the column is set to NULL by the users cascade).
	Inviter id.UserID
	// InviteEventID is the m.room.member invite event the bot accepted.
	InviteEventID id.EventID
	// InvitedAt is the invite event's timestamp; JoinedAt is when the bot joined.
	InvitedAt time.Time
	JoinedAt  time.Time
	// IsDirect is the invite's is_direct flag: the inviter meant the room as a direct chat.
	IsDirect bool
	// Config is the bot's configuration at setup time, as a JSON object. Put stores "{}" when
	// it is empty.
	Config json.RawMessage
}

// MarshalZerologObject logs the setup's IDs and times, never its configuration.
func (bs *BotSetup) MarshalZerologObject(e *zerolog.Event) {
	e.Stringer("room_id", bs.RoomID).
		Stringer("bot", bs.Bot).
		Stringer("invite_event_id", bs.InviteEventID).
		Time("invited_at", bs.InvitedAt).
		Time("joined_at", bs.JoinedAt).
		Bool("is_direct", bs.IsDirect)
}

const (
	botSetupColumns  = `room_id, bot, inviter_mxid, invite_event_id, invited_at, joined_at, is_direct, config`
	putBotSetupQuery = `
		INSERT INTO as_bot_setup (` + botSetupColumns + `)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
		ON CONFLICT (room_id, bot) DO UPDATE
			SET inviter_mxid=excluded.inviter_mxid, invite_event_id=excluded.invite_event_id,
			    invited_at=excluded.invited_at, joined_at=excluded.joined_at,
			    is_direct=excluded.is_direct, config=excluded.config
	`
	getBotSetupQuery           = `SELECT ` + botSetupColumns + ` FROM as_bot_setup WHERE room_id=$1 AND bot=$2`
	getBotSetupsForRoomQuery   = `SELECT ` + botSetupColumns + ` FROM as_bot_setup WHERE room_id=$1 ORDER BY bot`
	getBotSetupsByInviterQuery = `SELECT ` + botSetupColumns + ` FROM as_bot_setup WHERE inviter_mxid=$1 ORDER BY joined_at, room_id, bot`
	deleteBotSetupQuery        = `DELETE FROM as_bot_setup WHERE room_id=$1 AND bot=$2`
	deleteBotSetupsInRoomQuery = `DELETE FROM as_bot_setup WHERE room_id=$1`
)

// Put records setup, replacing an earlier setup of the same bot in the same room. Setting it
// again with the same values is harmless, so handlers may call it again when an event is
// replayed. If setup.Inviter is set, its users row must exist (see [UserQuery.Ensure], in the
// same transaction).
func (bq *BotSetupQuery) Put(ctx context.Context, setup *BotSetup) error {
	cfg := setup.Config
	if len(cfg) == 0 {
		cfg = json.RawMessage("{}")
	} else if !json.Valid(cfg) {
		return fmt.Errorf("bot setup config is not valid JSON")
	}
	_, err := bq.db.Exec(ctx, putBotSetupQuery,
		setup.RoomID, setup.Bot, dbutil.StrPtr(setup.Inviter), setup.InviteEventID,
		setup.InvitedAt.UnixMilli(), setup.JoinedAt.UnixMilli(), setup.IsDirect, string(cfg),
	)
	if err != nil {
		return fmt.Errorf("failed to put bot setup: %w", err)
	}
	return nil
}

// Get returns bot's setup in roomID, or nil (and no error) if there is none.
func (bq *BotSetupQuery) Get(ctx context.Context, roomID id.RoomID, bot id.UserID) (*BotSetup, error) {
	setup, err := scanBotSetup(bq.db.QueryRow(ctx, getBotSetupQuery, roomID, bot))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("failed to get bot setup: %w", err)
	}
	return setup, nil
}

// GetAllForRoom returns every bot's setup in roomID, ordered by bot; an empty slice if none.
func (bq *BotSetupQuery) GetAllForRoom(ctx context.Context, roomID id.RoomID) ([]*BotSetup, error) {
	return bq.list(ctx, getBotSetupsForRoomQuery, roomID)
}

// GetAllByInviter returns every setup that userID's invites created, oldest first; an empty
// slice if none. It is meant for the user's data access and export.
func (bq *BotSetupQuery) GetAllByInviter(ctx context.Context, userID id.UserID) ([]*BotSetup, error) {
	return bq.list(ctx, getBotSetupsByInviterQuery, userID)
}

// Delete ends bot's setup in roomID. It reports whether there was one, so deleting a setup that
// is already gone (a replayed event) is not an error.
func (bq *BotSetupQuery) Delete(ctx context.Context, roomID id.RoomID, bot id.UserID) (bool, error) {
	res, err := bq.db.Exec(ctx, deleteBotSetupQuery, roomID, bot)
	if err != nil {
		return false, fmt.Errorf("failed to delete bot setup: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("failed to count deleted bot setups: %w", err)
	}
	return n > 0, nil
}

// DeleteAllForRoom ends every bot's setup in roomID and returns how many there were.
func (bq *BotSetupQuery) DeleteAllForRoom(ctx context.Context, roomID id.RoomID) (int64, error) {
	res, err := bq.db.Exec(ctx, deleteBotSetupsInRoomQuery, roomID)
	if err != nil {
		return 0, fmt.Errorf("failed to delete bot setups in room: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("failed to count deleted bot setups: %w", err)
	}
	return n, nil
}

func (bq *BotSetupQuery) list(ctx context.Context, query string, args ...any) ([]*BotSetup, error) {
	setups, err := QueryList(ctx, bq.db, scanBotSetup, query, args...)
	if err != nil {
		return nil, fmt.Errorf("failed to list bot setups: %w", err)
	}
	return setups, nil
}

func scanBotSetup(row dbutil.Scannable) (*BotSetup, error) {
	var setup BotSetup
	var inviter sql.NullString
	var invitedAt, joinedAt int64
	var cfg string
	err := row.Scan(&setup.RoomID, &setup.Bot, &inviter, &setup.InviteEventID, &invitedAt, &joinedAt, &setup.IsDirect, &cfg)
	if err != nil {
		return nil, err
	}
	setup.Inviter = id.UserID(inviter.String)
	setup.InvitedAt = time.UnixMilli(invitedAt)
	setup.JoinedAt = time.UnixMilli(joinedAt)
	setup.Config = json.RawMessage(cfg)
	return &setup, nil
}

package appservice

import (
	"context"
	"database/sql"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/format"
	"maunium.net/go/mautrix/id"
)

// RedactionPurger is an optional interface that bridges can implement to learn that rows of
// theirs were purged because the event that created them was redacted: to drop what they cache
// about those rows and stop what the rows set going (an outbound hook's deliveries, a feed's
// polling). The rows are already gone when it is called; rows derived from them went with them
// through their cascades.
//
// The redaction event itself still reaches the bridges that own the room through HandleEvent,
// after the purge; bridges that delete a remote copy of a bridged message do that there.
type RedactionPurger interface {
	Bridge
	// RedactionPurged is called once the core has deleted, in one transaction, the rows of the
	// bridge's declared tables whose SourceEventColumn is redacted; purged maps each table to
	// the number of rows deleted. An error is logged by the core. It is not called when nothing
	// was deleted, so an event handled again after a crash may not call it again.
	RedactionPurged(ctx context.Context, roomID id.RoomID, redacted id.EventID, purged map[string]int64) error
}

// purgeTarget is one declared table with rows created by a redacted event.
type purgeTarget struct {
	module string
	ut     UserTable
	actors []sql.NullString
}

// redactedEventID returns the event a redaction redacts: content.redacts in room v11 and later,
// the top-level redacts before.
func redactedEventID(evt *event.Event) id.EventID {
	if content, ok := evt.Content.Parsed.(*event.RedactionEventContent); ok && content.Redacts != "" {
		return content.Redacts
	}
	if evt.Redacts != "" {
		return evt.Redacts
	}
	if raw, ok := evt.Content.Raw["redacts"].(string); ok {
		return id.EventID(raw)
	}
	return ""
}

// handleRedaction purges the configuration a redacted event created, in every module's declared
// tables with a SourceEventColumn, if the redaction's sender may: they created the rows (the
// rows' user column is theirs), or their power level in the room is at least the room's redact
// level. Redactions by Custodian's own bot and ghosts never get here (the dispatcher drops
// echoes), so the bot redacting a message that carried a secret does not purge what the
// message configured. After the purge, bridges implementing [RedactionPurger] are told and the
// bot says in the room what was removed (kinds and counts only).
func (svc *Service) handleRedaction(ctx context.Context, evt *event.Event) error {
	redacted := redactedEventID(evt)
	if redacted == "" {
		return nil
	}
	log := zerolog.Ctx(ctx).With().Stringer("redacts", redacted).Logger()
	ctx = log.WithContext(ctx)
	inv := svc.inventory()
	var targets []*purgeTarget
	needRoomCheck := false
	for _, module := range sortedKeys(inv) {
		for _, ut := range inv[module] {
			if ut.SourceEventColumn == "" {
				continue
			}
			query := fmt.Sprintf(`SELECT %s FROM %s WHERE %s=$1`, quoteIdent(ut.UserColumn), quoteIdent(ut.Table), quoteIdent(ut.SourceEventColumn))
			args := []any{redacted}
			if ut.RoomColumn != "" {
				query += fmt.Sprintf(` AND %s=$2`, quoteIdent(ut.RoomColumn))
				args = append(args, evt.RoomID)
			}
			rows, err := svc.rawDB.Query(ctx, query, args...)
			if err != nil {
				return fmt.Errorf("failed to look up rows created by the redacted event in %s: %w", ut.Table, err)
			}
			target := &purgeTarget{module: module, ut: ut}
			for rows.Next() {
				var actor sql.NullString
				if err = rows.Scan(&actor); err != nil {
					_ = rows.Close()
					return err
				}
				target.actors = append(target.actors, actor)
			}
			if err = rows.Close(); err != nil {
				return err
			}
			if len(target.actors) > 0 {
				targets = append(targets, target)
				needRoomCheck = needRoomCheck || ut.RoomColumn == ""
			}
		}
	}
	if len(targets) == 0 {
		return nil
	}
	if needRoomCheck {
		// A table that does not record the room: make sure the redacted event was sent in this
		// room, or a moderator of one room could purge another room's configuration.
		if _, err := svc.as.BotIntent().GetEvent(ctx, evt.RoomID, redacted); err != nil {
			log.Debug().Err(err).Msg("Redacted event is not known in the redaction's room; not purging tables without a room column")
			targets = slices.DeleteFunc(targets, func(t *purgeTarget) bool { return t.ut.RoomColumn == "" })
		}
	}
	// The sender's power level matters only for rows someone else created.
	othersRows := slices.ContainsFunc(targets, func(t *purgeTarget) bool {
		return slices.ContainsFunc(t.actors, func(actor sql.NullString) bool { return actor.String != evt.Sender.String() })
	})
	moderator := false
	if othersRows {
		pl, err := svc.bot.roomPowerLevels(ctx, evt.RoomID)
		if err != nil {
			return fmt.Errorf("failed to check the redaction sender's power level: %w", err)
		}
		moderator = pl.GetUserLevel(evt.Sender) >= pl.Redact()
	}

	purged := map[string]map[string]int64{}
	err := svc.db.DoTxn(ctx, nil, func(ctx context.Context) error {
		clear(purged)
		for _, target := range targets {
			ut := target.ut
			query := fmt.Sprintf(`DELETE FROM %s WHERE %s=$1`, quoteIdent(ut.Table), quoteIdent(ut.SourceEventColumn))
			args := []any{redacted}
			if !moderator {
				args = append(args, evt.Sender)
				query += fmt.Sprintf(` AND %s=$%d`, quoteIdent(ut.UserColumn), len(args))
			}
			if ut.RoomColumn != "" {
				args = append(args, evt.RoomID)
				query += fmt.Sprintf(` AND %s=$%d`, quoteIdent(ut.RoomColumn), len(args))
			}
			res, err := svc.rawDB.Exec(ctx, query, args...)
			if err != nil {
				return fmt.Errorf("failed to purge rows of %s: %w", ut.Table, err)
			}
			if n, _ := res.RowsAffected(); n > 0 {
				if purged[target.module] == nil {
					purged[target.module] = map[string]int64{}
				}
				purged[target.module][ut.Table] += n
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(purged) == 0 {
		log.Info().Bool("moderator", moderator).Msg("Not purging configuration: the redaction's sender neither created it nor may redact others' events")
		return nil
	}
	var total int64
	for _, tables := range purged {
		for _, n := range tables {
			total += n
		}
	}
	log.Info().Int64("rows", total).Int("modules", len(purged)).Bool("by_moderator", moderator).
		Msg("Purged configuration created by a redacted event")

	for _, module := range slices.Sorted(maps.Keys(purged)) {
		bh := svc.bridgeByID[module]
		if bh == nil {
			continue
		}
		if purger, ok := bh.br.(RedactionPurger); ok {
			bctx := log.With().Str("bridge", bh.id).Logger().WithContext(ctx)
			if err := callSafely(func() error { return purger.RedactionPurged(bctx, evt.RoomID, redacted, purged[module]) }); err != nil {
				log.Warn().Err(err).Str("bridge", bh.id).Msg("Bridge failed to handle purged configuration")
			}
		}
	}
	return svc.announcePurge(ctx, evt, purged)
}

// announcePurge tells the room what a redaction purged, in kinds and counts, if the bot is
// there. The transaction ID is derived from the redaction, so a replay posts nothing new.
func (svc *Service) announcePurge(ctx context.Context, evt *event.Event, purged map[string]map[string]int64) error {
	bot := svc.as.BotIntent()
	if !svc.botInRoom(ctx, evt.RoomID) {
		return nil
	}
	var parts []string
	for _, module := range slices.Sorted(maps.Keys(purged)) {
		var n int64
		for _, c := range purged[module] {
			n += c
		}
		parts = append(parts, fmt.Sprintf("%s (%s)", format.SafeMarkdownCode(module), plural(n, "entry", "entries")))
	}
	content := format.RenderMarkdown("Removed the configuration created by that message: "+strings.Join(parts, ", ")+".", true, false)
	content.MsgType = event.MsgNotice
	_, err := bot.SendMessageEvent(ctx, evt.RoomID, event.EventMessage, &content, mautrix.ReqSendEvent{
		TransactionID: TxnIDFor(evt.ID, "redaction-purge"),
	})
	if err != nil {
		return fmt.Errorf("failed to announce purged configuration: %w", err)
	}
	return nil
}

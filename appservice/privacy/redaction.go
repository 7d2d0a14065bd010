package privacy

import (
	"context"
	"database/sql"
	"fmt"
	"maps"
	"slices"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// purgeTarget is one declared table with rows created by a redacted event.
type purgeTarget struct {
	module string
	ut     UserTable
	actors []sql.NullString
}

// RedactedEventID returns the event a redaction redacts: content.redacts in room v11 and later,
// the top-level redacts before (also when the content was not parsed). It returns "" for an
// event that is not a redaction or names no event.
func RedactedEventID(evt *event.Event) id.EventID {
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

// PurgeRedacted purges the configuration a redacted event created, in every module's declared
// tables with a SourceEventColumn, if sender (who sent the redaction in roomID) may: they
// created the rows (the rows' user column is theirs), or their power level in the room is at
// least the room's redact level. Tables without a RoomColumn are purged only if the homeserver
// confirms that redacted was sent in roomID. All deletions run in one transaction; then each
// module whose rows were purged is told (see [Host.RedactionPurged]). It returns the rows
// purged per module and table; none (and no error) when there was nothing the sender may
// purge. Callers must not pass redactions by Custodian's own users (the bot redacting a message
// that carried a secret must not purge what the message configured).
func (e *Engine) PurgeRedacted(ctx context.Context, roomID id.RoomID, sender id.UserID, redacted id.EventID) (map[string]map[string]int64, error) {
	if redacted == "" {
		return nil, nil
	}
	log := zerolog.Ctx(ctx).With().Stringer("redacts", redacted).Logger()
	ctx = log.WithContext(ctx)
	inv := e.host.Inventory()
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
				args = append(args, roomID)
			}
			rows, err := e.db.Query(ctx, query, args...)
			if err != nil {
				return nil, fmt.Errorf("failed to look up rows created by the redacted event in %s: %w", ut.Table, err)
			}
			target := &purgeTarget{module: module, ut: ut}
			for rows.Next() {
				var actor sql.NullString
				if err = rows.Scan(&actor); err != nil {
					_ = rows.Close()
					return nil, err
				}
				target.actors = append(target.actors, actor)
			}
			if err = rows.Close(); err != nil {
				return nil, err
			}
			if len(target.actors) > 0 {
				targets = append(targets, target)
				needRoomCheck = needRoomCheck || ut.RoomColumn == ""
			}
		}
	}
	if len(targets) == 0 {
		return nil, nil
	}
	if needRoomCheck {
		// A table that does not record the room: make sure the redacted event was sent in this
		// room, or a moderator of one room could purge another room's configuration.
		if !e.host.EventInRoom(ctx, roomID, redacted) {
			log.Debug().Msg("Redacted event is not known in the redaction's room; not purging tables without a room column")
			targets = slices.DeleteFunc(targets, func(t *purgeTarget) bool { return t.ut.RoomColumn == "" })
		}
	}
	// The sender's power level matters only for rows someone else created.
	othersRows := slices.ContainsFunc(targets, func(t *purgeTarget) bool {
		return slices.ContainsFunc(t.actors, func(actor sql.NullString) bool { return actor.String != sender.String() })
	})
	moderator := false
	if othersRows {
		var err error
		if moderator, err = e.host.MayRedactOthers(ctx, roomID, sender); err != nil {
			return nil, fmt.Errorf("failed to check the redaction sender's power level: %w", err)
		}
	}

	purged := map[string]map[string]int64{}
	err := e.db.DoTxn(ctx, nil, func(ctx context.Context) error {
		clear(purged)
		for _, target := range targets {
			ut := target.ut
			query := fmt.Sprintf(`DELETE FROM %s WHERE %s=$1`, quoteIdent(ut.Table), quoteIdent(ut.SourceEventColumn))
			args := []any{redacted}
			if !moderator {
				args = append(args, sender)
				query += fmt.Sprintf(` AND %s=$%d`, quoteIdent(ut.UserColumn), len(args))
			}
			if ut.RoomColumn != "" {
				args = append(args, roomID)
				query += fmt.Sprintf(` AND %s=$%d`, quoteIdent(ut.RoomColumn), len(args))
			}
			res, err := e.db.Exec(ctx, query, args...)
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
		return nil, err
	}
	if len(purged) == 0 {
		log.Info().Bool("moderator", moderator).Msg("Not purging configuration: the redaction's sender neither created it nor may redact others' events")
		return nil, nil
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
		if module == CoreModule {
			continue
		}
		bctx := log.With().Str("bridge", module).Logger().WithContext(ctx)
		if err := callSafely(func() error { return e.host.RedactionPurged(bctx, module, roomID, redacted, purged[module]) }); err != nil {
			log.Warn().Err(err).Str("bridge", module).Msg("Bridge failed to handle purged configuration")
		}
	}
	return purged, nil
}

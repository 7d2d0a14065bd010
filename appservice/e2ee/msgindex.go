package e2ee

import (
	"context"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"
)

// ValidateMessageIndex records the message index of a decrypted event (or finds it recorded by
// the same event) as the SQL store does. On PostgreSQL, outside a transaction, the insert commits
// with synchronous_commit off for its own transaction only: it returns without waiting for the
// WAL flush (one flush per decrypted event capped decryption at about 1,000 events/s, see
// BENCHMARKS.md).
//
// The index is still durable before anything depends on it. WAL is flushed in order, and the
// core marks an inbox event done only after handling it, with a synchronous commit, which
// flushes this insert with it. A crash before that loses at most indexes of events still in the
// inbox; their replay records them again before a forged duplicate (ordered after them in its
// room) is decrypted. SQLite runs in WAL mode with synchronous=NORMAL, which flushes at
// checkpoints only, so it needs no change; inside a transaction the caller's commit decides.
func (c *cachingStore) ValidateMessageIndex(ctx context.Context, sessionID id.SessionID, eventID id.EventID, index uint, timestamp int64) (bool, error) {
	if c.db.Dialect != dbutil.Postgres || c.inTxn(ctx) {
		return c.Store.ValidateMessageIndex(ctx, sessionID, eventID, index, timestamp)
	}
	var ok bool
	err := c.db.DoTxn(ctx, nil, func(ctx context.Context) error {
		if _, err := c.db.Exec(ctx, "SET LOCAL synchronous_commit = off"); err != nil {
			return err
		}
		var err error
		ok, err = c.Store.ValidateMessageIndex(ctx, sessionID, eventID, index, timestamp)
		return err
	})
	return ok, err
}

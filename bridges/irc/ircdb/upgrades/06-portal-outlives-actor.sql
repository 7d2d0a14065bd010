-- v6 (compatible with v1+): A portal outlives the user who linked it
-- transaction: sqlite-fkey-off
-- Erasing the user who linked a room no longer unlinks it: irc_portal.actor_mxid is set to NULL
-- (the bridge also clears source_event_id first), so the room stays bridged for the others in it.
-- only: postgres
ALTER TABLE irc_portal DROP CONSTRAINT IF EXISTS irc_portal_actor_mxid_fkey;
-- only: postgres for next 2 lines
ALTER TABLE irc_portal ADD CONSTRAINT irc_portal_actor_mxid_fkey
	FOREIGN KEY (actor_mxid) REFERENCES users (mxid) ON DELETE SET NULL ON UPDATE CASCADE;
-- only: sqlite until "end only"
CREATE TABLE irc_portal_v3 (
	network         TEXT   NOT NULL,
	channel         TEXT   NOT NULL,
	channel_name    TEXT   NOT NULL,
	room_id         TEXT   NOT NULL UNIQUE,
	actor_mxid      TEXT   REFERENCES users (mxid) ON DELETE SET NULL ON UPDATE CASCADE,
	source_event_id TEXT,
	created_at      BIGINT NOT NULL,
	PRIMARY KEY (network, channel)
);
INSERT INTO irc_portal_v3 (network, channel, channel_name, room_id, actor_mxid, source_event_id, created_at)
	SELECT network, channel, channel_name, room_id, actor_mxid, source_event_id, created_at FROM irc_portal;
DROP TABLE irc_portal;
ALTER TABLE irc_portal_v3 RENAME TO irc_portal;
CREATE INDEX irc_portal_actor_idx ON irc_portal (actor_mxid);
CREATE INDEX irc_portal_source_idx ON irc_portal (source_event_id);
-- end only sqlite

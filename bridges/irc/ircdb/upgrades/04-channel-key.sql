-- v4 (compatible with v1+): Keep the keys (+k) of linked channels, sealed
-- irc_channel_key is the key (+k) of a portal's channel, given with !irc link or !irc key. The
-- key is sealed in the credential vault under the key of the user who gave it (actor_mxid), so
-- that it is never stored in the clear; erasing that user shreds it and deletes the row, and so
-- does redacting the command that gave it (source_event_id). Unlinking the portal deletes it.
CREATE TABLE irc_channel_key (
	network         TEXT   NOT NULL,
	channel         TEXT   NOT NULL,
-- only: postgres
	channel_key     BYTEA  NOT NULL,
-- only: sqlite
	channel_key     BLOB   NOT NULL,
	actor_mxid      TEXT   NOT NULL REFERENCES users (mxid) ON DELETE CASCADE ON UPDATE CASCADE,
	room_id         TEXT   NOT NULL,
	source_event_id TEXT   NOT NULL,
	created_at      BIGINT NOT NULL,
	PRIMARY KEY (network, channel),
	FOREIGN KEY (network, channel) REFERENCES irc_portal (network, channel) ON DELETE CASCADE ON UPDATE CASCADE
);
CREATE INDEX irc_channel_key_actor_idx ON irc_channel_key (actor_mxid);
CREATE INDEX irc_channel_key_source_idx ON irc_channel_key (source_event_id);

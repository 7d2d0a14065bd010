-- v3 (compatible with v1+): Remember the messages queued for IRC across restarts
-- irc_outbox lists the Matrix messages queued for IRC and not sent yet, by ID only (never their
-- text), so that a restart sends them: the event's handler returns once it is queued, and the
-- core does not deliver it again. A row goes once its lines are sent and recorded in irc_message,
-- or once the message is dropped.
CREATE TABLE irc_outbox (
	event_id   TEXT   PRIMARY KEY,
	room_id    TEXT   NOT NULL,
	network    TEXT   NOT NULL,
	user_mxid  TEXT   NOT NULL REFERENCES users (mxid) ON DELETE CASCADE ON UPDATE CASCADE,
	-- When it was queued, in nanoseconds: the order a restart sends them in.
	queued_at  BIGINT NOT NULL
);
CREATE INDEX irc_outbox_user_idx ON irc_outbox (user_mxid);

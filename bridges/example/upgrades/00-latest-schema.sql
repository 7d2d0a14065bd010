-- v0 -> v1: Latest revision

-- example_link is a user's link to their account at the remote service: one row per user. It
-- records its provenance (the room and the !example link event that created or last replaced
-- it; redacting that event removes the link) and goes away with the user's users row.
CREATE TABLE example_link (
	user_mxid       TEXT   PRIMARY KEY REFERENCES users (mxid) ON DELETE CASCADE ON UPDATE CASCADE,
	room_id         TEXT   NOT NULL,
	-- The command event; also the remote subscription's ID (the Idempotency-Key it was created with).
	source_event_id TEXT   NOT NULL,
	created_at      BIGINT NOT NULL,
	-- The account token, sealed in the credential vault under the user's data key.
-- only: postgres
	token           BYTEA  NOT NULL
-- only: sqlite
	token           BLOB   NOT NULL
);

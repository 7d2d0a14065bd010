-- v0 -> v4: Latest revision

-- webhook_hook is one webhook in a room: inbound (a secret URL whose POSTs appear in the room as
-- the hook's ghost) or outbound (the room's messages are POSTed to a URL). Every row records its
-- provenance: who created or last rotated it (actor_mxid), in which room, when, and with which
-- command event (source_event_id; redacting that event removes the hook). The row goes away with
-- the actor's users row.
CREATE TABLE webhook_hook (
	id                   TEXT    PRIMARY KEY,
	room_id              TEXT    NOT NULL,
	name                 TEXT    NOT NULL,
	kind                 TEXT    NOT NULL CHECK (kind IN ('in', 'out')),
	actor_mxid           TEXT    NOT NULL REFERENCES users (mxid) ON DELETE CASCADE ON UPDATE CASCADE,
	source_event_id      TEXT    NOT NULL,
	created_at           BIGINT  NOT NULL,
	updated_at           BIGINT  NOT NULL,
	-- Inbound hooks: the SHA-256 (hex) of the URL's token. The token itself is never stored.
	token_hash           TEXT,
	-- Outbound hooks: the target URL and the signing secret, sealed in the credential vault
	-- under the actor's data key.
-- only: postgres for next 2 lines
	outbound_url         BYTEA,
	signing_secret       BYTEA,
-- only: sqlite for next 2 lines
	outbound_url         BLOB,
	signing_secret       BLOB,
	-- Whether the actor was sent the hook's secret (URL or signing secret) in a direct chat.
	secret_sent          BOOLEAN NOT NULL DEFAULT false,
	-- Set when the actor asked to be forgotten: the hook stops working at once, and the row is
	-- deleted with the users row.
	revoked_at           BIGINT,
	-- Outbound delivery status, shown by !webhook list.
	last_success_at      BIGINT,
	last_failure_at      BIGINT,
	last_error           TEXT,
	consecutive_failures INTEGER NOT NULL DEFAULT 0,
	dropped_count        BIGINT  NOT NULL DEFAULT 0,
	-- When the actor was sent a private notice that the hook's sealed secrets cannot be opened
	-- (a missing or wrong master key); cleared once they open again, so each such episode
	-- brings one notice.
	vault_notice_at      BIGINT,
	-- Outbound hooks: set when the hook was suspended because its owner (actor_mxid) left, was
	-- banned or lost the power level to configure webhooks; why, as shown by !webhook list.
	-- Cleared when the owner resumes it with the power level back.
	suspended_at         BIGINT,
	suspended_reason     TEXT,
	UNIQUE (room_id, name)
);
CREATE INDEX webhook_hook_actor_idx ON webhook_hook (actor_mxid);
CREATE INDEX webhook_hook_source_idx ON webhook_hook (source_event_id);

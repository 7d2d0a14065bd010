-- v0 -> v7 (compatible with v4+): Latest revision

-- users is the root of all personal data: every table that holds data about a Matrix user
-- references it ON DELETE CASCADE (or SET NULL for provenance on shared configuration) and is
-- declared in its owner's personal-data inventory.
CREATE TABLE users (
	mxid       TEXT    PRIMARY KEY,
	created_at BIGINT  NOT NULL,
	-- paused is set by !pause: bridges stop acting for the user but keep their data.
	paused     BOOLEAN NOT NULL DEFAULT false,
	-- management_room is the room in which the bot tells the user things meant for them alone
	-- (Host.NotifyUser); NULL until the first such message or command in a direct chat.
	management_room TEXT
);

-- as_txn remembers the IDs of acknowledged transactions, so a retried transaction is a no-op.
-- Rows older than database.processed_ttl are pruned.
CREATE TABLE as_txn (
	txn_id      TEXT    PRIMARY KEY,
	received_at BIGINT  NOT NULL,
	event_count INTEGER NOT NULL
);

-- as_inbox holds events that were acknowledged but not yet handled. A row is deleted in the same
-- transaction that marks its event done, so the inbox only ever holds unfinished work.
CREATE TABLE as_inbox (
-- only: postgres
	seq         BIGSERIAL PRIMARY KEY,
-- only: sqlite
	seq         INTEGER   PRIMARY KEY,
	txn_id      TEXT    NOT NULL,
	idx         INTEGER NOT NULL,
	event_id    TEXT,
	room_id     TEXT    NOT NULL,
	sender      TEXT    NOT NULL,
	ephemeral   BOOLEAN NOT NULL,
	-- event_json is the event as the homeserver sent it, only when it could not be sealed (the
	-- vault is off, or no master key is loaded); otherwise it is empty and event_sealed holds
	-- it sealed under an inbox key (appservice/vault, inboxkey.go), bound to the row's envelope.
	event_json  TEXT    NOT NULL,
	received_at BIGINT  NOT NULL,
-- only: postgres
	event_sealed BYTEA,
-- only: sqlite
	event_sealed BLOB,
	-- to_device marks a to-device event for the bot's device (end-to-end encryption); such rows
	-- have no room and no event ID, and are handled in a lane of their own.
	to_device   BOOLEAN NOT NULL DEFAULT false,
	UNIQUE (txn_id, idx)
);
CREATE UNIQUE INDEX as_inbox_event_idx ON as_inbox (event_id);
CREATE INDEX as_inbox_sender_idx ON as_inbox (sender);

-- as_event_done remembers handled event IDs, so an event is handled at most once even if the
-- homeserver sends it again in another transaction. Pruned after database.processed_ttl.
CREATE TABLE as_event_done (
	event_id TEXT   PRIMARY KEY,
	done_at  BIGINT NOT NULL
);
CREATE INDEX as_event_done_time_idx ON as_event_done (done_at);

-- as_bot_setup is a bot's setup in a room: who invited it, with which event, when it joined and
-- the configuration it had then. It ends (the row is deleted) when the bot is kicked, banned or
-- left alone in the room.
CREATE TABLE as_bot_setup (
	room_id         TEXT   NOT NULL,
	bot             TEXT   NOT NULL,
	inviter_mxid    TEXT   REFERENCES users (mxid) ON DELETE SET NULL ON UPDATE CASCADE,
	invite_event_id TEXT   NOT NULL,
	invited_at      BIGINT NOT NULL,
	joined_at       BIGINT NOT NULL,
	is_direct       BOOLEAN NOT NULL,
	config          TEXT   NOT NULL,
	PRIMARY KEY (room_id, bot)
);
CREATE INDEX as_bot_setup_inviter_idx ON as_bot_setup (inviter_mxid);

-- as_room records which bridges have claimed a room (a portal, a room with webhooks), with the
-- provenance of the claim. Events in the room are routed to every bridge that claimed it.
CREATE TABLE as_room (
	room_id    TEXT   NOT NULL,
	bridge_id  TEXT   NOT NULL,
	actor_mxid TEXT   REFERENCES users (mxid) ON DELETE SET NULL ON UPDATE CASCADE,
	event_id   TEXT,
	created_at BIGINT NOT NULL,
	PRIMARY KEY (room_id, bridge_id)
);
CREATE INDEX as_room_actor_idx ON as_room (actor_mxid);

-- as_activity records what users did through Custodian: the name of each command they ran, never
-- its arguments. One row per command event, so a command handled again after a crash is recorded
-- once. Rows expire after privacy.activity_retention.
CREATE TABLE as_activity (
	event_id  TEXT   PRIMARY KEY,
	user_mxid TEXT   NOT NULL REFERENCES users (mxid) ON DELETE CASCADE ON UPDATE CASCADE,
	room_id   TEXT   NOT NULL,
	action    TEXT   NOT NULL,
	at        BIGINT NOT NULL
);
CREATE INDEX as_activity_user_idx ON as_activity (user_mxid);
CREATE INDEX as_activity_at_idx ON as_activity (at);

-- as_erasure is one erasure job: pending (recorded, not yet committed), cleanup (the data is
-- gone; the receipt and leaving direct chats remain) or done. user_mxid names the user only while
-- the job is pending: the transaction that erases the data clears it. A job left pending or in
-- cleanup by a crash is finished at the next start.
CREATE TABLE as_erasure (
	job_id        TEXT   PRIMARY KEY,
	user_mxid     TEXT,
	user_hash     TEXT   NOT NULL,
	hash_key_id   TEXT   NOT NULL,
	erase_trigger TEXT   NOT NULL,
	scope         TEXT   NOT NULL,
	state         TEXT   NOT NULL,
	notify_room   TEXT,
	leave_rooms   TEXT,
	remote_failed TEXT   NOT NULL DEFAULT '',
	counts        TEXT,
	created_at    BIGINT NOT NULL,
	finished_at   BIGINT
);
CREATE INDEX as_erasure_user_idx ON as_erasure (user_mxid);
CREATE INDEX as_erasure_state_idx ON as_erasure (state);

-- as_tombstone records that an erasure happened: when, why, what it covered and how many rows,
-- under a keyed hash of the user ID (HMAC-SHA256), never the ID itself.
CREATE TABLE as_tombstone (
	job_id        TEXT   PRIMARY KEY,
	user_hash     TEXT   NOT NULL,
	hash_key_id   TEXT   NOT NULL,
	erase_trigger TEXT   NOT NULL,
	scope         TEXT   NOT NULL,
	erased_at     BIGINT NOT NULL,
	counts        TEXT   NOT NULL
);
CREATE INDEX as_tombstone_hash_idx ON as_tombstone (user_hash);

-- as_privacy_key holds keys the privacy operations generate once per database: the tombstone
-- hash key (see docs/ARCHITECTURE.md, "Tombstones", for why it lives here).
CREATE TABLE as_privacy_key (
	name       TEXT   PRIMARY KEY,
	key_hex    TEXT   NOT NULL,
	created_at BIGINT NOT NULL
);

-- as_deactivation_suspect records users whose account looks deactivated (their profile was
-- gone after they left a room) while Custodian has no admin access to the homeserver to confirm
-- it. Nobody is erased on such a guess: admins see the list in the admin API
-- (GET /_custodian/admin/v1/deactivation-suspects) and decide.
CREATE TABLE as_deactivation_suspect (
	user_mxid  TEXT    PRIMARY KEY REFERENCES users (mxid) ON DELETE CASCADE ON UPDATE CASCADE,
	reason     TEXT    NOT NULL,
	first_seen BIGINT  NOT NULL,
	last_seen  BIGINT  NOT NULL,
	leaves     INTEGER NOT NULL
);

-- as_shred_request holds at most one row: full erasures committed since since_at (Unix ms),
-- the latest at latest_at, and the master key has not been rotated out since
-- (vault.shred_backups). The erasing transaction writes it; a shred rotation that started after
-- latest_at deletes it. It survives restarts, so a request is never lost.
CREATE TABLE as_shred_request (
	id        INTEGER PRIMARY KEY CHECK (id = 1),
	since_at  BIGINT  NOT NULL,
	latest_at BIGINT  NOT NULL
);

-- as_export tracks each export file the bot sent (!export): the encrypted upload in the media
-- repository and the message that carries its key. When expires_at passes, or when the user is
-- erased, the message is redacted and the upload deleted through the homeserver's admin API
-- (when Custodian has admin access); then the row goes. event_id is NULL until the message is
-- sent. Erasure withdraws the user's files first; a file whose withdrawal failed (or that was
-- sent meanwhile) stays with user_mxid NULL, so the expiry loop retries it without the row
-- naming anyone.
CREATE TABLE as_export (
	mxc_uri    TEXT   PRIMARY KEY,
	user_mxid  TEXT   REFERENCES users (mxid) ON DELETE SET NULL ON UPDATE CASCADE,
	room_id    TEXT   NOT NULL,
	event_id   TEXT,
	created_at BIGINT NOT NULL,
	expires_at BIGINT NOT NULL
);
CREATE INDEX as_export_user_idx ON as_export (user_mxid);
CREATE INDEX as_export_expires_idx ON as_export (expires_at);

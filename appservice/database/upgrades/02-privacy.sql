-- v2 (compatible with v1+): Privacy operations

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

-- v3 (compatible with v2+): Deactivation suspects and persisted shred requests

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

-- v5 (compatible with v4+): Track the export files sent to users

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

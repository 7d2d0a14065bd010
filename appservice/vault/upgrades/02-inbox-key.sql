-- v2 (compatible with v1+): Inbox keys

-- as_vault_inbox_key holds the keys that seal the durable inbox's event content (as_inbox),
-- wrapped (AES-256-GCM) by a master key like a data key. The newest key that unwraps seals new
-- events; older ones stay only while inbox rows are sealed under them. They hold no user data:
-- the service as a whole owns them, so they do not reference users.
CREATE TABLE as_vault_inbox_key (
	key_id       INTEGER PRIMARY KEY,
	kek_id       TEXT    NOT NULL REFERENCES as_vault_kek (kek_id),
-- only: postgres
	wrapped      BYTEA   NOT NULL,
-- only: sqlite
	wrapped      BLOB    NOT NULL,
	created_at   BIGINT  NOT NULL,
	rewrapped_at BIGINT
);
CREATE INDEX as_vault_inbox_key_kek_idx ON as_vault_inbox_key (kek_id);

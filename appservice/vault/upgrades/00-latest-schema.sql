-- v0 -> v3 (compatible with v1+): Latest revision

-- as_vault_kek records every master key (KEK) that has wrapped a data key, by its ID, with a
-- check value: the first 16 bytes of HMAC-SHA256(key, "custodian-kek-check v1" || key ID). The
-- check value tells a wrong key file apart from the right one without touching any user's data;
-- it reveals nothing about the key. The key itself is never stored in the database.
CREATE TABLE as_vault_kek (
	kek_id      TEXT   PRIMARY KEY,
-- only: postgres
	check_value BYTEA  NOT NULL,
-- only: sqlite
	check_value BLOB   NOT NULL,
	created_at  BIGINT NOT NULL
);

-- as_vault_dek holds each user's data keys (DEKs), wrapped (AES-256-GCM) by a master key. A user
-- normally has one; a new one is added only when the newest cannot be unwrapped (its master key
-- is missing or wrong), so that the user can link again without destroying the old one. Deleting
-- the users row deletes these rows (crypto-shredding): every value sealed under them, in any
-- copy of any table, can no longer be opened with this database.
CREATE TABLE as_vault_dek (
	user_mxid    TEXT    NOT NULL REFERENCES users (mxid) ON DELETE CASCADE ON UPDATE CASCADE,
	dek_id       INTEGER NOT NULL,
	kek_id       TEXT    NOT NULL REFERENCES as_vault_kek (kek_id),
-- only: postgres
	wrapped      BYTEA   NOT NULL,
-- only: sqlite
	wrapped      BLOB    NOT NULL,
	created_at   BIGINT  NOT NULL,
	rewrapped_at BIGINT,
	PRIMARY KEY (user_mxid, dek_id)
);
CREATE INDEX as_vault_dek_kek_idx ON as_vault_dek (kek_id);

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

-- as_vault_crypto_key holds the key that pickles (encrypts) the olm account, olm and megolm
-- sessions and cross-signing secrets in the crypto_* tables, wrapped (AES-256-GCM) by a master
-- key like a data key, so a copy of the database without the master key yields no usable olm or
-- megolm key. There is one row (key_id 1). It holds no user data: the service's device owns it.
CREATE TABLE as_vault_crypto_key (
	key_id       INTEGER PRIMARY KEY,
	kek_id       TEXT    NOT NULL REFERENCES as_vault_kek (kek_id),
-- only: postgres
	wrapped      BYTEA   NOT NULL,
-- only: sqlite
	wrapped      BLOB    NOT NULL,
	created_at   BIGINT  NOT NULL,
	rewrapped_at BIGINT
);
CREATE INDEX as_vault_crypto_key_kek_idx ON as_vault_crypto_key (kek_id);

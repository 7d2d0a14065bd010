-- v3 (compatible with v1+): End-to-end encryption pickle key

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

-- v5 (compatible with v1+): Client certificates for SASL EXTERNAL, and the bridge's ident key
-- irc_cert is a user's client certificate for a network (!irc cert): the certificate itself
-- (public) and its fingerprints, and the private key sealed in the credential vault under the
-- user's data key. Redacting the !irc cert command that made it deletes it.
CREATE TABLE irc_cert (
	user_mxid       TEXT   NOT NULL REFERENCES users (mxid) ON DELETE CASCADE ON UPDATE CASCADE,
	network         TEXT   NOT NULL,
	fingerprint     TEXT   NOT NULL,
	fingerprint_512 TEXT   NOT NULL,
-- only: postgres until "end only"
	certificate     BYTEA  NOT NULL,
	private_key     BYTEA  NOT NULL,
-- end only postgres
-- only: sqlite until "end only"
	certificate     BLOB   NOT NULL,
	private_key     BLOB   NOT NULL,
-- end only sqlite
	room_id         TEXT   NOT NULL,
	source_event_id TEXT   NOT NULL,
	created_at      BIGINT NOT NULL,
	PRIMARY KEY (user_mxid, network)
);
CREATE INDEX irc_cert_source_idx ON irc_cert (source_event_id);

-- irc_key holds the bridge's own random keys, made on first start: "ident" keys the hash
-- that ident user names are made of. It is about no user.
CREATE TABLE irc_key (
	name  TEXT PRIMARY KEY,
-- only: postgres
	value BYTEA NOT NULL
-- only: sqlite
	value BLOB  NOT NULL
);

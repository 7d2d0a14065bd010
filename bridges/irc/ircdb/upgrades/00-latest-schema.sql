-- v0 -> v6: Latest revision

-- irc_portal links a Matrix room to an IRC channel. A portal made by joining its alias
-- (#irc_<network>_<channel>) belongs to nobody: actor_mxid and source_event_id are NULL. A
-- portal made with !irc link records its provenance; redacting that command unlinks the room.
-- Erasing the user who issued it does not: the portal stays for the others in the room, and no
-- longer names the user (actor_mxid SET NULL; the bridge clears source_event_id first).
CREATE TABLE irc_portal (
	network         TEXT   NOT NULL,
	-- The channel folded under the network's casemapping, and as it was first written.
	channel         TEXT   NOT NULL,
	channel_name    TEXT   NOT NULL,
	room_id         TEXT   NOT NULL UNIQUE,
	actor_mxid      TEXT   REFERENCES users (mxid) ON DELETE SET NULL ON UPDATE CASCADE,
	source_event_id TEXT,
	created_at      BIGINT NOT NULL,
	PRIMARY KEY (network, channel)
);
CREATE INDEX irc_portal_actor_idx ON irc_portal (actor_mxid);
CREATE INDEX irc_portal_source_idx ON irc_portal (source_event_id);

-- irc_channel_key is the key (+k) of a portal's channel, given with !irc link or !irc key. The
-- key is sealed in the credential vault under the key of the user who gave it (actor_mxid), so
-- that it is never stored in the clear; erasing that user shreds it and deletes the row, and so
-- does redacting the command that gave it (source_event_id). Unlinking the portal deletes it.
CREATE TABLE irc_channel_key (
	network         TEXT   NOT NULL,
	channel         TEXT   NOT NULL,
-- only: postgres
	channel_key     BYTEA  NOT NULL,
-- only: sqlite
	channel_key     BLOB   NOT NULL,
	actor_mxid      TEXT   NOT NULL REFERENCES users (mxid) ON DELETE CASCADE ON UPDATE CASCADE,
	room_id         TEXT   NOT NULL,
	source_event_id TEXT   NOT NULL,
	created_at      BIGINT NOT NULL,
	PRIMARY KEY (network, channel),
	FOREIGN KEY (network, channel) REFERENCES irc_portal (network, channel) ON DELETE CASCADE ON UPDATE CASCADE
);
CREATE INDEX irc_channel_key_actor_idx ON irc_channel_key (actor_mxid);
CREATE INDEX irc_channel_key_source_idx ON irc_channel_key (source_event_id);

-- irc_account is a user's linked account on a network: the SASL account name and its password,
-- sealed in the credential vault under the user's data key. Redacting the !irc login command
-- that stored it deletes it.
CREATE TABLE irc_account (
	user_mxid       TEXT   NOT NULL REFERENCES users (mxid) ON DELETE CASCADE ON UPDATE CASCADE,
	network         TEXT   NOT NULL,
	account         TEXT   NOT NULL,
-- only: postgres
	sasl_password   BYTEA  NOT NULL,
-- only: sqlite
	sasl_password   BLOB   NOT NULL,
	room_id         TEXT   NOT NULL,
	source_event_id TEXT   NOT NULL,
	created_at      BIGINT NOT NULL,
	PRIMARY KEY (user_mxid, network)
);
CREATE INDEX irc_account_source_idx ON irc_account (source_event_id);

-- irc_nick is the nick a user chose for their puppet on a network (!irc nick), instead of the
-- network's nick template.
CREATE TABLE irc_nick (
	user_mxid       TEXT   NOT NULL REFERENCES users (mxid) ON DELETE CASCADE ON UPDATE CASCADE,
	network         TEXT   NOT NULL,
	nick            TEXT   NOT NULL,
	room_id         TEXT   NOT NULL,
	source_event_id TEXT   NOT NULL,
	updated_at      BIGINT NOT NULL,
	PRIMARY KEY (user_mxid, network)
);
CREATE INDEX irc_nick_source_idx ON irc_nick (source_event_id);

-- irc_pm is a direct chat between a user and the ghost of an IRC user, for private messages.
CREATE TABLE irc_pm (
	user_mxid  TEXT   NOT NULL REFERENCES users (mxid) ON DELETE CASCADE ON UPDATE CASCADE,
	network    TEXT   NOT NULL,
	-- The IRC nick, folded under the network's casemapping.
	nick       TEXT   NOT NULL,
	room_id    TEXT   NOT NULL UNIQUE,
	created_at BIGINT NOT NULL,
	PRIMARY KEY (user_mxid, network, nick)
);

-- irc_message maps a bridged message's Matrix event to its IRC message IDs (the msgid tag, where
-- the server gives one), for replies and redactions: one row per IRC line the message became
-- (part 0, 1, …). It never holds the message's text. Rows of messages sent from Matrix name their
-- sender (user_mxid); rows of messages from IRC do not. An edit's rows name the event it edits
-- (original_event_id), so that redacting the original removes them too. Rows expire after the
-- bridge's message_ttl.
CREATE TABLE irc_message (
	event_id   TEXT    NOT NULL,
	part       INTEGER NOT NULL,
	room_id    TEXT    NOT NULL,
	network    TEXT    NOT NULL,
	target     TEXT    NOT NULL,
	msgid      TEXT,
	user_mxid  TEXT    REFERENCES users (mxid) ON DELETE CASCADE ON UPDATE CASCADE,
	created_at BIGINT  NOT NULL,
	original_event_id TEXT,
	PRIMARY KEY (event_id, part)
);
CREATE INDEX irc_message_msgid_idx ON irc_message (network, msgid);
CREATE INDEX irc_message_user_idx ON irc_message (user_mxid);
CREATE INDEX irc_message_created_idx ON irc_message (created_at);
CREATE INDEX irc_message_original_idx ON irc_message (original_event_id);

-- irc_media is one link the bridge gave IRC users for a Matrix user's media (IRC users have no
-- Matrix access token, so the homeserver's own links do not open for them). The link's token is
-- kept only as its SHA-256; the row goes, and the link stops working, when the message is
-- redacted (for an edit's media: the edit, or the original it edits, original_event_id), the row
-- expires (message_ttl) or its sender is erased. A link to a long message's full text has an
-- empty mxc: the text is read from the homeserver when the link is opened, never stored here.
CREATE TABLE irc_media (
	token_hash TEXT   PRIMARY KEY,
	event_id   TEXT   NOT NULL,
	room_id    TEXT   NOT NULL,
	mxc        TEXT   NOT NULL,
	user_mxid  TEXT   NOT NULL REFERENCES users (mxid) ON DELETE CASCADE ON UPDATE CASCADE,
	created_at BIGINT NOT NULL,
	original_event_id TEXT
);
CREATE INDEX irc_media_event_idx ON irc_media (event_id);
CREATE INDEX irc_media_user_idx ON irc_media (user_mxid);
CREATE INDEX irc_media_created_idx ON irc_media (created_at);
CREATE INDEX irc_media_original_idx ON irc_media (original_event_id);

-- irc_outbox lists the Matrix messages queued for IRC and not sent yet, by ID only (never their
-- text), so that a restart sends them: the event's handler returns once it is queued, and the
-- core does not deliver it again. A row goes once its lines are sent and recorded in irc_message,
-- or once the message is dropped.
CREATE TABLE irc_outbox (
	event_id   TEXT   PRIMARY KEY,
	room_id    TEXT   NOT NULL,
	network    TEXT   NOT NULL,
	user_mxid  TEXT   NOT NULL REFERENCES users (mxid) ON DELETE CASCADE ON UPDATE CASCADE,
	-- When it was queued, in nanoseconds: the order a restart sends them in.
	queued_at  BIGINT NOT NULL
);
CREATE INDEX irc_outbox_user_idx ON irc_outbox (user_mxid);
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

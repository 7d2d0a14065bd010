package e2ee

import "github.com/custodian-matrix/custodian/appservice/privacy"

// Module is the module name of the crypto store's personal-data tables, in exports, erasure
// counts and inventory errors.
const Module = "crypto"

const (
	// userIdentityKeys selects the identity (curve25519) keys of the user's devices, through
	// which the crypto store links sessions to users. Deleted devices are kept in crypto_device
	// for that reason: they still map old keys to their user.
	userIdentityKeys = `SELECT identity_key FROM crypto_device WHERE user_id=$1`
	// userInboundSessions matches the megolm sessions the user's devices created (the user sent
	// messages with them) or the user forwarded to us.
	userInboundSessions = `source_user=$1 OR sender_key IN (` + userIdentityKeys + `)`
	// sharedWithUser selects the bot's outbound megolm sessions it sent to the user's devices.
	sharedWithUser = `SELECT session_id FROM crypto_megolm_outbound_session_shared WHERE user_id=$1`
)

// Inventory declares the crypto store's tables about Matrix users. Every table is erased by
// deleting rows (the crypto store's rows do not reference users), and export never includes key
// material (identity_key, signing_key, session, key, signature): only which devices of the user
// the service tracks, and how many sessions it holds with them.
//
// Erasure deletes in reverse declaration order, so crypto_device, through which the other tables
// find the user's rows, is declared first and deleted last; crypto_message_index is declared
// after crypto_megolm_inbound_session for the same reason.
//
// The bot's outbound megolm sessions name no user, but the ones it shared with the user's
// devices are declared through crypto_megolm_outbound_session_shared: erasing the user deletes
// them (declared after that table, so deleted before it), and the next message in those rooms
// starts a new session that the erased user's devices never receive.
//
// Retention (encryption.session_retention, [privacy.RetentionSessions]) deletes inbound megolm
// sessions by received_at and outbound ones by created_at; the message indexes and sharing
// records of deleted sessions go with them as orphans. After that, a copy of the database
// cannot decrypt the messages those sessions encrypted, even with the master key.
//
// The bot's own tables (crypto_account, crypto_secrets, crypto_olm_message_hash) name no user
// and are not declared.
func Inventory() []privacy.UserTable {
	return []privacy.UserTable{
		{
			Table: "crypto_device", UserColumn: "user_id", Policy: privacy.EraseDeleteRows,
			Export:      []string{"device_id", "name", "trust", "deleted"},
			Description: "your devices that Custodian's bot encrypts messages for (their IDs, names and trust, never their keys)",
		},
		{
			Table: "crypto_tracked_user", UserColumn: "user_id", Policy: privacy.EraseDeleteRows,
			Export:      []string{"devices_outdated"},
			Description: "that the bot follows changes to your device list, to encrypt for your new devices",
		},
		{
			Table: "crypto_megolm_inbound_session", UserColumn: "source_user", Policy: privacy.EraseDeleteRows,
			Match:      userInboundSessions,
			Export:     []string{"room_id"},
			TimeColumn: "received_at", TimeKind: privacy.TimeSQLTimestamp, RetentionClass: privacy.RetentionSessions,
			Description: "the keys to decrypt encrypted messages you sent in rooms with the bot (exported as the room only, never the key)",
		},
		{
			Table: "crypto_message_index", UserColumn: "session_id", Policy: privacy.EraseDeleteRows,
			Match:       `session_id IN (SELECT session_id FROM crypto_megolm_inbound_session WHERE ` + userInboundSessions + `)`,
			Orphaned:    `NOT EXISTS (SELECT 1 FROM crypto_megolm_inbound_session s WHERE s.session_id=crypto_message_index.session_id)`,
			Description: "a record of which of your encrypted messages the bot decrypted, to refuse replayed ones (counted only)",
		},
		{
			Table: "crypto_olm_session", UserColumn: "sender_key", Policy: privacy.EraseDeleteRows,
			Match:       `sender_key IN (` + userIdentityKeys + `)`,
			Description: "encrypted channels between the bot's device and yours, used to exchange message keys (counted only)",
		},
		{
			Table: "crypto_megolm_outbound_session_shared", UserColumn: "user_id", Policy: privacy.EraseDeleteRows,
			Orphaned:    `NOT EXISTS (SELECT 1 FROM crypto_megolm_outbound_session o WHERE o.session_id=crypto_megolm_outbound_session_shared.session_id)`,
			Description: "which of the bot's message keys were sent to your devices (counted only)",
		},
		{
			Table: "crypto_megolm_outbound_session", UserColumn: "session_id", Policy: privacy.EraseDeleteRows,
			Match:      `session_id IN (` + sharedWithUser + `)`,
			Export:     []string{"room_id"},
			TimeColumn: "created_at", TimeKind: privacy.TimeSQLTimestamp, RetentionClass: privacy.RetentionSessions,
			Description: "the bot's current message keys for rooms it shares with you, which it sent to your devices (exported as the room only, never the key); erasing your data replaces them",
		},
		{
			Table: "crypto_cross_signing_keys", UserColumn: "user_id", Policy: privacy.EraseDeleteRows,
			Export:      []string{"usage"},
			Description: "your cross-signing keys, to tell your verified devices apart (exported as their usage, never the key)",
		},
		{
			Table: "crypto_cross_signing_signatures", UserColumn: "signed_user_id", Policy: privacy.EraseDeleteRows,
			Match:       `signed_user_id=$1 OR signer_user_id=$1`,
			Description: "signatures made by or on your cross-signing keys and devices (counted only)",
		},
	}
}

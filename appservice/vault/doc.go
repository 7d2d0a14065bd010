// Package vault seals users' credentials at rest and keeps them out of logs, errors and output.
//
// Every credential travels in memory as a [Secret], which prints [Redacted] everywhere. At rest
// it is a sealed value that a bridge stores in its own table; only a [Vault] opens it again.
//
// # Keys
//
// Each user has a random 256-bit data key (DEK), stored in as_vault_dek wrapped (AES-256-GCM) by
// a master key (KEK). Master keys live outside the database, in a key file or an environment
// variable ([KeySource]), one per line:
//
//	custodian-kek v1 <key id> <base64 of 32 random bytes>
//
// The key ID is random (16 hex digits from "custodian keys generate"), so logs and "custodian
// keys status" can name a key without revealing anything about it. A key file may hold several
// keys: the first is the current key, which wraps new data keys; the others are previous keys,
// used only to unwrap data keys not yet re-wrapped. The database records each master key's check
// value (an HMAC of a constant under the key, in as_vault_kek), so a different key under a known
// ID is recognised as wrong instead of being used.
//
// # Sealed values
//
// A sealed value is
//
//	version (1 byte, 1) || data key ID (4 bytes) || nonce (12 bytes) || ciphertext || tag (16 bytes)
//
// under AES-256-GCM with the user's data key, whose associated data is the header and the
// length-prefixed triple (user, bridge, name): opened for any other triple, or after any byte
// changed, it fails with [ErrDecrypt]. Wrapped data keys are bound the same way to (master key
// ID, user, data key ID).
//
// A user normally has one data key. If their newest cannot be unwrapped (its master key is
// missing or wrong), [Vault.Seal] gives them a new one instead of failing, so they can link
// again, and keeps the old one: if the master key comes back, their older values open again.
//
// # Failures
//
// A missing or wrong master key never stops the service. The vault logs an Error naming the key
// source, the key ID, how many data keys depend on it and what to do; [Vault.Open] fails with
// [ErrKeyUnavailable] for the affected values only, and everyone else's keep working. Without any
// usable current key, [Vault.Seal] fails with [ErrNoKey] when it needs a new data key.
//
// # Rotation, online
//
// The key source is re-read every [DefaultReloadInterval], and at once when a data key wrapped
// by an unknown key ID turns up (for the same ID at most once per [DefaultUnknownKeyReloadGap]). To rotate: add a new
// current key in front of the old one ("custodian keys add"); the service picks it up within a
// minute, or at once when it meets a data key wrapped by it; "custodian keys rotate" re-wraps
// every data key under it ([Vault.Rotate]: batches, each its own transaction, compare-and-swap
// updates, safe to interrupt and re-run); "custodian keys status" shows no data key left under
// the old key; "custodian keys retire <id>" removes the old key. Rotation changes only the
// wrapping of data keys, never the data keys, so sealed values are not touched and cached keys
// stay valid.
//
// # Erasure and crypto-shredding
//
// as_vault_dek references users(mxid) ON DELETE CASCADE: deleting a users row deletes the user's
// data keys, and the erasure code then calls [Vault.Forget] to drop them from memory. From then
// on no value ever sealed for the user (in any table, copy or export) can be opened through the
// database. A full backup of the database taken earlier still holds the wrapped data key; it
// becomes unreadable once the master key that wrapped it is retired (rotate, then retire the
// old key and destroy its copies). Rotating regularly bounds how long backups can reveal an
// erased user's secrets.
//
// # Inbox keys
//
// The service's durable inbox seals each event's content under an inbox key ([Vault.SealInbox],
// [Vault.OpenInbox]), so that no message body or command typed in a chat reaches the database,
// its WAL or its backups in plaintext. Inbox keys are random 256-bit keys in as_vault_inbox_key,
// wrapped by the master key like data keys (with their own associated-data label): [Vault.Rotate]
// re-wraps them, [Vault.Status] counts them (KeyStatus.InboxKeys; KeyStatus.Wraps adds them to the data keys), and
// [Vault.RetireKey] refuses a master key that still wraps one. [Vault.LoadInboxKeys] unwraps
// them into memory, creating a new one when none unwraps; an inbox key whose master key is
// missing is kept, with the events sealed under it. [Vault.ReplaceInboxKey] is the shred step:
// a new key, every pending event re-sealed under it and the old keys deleted, in one
// transaction.
//
// # Caching
//
// Unwrapped data keys are cached in memory for speed, bounded in number ([DefaultCacheSize],
// least recently used out) and in age ([DefaultCacheTTL]). [Vault.Seal] always checks the
// database for the user's data keys; [Vault.Open] trusts the cache.
package vault

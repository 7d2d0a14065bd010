// Package privacy is Custodian's personal-data engine: the inventory of the tables that hold
// data about Matrix users and the schema check that keeps it true, erasure (jobs, the runner,
// tombstones), export, the purge of configuration whose source event was redacted, and
// retention sweeps. The core (package appservice) hosts it through the small [Host]
// interface (the modules' inventories, their remote undo, the bot's receipts and rooms, the
// homeserver checks a redaction needs) and keeps dispatch, deactivation detection and the
// command handlers (!mydata, !export, !forget) that call it. This package never imports the
// core nor any bridge; bridges reach its types through aliases in package appservice.
//
// The engine keeps these invariants (numbers as in docs/ARCHITECTURE.md):
//
//   - Every table with personal data is declared (invariant 3). [CheckInventory] compares every
//     module's inventory with the migrated schema and fails on an undeclared table that
//     references users(mxid) or has a user-ID column, on a declared table or column that does
//     not exist, and on a foreign key that does not match the table's [ErasePolicy]; the service
//     does not start until it passes. Export and erasure work from the same inventory, so a
//     declared table is always exported and always erased.
//   - After an erasure, no row names the user (invariant 2). [Engine.Erase] records a job
//     first, asks the modules to undo their remote side effects, then in one transaction
//     deletes the users row (cascading to every EraseCascade table and the vault's data key,
//     which makes every earlier ciphertext of the user unreadable), the EraseDeleteRows rows and
//     the state cache's entries about the user, unlinks EraseSetNull provenance, clears the
//     job's user ID and records a tombstone under a keyed hash. An interrupted erasure is
//     finished by the runner, at the latest at the next start; repeating a request erases once.
//   - Erasure logs never hold the user ID (invariant 7): its log lines come from the engine's
//     own logger, never from the caller's context logger, and carry the job ID and a prefix of
//     the keyed hash only. No log line of the engine holds message bodies or secrets; exports
//     list secret columns as "[redacted]" and never read their values.
//   - Nobody is erased by guess (invariant 8): every erasure carries its trigger (the user, an
//     admin, or a deactivation the homeserver confirmed; the caller checks it), and the rooms
//     an erasure leaves are re-checked at clean-up so that a room anyone else joined stays.
//   - End-to-end encryption state is personal data like any other (invariant 11): a module
//     declares its tables, and the engine exports, erases and expires them from the
//     declaration alone.
//   - A redaction purges only what its sender created, or anything the event created if the
//     sender may redact others' events in the room, and only rows of that room.
//   - Rows with a retention (their own, or a retention class the administrator configures) are
//     deleted once older than it; on PostgreSQL one instance sweeps at a time.
package privacy

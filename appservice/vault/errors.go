package vault

import "errors"

var (
	// ErrKeyUnavailable is returned (wrapped, with the key ID) by [Vault.Open] when the data key
	// the value was sealed with cannot be unwrapped: the master key that wraps it is not in the
	// key source (missing key file, key retired too early), is the wrong key for its ID, or the
	// wrapped data key is damaged. The value is intact and opens again once the right key is back.
	// Callers tell the user that their stored credentials are unavailable and that they can link
	// again; [Vault.Seal] then gives them a new data key without destroying the old one. The vault
	// has already logged what the admin must do.
	ErrKeyUnavailable = errors.New("vault: master key unavailable")

	// ErrDecrypt is returned (possibly wrapped) by [Vault.Open] when the value cannot be opened
	// under the given (user, bridge, name) and never will be: it was tampered with, truncated,
	// copied from another user, bridge or name, or its data key no longer exists because the
	// user was erased. Callers treat the stored value as lost, and log it as a possible
	// integrity problem if the user still exists.
	ErrDecrypt = errors.New("vault: sealed value cannot be opened")

	// ErrNoKey is returned by [Vault.Seal] when the user needs a new data key and there is no
	// usable current master key to wrap it (the key file is missing or unreadable, or its first
	// key does not match the check value recorded in the database), and by [Vault.Rotate] for the
	// same reason. Callers tell the user that credentials cannot be stored right now; the admin
	// must fix the key file (the vault logs how).
	ErrNoKey = errors.New("vault: no usable current master key")

	// ErrNoUser is returned by [Vault.Seal] when the user has no users row, so their data key
	// cannot be stored. Callers must call Host.EnsureUser (in the same transaction) first.
	ErrNoUser = errors.New("vault: user has no users row")
)

package vault

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
)

// KeySize is the size of a master key and of a data key, in bytes (AES-256).
const KeySize = 32

// keyLinePrefix starts every key line of a key file or of the key environment variable.
const keyLinePrefix = "custodian-kek v1 "

// keyIDPattern is what a key ID may look like. Generated IDs are 16 lowercase hex digits.
var keyIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// Key is a master key (KEK): 32 random bytes and a random ID that names the key in the database,
// in logs and in "custodian keys status" without revealing it. Its key material never leaves the
// package except through [FormatKeys] (for writing key files); every formatting path prints only
// the ID. The zero Key is not a valid key.
type Key struct {
	id       string
	material [KeySize]byte
}

// GenerateKey returns a new master key with a random ID, from crypto/rand.
func GenerateKey() (Key, error) {
	var k Key
	var idBytes [8]byte
	if _, err := rand.Read(idBytes[:]); err != nil {
		return Key{}, fmt.Errorf("failed to generate key ID: %w", err)
	}
	k.id = hex.EncodeToString(idBytes[:])
	if _, err := rand.Read(k.material[:]); err != nil {
		return Key{}, fmt.Errorf("failed to generate key: %w", err)
	}
	return k, nil
}

// ID returns the key's ID.
func (k Key) ID() string { return k.id }

// String returns "custodian-kek <id> [redacted]".
func (k Key) String() string { return "custodian-kek " + k.id + " " + Redacted }

// GoString returns the same as [Key.String], for %#v.
func (k Key) GoString() string { return k.String() }

// Format prints [Key.String] for every verb, so no fmt path reaches the key material.
func (k Key) Format(f fmt.State, verb rune) { _, _ = f.Write([]byte(k.String())) }

// MarshalText returns [Key.String], for encoders that use encoding.TextMarshaler (JSON, YAML).
func (k Key) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// checkValue is the key's check value, recorded in as_vault_kek when the key first wraps a data
// key, so that a different key under the same ID (a damaged or mixed-up key file) is recognised.
func (k Key) checkValue() []byte {
	mac := hmac.New(sha256.New, k.material[:])
	mac.Write([]byte("custodian-kek-check v1\x00" + k.id))
	return mac.Sum(nil)[:16]
}

// aead returns AES-256-GCM under the key.
func (k Key) aead() cipher.AEAD {
	return newAEAD(k.material[:])
}

// newAEAD returns AES-256-GCM under a 32-byte key. It panics on a key of another size, which is
// a programmer error.
func newAEAD(key []byte) cipher.AEAD {
	block, err := aes.NewCipher(key)
	if err != nil {
		panic(fmt.Errorf("vault: %w", err))
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		panic(fmt.Errorf("vault: %w", err))
	}
	return gcm
}

// ParseKeys reads a key ring: one or more keys, each written "custodian-kek v1 <id> <base64 of 32
// bytes>", separated by newlines or semicolons (the form for an environment variable). Blank
// lines and lines starting with # are ignored. The first key is the current key, which wraps new
// data keys; the others are previous keys, kept to unwrap data keys that "custodian keys rotate"
// has not re-wrapped yet.
//
// ParseKeys fails if there is no key, a key is malformed or an ID appears twice. Its errors name
// the line and never include key material.
func ParseKeys(text []byte) ([]Key, error) {
	var keys []Key
	seen := make(map[string]bool)
	for lineNo, line := range strings.Split(string(text), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		for _, item := range strings.Split(line, ";") {
			item = strings.TrimSpace(item)
			if item == "" {
				continue
			}
			k, err := parseKey(item)
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", lineNo+1, err)
			}
			if seen[k.id] {
				return nil, fmt.Errorf("line %d: key ID %s appears twice", lineNo+1, k.id)
			}
			seen[k.id] = true
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil, errors.New(`holds no key (expected a line "custodian-kek v1 <id> <key>", written by custodian keys generate)`)
	}
	return keys, nil
}

func parseKey(item string) (Key, error) {
	rest, ok := strings.CutPrefix(item, keyLinePrefix)
	if !ok {
		return Key{}, errors.New(`not a key: expected "custodian-kek v1 <id> <key>"`)
	}
	fields := strings.Fields(rest)
	if len(fields) != 2 {
		return Key{}, errors.New(`not a key: expected "custodian-kek v1 <id> <key>"`)
	}
	var k Key
	k.id = fields[0]
	if !keyIDPattern.MatchString(k.id) {
		return Key{}, errors.New("key ID must be 1 to 64 letters, digits, - or _")
	}
	material, err := base64.StdEncoding.DecodeString(fields[1])
	if err != nil || len(material) != KeySize {
		return Key{}, fmt.Errorf("key %s is not base64 of %d bytes", k.id, KeySize)
	}
	copy(k.material[:], material)
	clear(material)
	return k, nil
}

// FormatKeys writes keys as a key file: a comment, then one line per key, the current key first.
// The result holds key material: write it only to a file of mode 0600.
func FormatKeys(keys ...Key) []byte {
	var buf bytes.Buffer
	buf.WriteString("# Custodian master keys. Keep this file private (mode 0600) and back it up: without it,\n" +
		"# the credentials Custodian stores cannot be opened. The first key is the current one; any\n" +
		"# others are previous keys, needed until \"custodian keys rotate\" has re-wrapped every data key.\n")
	for _, k := range keys {
		buf.WriteString(keyLinePrefix)
		buf.WriteString(k.id)
		buf.WriteByte(' ')
		buf.WriteString(base64.StdEncoding.EncodeToString(k.material[:]))
		buf.WriteByte('\n')
	}
	return buf.Bytes()
}

// ErrKeyFileExists is returned by [WriteNewKeyFile] when the file already exists: a key file is
// never overwritten, since that would destroy the key every stored credential depends on.
var ErrKeyFileExists = errors.New("vault: key file already exists; refusing to overwrite it")

// WriteNewKeyFile writes keys (see [FormatKeys]) to a new file at path with mode 0600. It is
// atomic: the file appears complete or not at all, written to a temporary file in the same
// directory, synced, then linked into place. It fails with [ErrKeyFileExists] if path exists.
func WriteNewKeyFile(path string, keys ...Key) error {
	tmp, err := writeTemp(path, FormatKeys(keys...))
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	// A hard link fails if the target exists, so a concurrent writer cannot be overwritten.
	if err = os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return ErrKeyFileExists
		}
		return fmt.Errorf("failed to write key file: %w", err)
	}
	syncDir(filepath.Dir(path))
	return nil
}

// ReplaceKeyFile replaces the key file at path with keys, atomically (temporary file, sync,
// rename), with mode 0600 and the old file's owner and group, so that a service running as
// another user than the admin can still read it. A running Custodian re-reading the file sees
// either the old keys or the new ones, never a partial file. "custodian keys add" and "custodian
// keys retire" use it. It fails, leaving the old file, if the owner cannot be kept.
func ReplaceKeyFile(path string, keys ...Key) error {
	tmp, err := writeTemp(path, FormatKeys(keys...))
	if err != nil {
		return err
	}
	if err = keepOwner(path, tmp); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("failed to replace key file: %w", err)
	}
	syncDir(filepath.Dir(path))
	return nil
}

// keepOwner gives tmp the owner and group of the file at path, if it exists and they differ.
func keepOwner(path, tmp string) error {
	orig, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("failed to read key file: %w", err)
	}
	created, err := os.Stat(tmp)
	if err != nil {
		return fmt.Errorf("failed to write key file: %w", err)
	}
	want, ok1 := orig.Sys().(*syscall.Stat_t)
	got, ok2 := created.Sys().(*syscall.Stat_t)
	if !ok1 || !ok2 || (want.Uid == got.Uid && want.Gid == got.Gid) {
		return nil
	}
	if err = os.Chown(tmp, int(want.Uid), int(want.Gid)); err != nil {
		return fmt.Errorf("failed to give the new key file the old one's owner (run this as the user that owns %s): %w", path, err)
	}
	return nil
}

// writeTemp writes data to a new temporary file (mode 0600) next to path and syncs it.
func writeTemp(path string, data []byte) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return "", fmt.Errorf("failed to create key file: %w", err)
	}
	name := f.Name()
	err = f.Chmod(0o600)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if closeErr := f.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		_ = os.Remove(name)
		return "", fmt.Errorf("failed to write key file: %w", err)
	}
	return name, nil
}

// syncDir makes a rename or link in dir durable; failures only weaken durability, so they are
// ignored.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
}

// KeySource is where a [Vault] reads its master keys. The vault reads it at start-up, every
// [Options.ReloadInterval], and when it meets a data key wrapped by a key ID it does not know, so
// a key added to a key file reaches a running service without a restart.
//
// Implementations must be safe for concurrent use; LoadKeys may block on I/O briefly.
type KeySource interface {
	// LoadKeys returns the key ring, the current key first (see [ParseKeys]).
	LoadKeys() ([]Key, error)
	// String describes the source for logs and messages ("key file /etc/custodian.key"); never
	// the keys.
	String() string
}

// FileKeys is a [KeySource] that reads a key file at a path, relative to the working directory.
type FileKeys string

// LoadKeys reads and parses the file. Errors name the file, never its contents.
func (fk FileKeys) LoadKeys() ([]Key, error) {
	data, err := os.ReadFile(string(fk))
	if err != nil {
		return nil, fmt.Errorf("failed to read key file: %w", err)
	}
	defer clear(data)
	keys, err := ParseKeys(data)
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", string(fk), err)
	}
	return keys, nil
}

// String returns "key file <path>".
func (fk FileKeys) String() string { return "key file " + string(fk) }

// EnvKeys is a [KeySource] that reads the key ring from the environment variable it names. The
// environment does not change while a process runs: a new key reaches Custodian by restarting
// it.
type EnvKeys string

// LoadKeys reads and parses the variable.
func (ek EnvKeys) LoadKeys() ([]Key, error) {
	value, ok := os.LookupEnv(string(ek))
	if !ok || value == "" {
		return nil, fmt.Errorf("environment variable %s is not set", string(ek))
	}
	keys, err := ParseKeys([]byte(value))
	if err != nil {
		return nil, fmt.Errorf("environment variable %s: %w", string(ek), err)
	}
	return keys, nil
}

// String returns "environment variable <name>".
func (ek EnvKeys) String() string { return "environment variable " + string(ek) }

// StaticKeys is a [KeySource] holding a fixed key ring, the current key first; tests use it.
// Empty, it fails to load, like a missing key file.
type StaticKeys []Key

// LoadKeys returns the keys.
func (sk StaticKeys) LoadKeys() ([]Key, error) {
	if len(sk) == 0 {
		return nil, errors.New("no keys")
	}
	return append([]Key(nil), sk...), nil
}

// String returns "static keys".
func (sk StaticKeys) String() string { return "static keys" }

package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/database"
	"github.com/custodian-matrix/custodian/appservice/vault"
)

// keysTestConfig writes the example configuration into a temporary directory with the key file
// and the SQLite database there too, and returns the paths.
func keysTestConfig(t *testing.T) (cfgPath, keyPath, dbPath string) {
	t.Helper()
	dir := t.TempDir()
	cfgPath = filepath.Join(dir, "config.yaml")
	keyPath = filepath.Join(dir, "custodian.key")
	dbPath = filepath.Join(dir, "custodian.db")
	_, example, _ := runCLI(t, "-e")
	for _, r := range [][2]string{
		{"uri: file:custodian.db?_txlock=immediate", "uri: file:" + dbPath + "?_txlock=immediate"},
		{"key_file: custodian.key", "key_file: " + keyPath},
		{"listen: 127.0.0.1:9330", "listen: null"},
	} {
		if !strings.Contains(example, r[0]) {
			t.Fatalf("example lacks %q", r[0])
		}
		example = strings.Replace(example, r[0], r[1], 1)
	}
	if err := os.WriteFile(cfgPath, []byte(example), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfgPath, keyPath, dbPath
}

// migrate does what the service's first start does to the database: the core's and the vault's
// migrations. It returns the vault's child database.
func migrate(t *testing.T, dbPath string) *dbutil.Database {
	t.Helper()
	raw, err := dbutil.NewWithDialect("file:"+dbPath+"?_txlock=immediate", "sqlite3-fk-wal")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = raw.Close() })
	ctx := context.Background()
	if err = database.New(raw).Upgrade(ctx); err != nil {
		t.Fatal(err)
	}
	child := vault.ChildDB(raw, zerolog.Nop())
	if err = child.Upgrade(ctx); err != nil {
		t.Fatal(err)
	}
	return child
}

// ageFile sets a file's modification time two minutes back, as if the running service had long
// re-read it.
func ageFile(t *testing.T, path string) {
	t.Helper()
	old := time.Now().Add(-2 * time.Minute)
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
}

var keyIDPattern = regexp.MustCompile(`key ID ([0-9a-f]{16})`)

// TestKeysAdminFlow walks the admin's path: -g creates the key file, the service stores
// credentials, then keys status, add, rotate, status and retire, and a restarted service with
// only the new key opens everything.
func TestKeysAdminFlow(t *testing.T) {
	cfgPath, keyPath, dbPath := keysTestConfig(t)
	regPath := filepath.Join(filepath.Dir(cfgPath), "registration.yaml")

	code, stdout, stderr := runCLI(t, "-g", "-c", cfgPath, "-r", regPath)
	if code != exitOK || !strings.Contains(stdout, "master key for the credential vault to "+keyPath) {
		t.Fatalf("-g = %d, %q, %q; want the key file created and mentioned", code, stdout, stderr)
	}
	m := keyIDPattern.FindStringSubmatch(stdout)
	if m == nil {
		t.Fatalf("-g output names no key ID:\n%s", stdout)
	}
	oldID := m[1]
	if info, err := os.Stat(keyPath); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v; want mode 0600", info, err)
	}
	before, _ := os.ReadFile(keyPath)
	if code, stdout, _ = runCLI(t, "-g", "-c", cfgPath, "-r", regPath); code != exitOK || strings.Contains(stdout, "master key") {
		t.Errorf("second -g = %d, %q; want the key file left alone and not mentioned", code, stdout)
	}
	if after, _ := os.ReadFile(keyPath); string(after) != string(before) {
		t.Fatal("second -g changed the key file")
	}

	code, _, stderr = runCLI(t, "keys", "status", "-c", cfgPath)
	if code != exitRuntime || !strings.Contains(stderr, "start Custodian once") {
		t.Errorf("keys status before the first start = %d, %q; want the vault tables missing", code, stderr)
	}

	// The service's first start, and some users linking accounts.
	db := migrate(t, dbPath)
	ctx := context.Background()
	svc := vault.New(db, vault.Options{Keys: vault.FileKeys(keyPath)})
	if err := svc.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	sealed := make(map[id.UserID][]byte)
	for i := range 25 {
		user := id.UserID(fmt.Sprintf("@user%d:example.org", i))
		if _, err := db.Exec(ctx, `INSERT INTO users (mxid, created_at) VALUES ($1, 0)`, user); err != nil {
			t.Fatal(err)
		}
		s, err := svc.Seal(ctx, user, "irc", "pw", vault.NewSecret("pw-"+string(user)))
		if err != nil {
			t.Fatal(err)
		}
		sealed[user] = s
	}

	code, stdout, _ = runCLI(t, "keys", "status", "-c", cfgPath)
	if code != exitOK || !regexp.MustCompile(oldID+`\s+25\s+current, available`).MatchString(stdout) || !strings.Contains(stdout, "All 25 data keys are wrapped by the current key") {
		t.Errorf("keys status = %d:\n%s", code, stdout)
	}

	code, stdout, stderr = runCLI(t, "keys", "add", "-c", cfgPath)
	m = regexp.MustCompile(`Added key ([0-9a-f]{16}) to `).FindStringSubmatch(stdout)
	if code != exitOK || m == nil || !strings.Contains(stdout, "kept "+oldID+" as previous") {
		t.Fatalf("keys add = %d, %q, %q", code, stdout, stderr)
	}
	newID := m[1]
	keys, err := vault.FileKeys(keyPath).LoadKeys()
	if err != nil || len(keys) != 2 || keys[0].ID() != newID || keys[1].ID() != oldID {
		t.Fatalf("key file after add = %v, %v; want [%s %s]", keys, err, newID, oldID)
	}
	if info, _ := os.Stat(keyPath); info.Mode().Perm() != 0o600 {
		t.Errorf("key file mode after add = %o, want 600", info.Mode().Perm())
	}

	code, _, stderr = runCLI(t, "keys", "retire", "-c", cfgPath, oldID)
	if code != exitRuntime || !strings.Contains(stderr, "may not have re-read it yet") {
		t.Errorf("keys retire right after add = %d, %q; want a refusal", code, stderr)
	}
	ageFile(t, keyPath)
	code, _, stderr = runCLI(t, "keys", "retire", "-c", cfgPath, oldID)
	if code != exitRuntime || !strings.Contains(stderr, "25 data keys") || !strings.Contains(stderr, "custodian keys rotate first") {
		t.Errorf("keys retire before rotate = %d, %q; want a refusal with the count", code, stderr)
	}
	code, stdout, _ = runCLI(t, "keys", "status", "-c", cfgPath)
	if code != exitOK || !regexp.MustCompile(newID+`\s+0\s+current, available`).MatchString(stdout) ||
		!regexp.MustCompile(oldID+`\s+25\s+previous, available`).MatchString(stdout) || !strings.Contains(stdout, "run custodian keys rotate") {
		t.Errorf("keys status after add = %d:\n%s", code, stdout)
	}

	code, stdout, stderr = runCLI(t, "keys", "rotate", "-c", cfgPath, "-batch", "7")
	if code != exitOK || !strings.Contains(stdout, "Re-wrapped 25 data keys under key "+newID) {
		t.Fatalf("keys rotate = %d, %q, %q", code, stdout, stderr)
	}
	if code, stdout, _ = runCLI(t, "keys", "rotate", "-c", cfgPath); code != exitOK || !strings.Contains(stdout, "Re-wrapped 0 data keys") {
		t.Errorf("second keys rotate = %d, %q; want nothing to do", code, stdout)
	}
	code, stdout, _ = runCLI(t, "keys", "status", "-c", cfgPath)
	if code != exitOK || !regexp.MustCompile(newID+`\s+25\s+current, available`).MatchString(stdout) || !regexp.MustCompile(oldID+`\s+0\s+previous`).MatchString(stdout) {
		t.Errorf("keys status after rotate = %d:\n%s", code, stdout)
	}

	for _, tt := range []struct {
		name, keyID, want string
	}{
		{"current key", newID, "is the current key"},
		{"unknown key", "0000000000000000", "is not in " + keyPath},
	} {
		if code, _, stderr = runCLI(t, "keys", "retire", "-c", cfgPath, tt.keyID); code != exitConfig || !strings.Contains(stderr, tt.want) {
			t.Errorf("keys retire %s = %d, %q; want %q", tt.name, code, stderr, tt.want)
		}
	}
	code, stdout, stderr = runCLI(t, "keys", "retire", "-c", cfgPath, oldID)
	if code != exitOK || !strings.Contains(stdout, "Removed key "+oldID) || !strings.Contains(stdout, "Destroy every other copy") {
		t.Fatalf("keys retire = %d, %q, %q", code, stdout, stderr)
	}
	if keys, err = vault.FileKeys(keyPath).LoadKeys(); err != nil || len(keys) != 1 || keys[0].ID() != newID {
		t.Fatalf("key file after retire = %v, %v; want only %s", keys, err, newID)
	}

	// A restarted service, with only the new key, opens every credential.
	restarted := vault.New(db, vault.Options{Keys: vault.FileKeys(keyPath)})
	if err = restarted.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	for user, s := range sealed {
		if got, err := restarted.Open(ctx, user, "irc", "pw", s); err != nil || got.Reveal() != "pw-"+string(user) {
			t.Errorf("Open(%s) after rotation = %q, %v", user, got.Reveal(), err)
		}
	}

	// The key file loses its key: status says what is missing and fails.
	other := filepath.Join(filepath.Dir(keyPath), "other.key")
	if code, _, stderr = runCLI(t, "keys", "generate", "-o", other); code != exitOK {
		t.Fatal(stderr)
	}
	if err = os.Rename(other, keyPath); err != nil {
		t.Fatal(err)
	}
	ageFile(t, keyPath)
	code, stdout, _ = runCLI(t, "keys", "status", "-c", cfgPath)
	if code != exitRuntime || !regexp.MustCompile(newID+`\s+25\s+MISSING from key file `+regexp.QuoteMeta(keyPath)).MatchString(stdout) {
		t.Errorf("keys status with the key missing = %d:\n%s", code, stdout)
	}
	code, stdout, _ = runCLI(t, "keys", "rotate", "-c", cfgPath)
	if code != exitRuntime || !strings.Contains(stdout, "25 data keys are wrapped by key "+newID+", which is missing or wrong") {
		t.Errorf("keys rotate with the key missing = %d:\n%s", code, stdout)
	}
}

func TestKeysGenerate(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "new.key")
	code, stdout, stderr := runCLI(t, "keys", "generate", "-o", path)
	if code != exitOK || !keyIDPattern.MatchString(stdout) || !strings.Contains(stdout, "Back it up") {
		t.Fatalf("keys generate = %d, %q, %q", code, stdout, stderr)
	}
	if info, err := os.Stat(path); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v; want mode 0600", info, err)
	}
	before, _ := os.ReadFile(path)
	if strings.Contains(stdout, strings.Fields(strings.Split(string(before), "\n")[3])[3]) {
		t.Error("keys generate printed the key")
	}
	code, _, stderr = runCLI(t, "keys", "generate", "-o", path)
	if code != exitConfig || !strings.Contains(stderr, "already exists; refusing to overwrite it") {
		t.Errorf("keys generate over an existing file = %d, %q", code, stderr)
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Error("refusing to overwrite changed the file")
	}
}

func TestKeysUsage(t *testing.T) {
	cfgPath, _, _ := keysTestConfig(t)
	envCfg := filepath.Join(filepath.Dir(cfgPath), "env.yaml")
	data, _ := os.ReadFile(cfgPath)
	data = regexp.MustCompile(`key_file: .*`).ReplaceAll(data, []byte("key_file: null"))
	data = []byte(strings.Replace(string(data), "key_env: null", "key_env: CUSTODIAN_TEST_KEYS", 1))
	// Custodian cannot rotate keys it reads from the environment, so shredding backups is off.
	data = []byte(strings.Replace(string(data), "shred_backups: true", "shred_backups: false", 1))
	if err := os.WriteFile(envCfg, data, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{"no command", []string{"keys"}, exitConfig, "", "Usage: custodian keys"},
		{"help", []string{"keys", "help"}, exitOK, "Rotating the master key", ""},
		{"unknown command", []string{"keys", "spin"}, exitConfig, "", `unknown command "spin"`},
		{"stray argument", []string{"keys", "status", "-c", cfgPath, "now"}, exitConfig, "", `unexpected argument "now"`},
		{"retire without ID", []string{"keys", "retire", "-c", cfgPath}, exitConfig, "", "expected 1 argument"},
		{"missing config", []string{"keys", "status", "-c", "/nonexistent/c.yaml"}, exitConfig, "", "does not exist"},
		{"add with key_env", []string{"keys", "add", "-c", envCfg}, exitConfig, "", "environment variable CUSTODIAN_TEST_KEYS, which this command cannot change"},
		{"retire with key_env", []string{"keys", "retire", "-c", envCfg, "abc"}, exitConfig, "", "restart Custodian"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, tt.args...)
			if code != tt.wantCode || !strings.Contains(stdout, tt.wantStdout) || !strings.Contains(stderr, tt.wantStderr) {
				t.Errorf("run(%q) = %d, %q, %q; want %d, %q, %q", tt.args, code, stdout, stderr, tt.wantCode, tt.wantStdout, tt.wantStderr)
			}
		})
	}
}

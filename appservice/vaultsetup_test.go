package appservice

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/vault"
)

// lockedBuffer collects log output from several goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (lb *lockedBuffer) Write(p []byte) (int, error) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	return lb.buf.Write(p)
}

func (lb *lockedBuffer) String() string {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	return lb.buf.String()
}

// startVaultService starts a service with one bridge and the given vault section, logging to
// logs. It returns the bridge's host.
func startVaultService(t *testing.T, db *dbutil.Database, vc VaultConfig, logs *lockedBuffer) Host {
	t.Helper()
	cfg := testConfig(deadHomeserver(t).URL)
	cfg.Vault = vc
	// Only to the buffer: the homeserver ping goroutine may still log after the test ends,
	// which a test writer does not allow.
	log := zerolog.New(logs).Level(zerolog.InfoLevel)
	br := newRecordingBridge("irc")
	svc, err := newService(cfg, testRegistration(), []Bridge{br}, log, db)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(log.WithContext(context.Background()))
	if err = svc.start(ctx); err != nil {
		cancel()
		t.Fatalf("start() = %v; a vault problem must not stop the service", err)
	}
	t.Cleanup(func() {
		cancel()
		svc.stopServing()
	})
	return br.host
}

func writeKeys(t *testing.T, path string, keys ...vault.Key) {
	t.Helper()
	if err := vault.ReplaceKeyFile(path, keys...); err != nil {
		t.Fatal(err)
	}
}

// TestServiceVaultKeyProblems starts the service with a key file that lost a key, holds a wrong
// key, or is missing, and checks that it runs, logs an Error that says what to do, refuses only
// the affected secrets, and keeps everyone else's working.
func TestServiceVaultKeyProblems(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			ctx := context.Background()
			db := newTestDB(t, dialect)
			dir := t.TempDir()
			keyFile := filepath.Join(dir, "custodian.key")
			k1, k2 := mustGenerateKey(t), mustGenerateKey(t)
			const (
				alice = id.UserID("@alice:example.org")
				bob   = id.UserID("@bob:example.org")
				carol = id.UserID("@carol:example.org")
			)

			// Alice links while k1 is the only key; bob after k2 was added in front of it.
			writeKeys(t, keyFile, k1)
			host := startVaultService(t, db, VaultConfig{KeyFile: &keyFile}, &lockedBuffer{})
			for _, user := range []id.UserID{alice, bob, carol} {
				if err := host.EnsureUser(ctx, user); err != nil {
					t.Fatal(err)
				}
			}
			aliceSealed, err := host.Vault().Seal(ctx, alice, "pw", vault.NewSecret("alice-pw"))
			if err != nil {
				t.Fatal(err)
			}
			writeKeys(t, keyFile, k2, k1)
			host = startVaultService(t, db, VaultConfig{KeyFile: &keyFile}, &lockedBuffer{})
			bobSealed, err := host.Vault().Seal(ctx, bob, "pw", vault.NewSecret("bob-pw"))
			if err != nil {
				t.Fatal(err)
			}

			wrongK2 := "custodian-kek v1 " + k2.ID() + " " + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32)) + "\n"
			tests := []struct {
				name     string
				setup    func(t *testing.T)
				wantLog  []string
				aliceErr error
				bobErr   error
				carolErr error // sealing for carol, who has no data key yet
			}{
				{
					name:     "old key missing",
					setup:    func(t *testing.T) { writeKeys(t, keyFile, k2) },
					wantLog:  []string{`"level":"error"`, "Missing master key", `"key_id":"` + k1.ID() + `"`, `"key_source":"key file ` + keyFile + `"`, "add the key with this ID back"},
					aliceErr: vault.ErrKeyUnavailable,
				},
				{
					name: "current key wrong",
					setup: func(t *testing.T) {
						if err := os.WriteFile(keyFile, []byte(wrongK2+strings.Split(string(vault.FormatKeys(k1)), "\n")[3]+"\n"), 0o600); err != nil {
							t.Fatal(err)
						}
					},
					wantLog:  []string{`"level":"error"`, "Wrong master key", `"key_id":"` + k2.ID() + `"`, "put back the right key file"},
					bobErr:   vault.ErrKeyUnavailable,
					carolErr: vault.ErrNoKey,
				},
				{
					name:     "key file missing",
					setup:    func(t *testing.T) { _ = os.Remove(keyFile) },
					wantLog:  []string{`"level":"error"`, "Failed to load the vault's master keys", keyFile, "custodian keys generate"},
					aliceErr: vault.ErrKeyUnavailable,
					bobErr:   vault.ErrKeyUnavailable,
					carolErr: vault.ErrNoKey,
				},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					tt.setup(t)
					var logs lockedBuffer
					host := startVaultService(t, db, VaultConfig{KeyFile: &keyFile}, &logs)
					for _, want := range tt.wantLog {
						if !strings.Contains(logs.String(), want) {
							t.Errorf("log lacks %q:\n%s", want, logs.String())
						}
					}
					for _, c := range []struct {
						user    id.UserID
						sealed  []byte
						want    string
						wantErr error
					}{{alice, aliceSealed, "alice-pw", tt.aliceErr}, {bob, bobSealed, "bob-pw", tt.bobErr}} {
						got, err := host.Vault().Open(ctx, c.user, "pw", c.sealed)
						if c.wantErr == nil && (err != nil || got.Reveal() != c.want) {
							t.Errorf("Open(%s) = %q, %v; want %q", c.user, got.Reveal(), err, c.want)
						} else if c.wantErr != nil && !errors.Is(err, c.wantErr) {
							t.Errorf("Open(%s) = %v, want %v", c.user, err, c.wantErr)
						}
					}
					sealed, err := host.Vault().Seal(ctx, carol, "pw", vault.NewSecret("carol-pw"))
					if !errors.Is(err, tt.carolErr) {
						t.Errorf("Seal(carol) = %v, want %v", err, tt.carolErr)
					}
					if err == nil {
						if got, err := host.Vault().Open(ctx, carol, "pw", sealed); err != nil || got.Reveal() != "carol-pw" {
							t.Errorf("Open(carol) = %q, %v", got.Reveal(), err)
						}
					}
					for _, secret := range []string{"alice-pw", "bob-pw", "carol-pw"} {
						if strings.Contains(logs.String(), secret) {
							t.Errorf("log contains %q", secret)
						}
					}
				})
			}
		})
	}
}

func TestServiceVaultOff(t *testing.T) {
	var logs lockedBuffer
	host := startVaultService(t, newTestDB(t, astest.SQLite), VaultConfig{}, &logs)
	ctx := context.Background()
	if err := host.EnsureUser(ctx, "@alice:example.org"); err != nil {
		t.Fatal(err)
	}
	if _, err := host.Vault().Seal(ctx, "@alice:example.org", "pw", vault.NewSecret("x")); !errors.Is(err, ErrVaultDisabled) {
		t.Errorf("Seal() with the vault off = %v, want ErrVaultDisabled", err)
	}
	if !strings.Contains(logs.String(), "The credential vault is off") {
		t.Errorf("log does not say the vault is off:\n%s", logs.String())
	}
}

func TestVaultConfigValidate(t *testing.T) {
	path, env, empty := "custodian.key", "CUSTODIAN_KEY", ""
	tests := []struct {
		name string
		vc   VaultConfig
		want []string
	}{
		{name: "file", vc: VaultConfig{KeyFile: &path}},
		{name: "env", vc: VaultConfig{KeyEnv: &env}},
		{name: "off", vc: VaultConfig{}},
		{name: "both", vc: VaultConfig{KeyFile: &path, KeyEnv: &env}, want: []string{"vault.key_env: set either vault.key_file or vault.key_env, not both (the other must be null)"}},
		{name: "empty file", vc: VaultConfig{KeyFile: &empty}, want: []string{"vault.key_file: must be a path or null"}},
		{name: "empty env", vc: VaultConfig{KeyEnv: &empty}, want: []string{"vault.key_env: must be a variable name or null"}},
		{name: "shred with file", vc: VaultConfig{KeyFile: &path, ShredBackups: true}},
		{name: "shred with env", vc: VaultConfig{KeyEnv: &env, ShredBackups: true}, want: []string{"vault.shred_backups: needs vault.key_file: Custodian cannot change the keys in vault.key_env (set key_env to null and put the keys in a key file, or set shred_backups to false)"}},
		{name: "shred without keys", vc: VaultConfig{ShredBackups: true}, want: []string{"vault.shred_backups: needs vault.key_file, which Custodian rotates after erasures (or set shred_backups to false)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, e := range tt.vc.validate() {
				got = append(got, e.Error())
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("validate() = %q, want %q", got, tt.want)
			}
		})
	}
	if src := (&VaultConfig{KeyFile: &path}).KeySource(); src == nil || src.String() != "key file custodian.key" {
		t.Errorf("KeySource(file) = %v", src)
	}
	if src := (&VaultConfig{KeyEnv: &env}).KeySource(); src == nil || src.String() != "environment variable CUSTODIAN_KEY" {
		t.Errorf("KeySource(env) = %v", src)
	}
	if src := (&VaultConfig{}).KeySource(); src != nil {
		t.Errorf("KeySource(off) = %v, want nil", src)
	}
}

func mustGenerateKey(t *testing.T) vault.Key {
	t.Helper()
	k, err := vault.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

package appservice

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/database"
	"github.com/custodian-matrix/custodian/appservice/privacy"
	"github.com/custodian-matrix/custodian/appservice/vault"
)

// copyVaultTables copies the users and the vault's tables of db into a fresh database, as a
// database backup would, and returns the copy as the vault's child database.
func copyVaultTables(t *testing.T, ctx context.Context, db *dbutil.Database, dialect string) *dbutil.Database {
	t.Helper()
	raw := astest.TestDB(t, dialect)
	if err := database.New(raw).Upgrade(ctx); err != nil {
		t.Fatal(err)
	}
	restored := vault.ChildDB(raw, zerolog.Nop())
	if err := restored.Upgrade(ctx); err != nil {
		t.Fatal(err)
	}
	for _, table := range []struct{ name, cols string }{
		{"users", "mxid, created_at"},
		{"as_vault_kek", "kek_id, check_value, created_at"},
		{"as_vault_dek", "user_mxid, dek_id, kek_id, wrapped, created_at"},
	} {
		n := len(strings.Split(table.cols, ","))
		rows, err := db.Query(ctx, "SELECT "+table.cols+" FROM "+table.name)
		if err != nil {
			t.Fatal(err)
		}
		var copied [][]any
		for rows.Next() {
			vals := make([]any, n)
			ptrs := make([]any, n)
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err = rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			copied = append(copied, vals)
		}
		if err = rows.Close(); err != nil {
			t.Fatal(err)
		}
		placeholders := make([]string, n)
		for i := range placeholders {
			placeholders[i] = fmt.Sprintf("$%d", i+1)
		}
		for _, vals := range copied {
			if _, err = restored.Exec(ctx, "INSERT INTO "+table.name+" ("+table.cols+") VALUES ("+strings.Join(placeholders, ", ")+")", vals...); err != nil {
				t.Fatal(err)
			}
		}
	}
	return restored
}

// shredLogged is what the shredder logs after each successful rotation.
const shredLogged = `"message":"Shredded database backups`

// shredAfterDebounce lets the shredder's debounce pass on the service's clock and waits until
// the log shows n successful shred rotations in all.
func (env *privacyEnv) shredAfterDebounce(n int) {
	env.t.Helper()
	if err := env.clock.BlockUntilInterval(astest.Within(env.t, 10*time.Second), privacy.ShredDebounce); err != nil {
		env.t.Fatalf("the shredder does not wait for its debounce on the service's clock: %v", err)
	}
	env.clock.Advance(privacy.ShredDebounce)
	env.logs.waitForCount(env.t, shredLogged, n)
}

// TestShredBackupsAfterErasure copies the database (data keys and sealed values) before erasing
// alice with vault.shred_backups on, waits for the service's shred rotation, and shows that the
// copy cannot be opened with the keys now in the key file, while bob's secrets still open in the
// live service.
func TestShredBackupsAfterErasure(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			keyFile := filepath.Join(t.TempDir(), "custodian.key")
			k1 := mustGenerateKey(t)
			writeKeys(t, keyFile, k1)
			env := newPrivacyEnv(t, dialect, func(cfg *Config) {
				cfg.Vault = VaultConfig{KeyFile: &keyFile, ShredBackups: true}
			})
			env.start()
			ctx := env.ctx
			sv := env.hooks.host.Vault()

			sealed := make(map[id.UserID][]byte)
			for _, user := range []id.UserID{pvAlice, pvBob} {
				if err := env.hooks.host.EnsureUser(ctx, user); err != nil {
					t.Fatal(err)
				}
				s, err := sv.Seal(ctx, user, "pw", vault.NewSecret(string(user)+"-pw"))
				if err != nil {
					t.Fatal(err)
				}
				sealed[user] = s
			}
			backup := copyVaultTables(t, ctx, env.svc.rawDB, dialect)
			// The copy is a real backup: with the key it was taken under, it opens.
			withOld := vault.New(backup, vault.Options{Keys: vault.StaticKeys{k1}})
			if err := withOld.Reload(ctx); err != nil {
				t.Fatal(err)
			}
			if got, err := withOld.Open(ctx, pvAlice, "hooks", "pw", sealed[pvAlice]); err != nil || got.Reveal() != string(pvAlice)+"-pw" {
				t.Fatalf("backup Open(alice) with the old key = %q, %v", got.Reveal(), err)
			}

			// Module-only erasures do not rotate; a full one does.
			if _, err := env.svc.engine.Erase(ctx, pvBob, EraseRequest{Trigger: TriggerAdmin, Modules: []string{"other"}}); err != nil {
				t.Fatal(err)
			}
			if _, err := env.svc.engine.Erase(ctx, pvAlice, EraseRequest{Trigger: TriggerAdmin}); err != nil {
				t.Fatal(err)
			}
			env.shredAfterDebounce(1)
			keys, err := vault.FileKeys(keyFile).LoadKeys()
			if err != nil {
				t.Fatal(err)
			}
			if len(keys) != 1 || keys[0].ID() == k1.ID() {
				t.Fatalf("key file holds %v after the shred rotation, want only a new key", keys)
			}
			want := fmt.Sprintf(`"key_id":%q,"retired_key_ids":[%q],"rewrapped":1,`, keys[0].ID(), k1.ID())
			if logs := env.logs.String(); !strings.Contains(logs, want) || strings.Count(logs, shredLogged) != 1 {
				t.Errorf("want one shred rotation logged with %s (k1 retired, bob's data key re-wrapped); the log holds:\n%s", want, logs)
			}

			// The pre-erasure copy, data keys included, opens for nobody with the keys in the
			// key file.
			fromBackup := vault.New(backup, vault.Options{Keys: vault.FileKeys(keyFile)})
			_ = fromBackup.Reload(ctx)
			for _, user := range []id.UserID{pvAlice, pvBob} {
				if got, err := fromBackup.Open(ctx, user, "hooks", "pw", sealed[user]); !errors.Is(err, vault.ErrKeyUnavailable) {
					t.Errorf("backup Open(%s) with the key file after the shred = %q, %v; want ErrKeyUnavailable", user, got.Reveal(), err)
				}
			}
			// The live service: bob's secret opens, alice's is gone.
			if got, err := sv.Open(ctx, pvBob, "pw", sealed[pvBob]); err != nil || got.Reveal() != string(pvBob)+"-pw" {
				t.Errorf("live Open(bob) after the shred = %q, %v", got.Reveal(), err)
			}
			if got, err := sv.Open(ctx, pvAlice, "pw", sealed[pvAlice]); !errors.Is(err, vault.ErrDecrypt) {
				t.Errorf("live Open(alice) after the shred = %q, %v; want ErrDecrypt", got.Reveal(), err)
			}
			// A fresh process on the live database, with the key file, opens bob's too.
			fresh := vault.New(vault.ChildDB(env.svc.rawDB, zerolog.Nop()), vault.Options{Keys: vault.FileKeys(keyFile)})
			if err = fresh.Reload(ctx); err != nil {
				t.Fatal(err)
			}
			if got, err := fresh.Open(ctx, pvBob, "hooks", "pw", sealed[pvBob]); err != nil || got.Reveal() != string(pvBob)+"-pw" {
				t.Errorf("fresh Open(bob) after the shred = %q, %v", got.Reveal(), err)
			}
			statuses, err := fresh.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, st := range statuses {
				if st.ID == k1.ID() && (st.DataKeys > 0 || st.Recorded) {
					t.Errorf("old key still in the database: %+v", st)
				}
			}
		})
	}
}

// TestShredRequestSurvivesRestart: the service stops after an erasure asked for a shred
// rotation and before the rotation ran (here: in the debounce window). The request was recorded
// with the erasure, so the next start rotates the master key, and then forgets the request.
func TestShredRequestSurvivesRestart(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			keyFile := filepath.Join(t.TempDir(), "custodian.key")
			k1 := mustGenerateKey(t)
			writeKeys(t, keyFile, k1)
			shredOn := func(cfg *Config) { cfg.Vault = VaultConfig{KeyFile: &keyFile, ShredBackups: true} }
			first := newPrivacyEnv(t, dialect, shredOn)
			first.start()
			if err := first.hooks.host.EnsureUser(first.ctx, pvAlice); err != nil {
				t.Fatal(err)
			}
			if _, err := first.hooks.host.Vault().Seal(first.ctx, pvAlice, "pw", vault.NewSecret("alice-pw")); err != nil {
				t.Fatal(err)
			}
			if _, err := first.svc.engine.Erase(first.ctx, pvAlice, EraseRequest{Trigger: TriggerAdmin}); err != nil {
				t.Fatal(err)
			}
			if err := first.clock.BlockUntilInterval(astest.Within(t, 10*time.Second), privacy.ShredDebounce); err != nil {
				t.Fatalf("the first service's shredder is not in its debounce: %v", err)
			}
			first.stop()
			if strings.Contains(first.logs.String(), shredLogged) {
				t.Fatal("the first service rotated; it should have stopped in the debounce window")
			}

			second := newPrivacyEnvOn(t, dialect, first.svc.rawDB, shredOn)
			second.start()
			second.shredAfterDebounce(1)
			keys, err := vault.FileKeys(keyFile).LoadKeys()
			if err != nil {
				t.Fatal(err)
			}
			if len(keys) != 1 || keys[0].ID() == k1.ID() {
				t.Errorf("key file holds %v after the restart's shred rotation, want one new key", keys)
			}
			if want := fmt.Sprintf(`"retired_key_ids":[%q],`, k1.ID()); !strings.Contains(second.logs.String(), want) {
				t.Errorf("the restart's shred rotation did not retire k1 (want %s in the log)", want)
			}
			if n := second.count(`SELECT COUNT(*) FROM as_shred_request`); n != 0 {
				t.Errorf("%d shred requests left after the rotation, want 0", n)
			}
		})
	}
}

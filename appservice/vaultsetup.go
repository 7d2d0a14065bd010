package appservice

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/privacy"
	"github.com/custodian-matrix/custodian/appservice/vault"
)

// upgradeVault runs the vault's migrations on its child database (version table
// as_vault_version). It runs whether or not the vault is on, after the core's migrations: the
// vault's tables reference users, and the personal-data inventory declares them.
func (svc *Service) upgradeVault(ctx context.Context) error {
	if err := vault.ChildDB(svc.rawDB, svc.log).Upgrade(ctx); err != nil {
		return fmt.Errorf("failed to upgrade vault database: %w", err)
	}
	return nil
}

// setupVault creates the credential vault from the vault section and sets svc.vault, then keeps
// its keys current in the background until ctx ends. Key problems (a missing or unreadable key
// file, a missing or wrong key) never stop the service: the vault logs an Error that names the
// key file and key ID and says what to do, and only the affected secrets are unavailable. With
// the vault off, svc.vault stays nil and bridges get ErrVaultDisabled.
func (svc *Service) setupVault(ctx context.Context) {
	log := zerolog.Ctx(ctx).With().Str("component", "vault").Logger()
	ctx = log.WithContext(ctx)
	src := svc.cfg.Vault.KeySource()
	if src == nil {
		log.Warn().Msg("The credential vault is off (vault.key_file and vault.key_env are null): bridges cannot store credentials")
		svc.setupInboxSealing(ctx, nil)
		return
	}
	if svc.cfg.Vault.KeyFile != nil {
		warnKeyFileMode(log, *svc.cfg.Vault.KeyFile)
	}
	v := vault.New(vault.ChildDB(svc.rawDB, svc.log), vault.Options{Keys: src, Clock: svc.clock()})
	// Reload logs what went wrong and how to fix it; the service runs on regardless.
	_ = v.Reload(ctx)
	svc.vault = v
	svc.setupInboxSealing(ctx, v)
	svc.goBackground(ctx, v.Run)
	if svc.cfg.Vault.ShredBackups && svc.cfg.Vault.KeyFile != nil {
		svc.shredder = privacy.NewBackupShredder(privacy.ShredderOptions{
			Vault: v, KeyFile: *svc.cfg.Vault.KeyFile, DB: svc.privacyDB(), Clock: svc.clock(),
			ReplaceInboxKey: svc.replaceInboxKey, ReplaceCryptoKey: svc.replaceCryptoKey,
		})
		log.Info().Str("key_file", *svc.cfg.Vault.KeyFile).
			Msg("Backup shredding is on: the master key is rotated after every erasure")
		svc.goBackground(ctx, svc.shredder.Run)
	}
}

// warnKeyFileMode warns when the key file can be read by others than its owner.
func warnKeyFileMode(log zerolog.Logger, path string) {
	info, err := os.Stat(path)
	if err != nil || info.Mode().Perm()&0o077 == 0 {
		return
	}
	log.Warn().Str("key_file", path).Str("mode", fmt.Sprintf("%04o", info.Mode().Perm())).
		Str("fix", "chmod 600 "+path).
		Msg("The vault's key file can be read by other users")
}

// ErrNoVaultTables is returned by [OpenVault] when the database has no vault tables yet.
var ErrNoVaultTables = errors.New("the database has no vault tables yet: start Custodian once (it creates them), then try again")

// OpenVault opens the database cfg names and a vault on it, for the admin commands ("custodian
// keys status|rotate|retire") run next to a live service. It does not run migrations (the
// service owns the schema: [ErrNoVaultTables] if they have not run), does not load the keys
// (call Reload) and starts nothing in the background. The caller must call closeDB when done.
// It fails if the vault is off in cfg.
func OpenVault(ctx context.Context, cfg *Config, log zerolog.Logger) (v *vault.Vault, closeDB func() error, err error) {
	src := cfg.Vault.KeySource()
	if src == nil {
		return nil, nil, errors.New("the vault is off: vault.key_file and vault.key_env are both null")
	}
	rawDB, err := openDatabase(&cfg.Database, log)
	if err != nil {
		return nil, nil, err
	}
	db := vault.ChildDB(rawDB, log)
	exists, err := db.TableExists(ctx, "as_vault_dek")
	if err == nil && !exists {
		err = ErrNoVaultTables
	}
	if err != nil {
		_ = rawDB.Close()
		return nil, nil, err
	}
	return vault.New(db, vault.Options{Keys: src}), rawDB.Close, nil
}

var (
	_ vaultBackend                   = (*vault.Vault)(nil)
	_ interface{ Forget(id.UserID) } = (*vault.Vault)(nil)
)

// VaultConfig configures the credential vault: where the master keys (KEKs) come from. At most
// one of KeyFile and KeyEnv is set; both null turn the vault off.
type VaultConfig struct {
	// KeyFile is the path of the master key file, relative to the working directory. "custodian
	// keys generate" (and custodian -g) write it with mode 0600. It holds one key per line, the
	// current key first; "custodian keys add" puts a new key in front during a rotation. A
	// running Custodian re-reads it every minute, so rotation needs no restart.
	KeyFile *string `yaml:"key_file"`
	// KeyEnv names an environment variable holding the master keys instead of a file, in the
	// same format, keys separated by ";". Custodian reads it only at start-up.
	KeyEnv *string `yaml:"key_env"`
	// ShredBackups makes the service rotate the master key itself after every full erasure
	// (debounced): a new key in key_file, every data key re-wrapped under it, the old key
	// removed from key_file. Database backups taken before the erasure then cannot be opened
	// with the keys Custodian holds. It requires KeyFile (not KeyEnv), writable by the service.
	ShredBackups bool `yaml:"shred_backups"`
}

// KeySource returns the vault's key source as configured, or nil when the vault is off.
func (vc *VaultConfig) KeySource() vault.KeySource {
	switch {
	case vc.KeyFile != nil:
		return vault.FileKeys(*vc.KeyFile)
	case vc.KeyEnv != nil:
		return vault.EnvKeys(*vc.KeyEnv)
	default:
		return nil
	}
}

// validate reports problems in the vault section.
func (vc *VaultConfig) validate() []*ConfigError {
	var p []*ConfigError
	if vc.KeyFile != nil && *vc.KeyFile == "" {
		p = append(p, &ConfigError{Path: "vault.key_file", Message: "must be a path or null"})
	}
	if vc.KeyEnv != nil && *vc.KeyEnv == "" {
		p = append(p, &ConfigError{Path: "vault.key_env", Message: "must be a variable name or null"})
	}
	if vc.KeyFile != nil && vc.KeyEnv != nil {
		p = append(p, &ConfigError{Path: "vault.key_env", Message: "set either vault.key_file or vault.key_env, not both (the other must be null)"})
	}
	if vc.ShredBackups {
		switch {
		case vc.KeyEnv != nil:
			p = append(p, &ConfigError{Path: "vault.shred_backups", Message: "needs vault.key_file: Custodian cannot change the keys in vault.key_env (set key_env to null and put the keys in a key file, or set shred_backups to false)"})
		case vc.KeyFile == nil:
			p = append(p, &ConfigError{Path: "vault.shred_backups", Message: "needs vault.key_file, which Custodian rotates after erasures (or set shred_backups to false)"})
		}
	}
	return p
}

package appservice

import "github.com/custodian-matrix/custodian/appservice/vault"

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

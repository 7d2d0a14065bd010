package appservice

// VaultConfig configures the credential vault: where the master key (KEK) comes from.
type VaultConfig struct {
	// KeyFile is the path of the master key file, written by "custodian keys generate" (mode
	// 0600). Null (with KeyEnv null too) disables the vault: bridges cannot store credentials.
	KeyFile *string `yaml:"key_file"`
	// KeyEnv names an environment variable holding the master key instead of a file.
	KeyEnv *string `yaml:"key_env"`
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
	return p
}

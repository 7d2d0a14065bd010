package appservice

import "time"

// PrivacyConfig configures retention limits and deactivation detection.
type PrivacyConfig struct {
	// ActivityRetention is how long activity records are kept.
	ActivityRetention time.Duration `yaml:"activity_retention"`
	// NetworkRetention is how long IP address and user-agent records are kept.
	NetworkRetention time.Duration `yaml:"network_retention"`
}

// AdminAPIConfig configures the admin API listener.
type AdminAPIConfig struct {
	// Listen is the admin API's address, host:port; null disables it.
	Listen *string `yaml:"listen"`
	// TokenFile is the path of a file holding the admin API's bearer token.
	TokenFile *string `yaml:"token_file"`
}

// validate reports problems in the privacy section.
func (pc *PrivacyConfig) validate() []*ConfigError {
	var p []*ConfigError
	if pc.ActivityRetention <= 0 {
		p = append(p, &ConfigError{Path: "privacy.activity_retention", Message: "must be a positive duration, such as 336h"})
	}
	if pc.NetworkRetention <= 0 {
		p = append(p, &ConfigError{Path: "privacy.network_retention", Message: "must be a positive duration, such as 1440h"})
	}
	return p
}

// validate reports problems in the admin_api section.
func (ac *AdminAPIConfig) validate() []*ConfigError {
	var p []*ConfigError
	if ac.Listen != nil && ac.TokenFile == nil {
		p = append(p, &ConfigError{Path: "admin_api.token_file", Message: "must be set when admin_api.listen is set"})
	}
	return p
}

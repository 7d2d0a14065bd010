package appservice

import (
	"net"
	"strings"
	"time"

	"maunium.net/go/mautrix/id"
)

// PrivacyConfig configures retention limits, how long export files stay, and deactivation
// detection. Zero durations (a Config
// built in code rather than loaded) mean the defaults of example-config.yaml.
type PrivacyConfig struct {
	// ActivityRetention is how long activity records are kept ([RetentionActivity]).
	ActivityRetention time.Duration `yaml:"activity_retention"`
	// NetworkRetention is how long IP address and user-agent records are kept
	// ([RetentionNetwork]).
	NetworkRetention time.Duration `yaml:"network_retention"`
	// SweepInterval is how often the retention sweeper runs.
	SweepInterval time.Duration `yaml:"sweep_interval"`
	// ExportTTL is how long an export file sent by !export stays available: after it, the
	// message carrying the file's key is redacted and, with admin access to the homeserver, the
	// encrypted upload is deleted from the media repository. At least one minute.
	ExportTTL time.Duration `yaml:"export_ttl"`
	// Deactivation configures how Custodian learns that the homeserver deactivated an account.
	Deactivation DeactivationConfig `yaml:"deactivation"`
}

// DeactivationConfig configures deactivation detection: with admin access to the homeserver
// (Synapse's admin API) Custodian confirms deactivation on a user's leave events and in a
// periodic sweep; without it, it can only infer deactivation from a leave followed by a profile
// lookup answering 404. At most one of AdminTokenFile and AdminLocalpart may be set.
type DeactivationConfig struct {
	// AdminTokenFile is the path of a file holding a homeserver admin's access token, used for
	// GET /_synapse/admin/v2/users/{userId}. Null means none.
	AdminTokenFile *string `yaml:"admin_token_file"`
	// AdminLocalpart is the localpart of one of Custodian's own ghosts (inside a bridge's
	// namespace) that the homeserver admin promoted to server admin; Custodian calls the admin
	// API as that ghost. Null means none.
	AdminLocalpart *string `yaml:"admin_localpart"`
	// SweepInterval is how often every local user Custodian holds data about is checked, when
	// admin access is configured.
	SweepInterval time.Duration `yaml:"sweep_interval"`
}

// AdminAPIConfig configures the admin API listener.
type AdminAPIConfig struct {
	// Listen is the admin API's address, host:port; null disables it.
	Listen *string `yaml:"listen"`
	// TokenFile is the path of a file holding the admin API's bearer token.
	TokenFile *string `yaml:"token_file"`
}

// Defaults of the privacy section for a Config built in code.
const (
	defaultActivityRetention = 14 * 24 * time.Hour
	defaultNetworkRetention  = 60 * 24 * time.Hour
	defaultSweepInterval     = 10 * time.Minute
	defaultDeactivationSweep = 6 * time.Hour
	defaultExportTTL         = time.Hour
)

// activityRetention returns privacy.activity_retention, or its default.
func (pc *PrivacyConfig) activityRetention() time.Duration {
	return orDefault(pc.ActivityRetention, defaultActivityRetention)
}

// networkRetention returns privacy.network_retention, or its default.
func (pc *PrivacyConfig) networkRetention() time.Duration {
	return orDefault(pc.NetworkRetention, defaultNetworkRetention)
}

// sweepInterval returns privacy.sweep_interval, or its default.
func (pc *PrivacyConfig) sweepInterval() time.Duration {
	return orDefault(pc.SweepInterval, defaultSweepInterval)
}

// exportTTL returns privacy.export_ttl, or its default.
func (pc *PrivacyConfig) exportTTL() time.Duration {
	return orDefault(pc.ExportTTL, defaultExportTTL)
}

// deactivationSweepInterval returns privacy.deactivation.sweep_interval, or its default.
func (pc *PrivacyConfig) deactivationSweepInterval() time.Duration {
	return orDefault(pc.Deactivation.SweepInterval, defaultDeactivationSweep)
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
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
	if pc.SweepInterval < time.Minute {
		p = append(p, &ConfigError{Path: "privacy.sweep_interval", Message: "must be at least 1m, such as 10m"})
	}
	if pc.ExportTTL < time.Minute {
		p = append(p, &ConfigError{Path: "privacy.export_ttl", Message: "must be at least 1m, such as 1h"})
	}
	dc := &pc.Deactivation
	if dc.SweepInterval < time.Minute {
		p = append(p, &ConfigError{Path: "privacy.deactivation.sweep_interval", Message: "must be at least 1m, such as 6h"})
	}
	if dc.AdminTokenFile != nil && *dc.AdminTokenFile == "" {
		p = append(p, &ConfigError{Path: "privacy.deactivation.admin_token_file", Message: "must be a path or null"})
	}
	if dc.AdminLocalpart != nil {
		if *dc.AdminLocalpart == "" || id.ValidateUserLocalpart(*dc.AdminLocalpart) != nil {
			p = append(p, &ConfigError{Path: "privacy.deactivation.admin_localpart", Message: "must be a valid localpart of one of Custodian's ghosts, or null"})
		}
		if dc.AdminTokenFile != nil {
			p = append(p, &ConfigError{Path: "privacy.deactivation.admin_localpart", Message: "set admin_token_file or admin_localpart, not both"})
		}
	}
	return p
}

// validate reports problems in the admin_api section.
func (ac *AdminAPIConfig) validate() []*ConfigError {
	var p []*ConfigError
	if ac.Listen != nil {
		if _, port, err := net.SplitHostPort(*ac.Listen); err != nil || port == "" {
			p = append(p, &ConfigError{Path: "admin_api.listen", Message: "must be host:port, such as 127.0.0.1:29331, or null"})
		}
		if ac.TokenFile == nil || *ac.TokenFile == "" {
			p = append(p, &ConfigError{Path: "admin_api.token_file", Message: "must be set when admin_api.listen is set"})
		}
	}
	return p
}

// isLoopbackListen reports whether a listen address binds to loopback only.
func isLoopbackListen(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

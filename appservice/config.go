package appservice

import (
	_ "embed"
	"net"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/vault"
)

// exampleConfig is the commented core configuration. It is also the source of the defaults: a
// key left out of config.yaml keeps the example's value (see [DefaultConfig]).
//
//go:embed example-config.yaml
var exampleConfig string

// Database types accepted in database.type.
const (
	// DatabaseSQLite is embedded SQLite with foreign keys on and a write-ahead log, syncing at
	// checkpoints: it survives a crash of the process but may lose the last commits on power
	// loss.
	DatabaseSQLite = "sqlite3-fk-wal"
	// DatabaseSQLiteFullSync is embedded SQLite that syncs every commit to disk.
	DatabaseSQLiteFullSync = "sqlite3-fk-wal-fullsync"
	// DatabasePostgres is PostgreSQL through github.com/lib/pq.
	DatabasePostgres = "postgres"
)

// Log formats accepted in logging.format.
const (
	// LogFormatPretty is zerolog's human-readable console format, coloured on a terminal.
	LogFormatPretty = "pretty"
	// LogFormatJSON is one JSON object per line.
	LogFormatJSON = "json"
)

// TokenPlaceholder is the value of appservice.as_token and appservice.hs_token in the example
// configuration: tokens not generated yet. [LoadConfig] refuses it; custodian -g replaces it.
const TokenPlaceholder = "generate"

// Config is Custodian's configuration file (config.yaml). Load it with [LoadConfig], which
// decodes strictly (an unknown key is an error) over [DefaultConfig] and validates everything.
// example-config.yaml documents every key.
//
// A Config is read-only once loaded and then safe to share between goroutines. Formatting a
// Config with %v never shows the tokens, which are [vault.Secret]s; the database URI, though, is
// a plain string, so do not log a Config.
type Config struct {
	// Homeserver says where the homeserver is.
	Homeserver HomeserverConfig `yaml:"homeserver"`
	// AppService is how the homeserver reaches Custodian and the registration's values.
	AppService AppServiceConfig `yaml:"appservice"`
	// Database selects and tunes the database.
	Database DatabaseConfig `yaml:"database"`
	// Bot configures bot hosting.
	Bot BotConfig `yaml:"bot"`
	// Metrics configures the Prometheus endpoint.
	Metrics MetricsConfig `yaml:"metrics"`
	// Logging configures logs.
	Logging LoggingConfig `yaml:"logging"`
	// Vault configures the credential vault's master key.
	Vault VaultConfig `yaml:"vault"`
	// Privacy configures retention limits and deactivation detection.
	Privacy PrivacyConfig `yaml:"privacy"`
	// AdminAPI configures the admin API listener.
	AdminAPI AdminAPIConfig `yaml:"admin_api"`
	// Encryption configures end-to-end encryption: the bot's device and encrypted rooms.
	Encryption EncryptionConfig `yaml:"encryption"`
	// Bridges holds each bridge's section raw, keyed by bridge ID; a bridge runs only if its key
	// is present (see [Config.EnabledBridges]). [Config.DecodeBridges] decodes each node strictly
	// into the bridge's own target. A key that names no compiled-in bridge is an error.
	Bridges map[string]yaml.Node `yaml:"bridges"`
}

// HomeserverConfig says where the homeserver is.
type HomeserverConfig struct {
	// Address is the homeserver's client-server API base URL, e.g. http://127.0.0.1:8008. It
	// must be an http or https URL.
	Address string `yaml:"address"`
	// Domain is the homeserver's server_name, the part after the colon in user IDs. It decides
	// every user ID in the registration's namespaces.
	Domain string `yaml:"domain"`
}

// AppServiceConfig is the appservice side: where Custodian listens, the registration's values and
// the bot's identity, and the bounds of ingest.
type AppServiceConfig struct {
	// ID is the registration's id; it must stay the same once registered.
	ID string `yaml:"id"`
	// Address is the URL at which the homeserver reaches Custodian (the registration's url). It
	// must be an http or https URL.
	Address string `yaml:"address"`
	// Hostname is the interface the appservice listener binds to (127.0.0.1, 0.0.0.0, ::).
	Hostname string `yaml:"hostname"`
	// Port is the TCP port the appservice listener binds to; it must not be 0.
	Port uint16 `yaml:"port"`
	// ASToken is the registration's as_token, with which Custodian authenticates to the
	// homeserver. [TokenPlaceholder] or empty means not generated yet.
	ASToken vault.Secret `yaml:"as_token"`
	// HSToken is the registration's hs_token, which the homeserver presents to Custodian.
	// [TokenPlaceholder] or empty means not generated yet. Ingest compares the request's token
	// with the registration's, which [CheckRegistration] has made sure is the same.
	HSToken vault.Secret `yaml:"hs_token"`
	// BotUsername is the Custodian bot's localpart (the registration's sender_localpart). It must
	// be a valid localpart outside every bridge's user namespace.
	BotUsername string `yaml:"bot_username"`
	// BotDisplayname is the bot's display name, set at startup; empty (null) leaves it alone.
	BotDisplayname string `yaml:"bot_displayname"`
	// BotAvatar is the bot's avatar as an mxc:// URI, set at startup; empty (null) leaves it
	// alone.
	BotAvatar string `yaml:"bot_avatar"`
	// MaxBodyBytes bounds a transaction body, in bytes; larger ones get 413 M_TOO_LARGE. It is
	// always positive in a loaded config.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// MaxBacklog bounds the events accepted but not yet handled; while it is exceeded, new
	// transactions wait (and Synapse, which sends one at a time, waits with them). It is always
	// positive in a loaded config.
	MaxBacklog int `yaml:"max_backlog"`
	// Workers bounds how many rooms are handled in parallel. It is always positive in a loaded
	// config.
	Workers int `yaml:"workers"`
}

// DatabaseConfig selects and tunes the database. openDatabase turns it into a
// *dbutil.Database.
type DatabaseConfig struct {
	// Type is [DatabaseSQLite] (the embedded default), [DatabaseSQLiteFullSync] or
	// [DatabasePostgres]. The binary registers the drivers (cmd/custodian imports them).
	Type string `yaml:"type"`
	// URI is the SQLite file URI or the PostgreSQL connection string. It may hold a password:
	// never log it as is (log redactURI(uri)). For SQLite, _txlock=immediate is added when the
	// URI sets no _txlock.
	URI string `yaml:"uri"`
	// MaxOpenConns bounds the open connections; it is at least 1 in a loaded config.
	MaxOpenConns int `yaml:"max_open_conns"`
	// MaxIdleConns bounds the idle connections kept open; between 0 and MaxOpenConns.
	MaxIdleConns int `yaml:"max_idle_conns"`
	// ProcessedTTL is how long the IDs of handled events and transactions are remembered for
	// deduplication. YAML gives it with a unit ("24h", "90m"); yaml.v3 parses time.Duration
	// from such strings and refuses bare numbers. It is at least [MinProcessedTTL] in a loaded
	// config.
	ProcessedTTL time.Duration `yaml:"processed_ttl"`
}

// MinProcessedTTL is the smallest database.processed_ttl accepted. Synapse retries an
// unacknowledged transaction up to 512 seconds apart, so a shorter memory could let a retried
// transaction through twice.
const MinProcessedTTL = 10 * time.Minute

// BotConfig configures bot hosting: who may invite bots and how commands work.
type BotConfig struct {
	// CommandPrefix starts a command in a group room ("!"). In a DM with the bot the prefix is
	// optional. It is never empty and holds no whitespace in a loaded config.
	CommandPrefix string `yaml:"command_prefix"`
	// InvitePolicy says whose invites bots accept.
	InvitePolicy InvitePolicy `yaml:"invite_policy"`
	// CommandPowerLevels overrides, per command ("irc link", "webhook add"), the power level a
	// room-scoped configuration command requires. By default (nil or no entry) such a command
	// requires the level the room sets for state events (state_default).
	CommandPowerLevels map[string]int `yaml:"command_power_levels"`
}

// InvitePolicy says whose invites bots accept. An invite is allowed if the inviter is listed in
// AllowedUsers or their server in AllowedServers. Both empty means only users of this
// homeserver (homeserver.domain).
type InvitePolicy struct {
	// AllowedUsers are full user IDs (@alice:example.org), validated at load time.
	AllowedUsers []string `yaml:"allowed_users"`
	// AllowedServers are server names (example.org, optionally with a port), validated at load
	// time.
	AllowedServers []string `yaml:"allowed_servers"`
}

// MetricsConfig configures the Prometheus endpoint.
type MetricsConfig struct {
	// Listen is the host:port of the /metrics listener, e.g. 127.0.0.1:9330; nil (null in
	// YAML) disables it. It is never an empty string in a loaded config.
	Listen *string `yaml:"listen"`
}

// LoggingConfig configures logs (see [NewLogger]). Logs never hold message bodies, tokens or
// secrets.
type LoggingConfig struct {
	// Level is debug, info, warn or error. Trace is refused: at trace level, dependencies log
	// query arguments and request bodies.
	Level string `yaml:"level"`
	// Format is [LogFormatPretty] (human-readable, coloured on a terminal) or [LogFormatJSON].
	Format string `yaml:"format"`
}

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

// EncryptionConfig configures end-to-end encryption. With it on (and the vault's master key
// configured, and the homeserver pushing to-device events to appservices), the bot has its own
// device, reads and answers in encrypted rooms, and encrypts what it and the bridges' ghosts send
// there. Zero durations (a Config built in code) mean the defaults of example-config.yaml.
type EncryptionConfig struct {
	// Enabled turns end-to-end encryption on.
	Enabled bool `yaml:"enabled"`
	// MSC4190 creates the bot's device with PUT /devices/{deviceId} (MSC4190); false logs in
	// with m.login.application_service instead, for homeservers without MSC4190.
	MSC4190 bool `yaml:"msc4190"`
	// DefaultEncrypted makes the rooms Custodian opens itself (management rooms, private chats)
	// encrypted, while encryption is active.
	DefaultEncrypted bool `yaml:"default_encrypted"`
	// KeyWait is how long an event whose room key has not arrived waits for it before its
	// sender is told it could not be read.
	KeyWait time.Duration `yaml:"key_wait"`
	// SessionRetention is how long megolm sessions (received ones, and the bot's outbound ones)
	// are kept; the retention sweep deletes older ones, so a database backup cannot decrypt
	// older messages. Zero means privacy.activity_retention.
	SessionRetention time.Duration `yaml:"session_retention"`
}

// Default of the encryption section for a Config built in code.
const defaultKeyWait = 30 * time.Second

// keyWait returns encryption.key_wait, or its default.
func (ec *EncryptionConfig) keyWait() time.Duration { return orDefault(ec.KeyWait, defaultKeyWait) }

// sessionRetention returns encryption.session_retention, or privacy.activity_retention.
func (cfg *Config) sessionRetention() time.Duration {
	return orDefault(cfg.Encryption.SessionRetention, cfg.Privacy.activityRetention())
}

// validate reports problems in the encryption section.
func (ec *EncryptionConfig) validate() []*ConfigError {
	var p []*ConfigError
	if ec.KeyWait < time.Second || ec.KeyWait > 10*time.Minute {
		p = append(p, &ConfigError{Path: "encryption.key_wait", Message: "must be between 1s and 10m, such as 30s"})
	}
	if ec.SessionRetention < 0 {
		p = append(p, &ConfigError{Path: "encryption.session_retention", Message: "must be a positive duration, or 0 for privacy.activity_retention"})
	}
	return p
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

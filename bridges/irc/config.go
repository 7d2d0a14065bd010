package irc

import (
	_ "embed"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice"
	"github.com/custodian-matrix/custodian/appservice/vault"
	"github.com/custodian-matrix/custodian/bridges/irc/ircconn"
	"github.com/custodian-matrix/custodian/bridges/irc/ircconv"
	"github.com/custodian-matrix/custodian/bridges/irc/ircid"
)

// exampleConfig is the bridge's commented example configuration. Its top-level values are the
// defaults of keys left out; its example network is not a default.
//
//go:embed example-config.yaml
var exampleConfig string

// Config is the IRC bridge's section of the configuration (bridges.irc). example-config.yaml
// documents every key. A Config is read-only once the core decoded it.
type Config struct {
	// IdleTimeout is how long a puppet may stay idle before it is disconnected.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// MessageTTL is how long event ↔ IRC message ID mappings are kept.
	MessageTTL time.Duration `yaml:"message_ttl"`
	// Reconnect shapes the delays between reconnection attempts.
	Reconnect ReconnectConfig `yaml:"reconnect"`
	// ConnectRate limits how fast connections are opened, across all networks.
	ConnectRate RateConfig `yaml:"connect_rate"`
	// MediaProxy, if not nil, serves relayed Matrix media to IRC users, and the full text of
	// long messages.
	MediaProxy *MediaProxyConfig `yaml:"media_proxy"`
	// Messages shapes how Matrix messages look on IRC.
	Messages MessagesConfig `yaml:"messages"`
	// QuitDebounce is how long the leave of an IRC user whose QUIT looks like a netsplit waits
	// for their return; 0 turns the damping off.
	QuitDebounce time.Duration `yaml:"quit_debounce"`
	// Identd is the built-in RFC 1413 ident server.
	Identd IdentdConfig `yaml:"identd"`
	// EncryptPortals creates the portal rooms and IRC private chats the bridge opens with
	// end-to-end encryption, while the core's encryption is active. Off by default: IRC users
	// read everything in plaintext anyway (see the README).
	EncryptPortals bool `yaml:"encrypt_portals"`
	// Networks are the networks to bridge, by their permanent ID.
	Networks map[string]*NetworkConfig `yaml:"networks"`
}

// IdentdConfig is the built-in ident server, which tells IRC servers the ident user name of
// each of the bridge's connections (see ident_template).
type IdentdConfig struct {
	// Enabled turns the ident server on.
	Enabled bool `yaml:"enabled"`
	// Address is where it listens, host:port. Port 113, the one IRC servers ask, is
	// privileged: see the README for running it on a high port behind a redirect.
	Address string `yaml:"address"`
}

// password reads the bot account's password from its file or environment variable. Errors
// name the file or variable, never the password.
func (ba *BotAccountConfig) password() (vault.Secret, error) {
	var raw string
	if ba.PasswordFile != "" {
		b, err := os.ReadFile(ba.PasswordFile)
		if err != nil {
			return vault.Secret{}, fmt.Errorf("failed to read bot_account.password_file: %w", err)
		}
		raw = string(b)
	} else {
		var ok bool
		if raw, ok = os.LookupEnv(ba.PasswordEnv); !ok {
			return vault.Secret{}, fmt.Errorf("bot_account.password_env: %s is not set", ba.PasswordEnv)
		}
	}
	raw = strings.TrimSpace(raw)
	if raw == "" || strings.ContainsAny(raw, "\r\n\x00") {
		return vault.Secret{}, errors.New("bot_account: the password is empty or holds line breaks or NUL")
	}
	return vault.NewSecret(raw), nil
}

// Ways a network's users log in to their services accounts (NetworkConfig.Auth).
const (
	AuthSASL     = "sasl"
	AuthPass     = "pass"
	AuthNickServ = "nickserv"
)

// BotAccountConfig is the services account the bridge's own connection logs in to.
type BotAccountConfig struct {
	// Account is the account name.
	Account string `yaml:"account"`
	// PasswordFile is a file holding the password (surrounding white space is ignored).
	PasswordFile string `yaml:"password_file"`
	// PasswordEnv is an environment variable holding the password, if PasswordFile is empty.
	PasswordEnv string `yaml:"password_env"`
}

// MediaProxyConfig is the listener that serves relayed media to IRC users.
type MediaProxyConfig struct {
	// Listen is the listener's host:port; port 0 picks a free one (tests).
	Listen string `yaml:"listen"`
	// PublicURL is the listener's external base URL.
	PublicURL string `yaml:"public_url"`
	// MaxBytes bounds the size of a file served; larger ones answer 413.
	MaxBytes int64 `yaml:"max_bytes"`
}

// MessagesConfig shapes how Matrix replies, edits and long messages look on IRC.
type MessagesConfig struct {
	// ReplyFormat is the template of a reply: {nick}, {quote} and {text}.
	ReplyFormat string `yaml:"reply_format"`
	// ReplyQuoteLength is the longest quote in a reply, in bytes.
	ReplyQuoteLength int `yaml:"reply_quote_length"`
	// EditMaxChange is the share of a message's words an edit may change and still be sent as
	// a correction (s/old/new/); 0 sends every edit whole.
	EditMaxChange float64 `yaml:"edit_max_change"`
	// LongLines and LongBytes make a message long: more IRC lines or more bytes of text than
	// these. A long message is sent as its first line and a link to its full text.
	LongLines int `yaml:"long_lines"`
	LongBytes int `yaml:"long_bytes"`
}

// ReconnectConfig is an exponential backoff with jitter: the first delay is Initial, each next
// one doubles up to Max, and each is drawn within ±50 % of that.
type ReconnectConfig struct {
	Initial time.Duration `yaml:"initial"`
	Max     time.Duration `yaml:"max"`
}

// RateConfig is a token bucket: Burst at once, refilled at PerSecond.
type RateConfig struct {
	PerSecond float64 `yaml:"per_second"`
	Burst     int     `yaml:"burst"`
}

// NetworkConfig is one IRC network (bridges.irc.networks.<id>). Keys left out take the example
// network's values.
type NetworkConfig struct {
	// ID is the network's key under networks; it is set by validation, not read from YAML.
	ID string `yaml:"-"`
	// Name is the network's name as shown to users; empty means the ID.
	Name string `yaml:"name"`
	// Address is the server's host:port.
	Address string `yaml:"address"`
	// TLS says whether to connect with TLS, verifying the server's certificate.
	TLS bool `yaml:"tls"`
	// TLSCAFile, if set, is a PEM file of the certificate authorities trusted for the
	// server's certificate instead of the system's (private networks, test networks).
	TLSCAFile string `yaml:"tls_ca_file"`
	// Auth is how users' linked accounts (!irc login) and the bridge's account log in:
	// AuthSASL (SASL PLAIN), AuthPass (server password "account:password") or AuthNickServ
	// (IDENTIFY to NickServ after connecting).
	Auth string `yaml:"auth"`
	// SASLMechanisms are the SASL mechanisms the network offers users: PLAIN (with auth: sasl,
	// !irc login) and EXTERNAL (!irc cert, needs tls). PLAIN missing with auth: sasl turns
	// !irc login off for the network.
	SASLMechanisms []string `yaml:"sasl_mechanisms"`
	// NickServ is where auth: nickserv sends IDENTIFY: the services nick, or nick@server
	// (NickServ@services.) where the network supports it, so that a user who took the nick
	// while services were down cannot collect passwords.
	NickServ string `yaml:"nickserv"`
	// BotAccount, if not nil, is the account the bridge's own connection logs in to, the
	// same way as users' accounts (auth).
	BotAccount *BotAccountConfig `yaml:"bot_account"`
	// IdentTemplate makes a puppet's ident user name from {hash} (a short keyed hash of the
	// Matrix ID) and {localpart}.
	IdentTemplate string `yaml:"ident_template"`
	// RealnameTemplate makes a puppet's real name (gecos) from {mxid}, {localpart},
	// {displayname} and {server}.
	RealnameTemplate string `yaml:"realname_template"`
	// NickTemplate makes a puppet's nick from {localpart} and {displayname}.
	NickTemplate string `yaml:"nick_template"`
	// BotNick is the nick of the bridge's own connection.
	BotNick string `yaml:"bot_nick"`
	// MaxPuppets bounds the puppet connections to the network; 0 means no limit.
	MaxPuppets int `yaml:"max_puppets"`
	// LineRate is each connection's flood control.
	LineRate RateConfig `yaml:"line_rate"`
	// LinkConsent is LinkConsentRequired (!irc link asks a channel operator on IRC first) or
	// LinkConsentOff (it links at once).
	LinkConsent string `yaml:"link_consent"`
	// ConsentTimeout is how long an operator has to answer a link request.
	ConsentTimeout time.Duration `yaml:"consent_timeout"`
	// RejoinDelay is how long a puppet kicked from a channel stays out of it, and how long a
	// killed puppet waits before it reconnects.
	RejoinDelay time.Duration `yaml:"rejoin_delay"`
	// Channels decides which channels may be bridged (portalled through their alias, or linked).
	Channels ChannelPolicy `yaml:"channels"`
	// PuppetServers are glob patterns of the Matrix servers whose users get puppets on the
	// network; empty means this homeserver's users only.
	PuppetServers []string `yaml:"puppet_servers"`
	// PortalPowerLevels are the power levels the bridge gives Matrix users in the portal rooms
	// it creates (through an alias, or at a reset), besides its own 100.
	PortalPowerLevels map[id.UserID]int `yaml:"portal_power_levels"`
}

// The values of link_consent.
const (
	LinkConsentRequired = "required"
	LinkConsentOff      = "off"
)

// ConsentRequired reports whether !irc link asks a channel operator first.
func (nc *NetworkConfig) ConsentRequired() bool { return nc.LinkConsent != LinkConsentOff }

// AllowsLogin reports whether users may link accounts on the network: with SASL PLAIN
// offered, or through PASS or NickServ.
func (nc *NetworkConfig) AllowsLogin() bool {
	return nc.Auth != AuthSASL || nc.offers("PLAIN")
}

// sendsPasswords reports whether connections to the network may carry a password: users may
// link accounts (SASL PLAIN, PASS or IDENTIFY), or the bridge's own connection logs in.
func (nc *NetworkConfig) sendsPasswords() bool {
	return nc.AllowsLogin() || nc.BotAccount != nil
}

// loopbackAddress reports whether address (host:port) names a loopback IP literal; a host name
// does not count, since resolving it may give any address.
func loopbackAddress(address string) bool {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// AllowsCert reports whether users may log in with a client certificate (!irc cert): SASL
// EXTERNAL offered over TLS.
func (nc *NetworkConfig) AllowsCert() bool {
	return nc.TLS && nc.offers("EXTERNAL")
}

func (nc *NetworkConfig) offers(mech string) bool {
	return slices.ContainsFunc(nc.SASLMechanisms, func(m string) bool { return strings.EqualFold(m, mech) })
}

// defaultConfig returns the example configuration's top-level values, without its networks.
func defaultConfig() Config {
	var cfg Config
	if err := yaml.Unmarshal([]byte(exampleConfig), &cfg); err != nil {
		panic(fmt.Errorf("irc: embedded example-config.yaml does not decode: %w", err))
	}
	// The example network is an example, not a default: a networks map decoded over it would
	// keep it.
	cfg.Networks = nil
	return cfg
}

// defaultNetwork returns the example network's values, the defaults of keys a network leaves out.
func defaultNetwork() NetworkConfig {
	// plainNetwork has no UnmarshalYAML, which would call back here.
	type plainNetwork NetworkConfig
	var cfg struct {
		Networks map[string]plainNetwork `yaml:"networks"`
	}
	if err := yaml.Unmarshal([]byte(exampleConfig), &cfg); err != nil {
		panic(fmt.Errorf("irc: embedded example-config.yaml does not decode: %w", err))
	}
	nc := NetworkConfig(cfg.Networks["libera"])
	nc.Name, nc.Address = "", ""
	return nc
}

// UnmarshalYAML decodes one network over the example network's defaults, strictly.
func (nc *NetworkConfig) UnmarshalYAML(node *yaml.Node) error {
	type plain NetworkConfig
	def := defaultNetwork()
	out, err := yaml.Marshal(node)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(strings.NewReader(string(out)))
	dec.KnownFields(true)
	p := plain(def)
	if err = dec.Decode(&p); err != nil {
		return err
	}
	*nc = NetworkConfig(p)
	return nil
}

// Limits of the values ValidateConfig accepts.
const (
	maxPuppetsCap   = 100000
	minIdleTimeout  = time.Minute
	minMessageTTL   = time.Minute
	maxReplyQuote   = 400
	minLongBytes    = 100
	maxQuitDebounce = 10 * time.Minute
	// Bounds of consent_timeout and rejoin_delay.
	minConsentTimeout = 10 * time.Second
	maxConsentTimeout = 24 * time.Hour
	maxRejoinDelay    = 24 * time.Hour
	// defaultMediaMaxBytes is media_proxy.max_bytes when left out: 50 MiB.
	defaultMediaMaxBytes = 50 << 20
)

// ValidateConfig checks the decoded configuration and reports every problem at once, each
// prefixed with its key path. It implements [appservice.ConfigValidator].
func (br *Bridge) ValidateConfig() error {
	return br.cfg.validate()
}

func (cfg *Config) validate() error {
	var errs []error
	problem := func(path, format string, args ...any) {
		errs = append(errs, &appservice.ConfigError{Path: path, Message: fmt.Sprintf(format, args...)})
	}
	if cfg.IdleTimeout < minIdleTimeout {
		problem("idle_timeout", "must be at least %s", minIdleTimeout)
	}
	if cfg.MessageTTL < minMessageTTL {
		problem("message_ttl", "must be at least %s", minMessageTTL)
	}
	if cfg.Reconnect.Initial <= 0 {
		problem("reconnect.initial", "must be a positive duration, such as 2s")
	}
	if cfg.Reconnect.Max < cfg.Reconnect.Initial {
		problem("reconnect.max", "must be at least reconnect.initial")
	}
	if !(cfg.ConnectRate.PerSecond > 0) {
		problem("connect_rate.per_second", "must be a positive number")
	}
	if cfg.ConnectRate.Burst < 1 {
		problem("connect_rate.burst", "must be at least 1")
	}
	if mp := cfg.MediaProxy; mp != nil {
		if _, port, err := net.SplitHostPort(mp.Listen); err != nil {
			problem("media_proxy.listen", "must be host:port, such as 127.0.0.1:29333")
		} else if _, err = strconv.ParseUint(port, 10, 16); err != nil {
			problem("media_proxy.listen", "the port must be a number from 0 to 65535")
		}
		if u, err := url.Parse(mp.PublicURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
			u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			problem("media_proxy.public_url", "must be an absolute http or https URL without query or fragment, such as https://irc-media.example.org")
		}
		if mp.MaxBytes == 0 {
			mp.MaxBytes = defaultMediaMaxBytes
		} else if mp.MaxBytes < 0 {
			problem("media_proxy.max_bytes", "must be positive")
		}
	}
	if !ircconv.ValidReplyFormat(cfg.Messages.ReplyFormat) {
		problem("messages.reply_format", "must contain {text}")
	}
	if cfg.Messages.ReplyQuoteLength < 1 || cfg.Messages.ReplyQuoteLength > maxReplyQuote {
		problem("messages.reply_quote_length", "must be between 1 and %d", maxReplyQuote)
	}
	if !(cfg.Messages.EditMaxChange >= 0 && cfg.Messages.EditMaxChange <= 1) {
		problem("messages.edit_max_change", "must be between 0 and 1")
	}
	if cfg.Messages.LongLines < 1 {
		problem("messages.long_lines", "must be at least 1")
	}
	if cfg.Messages.LongBytes < minLongBytes {
		problem("messages.long_bytes", "must be at least %d", minLongBytes)
	}
	if cfg.QuitDebounce < 0 || cfg.QuitDebounce > maxQuitDebounce {
		problem("quit_debounce", "must be between 0 and %s", maxQuitDebounce)
	}
	if cfg.Identd.Enabled {
		if _, port, err := net.SplitHostPort(cfg.Identd.Address); err != nil {
			problem("identd.address", "must be host:port, such as 127.0.0.1:113")
		} else if _, err = strconv.ParseUint(port, 10, 16); err != nil {
			problem("identd.address", "the port must be a number from 0 to 65535")
		}
	}
	if len(cfg.Networks) == 0 {
		problem("networks", "at least one network is required")
	}
	ids := make([]string, 0, len(cfg.Networks))
	for netID := range cfg.Networks {
		ids = append(ids, netID)
	}
	sort.Strings(ids)
	for _, netID := range ids {
		nc := cfg.Networks[netID]
		path := "networks." + netID
		if nc == nil {
			problem(path, "must be a mapping")
			continue
		}
		nc.ID = netID
		if !ircid.ValidNetwork(netID) {
			problem(path, "network IDs may hold only lowercase letters, digits and - (at most %d bytes)", ircid.MaxNetworkLength)
		}
		if nc.Name == "" {
			nc.Name = netID
		}
		if host, port, err := net.SplitHostPort(nc.Address); err != nil || host == "" {
			problem(path+".address", "must be host:port, such as irc.libera.chat:6697")
		} else if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			problem(path+".address", "the port must be a number from 1 to 65535")
		}
		for _, m := range nc.SASLMechanisms {
			if !strings.EqualFold(m, "PLAIN") && !strings.EqualFold(m, "EXTERNAL") {
				problem(path+".sasl_mechanisms", "%q is not supported; only PLAIN and EXTERNAL are", m)
			}
		}
		if nc.offers("EXTERNAL") && !nc.TLS {
			problem(path+".sasl_mechanisms", "EXTERNAL needs tls: true (the certificate is sent in the TLS handshake)")
		}
		switch nc.Auth {
		case AuthSASL, AuthPass, AuthNickServ:
		default:
			problem(path+".auth", "must be sasl, pass or nickserv")
		}
		if nc.NickServ == "" {
			nc.NickServ = "NickServ"
		}
		if !ircconn.ValidServiceTarget(nc.NickServ) {
			problem(path+".nickserv", "must be a nick (NickServ) or nick@server (NickServ@services.)")
		}
		if !nc.TLS && nc.sendsPasswords() && !loopbackAddress(nc.Address) {
			problem(path+".tls", "must be true: users' or the bridge's passwords would cross the network in the clear "+
				"(auth: %s, or bot_account); tls: false is allowed only for a server on a loopback IP address (test networks)", nc.Auth)
		}
		if ba := nc.BotAccount; ba != nil {
			if ba.Account == "" || strings.ContainsAny(ba.Account, " :\r\n\x00") {
				problem(path+".bot_account.account", "must be a services account name")
			}
			if (ba.PasswordFile == "") == (ba.PasswordEnv == "") {
				problem(path+".bot_account", "set exactly one of password_file and password_env")
			}
		}
		if !strings.Contains(nc.IdentTemplate, "{hash}") && !strings.Contains(nc.IdentTemplate, "{localpart}") {
			problem(path+".ident_template", "must contain {hash} or {localpart}")
		}
		if strings.TrimSpace(nc.RealnameTemplate) == "" {
			problem(path+".realname_template", "must not be empty")
		}
		if !strings.Contains(nc.NickTemplate, "{localpart}") && !strings.Contains(nc.NickTemplate, "{displayname}") {
			problem(path+".nick_template", "must contain {localpart} or {displayname}")
		}
		if !ircid.ValidNick(nc.BotNick) {
			problem(path+".bot_nick", "is not a valid IRC nick")
		}
		if nc.MaxPuppets < 0 || nc.MaxPuppets > maxPuppetsCap {
			problem(path+".max_puppets", "must be between 0 and %d", maxPuppetsCap)
		}
		if !(nc.LineRate.PerSecond > 0) {
			problem(path+".line_rate.per_second", "must be a positive number")
		}
		if nc.LineRate.Burst < 1 {
			problem(path+".line_rate.burst", "must be at least 1")
		}
		if nc.LinkConsent != LinkConsentRequired && nc.LinkConsent != LinkConsentOff {
			problem(path+".link_consent", "must be %q or %q", LinkConsentRequired, LinkConsentOff)
		}
		if nc.ConsentTimeout < minConsentTimeout || nc.ConsentTimeout > maxConsentTimeout {
			problem(path+".consent_timeout", "must be between %s and %s", minConsentTimeout, maxConsentTimeout)
		}
		if nc.RejoinDelay < 0 || nc.RejoinDelay > maxRejoinDelay {
			problem(path+".rejoin_delay", "must be between 0s and %s", maxRejoinDelay)
		}
		for _, key := range []struct {
			name     string
			patterns []string
		}{{"allow", nc.Channels.Allow}, {"deny", nc.Channels.Deny}} {
			for _, pattern := range key.patterns {
				if !validChannelPattern(pattern) {
					problem(path+".channels."+key.name, "%q is not a channel pattern (a channel name that may hold * and ?, such as #project-*)", pattern)
				}
			}
		}
		for _, pattern := range nc.PuppetServers {
			if !validServerPattern(pattern) {
				problem(path+".puppet_servers", "%q is not a server name pattern (such as example.org or *.example.org)", pattern)
			}
		}
		users := make([]id.UserID, 0, len(nc.PortalPowerLevels))
		for userID := range nc.PortalPowerLevels {
			users = append(users, userID)
		}
		slices.Sort(users)
		for _, userID := range users {
			if _, _, err := userID.ParseAndValidateRelaxed(); err != nil {
				problem(path+".portal_power_levels", "%q is not a Matrix user ID (@user:server)", userID)
			} else if level := nc.PortalPowerLevels[userID]; level < 0 || level > 100 {
				problem(path+".portal_power_levels", "the level of %s must be from 0 to 100", userID)
			}
		}
	}
	return errors.Join(errs...)
}

package irc

import (
	_ "embed"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/custodian-matrix/custodian/appservice"
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
	// MediaProxy, if not nil, serves relayed Matrix media to IRC users.
	MediaProxy *MediaProxyConfig `yaml:"media_proxy"`
	// Networks are the networks to bridge, by their permanent ID.
	Networks map[string]*NetworkConfig `yaml:"networks"`
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
	// SASLMechanisms are the mechanisms users may link accounts with; only PLAIN is
	// supported, and an empty list turns !irc login off for the network.
	SASLMechanisms []string `yaml:"sasl_mechanisms"`
	// NickTemplate makes a puppet's nick from {localpart} and {displayname}.
	NickTemplate string `yaml:"nick_template"`
	// BotNick is the nick of the bridge's own connection.
	BotNick string `yaml:"bot_nick"`
	// MaxPuppets bounds the puppet connections to the network; 0 means no limit.
	MaxPuppets int `yaml:"max_puppets"`
	// LineRate is each connection's flood control.
	LineRate RateConfig `yaml:"line_rate"`
}

// AllowsLogin reports whether users may link accounts on the network (SASL PLAIN offered).
func (nc *NetworkConfig) AllowsLogin() bool {
	return slices.ContainsFunc(nc.SASLMechanisms, func(m string) bool { return strings.EqualFold(m, "PLAIN") })
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
	maxPuppetsCap  = 100000
	minIdleTimeout = time.Minute
	minMessageTTL  = time.Minute
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
			if !strings.EqualFold(m, "PLAIN") {
				problem(path+".sasl_mechanisms", "%q is not supported; only PLAIN is", m)
			}
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
	}
	return errors.Join(errs...)
}

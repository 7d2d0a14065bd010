package webhook

import (
	_ "embed"
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/custodian-matrix/custodian/appservice"
)

// exampleConfig is the bridge's commented example configuration. It is also the source of the
// defaults: a key left out of the bridge's section keeps the example's value.
//
//go:embed example-config.yaml
var exampleConfig string

// Config is the webhook bridge's section of the configuration (bridges.webhook).
// example-config.yaml documents every key. A Config is read-only once the core decoded it.
type Config struct {
	// Listen is the public listener's address, host:port. Port 0 picks a free port (tests).
	Listen string `yaml:"listen"`
	// PublicURL is the listener's external base URL, from which webhook URLs are built.
	PublicURL string `yaml:"public_url"`
	// MaxBodyBytes bounds an inbound request body, in bytes.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// RateLimit bounds how often one inbound hook may post.
	RateLimit RateLimitConfig `yaml:"rate_limit"`
	// AllowPrivateTargets lets outbound hooks reach non-public addresses (loopback, private,
	// link-local …). Tests and the end-to-end harness set it to reach their own receivers.
	AllowPrivateTargets bool `yaml:"allow_private_targets"`
	// Outbound tunes delivery to outbound hooks.
	Outbound OutboundConfig `yaml:"outbound"`
}

// RateLimitConfig is a token bucket per inbound hook.
type RateLimitConfig struct {
	// PerSecond is the sustained rate, in posts per second.
	PerSecond float64 `yaml:"per_second"`
	// Burst is the bucket's size: how many posts may come at once.
	Burst int `yaml:"burst"`
}

// OutboundConfig tunes delivery to outbound hooks.
type OutboundConfig struct {
	// Timeout bounds one delivery attempt.
	Timeout time.Duration `yaml:"timeout"`
	// MaxAttempts is how often one message is tried; at least 1.
	MaxAttempts int `yaml:"max_attempts"`
	// MinBackoff is the wait before the first retry; it doubles per retry up to MaxBackoff,
	// with jitter.
	MinBackoff time.Duration `yaml:"min_backoff"`
	// MaxBackoff caps the wait between retries.
	MaxBackoff time.Duration `yaml:"max_backoff"`
	// QueueSize bounds the messages waiting per outbound hook.
	QueueSize int `yaml:"queue_size"`
	// MaxResponseBytes bounds how much of a receiver's answer is read.
	MaxResponseBytes int64 `yaml:"max_response_bytes"`
}

// defaultConfig returns the example configuration's values.
func defaultConfig() Config {
	var cfg Config
	if err := yaml.Unmarshal([]byte(exampleConfig), &cfg); err != nil {
		panic(fmt.Errorf("webhook: embedded example-config.yaml does not decode: %w", err))
	}
	return cfg
}

// Limits of the values ValidateConfig accepts.
const (
	minBodyBytes   = 1 << 10
	maxBodyBytes   = 16 << 20
	maxAttemptsCap = 20
	maxQueueSize   = 100000
	maxTimeout     = 5 * time.Minute
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
	if _, port, err := net.SplitHostPort(cfg.Listen); err != nil {
		problem("listen", "must be host:port, such as 127.0.0.1:29332")
	} else if _, err = strconv.ParseUint(port, 10, 16); err != nil {
		problem("listen", "the port must be a number from 0 to 65535")
	}
	if u, err := url.Parse(cfg.PublicURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		problem("public_url", "must be an absolute http or https URL, such as https://webhooks.example.org")
	} else if u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery {
		problem("public_url", "must not have user information, a query or a fragment")
	} else if !publicPathPattern.MatchString(u.Path) {
		problem("public_url", "its path may hold only letters, digits and - _ . / ~")
	}
	if cfg.MaxBodyBytes < minBodyBytes || cfg.MaxBodyBytes > maxBodyBytes {
		problem("max_body_bytes", "must be between %d and %d bytes", minBodyBytes, maxBodyBytes)
	}
	if !(cfg.RateLimit.PerSecond > 0) {
		problem("rate_limit.per_second", "must be a positive number")
	}
	if cfg.RateLimit.Burst < 1 {
		problem("rate_limit.burst", "must be at least 1")
	}
	out := &cfg.Outbound
	if out.Timeout <= 0 || out.Timeout > maxTimeout {
		problem("outbound.timeout", "must be a positive duration of at most %s, such as 10s", maxTimeout)
	}
	if out.MaxAttempts < 1 || out.MaxAttempts > maxAttemptsCap {
		problem("outbound.max_attempts", "must be between 1 and %d", maxAttemptsCap)
	}
	if out.MinBackoff <= 0 {
		problem("outbound.min_backoff", "must be a positive duration, such as 2s")
	}
	if out.MaxBackoff < out.MinBackoff {
		problem("outbound.max_backoff", "must be at least outbound.min_backoff")
	}
	if out.QueueSize < 1 || out.QueueSize > maxQueueSize {
		problem("outbound.queue_size", "must be between 1 and %d", maxQueueSize)
	}
	if out.MaxResponseBytes < 0 {
		problem("outbound.max_response_bytes", "must not be negative")
	}
	return errors.Join(errs...)
}

// publicPathPattern is what public_url's path may look like: it becomes part of the listener's
// routing patterns.
var publicPathPattern = regexp.MustCompile(`^[A-Za-z0-9/_.~-]*$`)

// publicBase returns public_url without a trailing slash.
func (cfg *Config) publicBase() string {
	return strings.TrimRight(cfg.PublicURL, "/")
}

// publicPath returns the path of public_url without a trailing slash ("" for none).
func (cfg *Config) publicPath() string {
	u, err := url.Parse(cfg.PublicURL)
	if err != nil {
		return ""
	}
	return strings.TrimRight(u.Path, "/")
}

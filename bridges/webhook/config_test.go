package webhook

import (
	"errors"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/custodian-matrix/custodian/appservice"
)

func TestDefaultConfigIsValid(t *testing.T) {
	cfg := defaultConfig()
	if err := cfg.validate(); err != nil {
		t.Fatalf("the example configuration does not validate: %v", err)
	}
	if cfg.Listen != "127.0.0.1:29332" || cfg.MaxBodyBytes != 64<<10 || cfg.AllowPrivateTargets || cfg.Outbound.Timeout != 10*time.Second {
		t.Errorf("defaults = %+v, not what example-config.yaml says", cfg)
	}
}

func TestExampleConfigCommentsEveryKey(t *testing.T) {
	var root yaml.Node
	if err := yaml.Unmarshal([]byte(exampleConfig), &root); err != nil {
		t.Fatal(err)
	}
	var check func(node *yaml.Node, path string)
	check = func(node *yaml.Node, path string) {
		if node.Kind != yaml.MappingNode {
			return
		}
		for i := 0; i < len(node.Content); i += 2 {
			key, value := node.Content[i], node.Content[i+1]
			if strings.TrimSpace(key.HeadComment) == "" {
				t.Errorf("key %s%s has no comment", path, key.Value)
			}
			check(value, path+key.Value+".")
		}
	}
	check(root.Content[0], "")
}

func TestValidateConfig(t *testing.T) {
	tests := []struct {
		name    string
		change  func(cfg *Config)
		wantErr string
	}{
		{name: "defaults", change: func(cfg *Config) {}},
		{name: "port 0 for tests", change: func(cfg *Config) { cfg.Listen = "127.0.0.1:0" }},
		{name: "public url with path", change: func(cfg *Config) { cfg.PublicURL = "https://example.org/hooks/" }},
		{name: "listen without port", change: func(cfg *Config) { cfg.Listen = "127.0.0.1" }, wantErr: "listen: must be host:port"},
		{name: "listen bad port", change: func(cfg *Config) { cfg.Listen = "127.0.0.1:http" }, wantErr: "listen: the port"},
		{name: "public url relative", change: func(cfg *Config) { cfg.PublicURL = "/hooks" }, wantErr: "public_url: must be an absolute"},
		{name: "public url ftp", change: func(cfg *Config) { cfg.PublicURL = "ftp://example.org" }, wantErr: "public_url: must be an absolute"},
		{name: "public url query", change: func(cfg *Config) { cfg.PublicURL = "https://example.org/?a=b" }, wantErr: "public_url: must not have"},
		{name: "public url odd path", change: func(cfg *Config) { cfg.PublicURL = "https://example.org/{x}" }, wantErr: "public_url: its path"},
		{name: "body too small", change: func(cfg *Config) { cfg.MaxBodyBytes = 10 }, wantErr: "max_body_bytes"},
		{name: "rate zero", change: func(cfg *Config) { cfg.RateLimit.PerSecond = 0 }, wantErr: "rate_limit.per_second"},
		{name: "burst zero", change: func(cfg *Config) { cfg.RateLimit.Burst = 0 }, wantErr: "rate_limit.burst"},
		{name: "timeout zero", change: func(cfg *Config) { cfg.Outbound.Timeout = 0 }, wantErr: "outbound.timeout"},
		{name: "attempts zero", change: func(cfg *Config) { cfg.Outbound.MaxAttempts = 0 }, wantErr: "outbound.max_attempts"},
		{name: "backoff inverted", change: func(cfg *Config) { cfg.Outbound.MaxBackoff = time.Second }, wantErr: "outbound.max_backoff"},
		{name: "queue zero", change: func(cfg *Config) { cfg.Outbound.QueueSize = 0 }, wantErr: "outbound.queue_size"},
		{
			name: "every problem at once",
			change: func(cfg *Config) {
				cfg.Listen = ""
				cfg.PublicURL = ""
				cfg.Outbound.QueueSize = 0
			},
			wantErr: "outbound.queue_size",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			br := New()
			tt.change(&br.cfg)
			err := br.ValidateConfig()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("ValidateConfig = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ValidateConfig = %v, want an error containing %q", err, tt.wantErr)
			}
			// One *appservice.ConfigError per problem, its path relative to the section, so the
			// core can prefix it and find its line.
			for _, e := range appservice.Problems(err) {
				var ce *appservice.ConfigError
				if !errors.As(e, &ce) || ce.Path == "" || strings.HasPrefix(ce.Path, "bridges.") || ce.Line != 0 {
					t.Errorf("problem %q (%T) is not a ConfigError with a relative path", e, e)
				}
			}
			if tt.name == "every problem at once" && strings.Count(err.Error(), "\n") < 2 {
				t.Errorf("ValidateConfig = %v, want all three problems", err)
			}
		})
	}
}

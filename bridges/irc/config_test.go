package irc

import (
	"errors"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice"
)

// decodeConfig decodes a bridges.irc section the way the core does: strictly, over the
// defaults.
func decodeConfig(t *testing.T, src string) (Config, error) {
	t.Helper()
	cfg := defaultConfig()
	dec := yaml.NewDecoder(strings.NewReader(src))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		return cfg, err
	}
	return cfg, cfg.validate()
}

func TestConfigDefaults(t *testing.T) {
	cfg, err := decodeConfig(t, "networks:\n  testnet:\n    address: 127.0.0.1:6667\n")
	if err != nil {
		t.Fatalf("decoding a minimal config: %v", err)
	}
	if len(cfg.Networks) != 1 {
		t.Fatalf("networks = %v, want only testnet (the example's network is no default)", cfg.Networks)
	}
	nc := cfg.Networks["testnet"]
	if nc.ID != "testnet" || nc.Name != "testnet" || !nc.TLS || nc.NickTemplate != "{localpart}[m]" ||
		nc.BotNick != "custodian" || nc.MaxPuppets != 1000 || nc.LineRate.Burst != 5 || !nc.AllowsLogin() {
		t.Errorf("network defaults = %+v, want the example network's values", *nc)
	}
	if cfg.IdleTimeout != 24*time.Hour || cfg.Reconnect.Initial != 2*time.Second || cfg.ConnectRate.Burst != 20 {
		t.Errorf("top-level defaults = %+v", cfg)
	}
}

func TestExampleConfigIsValid(t *testing.T) {
	if _, err := decodeConfig(t, exampleConfig); err != nil {
		t.Fatalf("the example configuration does not validate: %v", err)
	}
}

func TestConfigProblems(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []string
	}{
		{"no networks", "idle_timeout: 1h\n", []string{"networks: at least one network is required"}},
		{"unknown key in network", "networks:\n  a:\n    address: x:1\n    adress: y\n", []string{"field adress not found"}},
		{"unknown top-level key", "netwroks: {}\n", []string{"field netwroks not found"}},
		{
			"bad values",
			"idle_timeout: 1s\nreconnect: {initial: 0s, max: 0s}\nconnect_rate: {per_second: 0, burst: 0}\n" +
				"networks:\n  Bad_Net:\n    address: nohost\n    sasl_mechanisms: [EXTERNAL]\n    nick_template: fixed\n" +
				"    bot_nick: '#bad'\n    max_puppets: -1\n    line_rate: {per_second: 0, burst: 0}\n",
			[]string{
				"idle_timeout: must be at least", "reconnect.initial", "connect_rate.per_second", "connect_rate.burst",
				"networks.Bad_Net: network IDs", "networks.Bad_Net.address", "networks.Bad_Net.sasl_mechanisms",
				"networks.Bad_Net.nick_template", "networks.Bad_Net.bot_nick", "networks.Bad_Net.max_puppets",
				"networks.Bad_Net.line_rate.per_second", "networks.Bad_Net.line_rate.burst",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodeConfig(t, tt.src)
			if err == nil {
				t.Fatalf("decodeConfig(%q) = nil error, want problems %q", tt.src, tt.want)
			}
			for _, want := range tt.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("decodeConfig(%q) error = %q, want it to mention %q", tt.src, err, want)
				}
			}
			if tt.name != "bad values" {
				return
			}
			// ValidateConfig's problems: one *appservice.ConfigError each, its path relative to
			// the section, so the core can prefix it and find its line.
			for _, e := range appservice.Problems(err) {
				var ce *appservice.ConfigError
				if !errors.As(e, &ce) || ce.Path == "" || strings.HasPrefix(ce.Path, "bridges.") || ce.Line != 0 {
					t.Errorf("problem %q (%T) is not a ConfigError with a relative path", e, e)
				}
			}
		})
	}
}

func TestTemplateNick(t *testing.T) {
	tests := []struct {
		template    string
		user        id.UserID
		displayName string
		want        string
	}{
		{"{localpart}[m]", "@alice:example.org", "", "alice[m]"},
		{"{localpart}[m]", "@al.ice=x:example.org", "", "alicex[m]"},
		{"{localpart}", "@1337:example.org", "", "_1337"},
		{"{displayname}|m", "@a:example.org", "Alice Liddell", "Alice_Liddell|m"},
		{"{localpart}", id.UserID("@" + strings.Repeat("x", 40) + ":example.org"), "", strings.Repeat("x", 30)},
		{"{displayname}", "@a:example.org", "???", "_"},
	}
	for _, tt := range tests {
		if got := templateNick(tt.template, tt.user, tt.displayName); got != tt.want {
			t.Errorf("templateNick(%q, %q, %q) = %q, want %q", tt.template, tt.user, tt.displayName, got, tt.want)
		}
	}
}

func TestIdentFor(t *testing.T) {
	tests := []struct {
		user id.UserID
		want string
	}{
		{"@alice:example.org", "alice"},
		{"@a.b-c_d:example.org", "abcd"},
		{"@...:example.org", "matrix"},
		{"@averyverylongname:example.org", "averyveryl"},
	}
	for _, tt := range tests {
		if got := identFor(tt.user); got != tt.want {
			t.Errorf("identFor(%q) = %q, want %q", tt.user, got, tt.want)
		}
	}
}

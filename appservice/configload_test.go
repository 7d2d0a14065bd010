package appservice

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.mau.fi/util/dbutil"
	"gopkg.in/yaml.v3"
	"maunium.net/go/mautrix/event"
)

// cfgBridge is a bridge that only describes itself, for config and registration tests.
type cfgBridge struct {
	id       string
	ns       Namespaces
	example  string
	target   *cfgBridgeConfig
	validate func(*cfgBridgeConfig) error
}

type cfgBridgeConfig struct {
	Greeting string             `yaml:"greeting"`
	Networks []cfgBridgeNetwork `yaml:"networks"`
}

type cfgBridgeNetwork struct {
	Name string `yaml:"name"`
	Port int    `yaml:"port"`
}

const cfgBridgeExample = `# A greeting the bridge sends.
greeting: hello
# The networks to connect to.
networks:
    -   name: libera
        port: 6697
`

func newCfgBridge(id, userPrefix, aliasPrefix string) *cfgBridge {
	return &cfgBridge{
		id:      id,
		ns:      Namespaces{UserPrefix: userPrefix, AliasPrefix: aliasPrefix},
		example: cfgBridgeExample,
		target:  &cfgBridgeConfig{Greeting: "default"},
	}
}

func (b *cfgBridge) ID() string             { return b.id }
func (b *cfgBridge) Namespaces() Namespaces { return b.ns }
func (b *cfgBridge) Config() (string, any) {
	if b.target == nil {
		return b.example, nil
	}
	return b.example, b.target
}
func (b *cfgBridge) Migrations() dbutil.UpgradeTable                        { return dbutil.UpgradeTable{} }
func (b *cfgBridge) PersonalData() []UserTable                              { return nil }
func (b *cfgBridge) Init(Host) error                                        { return nil }
func (b *cfgBridge) Start(context.Context) error                            { return nil }
func (b *cfgBridge) Stop(context.Context) error                             { return nil }
func (b *cfgBridge) HandleEvent(context.Context, *event.Event, Route) error { return nil }
func (b *cfgBridge) ValidateConfig() error                                  { return b.runValidate() }
func (b *cfgBridge) runValidate() error {
	if b.validate == nil {
		return nil
	}
	return b.validate(b.target)
}

var _ ConfigValidator = (*cfgBridge)(nil)

const (
	testASTokenValue = "astokenAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	testHSTokenValue = "hstokenBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"
)

// exampleWithTokens returns the example config for bridges with the placeholder tokens replaced,
// as custodian -g leaves it.
func exampleWithTokens(t *testing.T, bridges ...Bridge) string {
	t.Helper()
	out, err := setConfigTokens([]byte(ExampleConfig(bridges)), testASTokenValue, testHSTokenValue)
	if err != nil {
		t.Fatalf("setConfigTokens: %v", err)
	}
	return string(out)
}

// problemStrings returns the messages of each problem in err.
func problemStrings(err error) []string {
	var out []string
	for _, e := range Problems(err) {
		out = append(out, e.Error())
	}
	return out
}

// lineOf returns the 1-based line of the first line of text containing substr.
func lineOf(t *testing.T, text, substr string) int {
	t.Helper()
	for i, line := range strings.Split(text, "\n") {
		if strings.Contains(line, substr) {
			return i + 1
		}
	}
	t.Fatalf("%q not found in text", substr)
	return 0
}

func TestLoadConfigStrictness(t *testing.T) {
	base := exampleWithTokens(t, newCfgBridge("fake", "fake_", ""))
	tests := []struct {
		name    string
		edit    func(string) string
		want    string // exact message, with {line} replaced by the line of lineAt
		lineAt  string
		bridges []Bridge
	}{
		{
			name:   "unknown top-level key",
			edit:   func(s string) string { return s + "homeserverr:\n    address: x\n" },
			want:   "homeserverr: unknown key (line {line})",
			lineAt: "homeserverr:",
		},
		{
			name: "unknown nested key",
			edit: func(s string) string {
				return strings.Replace(s, "    port: 29330\n", "    port: 29330\n    prot: 1\n", 1)
			},
			want:   "appservice.prot: unknown key (line {line})",
			lineAt: "prot: 1",
		},
		{
			name: "unknown key in a bridge section",
			edit: func(s string) string {
				return strings.Replace(s, "        greeting: hello\n", "        greeting: hello\n        netwrks: []\n", 1)
			},
			want:   "bridges.fake.netwrks: unknown key (line {line})",
			lineAt: "netwrks:",
		},
		{
			name: "unknown key in a bridge list item",
			edit: func(s string) string {
				return strings.Replace(s, "                port: 6697\n", "                port: 6697\n                tls: true\n", 1)
			},
			want:   "bridges.fake.networks[0].tls: unknown key (line {line})",
			lineAt: "tls: true",
		},
		{
			name:   "type error in a bridge list item",
			edit:   func(s string) string { return strings.Replace(s, "port: 6697", "port: high", 1) },
			want:   `bridges.fake.networks[0].port: expected a whole number, got the string "high" (line {line})`,
			lineAt: "port: high",
		},
		{
			name:   "unknown bridge",
			edit:   func(s string) string { return s + "    nope:\n        x: 1\n" },
			want:   "bridges.nope: unknown bridge; this build includes fake (line {line})",
			lineAt: "x: 1",
		},
		{
			name:   "port not a number",
			edit:   func(s string) string { return strings.Replace(s, "port: 29330", "port: abc", 1) },
			want:   `appservice.port: expected a whole number from 0 to 65535, got the string "abc" (line {line})`,
			lineAt: "port: abc",
		},
		{
			name:   "port out of range",
			edit:   func(s string) string { return strings.Replace(s, "port: 29330", "port: 70000", 1) },
			want:   `appservice.port: expected a whole number from 0 to 65535, got 70000 (line {line})`,
			lineAt: "port: 70000",
		},
		{
			name:   "duration without unit",
			edit:   func(s string) string { return strings.Replace(s, "processed_ttl: 24h", "processed_ttl: 86400", 1) },
			want:   "database.processed_ttl: expected a duration with a unit, such as 24h, 90m or 30s, got 86400 (line {line})",
			lineAt: "processed_ttl:",
		},
		{
			name: "list where a mapping belongs",
			edit: func(s string) string {
				return strings.Replace(s, "    allowed_servers: []", "    allowed_servers: {a: b}", 1)
			},
			want:   "bot.invite_policy.allowed_servers: expected a list, got a mapping (line {line})",
			lineAt: "allowed_servers: {a: b}",
		},
		{
			name: "duplicate key",
			edit: func(s string) string {
				return strings.Replace(s, "    workers: 16\n", "    workers: 16\n    workers: 8\n", 1)
			},
			want:   "appservice.workers: key given twice, at lines {line} and {line+1}",
			lineAt: "workers: 16",
		},
		{
			name:   "token is a mapping",
			edit:   func(s string) string { return strings.Replace(s, "as_token: "+testASTokenValue, "as_token: {a: b}", 1) },
			want:   "appservice.as_token: expected a string, got a mapping (line {line})",
			lineAt: "as_token:",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			text := tt.edit(base)
			if text == base {
				t.Fatal("edit changed nothing")
			}
			bridges := tt.bridges
			if bridges == nil {
				bridges = []Bridge{newCfgBridge("fake", "fake_", "")}
			}
			cfg, err := parseConfig([]byte(text), "config.yaml", bridges, true)
			if err == nil {
				t.Fatalf("parseConfig() = %+v, nil; want error", cfg)
			}
			if cfg != nil {
				t.Errorf("parseConfig() returned a config with an error")
			}
			line := lineOf(t, text, tt.lineAt)
			want := strings.ReplaceAll(tt.want, "{line+1}", strconv.Itoa(line+1))
			want = strings.ReplaceAll(want, "{line}", strconv.Itoa(line))
			got := problemStrings(err)
			if !contains(got, want) {
				t.Errorf("parseConfig() problems = %q, want one to be %q", got, want)
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestLoadConfigReportsEveryProblemAtOnce(t *testing.T) {
	text := exampleWithTokens(t, newCfgBridge("fake", "fake_", ""))
	for _, r := range [][2]string{
		{"address: http://127.0.0.1:8008", "address: ftp://hs"},
		{"domain: localhost", `domain: ""`},
		{"port: 29330", "port: 0"},
		{"type: sqlite3-fk-wal", "type: mysql"},
		{"level: info", "level: loud"},
		{"    format: pretty\n", "    format: xml\n"},
		{`command_prefix: "!"`, `command_prefix: ""`},
		{"allowed_users: []", `allowed_users: ["@ok:example.org", "bob"]`},
		{"allowed_servers: []", `allowed_servers: ["exa mple.org"]`},
		{"max_backlog: 10000", "max_backlog: 0"},
		{"processed_ttl: 24h", "processed_ttl: 1m"},
		{"listen: 127.0.0.1:9330", `listen: ""`},
		{"        greeting: hello\n", "        greeting: hello\n        bogus: 1\n"},
	} {
		if !strings.Contains(text, r[0]) {
			t.Fatalf("example lacks %q", r[0])
		}
		text = strings.Replace(text, r[0], r[1], 1)
	}
	_, err := parseConfig([]byte(text), "config.yaml", []Bridge{newCfgBridge("fake", "fake_", "")}, true)
	got := problemStrings(err)
	want := []string{
		"homeserver.address: must be an http:// or https:// URL, such as http://127.0.0.1:8008",
		"homeserver.domain: must be set to the homeserver's server name",
		"appservice.port: must be set",
		"appservice.max_backlog: must be positive",
		`database.type: unknown type "mysql": use sqlite3-fk-wal, sqlite3-fk-wal-fullsync or postgres`,
		"database.processed_ttl: must be at least 10m0s",
		`bot.command_prefix: must be set, such as "!"`,
		`bot.invite_policy.allowed_users[1]: "bob" is not a user ID (such as @alice:example.org)`,
		`bot.invite_policy.allowed_servers[0]: "exa mple.org" is not a server name (such as example.org)`,
		"metrics.listen: must be host:port; use null to turn metrics off",
		`logging.level: unknown level "loud": use debug, info, warn or error`,
		`logging.format: unknown format "xml": use pretty or json`,
		"bridges.fake.bogus: unknown key (line " + strconv.Itoa(lineOf(t, text, "bogus: 1")) + ")",
	}
	for _, w := range want {
		if !contains(got, w) {
			t.Errorf("missing problem %q", w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("got %d problems, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
}

func TestLoadConfigRefusesPlaceholderTokens(t *testing.T) {
	tests := []struct {
		name   string
		as, hs string
		want   []string
	}{
		{
			name: "placeholders",
			as:   "generate", hs: "generate",
			want: []string{
				`appservice.as_token: not generated yet; run "custodian -g -c config.yaml -r registration.yaml"`,
				`appservice.hs_token: not generated yet; run "custodian -g -c config.yaml -r registration.yaml"`,
			},
		},
		{
			name: "empty",
			as:   `""`, hs: "null",
			want: []string{
				`appservice.as_token: not generated yet; run "custodian -g -c config.yaml -r registration.yaml"`,
				`appservice.hs_token: not generated yet; run "custodian -g -c config.yaml -r registration.yaml"`,
			},
		},
		{
			name: "same token twice",
			as:   testASTokenValue, hs: testASTokenValue,
			want: []string{"appservice.hs_token: must differ from appservice.as_token"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			text := strings.Replace(exampleConfig, "as_token: generate", "as_token: "+tt.as, 1)
			text = strings.Replace(text, "hs_token: generate", "hs_token: "+tt.hs, 1)
			_, err := parseConfig([]byte(text), "config.yaml", nil, true)
			if got := problemStrings(err); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("parseConfig() problems = %q, want %q", got, tt.want)
			}
			if _, err = parseConfig([]byte(text), "config.yaml", nil, false); err != nil {
				t.Errorf("parseConfig(for generate) = %v, want nil", err)
			}
		})
	}
}

func TestExampleConfigRoundTrips(t *testing.T) {
	fake := newCfgBridge("fake", "fake_", "fake_")
	bare := newCfgBridge("bare", "bare_", "")
	bare.example, bare.target = "", nil
	bridges := []Bridge{fake, bare}
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte(ExampleConfig(bridges)), 0o644); err != nil {
		t.Fatal(err)
	}

	// As printed by -e, only the tokens are missing.
	_, err := LoadConfig(path, bridges)
	want := []string{
		`appservice.as_token: not generated yet; run "custodian -g -c ` + path + ` -r registration.yaml"`,
		`appservice.hs_token: not generated yet; run "custodian -g -c ` + path + ` -r registration.yaml"`,
	}
	if got := problemStrings(err); !reflect.DeepEqual(got, want) {
		t.Fatalf("LoadConfig(example) problems = %q, want %q", got, want)
	}

	// What -g does: load for generating, then write the tokens back.
	cfg, err := LoadConfigForGenerate(path, bridges)
	if err != nil {
		t.Fatalf("LoadConfigForGenerate(example) = %v", err)
	}
	reg := GenerateRegistration(cfg, bridges)
	if err = UpdateConfigTokens(path, reg.AppToken, reg.ServerToken); err != nil {
		t.Fatal(err)
	}
	fake.target = &cfgBridgeConfig{}
	cfg, err = LoadConfig(path, bridges)
	if err != nil {
		t.Fatalf("LoadConfig(example after -g) = %v", err)
	}
	if err = CheckRegistration(cfg, bridges, reg); err != nil {
		t.Errorf("CheckRegistration(generated) = %v", err)
	}
	wantBridge := &cfgBridgeConfig{Greeting: "hello", Networks: []cfgBridgeNetwork{{Name: "libera", Port: 6697}}}
	if !reflect.DeepEqual(fake.target, wantBridge) {
		t.Errorf("bridge config = %+v, want %+v", fake.target, wantBridge)
	}
	if got := cfg.EnabledBridges(bridges); len(got) != 2 {
		t.Errorf("EnabledBridges() = %d bridges, want 2", len(got))
	}

	// Apart from tokens and bridges, the loaded example is the defaults.
	def := DefaultConfig()
	cfg.AppService.ASToken, cfg.AppService.HSToken = def.AppService.ASToken, def.AppService.HSToken
	cfg.Bridges = def.Bridges
	if !reflect.DeepEqual(cfg, def) {
		t.Errorf("loaded example = %+v, want defaults %+v", cfg, def)
	}
}

func TestDefaultConfig(t *testing.T) {
	cfg := DefaultConfig()
	tests := []struct {
		name      string
		got, want any
	}{
		{"homeserver.address", cfg.Homeserver.Address, "http://127.0.0.1:8008"},
		{"appservice.as_token", cfg.AppService.ASToken.Reveal(), TokenPlaceholder},
		{"appservice.bot_username", cfg.AppService.BotUsername, "custodian"},
		{"appservice.bot_avatar", cfg.AppService.BotAvatar, ""},
		{"appservice.max_body_bytes", cfg.AppService.MaxBodyBytes, int64(10 << 20)},
		{"appservice.max_backlog", cfg.AppService.MaxBacklog, 10000},
		{"appservice.workers", cfg.AppService.Workers, 16},
		{"database.type", cfg.Database.Type, DatabaseSQLite},
		{"database.uri", cfg.Database.URI, "file:custodian.db?_txlock=immediate"},
		{"database.processed_ttl", cfg.Database.ProcessedTTL, 24 * time.Hour},
		{"metrics.listen", *cfg.Metrics.Listen, "127.0.0.1:9330"},
		{"logging.level", cfg.Logging.Level, "info"},
		{"bridges", len(cfg.Bridges), 0},
	}
	for _, tt := range tests {
		if !reflect.DeepEqual(tt.got, tt.want) {
			t.Errorf("DefaultConfig().%s = %#v, want %#v", tt.name, tt.got, tt.want)
		}
	}
	if DefaultConfig().Metrics.Listen == cfg.Metrics.Listen {
		t.Error("DefaultConfig() shares pointers between calls")
	}
}

func TestConfigValues(t *testing.T) {
	tests := []struct {
		name     string
		from     string
		to       string
		postgres bool
		check    func(*Config) bool
		wantErr  string
	}{
		{name: "duration in minutes", from: "processed_ttl: 24h", to: "processed_ttl: 90m",
			check: func(c *Config) bool { return c.Database.ProcessedTTL == 90*time.Minute }},
		{name: "metrics off", from: "listen: 127.0.0.1:9330", to: "listen: null",
			check: func(c *Config) bool { return c.Metrics.Listen == nil }},
		{name: "postgres keyword DSN", from: "type: sqlite3-fk-wal", to: "type: postgres",
			check: func(c *Config) bool { return c.Database.Type == DatabasePostgres }},
		{name: "bad postgres URL hides password", from: "uri: file:custodian.db?_txlock=immediate", to: "uri: mysql://u:hunter2@h/db",
			postgres: true, wantErr: "database.uri: must be a postgres:// URL or a key=value connection string"},
		{name: "bot inside no namespace", from: "bot_username: custodian", to: "bot_username: Custodian!",
			wantErr: `appservice.bot_username: "Custodian!" is not a valid localpart: use only a-z, 0-9 and . _ = - / +`},
		{name: "avatar", from: "bot_avatar: null", to: "bot_avatar: https://x/y.png",
			wantErr: "appservice.bot_avatar: must be an mxc:// URI or null"},
		{name: "trace refused", from: "level: info", to: "level: trace",
			wantErr: "logging.level: trace is not allowed: at trace level dependencies log query arguments and request bodies; use debug"},
		{name: "idle above open", from: "max_idle_conns: 5", to: "max_idle_conns: 9",
			wantErr: "database.max_idle_conns: must be between 0 and max_open_conns (5)"},
		{name: "in-memory sqlite", from: "uri: file:custodian.db?_txlock=immediate", to: "uri: ':memory:'",
			wantErr: "database.uri: an in-memory SQLite database needs cache=shared, or each connection sees its own empty database"},
		{name: "power level with prefix", from: "command_power_levels: {}", to: `command_power_levels: {"!irc link": 50}`,
			wantErr: `bot.command_power_levels: command "!irc link": leave out the prefix "!"`},
		{name: "address without scheme", from: "address: http://127.0.0.1:29330", to: "address: 127.0.0.1:29330",
			wantErr: "appservice.address: must be an http:// or https:// URL, such as http://127.0.0.1:8008"},
	}
	base := exampleWithTokens(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.Contains(base, tt.from) {
				t.Fatalf("example lacks %q", tt.from)
			}
			text := strings.Replace(base, tt.from, tt.to, 1)
			if tt.postgres {
				text = strings.Replace(text, "type: sqlite3-fk-wal", "type: postgres", 1)
			}
			cfg, err := parseConfig([]byte(text), "config.yaml", nil, true)
			if tt.wantErr != "" {
				if got := problemStrings(err); !reflect.DeepEqual(got, []string{tt.wantErr}) {
					t.Errorf("problems = %q, want [%q]", got, tt.wantErr)
				}
				if err != nil && strings.Contains(err.Error(), "hunter2") {
					t.Errorf("error %q shows the password", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseConfig() = %v", err)
			}
			if !tt.check(cfg) {
				t.Errorf("%s: unexpected config %+v", tt.to, cfg)
			}
		})
	}
}

func TestConfigValidatorErrorsArePrefixed(t *testing.T) {
	fake := newCfgBridge("fake", "fake_", "")
	fake.validate = func(c *cfgBridgeConfig) error {
		return errors.Join(
			&ConfigError{Path: "networks[1].port", Message: "must be below 1000"},
			errors.Join(&ConfigError{Path: "greeting", Message: "must not be hello"}),
			&ConfigError{Path: "networks[0]", Message: "must name a network"},
			&ConfigError{Path: "missing_key", Message: "must be set"},
			&ConfigError{Message: "the section as a whole is off"},
			errors.New("something is off"),
		)
	}
	text := "bridges:\n" +
		"    fake:\n" + // line 2
		"        greeting: hello\n" +
		"        networks:\n" +
		"            - {name: a, port: 1}\n" + // line 5
		"            - name: b\n" +
		"              port: 2000\n" // line 7
	cfg := DefaultConfig()
	if err := yaml.Unmarshal([]byte(text), cfg); err != nil {
		t.Fatal(err)
	}
	err := cfg.DecodeBridges([]Bridge{fake})
	want := []string{
		"bridges.fake.networks[1].port: must be below 1000 (line 7)",
		"bridges.fake.greeting: must not be hello (line 3)",
		"bridges.fake.networks[0]: must name a network (line 5)",
		"bridges.fake.missing_key: must be set",
		"bridges.fake: the section as a whole is off",
		"bridges.fake: something is off",
	}
	if got := problemStrings(err); !reflect.DeepEqual(got, want) {
		t.Errorf("problems = %q, want %q", got, want)
	}
	for _, e := range Problems(err) {
		if ce, ok := e.(*ConfigError); !ok {
			t.Errorf("problem %q is a %T, want *ConfigError", e, e)
		} else if !strings.HasPrefix(ce.Path, "bridges.fake") {
			t.Errorf("problem path %q lacks the bridge's prefix", ce.Path)
		}
	}
}

func TestBridgeSections(t *testing.T) {
	tests := []struct {
		name       string
		section    string
		noSettings bool
		want       []string
		wantTarget *cfgBridgeConfig
	}{
		{name: "absent", section: "", wantTarget: &cfgBridgeConfig{Greeting: "default"}},
		{name: "empty mapping", section: "    fake: {}\n", wantTarget: &cfgBridgeConfig{Greeting: "default"}},
		{name: "null", section: "    fake:\n", wantTarget: &cfgBridgeConfig{Greeting: "default"}},
		{name: "keeps defaults", section: "    fake:\n        networks: [{name: a, port: 1}]\n",
			wantTarget: &cfgBridgeConfig{Greeting: "default", Networks: []cfgBridgeNetwork{{"a", 1}}}},
		{name: "settings for a bridge without any", section: "    fake:\n        x: 1\n", noSettings: true,
			want: []string{`bridges.fake: this bridge has no settings; write "fake: {}" (line 3)`}},
		{name: "section is a list", section: "    fake: [1]\n",
			want: []string{"bridges.fake: expected a mapping of keys to values, got a list (line 2)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := newCfgBridge("fake", "fake_", "")
			if tt.noSettings {
				fake.target = nil
			}
			text := "bridges:\n" + tt.section
			if tt.section == "" {
				text = "bridges: {}\n"
			}
			cfg := DefaultConfig()
			if err := yaml.Unmarshal([]byte(text), cfg); err != nil {
				t.Fatal(err)
			}
			err := cfg.DecodeBridges([]Bridge{fake})
			if got := problemStrings(err); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("DecodeBridges() problems = %q, want %q", got, tt.want)
			}
			if tt.wantTarget != nil && !reflect.DeepEqual(fake.target, tt.wantTarget) {
				t.Errorf("target = %+v, want %+v", fake.target, tt.wantTarget)
			}
			if enabled := len(cfg.EnabledBridges([]Bridge{fake})) == 1; enabled != (tt.section != "") {
				t.Errorf("enabled = %v, want %v", enabled, tt.section != "")
			}
		})
	}
}

func TestNamespaceOverlap(t *testing.T) {
	tests := []struct {
		name    string
		bot     string
		bridges []*cfgBridge
		want    []string
	}{
		{name: "disjoint", bot: "custodian", bridges: []*cfgBridge{
			newCfgBridge("irc", "irc_", "irc_"), newCfgBridge("webhook", "webhook_", ""),
		}},
		{name: "prefix of another", bot: "custodian", bridges: []*cfgBridge{
			newCfgBridge("irc", "irc_", ""), newCfgBridge("ircx", "irc_x", ""),
		}, want: []string{"bridges.ircx: user namespace @irc_x… overlaps bridge irc's @irc_…; two bridges cannot both be enabled with these namespaces"}},
		{name: "same alias prefix", bot: "custodian", bridges: []*cfgBridge{
			newCfgBridge("a", "a_", "room_"), newCfgBridge("b", "b_", "room_"),
		}, want: []string{"bridges.b: alias namespace #room_… overlaps bridge a's #room_…; two bridges cannot both be enabled with these namespaces"}},
		{name: "bot inside a bridge", bot: "irc_bot", bridges: []*cfgBridge{
			newCfgBridge("irc", "irc_", ""),
		}, want: []string{"appservice.bot_username: the bot @irc_bot:localhost falls inside bridge irc's user namespace (@irc_…); choose another bot_username"}},
		{name: "no namespaces never overlap", bot: "custodian", bridges: []*cfgBridge{
			newCfgBridge("a", "", ""), newCfgBridge("b", "", ""),
		}},
		{name: "duplicate ID", bot: "custodian", bridges: []*cfgBridge{
			newCfgBridge("a", "a_", ""), newCfgBridge("a", "b_", ""),
		}, want: []string{`bridges: two compiled-in bridges have the ID "a" (a bug in cmd/custodian)`}},
		{name: "bad prefix", bot: "custodian", bridges: []*cfgBridge{
			newCfgBridge("a", "A_", ""),
		}, want: []string{`bridges.a: user namespace prefix "A_" is not a valid localpart (a bug in the bridge)`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.AppService.BotUsername = tt.bot
			var bridges []Bridge
			for _, br := range tt.bridges {
				bridges = append(bridges, br)
				cfg.Bridges[br.id] = yaml.Node{}
			}
			got := problemStrings(errors.Join(namespaceProblems(cfg, bridges)...))
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("namespaceProblems() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestExampleConfigIsDocumented(t *testing.T) {
	bridges := []Bridge{newCfgBridge("fake", "fake_", ""), &cfgBridge{id: "bare"}}
	text := ExampleConfig(bridges)
	if strings.Contains(text, "\t") {
		t.Error("example contains tabs")
	}
	for i, line := range strings.Split(text, "\n") {
		if strings.TrimRight(line, " ") != line {
			t.Errorf("example line %d has trailing spaces: %q", i+1, line)
		}
	}
	var root yaml.Node
	if err := yaml.Unmarshal([]byte(text), &root); err != nil {
		t.Fatalf("example is not YAML: %v", err)
	}
	// Every key of the core example, and of the bridge examples, has a comment above it.
	var check func(n *yaml.Node, path string)
	check = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				key, value := n.Content[i], n.Content[i+1]
				p := joinKeyPath(path, key.Value)
				inBridgeList := strings.HasPrefix(path, "bridges.") && strings.Count(path, ".") == 1
				if key.HeadComment == "" && !inBridgeList && !strings.Contains(path, "[") {
					t.Errorf("example key %s has no comment above it", p)
				}
				check(value, p)
			}
		case yaml.SequenceNode:
			for i, item := range n.Content {
				check(item, path+"["+strconv.Itoa(i)+"]")
			}
		}
	}
	check(root.Content[0], "")

	var decoded map[string]any
	if err := yaml.Unmarshal([]byte(text), &decoded); err != nil {
		t.Fatal(err)
	}
	brs, _ := decoded["bridges"].(map[string]any)
	if _, ok := brs["fake"].(map[string]any)["networks"]; !ok {
		t.Errorf("bridges.fake = %v, want the fake bridge's example", brs["fake"])
	}
	if bare, ok := brs["bare"].(map[string]any); !ok || len(bare) != 0 {
		t.Errorf("bridges.bare = %#v, want {}", brs["bare"])
	}
	if ExampleConfig(nil) != exampleConfig {
		t.Error("ExampleConfig(nil) differs from the core example")
	}
}

func TestConfigNeverPrintsTokens(t *testing.T) {
	cfg, err := parseConfig([]byte(exampleWithTokens(t)), "config.yaml", nil, true)
	if err != nil {
		t.Fatal(err)
	}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{fmt.Sprintf("%v", cfg), fmt.Sprintf("%+v", cfg), fmt.Sprintf("%#v", cfg), string(out)} {
		if strings.Contains(s, testASTokenValue) || strings.Contains(s, testHSTokenValue) {
			t.Errorf("formatted config shows a token: %s", s)
		}
	}
}

// optInCfgBridge is a cfgBridge that is off in the example configuration.
type optInCfgBridge struct{ *cfgBridge }

func (optInCfgBridge) OptIn() bool { return true }

func TestExampleConfigOptInBridge(t *testing.T) {
	fake := newCfgBridge("fake", "fake_", "")
	remote := optInCfgBridge{newCfgBridge("remote", "remote_", "")}
	bridges := []Bridge{fake, remote}
	text := ExampleConfig(bridges)
	if !strings.Contains(text, "\n    # remote:\n    #     # A greeting the bridge sends.\n") || strings.Contains(text, "\n    remote:") {
		t.Errorf("the opt-in bridge's section is not commented out:\n%s", text)
	}
	out, err := setConfigTokens([]byte(text), testASTokenValue, testHSTokenValue)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := parseConfig(out, "config.yaml", bridges, true)
	if err != nil {
		t.Fatalf("parseConfig(example) = %v", err)
	}
	if got := cfg.EnabledBridges(bridges); len(got) != 1 || got[0].ID() != "fake" {
		t.Errorf("the example enables %d bridges, want only fake", len(got))
	}

	// Only opt-in bridges: the bridges section holds nothing.
	out, err = setConfigTokens([]byte(ExampleConfig([]Bridge{remote})), testASTokenValue, testHSTokenValue)
	if err != nil {
		t.Fatal(err)
	}
	if cfg, err = parseConfig(out, "config.yaml", []Bridge{remote}, true); err != nil || len(cfg.EnabledBridges([]Bridge{remote})) != 0 {
		t.Errorf("example with an opt-in bridge only: %v, want it to load with no bridge enabled", err)
	}
}

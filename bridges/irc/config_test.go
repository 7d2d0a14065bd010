package irc

import (
	"errors"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice"
	"github.com/custodian-matrix/custodian/appservice/vault"
	"github.com/custodian-matrix/custodian/bridges/irc/ircconn"
	"github.com/custodian-matrix/custodian/bridges/irc/ircconv"
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
		nc.BotNick != "custodian" || nc.MaxPuppets != 1000 || nc.LineRate.Burst != 5 || !nc.AllowsLogin() ||
		!nc.ConsentRequired() || nc.ConsentTimeout != 5*time.Minute || nc.RejoinDelay != 5*time.Minute {
		t.Errorf("network defaults = %+v, want the example network's values", *nc)
	}
	if cfg.IdleTimeout != 24*time.Hour || cfg.Reconnect.Initial != 2*time.Second || cfg.ConnectRate.Burst != 20 {
		t.Errorf("top-level defaults = %+v", cfg)
	}
	want := MessagesConfig{ReplyFormat: ircconv.DefaultReplyFormat, ReplyQuoteLength: ircconv.DefaultReplyQuoteLen,
		EditMaxChange: ircconv.DefaultEditMaxChange, LongLines: ircconv.DefaultLongLines, LongBytes: ircconv.DefaultLongBytes}
	if cfg.Messages != want || cfg.QuitDebounce != 2*time.Minute {
		t.Errorf("messages = %+v, quit_debounce = %s; want %+v and 2m (the example's values, the same as ircconv's defaults)",
			cfg.Messages, cfg.QuitDebounce, want)
	}
	// A section given in part keeps the defaults of the keys it leaves out.
	cfg, err = decodeConfig(t, "messages: {long_lines: 5}\nnetworks:\n  testnet:\n    address: 127.0.0.1:6667\n")
	if err != nil || cfg.Messages.LongLines != 5 || cfg.Messages.ReplyFormat != ircconv.DefaultReplyFormat {
		t.Errorf("messages given in part = %+v, %v; want long_lines 5 and the default reply format", cfg.Messages, err)
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
			"bad message settings",
			"messages: {reply_format: '{nick}: {quote}', reply_quote_length: 0, edit_max_change: 1.5, long_lines: 0, long_bytes: 10}\n" +
				"quit_debounce: -1s\nnetworks:\n  a:\n    address: x:1\n",
			[]string{
				"messages.reply_format: must contain {text}", "messages.reply_quote_length", "messages.edit_max_change",
				"messages.long_lines", "messages.long_bytes", "quit_debounce",
			},
		},
		{
			"bad authentication and identity values",
			"identd: {enabled: true, address: nohost}\n" +
				"networks:\n  a:\n    address: x:1\n    tls: false\n    sasl_mechanisms: [EXTERNAL, SCRAM-SHA-256]\n    auth: kerberos\n" +
				"    bot_account: {account: 'a b', password_file: /x, password_env: X}\n    ident_template: fixed\n    realname_template: ' '\n",
			[]string{
				"identd.address", "networks.a.sasl_mechanisms: \"SCRAM-SHA-256\" is not supported",
				"networks.a.sasl_mechanisms: EXTERNAL needs tls", "networks.a.auth", "networks.a.bot_account.account",
				"networks.a.bot_account: set exactly one", "networks.a.ident_template", "networks.a.realname_template",
			},
		},
		{
			"bad values",
			"idle_timeout: 1s\nreconnect: {initial: 0s, max: 0s}\nconnect_rate: {per_second: 0, burst: 0}\n" +
				"networks:\n  Bad_Net:\n    address: nohost\n    sasl_mechanisms: [OTHER]\n    nick_template: fixed\n" +
				"    bot_nick: '#bad'\n    max_puppets: -1\n    line_rate: {per_second: 0, burst: 0}\n",
			[]string{
				"idle_timeout: must be at least", "reconnect.initial", "connect_rate.per_second", "connect_rate.burst",
				"networks.Bad_Net: network IDs", "networks.Bad_Net.address", "networks.Bad_Net.sasl_mechanisms",
				"networks.Bad_Net.nick_template", "networks.Bad_Net.bot_nick", "networks.Bad_Net.max_puppets",
				"networks.Bad_Net.line_rate.per_second", "networks.Bad_Net.line_rate.burst",
			},
		},
		{
			"bad consent and rejoin values",
			"networks:\n  a:\n    address: x:1\n    link_consent: maybe\n    consent_timeout: 1s\n    rejoin_delay: -1s\n",
			[]string{"networks.a.link_consent", "networks.a.consent_timeout", "networks.a.rejoin_delay"},
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

// TestConfigPlaintextPasswords: a network whose connections may carry a password (auth pass or
// nickserv, SASL PLAIN offered, or a bot_account) needs tls: true unless its server is on a
// loopback IP; the services target of IDENTIFY is configurable and checked.
func TestConfigPlaintextPasswords(t *testing.T) {
	tests := []struct {
		name, network string
		wantProblem   string
	}{
		{"pass in the clear", "address: irc.example.org:6667\n    tls: false\n    auth: pass", "networks.a.tls: must be true"},
		{"nickserv in the clear", "address: irc.example.org:6667\n    tls: false\n    auth: nickserv", "networks.a.tls: must be true"},
		{"sasl plain in the clear", "address: 192.0.2.1:6667\n    tls: false\n    auth: sasl\n    sasl_mechanisms: [PLAIN]", "networks.a.tls: must be true"},
		{"bot account in the clear", "address: irc.example.org:6667\n    tls: false\n    sasl_mechanisms: []\n    bot_account: {account: bot, password_env: X}", "networks.a.tls: must be true"},
		{"host name resolving to loopback", "address: localhost:6667\n    tls: false\n    auth: pass", "networks.a.tls: must be true"},
		{"no passwords in the clear", "address: irc.example.org:6667\n    tls: false\n    sasl_mechanisms: []", ""},
		{"loopback IPv4 test network", "address: 127.0.0.1:6667\n    tls: false\n    auth: nickserv", ""},
		{"loopback IPv6 test network", "address: '[::1]:6667'\n    tls: false\n    auth: pass", ""},
		{"tls", "address: irc.example.org:6697\n    tls: true\n    auth: nickserv\n    nickserv: NickServ@services.example.org", ""},
		{"bad services target", "address: irc.example.org:6697\n    auth: nickserv\n    nickserv: 'Nick Serv'", "networks.a.nickserv"},
		{"empty services target after @", "address: irc.example.org:6697\n    auth: nickserv\n    nickserv: NickServ@", "networks.a.nickserv"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodeConfig(t, "networks:\n  a:\n    "+tt.network+"\n")
			switch {
			case tt.wantProblem == "" && err != nil:
				t.Errorf("config refused: %v", err)
			case tt.wantProblem != "" && (err == nil || !strings.Contains(err.Error(), tt.wantProblem)):
				t.Errorf("config error = %v, want it to mention %q", err, tt.wantProblem)
			}
		})
	}
}

// TestNickServTarget: IDENTIFY goes to the configured services target, NickServ by default.
func TestNickServTarget(t *testing.T) {
	for _, tt := range []struct{ yaml, want string }{
		{"", "NickServ"},
		{"\n    nickserv: NickServ@services.example.org", "NickServ@services.example.org"},
	} {
		cfg, err := decodeConfig(t, "networks:\n  a:\n    address: irc.example.org:6697\n    auth: nickserv"+tt.yaml+"\n")
		if err != nil {
			t.Fatal(err)
		}
		nc := cfg.Networks["a"]
		var ic ircconn.Config
		nc.applyLogin(&ic, "acct", vault.NewSecret("pw"))
		if ic.Identify == nil || ic.Identify.Service != tt.want {
			t.Errorf("IDENTIFY target = %+v, want %s", ic.Identify, tt.want)
		}
	}
}

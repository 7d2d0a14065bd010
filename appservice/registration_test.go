package appservice

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
	mxas "maunium.net/go/mautrix/appservice"

	"github.com/custodian-matrix/custodian/appservice/vault"
)

// registrationConfig returns a valid config on example.org with the test tokens and the given
// bridges enabled.
func registrationConfig(bridges ...*cfgBridge) (*Config, []Bridge) {
	cfg := DefaultConfig()
	cfg.Homeserver.Domain = "example.org"
	cfg.AppService.ASToken = vault.NewSecret(testASTokenValue)
	cfg.AppService.HSToken = vault.NewSecret(testHSTokenValue)
	var all []Bridge
	for _, br := range bridges {
		all = append(all, br)
		cfg.Bridges[br.id] = yaml.Node{Kind: yaml.MappingNode}
	}
	return cfg, all
}

func TestGenerateRegistration(t *testing.T) {
	irc := newCfgBridge("irc", "irc.", "irc_")
	hook := newCfgBridge("webhook", "webhook_", "")
	off := newCfgBridge("off", "off_", "off_")
	cfg, all := registrationConfig(irc, hook)
	all = append(all, off) // compiled in, but not in the config
	reg := GenerateRegistration(cfg, all)

	if reg.ID != "custodian" || reg.URL != "http://127.0.0.1:29330" || reg.SenderLocalpart != "custodian" {
		t.Errorf("id, url, sender_localpart = %q, %q, %q", reg.ID, reg.URL, reg.SenderLocalpart)
	}
	if reg.RateLimited == nil || *reg.RateLimited {
		t.Errorf("rate_limited = %v, want false", reg.RateLimited)
	}
	if !reg.EphemeralEvents || reg.SoruEphemeralEvents {
		t.Errorf("receive_ephemeral, msc2409 = %v, %v; want true, false", reg.EphemeralEvents, reg.SoruEphemeralEvents)
	}
	tokenPattern := regexp.MustCompile(`^[A-Za-z0-9]{64}$`)
	if !tokenPattern.MatchString(reg.AppToken) || !tokenPattern.MatchString(reg.ServerToken) || reg.AppToken == reg.ServerToken {
		t.Error("tokens are not two different random 64-character strings")
	}
	if reg.AppToken == testASTokenValue {
		t.Error("GenerateRegistration reused the config's as_token")
	}
	again := GenerateRegistration(cfg, all)
	if again.AppToken == reg.AppToken || again.ServerToken == reg.ServerToken {
		t.Error("two generated registrations share a token")
	}

	wantUsers := mxas.NamespaceList{
		{Regex: `^@custodian:example\.org$`, Exclusive: true},
		{Regex: `^@irc\..*:example\.org$`, Exclusive: true},
		{Regex: `^@webhook_.*:example\.org$`, Exclusive: true},
	}
	wantAliases := mxas.NamespaceList{{Regex: `^#irc_.*:example\.org$`, Exclusive: true}}
	if !reflect.DeepEqual(reg.Namespaces.UserIDs, wantUsers) {
		t.Errorf("users = %+v, want %+v", reg.Namespaces.UserIDs, wantUsers)
	}
	if !reflect.DeepEqual(reg.Namespaces.RoomAliases, wantAliases) {
		t.Errorf("aliases = %+v, want %+v", reg.Namespaces.RoomAliases, wantAliases)
	}
	if len(reg.Namespaces.RoomIDs) != 0 {
		t.Errorf("rooms = %+v, want none", reg.Namespaces.RoomIDs)
	}

	// Synapse matches from the start only (Python re.match); the regexes must be anchored at both
	// ends and escaped, so these must hold for any matcher.
	matches := []struct {
		id   string
		want bool
	}{
		{"@custodian:example.org", true},
		{"@custodian2:example.org", false},
		{"@custodian:example.org.evil", false},
		{"@custodian:exampleXorg", false},
		{"@irc.alice:example.org", true},
		{"@ircXalice:example.org", false},
		{"@xirc.alice:example.org", false},
		{"@irc.alice:example.org:8448", false},
		{"@webhook_1:example.org", true},
		{"@off_1:example.org", false},
		{"#irc_chan:example.org", true},
		{"#irc_chan:evil.org", false},
	}
	all2 := append(append(mxas.NamespaceList{}, reg.Namespaces.UserIDs...), reg.Namespaces.RoomAliases...)
	for _, m := range matches {
		got := false
		for _, ns := range all2 {
			if !strings.HasPrefix(ns.Regex, "^") || !strings.HasSuffix(ns.Regex, "$") || !ns.Exclusive {
				t.Errorf("namespace %+v is not anchored and exclusive", ns)
			}
			if regexp.MustCompile(ns.Regex).MatchString(m.id) {
				got = true
			}
		}
		if got != m.want {
			t.Errorf("namespaces match %s = %v, want %v", m.id, got, m.want)
		}
	}
}

func TestWriteRegistration(t *testing.T) {
	cfg, all := registrationConfig(newCfgBridge("irc", "irc_", ""))
	reg := GenerateRegistration(cfg, all)
	dir := t.TempDir()
	path := filepath.Join(dir, "registration.yaml")
	// An existing, world-readable file is replaced and tightened.
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteRegistration(path, reg); err != nil {
		t.Fatalf("WriteRegistration() = %v", err)
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if mode := info.Mode().Perm(); mode != 0o600 {
		t.Errorf("mode = %o, want 600", mode)
	}
	loaded, err := mxas.LoadRegistration(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(loaded, reg) {
		t.Errorf("loaded registration = %+v, want %+v", loaded, reg)
	}
	data, _ := os.ReadFile(path)
	for _, want := range []string{
		"receive_ephemeral: true", "rate_limited: false", "# Custodian's appservice registration",
		"org.matrix.msc3202: true", "io.element.msc4190: true",
	} {
		if !strings.Contains(string(data), want) {
			t.Errorf("registration lacks %q", want)
		}
	}
	if strings.Contains(string(data), "push_ephemeral") {
		t.Error("registration sets the msc2409 push_ephemeral flag")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the registration (no temporary files)", len(entries))
	}

	// Through a symlink, the target is replaced and the link kept.
	target := filepath.Join(dir, "real.yaml")
	if err = os.Rename(path, target); err != nil {
		t.Fatal(err)
	}
	if err = os.Symlink("real.yaml", path); err != nil {
		t.Fatal(err)
	}
	if err = WriteRegistration(path, reg); err != nil {
		t.Fatalf("WriteRegistration(symlink) = %v", err)
	}
	if info, err = os.Lstat(path); err != nil || info.Mode()&os.ModeSymlink == 0 {
		t.Errorf("symlink was replaced: %v %v", info.Mode(), err)
	}
}

// TestRegistrationWarnings checks the warnings about the flags encryption needs: one per
// missing flag while encryption is enabled (io.element.msc4190 only with encryption.msc4190),
// none with encryption off, and none for what custodian -g writes.
func TestRegistrationWarnings(t *testing.T) {
	cases := []struct {
		name               string
		enabled, msc4190   bool
		ephemeral, m3, m41 bool
		want               []string
	}{
		{"generated, encryption on", true, true, true, true, true, nil},
		{"nothing, encryption off", false, true, false, false, false, nil},
		{"nothing, encryption on", true, true, false, false, false, []string{"receive_ephemeral", "org.matrix.msc3202", "io.element.msc4190"}},
		{"no msc3202", true, true, true, false, true, []string{"org.matrix.msc3202"}},
		{"no msc4190, login instead", true, false, true, true, false, nil},
		{"no msc4190, msc4190 configured", true, true, true, true, false, []string{"io.element.msc4190"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, _ := registrationConfig()
			cfg.Encryption = EncryptionConfig{Enabled: tc.enabled, MSC4190: tc.msc4190}
			reg := &mxas.Registration{EphemeralEvents: tc.ephemeral, MSC3202: tc.m3, MSC4190: tc.m41}
			got := RegistrationWarnings(cfg, reg)
			if len(got) != len(tc.want) {
				t.Fatalf("RegistrationWarnings() = %q, want %d naming %v", got, len(tc.want), tc.want)
			}
			for i, flag := range tc.want {
				if !strings.HasPrefix(got[i], flag+" ") {
					t.Errorf("warning %d = %q, want it about %s", i, got[i], flag)
				}
			}
		})
	}
	// What custodian -g writes satisfies it.
	cfg, all := registrationConfig()
	cfg.Encryption = EncryptionConfig{Enabled: true, MSC4190: true}
	if got := RegistrationWarnings(cfg, GenerateRegistration(cfg, all)); len(got) != 0 {
		t.Errorf("RegistrationWarnings(generated) = %q, want none", got)
	}
}

func TestCheckRegistration(t *testing.T) {
	irc := newCfgBridge("irc", "irc_", "irc_")
	tests := []struct {
		name string
		edit func(cfg *Config, reg *mxas.Registration)
		want []string
	}{
		{name: "matching", edit: func(*Config, *mxas.Registration) {}},
		{name: "id", edit: func(_ *Config, reg *mxas.Registration) { reg.ID = "other" },
			want: []string{`id is "other", but appservice.id is "custodian"`}},
		{name: "url", edit: func(cfg *Config, _ *mxas.Registration) { cfg.AppService.Address = "http://10.0.0.1:1" },
			want: []string{`url is "http://127.0.0.1:29330", but appservice.address is "http://10.0.0.1:1"`}},
		{name: "tokens", edit: func(_ *Config, reg *mxas.Registration) { reg.AppToken, reg.ServerToken = "x", "y" },
			want: []string{"as_token differs from appservice.as_token", "hs_token differs from appservice.hs_token"}},
		{name: "bot renamed", edit: func(cfg *Config, _ *mxas.Registration) { cfg.AppService.BotUsername = "warden" },
			want: []string{
				`sender_localpart is "custodian", but appservice.bot_username is "warden"`,
				`namespaces.users lacks ^@warden:example\.org$`,
				`namespaces.users has ^@custodian:example\.org$, which the config does not claim`,
			}},
		{name: "bridge turned off", edit: func(cfg *Config, _ *mxas.Registration) { delete(cfg.Bridges, "irc") },
			want: []string{
				`namespaces.users has ^@irc_.*:example\.org$, which the config does not claim`,
				`namespaces.aliases has ^#irc_.*:example\.org$, which the config does not claim`,
			}},
		{name: "not exclusive", edit: func(_ *Config, reg *mxas.Registration) { reg.Namespaces.UserIDs[1].Exclusive = false },
			want: []string{`namespaces.users has ^@irc_.*:example\.org$ with exclusive: false, want true`}},
		{name: "room namespace", edit: func(_ *Config, reg *mxas.Registration) {
			reg.Namespaces.RoomIDs = mxas.NamespaceList{{Regex: "^!.*$"}}
		}, want: []string{`namespaces.rooms has ^!.*$, which the config does not claim`}},
		{name: "order does not matter", edit: func(_ *Config, reg *mxas.Registration) {
			u := reg.Namespaces.UserIDs
			u[0], u[1] = u[1], u[0]
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, all := registrationConfig(irc)
			reg := expectedRegistration(cfg, all)
			tt.edit(cfg, reg)
			err := CheckRegistration(cfg, all, reg)
			var mismatch *RegistrationMismatchError
			if tt.want == nil {
				if err != nil {
					t.Fatalf("CheckRegistration() = %v, want nil", err)
				}
				return
			}
			if !errors.As(err, &mismatch) {
				t.Fatalf("CheckRegistration() = %v, want a RegistrationMismatchError", err)
			}
			if !reflect.DeepEqual(mismatch.Differences, tt.want) {
				t.Errorf("differences = %q, want %q", mismatch.Differences, tt.want)
			}
			msg := err.Error()
			if strings.Contains(msg, testASTokenValue) || strings.Contains(msg, testHSTokenValue) {
				t.Errorf("error %q shows a token", msg)
			}
			if !strings.Contains(msg, "custodian -g") {
				t.Errorf("error %q does not say how to fix it", msg)
			}
		})
	}
}

func TestCheckRegistrationRefusesOverlaps(t *testing.T) {
	cfg, all := registrationConfig(newCfgBridge("irc", "irc_", ""), newCfgBridge("ircv3", "irc_v3_", ""))
	reg := expectedRegistration(cfg, all)
	err := CheckRegistration(cfg, all, reg)
	want := []string{"bridges.ircv3: user namespace @irc_v3_… overlaps bridge irc's @irc_…; two bridges cannot both be enabled with these namespaces"}
	if got := problemStrings(err); !reflect.DeepEqual(got, want) {
		t.Errorf("CheckRegistration() problems = %q, want %q", got, want)
	}
}

func TestUpdateConfigTokens(t *testing.T) {
	const as, hs = "newAS123", "newHS456"
	tests := []struct {
		name   string
		in     string
		want   string // "" means: expect the fallback, check by decoding
		inKeep []string
	}{
		{
			name: "plain values, comments kept byte for byte",
			in:   "# top\n\nappservice:\n    # the AS token\n    as_token: generate # inline\n\n    hs_token: generate\n    port: 1\n",
			want: "# top\n\nappservice:\n    # the AS token\n    as_token: newAS123 # inline\n\n    hs_token: newHS456\n    port: 1\n",
		},
		{
			name: "quoted values",
			in:   "appservice:\n    as_token: \"gen\\\"erate\"\n    hs_token: 'it''s'\n",
			want: "appservice:\n    as_token: newAS123\n    hs_token: newHS456\n",
		},
		{
			name: "flow mapping",
			in:   "appservice: {as_token: a, hs_token: b}\n",
			want: "appservice: {as_token: newAS123, hs_token: newHS456}\n",
		},
		{
			name: "same line twice is fine",
			in:   "appservice:\n    hs_token: x\n    as_token: ü\n",
			want: "appservice:\n    hs_token: newHS456\n    as_token: newAS123\n",
		},
		{
			name:   "missing keys fall back to the node tree",
			in:     "# keep me\nappservice:\n    # port comment\n    port: 1\n",
			inKeep: []string{"# keep me", "# port comment", "port: 1"},
		},
		{
			name:   "missing section",
			in:     "# keep me\nhomeserver:\n    domain: x\n",
			inKeep: []string{"# keep me", "domain: x"},
		},
		{
			name:   "block scalar",
			in:     "appservice:\n    as_token: |\n        generate\n    hs_token: generate\n",
			inKeep: []string{"appservice:"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.yaml")
			if err := os.WriteFile(path, []byte(tt.in), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := UpdateConfigTokens(path, as, hs); err != nil {
				t.Fatalf("UpdateConfigTokens() = %v", err)
			}
			data, _ := os.ReadFile(path)
			got := string(data)
			if tt.want != "" && got != tt.want {
				t.Errorf("config =\n%s\nwant\n%s", got, tt.want)
			}
			for _, keep := range tt.inKeep {
				if !strings.Contains(got, keep) {
					t.Errorf("config lost %q:\n%s", keep, got)
				}
			}
			var decoded struct {
				AppService struct {
					AS string `yaml:"as_token"`
					HS string `yaml:"hs_token"`
				} `yaml:"appservice"`
			}
			if err := yaml.Unmarshal(data, &decoded); err != nil {
				t.Fatal(err)
			}
			if decoded.AppService.AS != as || decoded.AppService.HS != hs {
				t.Errorf("tokens = %q, %q; want %q, %q", decoded.AppService.AS, decoded.AppService.HS, as, hs)
			}
			if info, _ := os.Stat(path); info.Mode().Perm() != 0o600 {
				t.Errorf("mode = %o, want 600", info.Mode().Perm())
			}
		})
	}
}

func TestUpdateConfigTokensOnExample(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(exampleConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := UpdateConfigTokens(path, "A1", "B2"); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	want := strings.Replace(strings.Replace(exampleConfig, "as_token: generate", "as_token: A1", 1), "hs_token: generate", "hs_token: B2", 1)
	if string(data) != want {
		t.Error("updating the example's tokens changed more than the two values")
	}
}

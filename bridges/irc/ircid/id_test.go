package ircid

import (
	"errors"
	"testing"
)

func TestFold(t *testing.T) {
	tests := []struct {
		name string
		cm   CaseMapping
		in   string
		want string
	}{
		{"rfc1459 letters", RFC1459, "AlIcE", "alice"},
		{"rfc1459 specials", RFC1459, `[]\~`, "{}|^"},
		{"strict keeps tilde", RFC1459Strict, `[]\~`, "{}|~"},
		{"ascii keeps specials", ASCII, `Nick[]\~`, `nick[]\~`},
		{"unchanged", RFC1459, "already-lower", "already-lower"},
		{"utf8 untouched", RFC1459, "Ünï", "Ünï"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.cm.Fold(tt.in); got != tt.want {
				t.Errorf("%v.Fold(%q) = %q, want %q", tt.cm, tt.in, got, tt.want)
			}
		})
	}
}

func TestParseCaseMapping(t *testing.T) {
	tests := []struct {
		in     string
		want   CaseMapping
		wantOK bool
	}{
		{"rfc1459", RFC1459, true},
		{"", RFC1459, true},
		{"ASCII", ASCII, true},
		{"strict-rfc1459", RFC1459Strict, true},
		{"rfc1459-strict", RFC1459Strict, true},
		{"rfc8265", RFC1459, false},
	}
	for _, tt := range tests {
		got, ok := ParseCaseMapping(tt.in)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("ParseCaseMapping(%q) = %v, %v, want %v, %v", tt.in, got, ok, tt.want, tt.wantOK)
		}
		if ok && tt.in != "" && got.String() != tt.in && tt.in != "ASCII" && tt.in != "strict-rfc1459" {
			t.Errorf("%v.String() = %q, want %q", got, got.String(), tt.in)
		}
	}
}

func TestGhostLocalpart(t *testing.T) {
	tests := []struct {
		name    string
		network string
		cm      CaseMapping
		nick    string
		want    string
		wantErr error
	}{
		{"plain", "libera", RFC1459, "alice", "irc_libera_alice", nil},
		{"folded", "libera", RFC1459, "Alice", "irc_libera_alice", nil},
		{"underscore kept", "libera", RFC1459, "foo_bar", "irc_libera_foo_bar", nil},
		{"rfc1459 brackets fold", "libera", RFC1459, "[Bot]", "irc_libera_=7bbot=7d", nil},
		{"ascii brackets stay", "oftc", ASCII, "[Bot]", "irc_oftc_=5bbot=5d", nil},
		{"specials", "libera", RFC1459, "a|b^c`d", "irc_libera_a=7cb=5ec=60d", nil},
		{"equals escaped", "libera", RFC1459, "a=b", "irc_libera_a=3db", nil},
		{"utf8 bytes", "ergo", RFC1459, "é", "irc_ergo_=c3=a9", nil},
		{"empty nick", "libera", RFC1459, "", "", ErrInvalidNick},
		{"space", "libera", RFC1459, "a b", "", ErrInvalidNick},
		{"leading digit", "libera", RFC1459, "1abc", "", ErrInvalidNick},
		{"leading hash", "libera", RFC1459, "#abc", "", ErrInvalidNick},
		{"bang", "libera", RFC1459, "a!b", "", ErrInvalidNick},
		{"crlf", "libera", RFC1459, "a\r\nQUIT", "", ErrInvalidNick},
		{"network uppercase", "Libera", RFC1459, "a", "", ErrInvalidNetwork},
		{"network underscore", "lib_era", RFC1459, "a", "", ErrInvalidNetwork},
		{"network empty", "", RFC1459, "a", "", ErrInvalidNetwork},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := GhostLocalpart(tt.network, tt.cm, tt.nick)
			if got != tt.want || !errors.Is(err, tt.wantErr) {
				t.Fatalf("GhostLocalpart(%q, %v, %q) = %q, %v, want %q, %v", tt.network, tt.cm, tt.nick, got, err, tt.want, tt.wantErr)
			}
			if err != nil {
				return
			}
			network, nick, err := ParseGhost(got, tt.cm)
			if err != nil || network != tt.network || nick != tt.cm.Fold(tt.nick) {
				t.Errorf("ParseGhost(%q) = %q, %q, %v, want %q, %q", got, network, nick, err, tt.network, tt.cm.Fold(tt.nick))
			}
		})
	}
}

func TestParseGhostRejects(t *testing.T) {
	tests := []string{
		"",
		"irc_",
		"irc_libera",
		"irc_libera_",
		"webhook_libera_alice",
		"irc_Libera_alice",
		"irc_libera_=7Bbot",  // uppercase hex is not canonical
		"irc_libera_=61lice", // 'a' escaped is not canonical
		"irc_libera_=7",      // truncated escape
		"irc_libera_=zz",     // not hex
		"irc_libera_=5bbot",  // '[' folds to '{' under rfc1459
		"irc_libera_=20",     // space
		"irc_libera_1abc",    // leading digit
	}
	for _, lp := range tests {
		if network, nick, err := ParseGhost(lp, RFC1459); !errors.Is(err, ErrNotOurs) {
			t.Errorf("ParseGhost(%q) = %q, %q, %v, want ErrNotOurs", lp, network, nick, err)
		}
	}
}

func TestAliasLocalpart(t *testing.T) {
	tests := []struct {
		name    string
		network string
		channel string
		want    string
		wantErr error
	}{
		{"hash dropped", "libera", "#go-nuts", "irc_libera_go-nuts", nil},
		{"folded", "libera", "#Go-Nuts", "irc_libera_go-nuts", nil},
		{"double hash kept", "libera", "##java", "irc_libera_=23=23java", nil},
		{"hash then amp kept", "libera", "#&x", "irc_libera_=23=26x", nil},
		{"ampersand", "libera", "&ops", "irc_libera_=26ops", nil},
		{"plus", "libera", "+modeless", "irc_libera_=2bmodeless", nil},
		{"rfc1459 fold", "libera", "#[Team]", "irc_libera_=7bteam=7d", nil},
		{"no prefix", "libera", "go", "", ErrInvalidChannel},
		{"only hash", "libera", "#", "", ErrInvalidChannel},
		{"comma", "libera", "#a,#b", "", ErrInvalidChannel},
		{"bel", "libera", "#a\x07", "", ErrInvalidChannel},
		{"bad network", "li bera", "#a", "", ErrInvalidNetwork},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := AliasLocalpart(tt.network, RFC1459, tt.channel)
			if got != tt.want || !errors.Is(err, tt.wantErr) {
				t.Fatalf("AliasLocalpart(%q, %q) = %q, %v, want %q, %v", tt.network, tt.channel, got, err, tt.want, tt.wantErr)
			}
			if err != nil {
				return
			}
			network, channel, err := ParseAlias(got, RFC1459)
			if err != nil || network != tt.network || channel != RFC1459.Fold(tt.channel) {
				t.Errorf("ParseAlias(%q) = %q, %q, %v, want %q, %q", got, network, channel, err, tt.network, RFC1459.Fold(tt.channel))
			}
		})
	}
}

func TestParseAliasRejects(t *testing.T) {
	tests := []string{
		"irc_libera_",
		"irc_libera_Go",      // capitals: not what AliasLocalpart makes
		"irc_libera_=23go",   // the '#' of "#go" is dropped, never escaped
		"irc_libera_=23",     // "#" alone
		"irc_libera_go=2cx",  // comma
		"irc_libera_go=20x",  // space
		"irc-libera_go",      // wrong prefix
		"irc_libera_=5bteam", // '[' folds under rfc1459
	}
	for _, lp := range tests {
		if network, channel, err := ParseAlias(lp, RFC1459); !errors.Is(err, ErrNotOurs) {
			t.Errorf("ParseAlias(%q) = %q, %q, %v, want ErrNotOurs", lp, network, channel, err)
		}
	}
}

// FuzzGhostRoundTrip checks that every nick GhostLocalpart accepts maps to a localpart that is a
// valid Matrix localpart and parses back to the folded nick, and that ParseGhost accepts only
// localparts GhostLocalpart makes.
//
//	go test ./bridges/irc/ircid -run '^$' -fuzz FuzzGhostRoundTrip -fuzztime 30s
func FuzzGhostRoundTrip(f *testing.F) {
	for _, s := range []string{"alice", "Alice", "[Bot]", "a=b", "é", "irc_libera_=7bbot=7d", "irc_x_=zz", "a\r\nb"} {
		f.Add(s, uint8(0))
	}
	f.Fuzz(func(t *testing.T, s string, cmByte uint8) {
		cm := CaseMapping(cmByte % 3)
		if lp, err := GhostLocalpart("net", cm, s); err == nil {
			checkLocalpart(t, lp)
			network, nick, err := ParseGhost(lp, cm)
			if err != nil || network != "net" || nick != cm.Fold(s) {
				t.Fatalf("ParseGhost(%q) = %q, %q, %v, want net, %q", lp, network, nick, err, cm.Fold(s))
			}
		}
		if network, nick, err := ParseGhost(s, cm); err == nil {
			if lp, err := GhostLocalpart(network, cm, nick); err != nil || lp != s {
				t.Fatalf("GhostLocalpart(ParseGhost(%q)) = %q, %v, want the input", s, lp, err)
			}
		}
	})
}

// FuzzAliasRoundTrip is [FuzzGhostRoundTrip] for portal aliases.
//
//	go test ./bridges/irc/ircid -run '^$' -fuzz FuzzAliasRoundTrip -fuzztime 30s
func FuzzAliasRoundTrip(f *testing.F) {
	for _, s := range []string{"#go", "##java", "&ops", "#[Team]", "irc_net_=23=23java", "irc_net_go", "#&x"} {
		f.Add(s, uint8(0))
	}
	f.Fuzz(func(t *testing.T, s string, cmByte uint8) {
		cm := CaseMapping(cmByte % 3)
		if lp, err := AliasLocalpart("net", cm, s); err == nil {
			checkLocalpart(t, lp)
			network, channel, err := ParseAlias(lp, cm)
			if err != nil || network != "net" || channel != cm.Fold(s) {
				t.Fatalf("ParseAlias(%q) = %q, %q, %v, want net, %q", lp, network, channel, err, cm.Fold(s))
			}
		}
		if network, channel, err := ParseAlias(s, cm); err == nil {
			if lp, err := AliasLocalpart(network, cm, channel); err != nil || lp != s {
				t.Fatalf("AliasLocalpart(ParseAlias(%q)) = %q, %v, want the input", s, lp, err)
			}
		}
	})
}

// checkLocalpart fails unless lp uses only the characters Matrix allows in a user localpart.
func checkLocalpart(t *testing.T, lp string) {
	t.Helper()
	for i := 0; i < len(lp); i++ {
		c := lp[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '=' || c == '-' || c == '/') {
			t.Fatalf("localpart %q has byte %q, not allowed in Matrix localparts", lp, c)
		}
	}
}

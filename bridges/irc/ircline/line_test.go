package ircline

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name       string
		in         string
		wantSource string
		wantCmd    string
		wantParams []string
		wantTags   map[string]string
		wantErr    error
	}{
		{name: "privmsg", in: ":nick!user@host PRIVMSG #chan :hello world\r\n",
			wantSource: "nick!user@host", wantCmd: "PRIVMSG", wantParams: []string{"#chan", "hello world"}},
		{name: "no prefix", in: "PING :irc.test", wantCmd: "PING", wantParams: []string{"irc.test"}},
		{name: "numeric", in: ":irc.test 001 me :Welcome", wantSource: "irc.test", wantCmd: "001", wantParams: []string{"me", "Welcome"}},
		{name: "lowercase command", in: "privmsg #c :x", wantCmd: "PRIVMSG", wantParams: []string{"#c", "x"}},
		{name: "no params", in: ":s QUIT", wantSource: "s", wantCmd: "QUIT"},
		{name: "empty trailing", in: ":s TOPIC #c :", wantSource: "s", wantCmd: "TOPIC", wantParams: []string{"#c", ""}},
		{name: "extra spaces", in: ":s   PRIVMSG   #c   :a  b", wantSource: "s", wantCmd: "PRIVMSG", wantParams: []string{"#c", "a  b"}},
		{name: "tag escapes", in: `@time=2026-01-02T03:04:05.678Z;msgid=a\sb\:c\\d\r\n;+draft/x PRIVMSG #c :hi`,
			wantCmd: "PRIVMSG", wantParams: []string{"#c", "hi"},
			wantTags: map[string]string{"time": "2026-01-02T03:04:05.678Z", "msgid": "a b;c\\d\r\n", "+draft/x": ""}},
		{name: "trailing backslash tag", in: `@a=b\ PING x`, wantCmd: "PING", wantParams: []string{"x"}, wantTags: map[string]string{"a": "b"}},
		{name: "empty", in: "", wantErr: ErrMalformed},
		{name: "crlf only", in: "\r\n", wantErr: ErrMalformed},
		{name: "empty prefix", in: ": PRIVMSG #c :x", wantCmd: "PRIVMSG", wantParams: []string{"#c", "x"}},
		{name: "prefix only", in: ":nick!user@host", wantErr: ErrMalformed},
		{name: "tags only", in: "@a=b", wantErr: ErrMalformed},
		{name: "nul", in: ":s PRIVMSG #c :a\x00b", wantErr: ErrMalformed},
		{name: "inner lf", in: ":s PRIVMSG #c :a\nQUIT :x", wantErr: ErrMalformed},
		{name: "inner cr", in: ":s PRIVMSG #c :a\rb", wantErr: ErrMalformed},
		{name: "non-ascii command", in: ":s PRÏVMSG #c :x", wantErr: ErrMalformed},
		{name: "punctuation command", in: ":s PRIV-MSG #c :x", wantErr: ErrMalformed},
		{name: "overlong", in: ":s PRIVMSG #c :" + strings.Repeat("x", MaxInboundLen), wantErr: ErrTooLong},
		{name: "overlong tags", in: "@a=" + strings.Repeat("x", MaxTagsLen) + " PING x", wantErr: ErrTooLong},
		{name: "long body accepted", in: ":s PRIVMSG #c :" + strings.Repeat("x", 600), wantSource: "s", wantCmd: "PRIVMSG",
			wantParams: []string{"#c", strings.Repeat("x", 600)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg, err := Parse(tt.in)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Parse(%.60q) error = %v, want %v", tt.in, err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if msg.Source != tt.wantSource || msg.Command != tt.wantCmd || !slices.Equal(msg.Params, tt.wantParams) {
				t.Errorf("Parse(%.60q) = %q %q %q, want %q %q %q", tt.in, msg.Source, msg.Command, msg.Params, tt.wantSource, tt.wantCmd, tt.wantParams)
			}
			for k, want := range tt.wantTags {
				if ok, got := msg.GetTag(k); !ok || got != want {
					t.Errorf("Parse(%.60q) tag %q = %q, %v, want %q", tt.in, k, got, ok, want)
				}
			}
		})
	}
}

func TestParam(t *testing.T) {
	msg, err := Parse(":s KICK #c")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		i    int
		want string
	}{{-1, ""}, {0, "#c"}, {1, ""}, {5, ""}}
	for _, tt := range tests {
		if got := Param(&msg, tt.i); got != tt.want {
			t.Errorf("Param(%d) = %q, want %q", tt.i, got, tt.want)
		}
	}
}

func TestServerTime(t *testing.T) {
	fallback := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		line string
		want time.Time
	}{
		{"@time=2026-02-03T04:05:06.789Z PRIVMSG #c :x", time.Date(2026, 2, 3, 4, 5, 6, 789e6, time.UTC)},
		{"@time=2026-02-03T04:05:06Z PRIVMSG #c :x", time.Date(2026, 2, 3, 4, 5, 6, 0, time.UTC)},
		{"@time=yesterday PRIVMSG #c :x", fallback},
		{"@time PRIVMSG #c :x", fallback},
		{"PRIVMSG #c :x", fallback},
	}
	for _, tt := range tests {
		msg, err := Parse(tt.line)
		if err != nil {
			t.Fatalf("Parse(%q): %v", tt.line, err)
		}
		if got := ServerTime(&msg, fallback); !got.Equal(tt.want) {
			t.Errorf("ServerTime(%q) = %v, want %v", tt.line, got, tt.want)
		}
	}
}

func TestBuild(t *testing.T) {
	tests := []struct {
		name    string
		tags    map[string]string
		command string
		params  []string
		want    string
		wantErr error
	}{
		{name: "privmsg", command: "PRIVMSG", params: []string{"#c", "hello world"}, want: "PRIVMSG #c :hello world\r\n"},
		{name: "single word trailing", command: "NICK", params: []string{"alice"}, want: "NICK alice\r\n"},
		{name: "colon trailing", command: "PRIVMSG", params: []string{"#c", ":)"}, want: "PRIVMSG #c ::)\r\n"},
		{name: "empty trailing", command: "TOPIC", params: []string{"#c", ""}, want: "TOPIC #c :\r\n"},
		{name: "tag", tags: map[string]string{"+draft/reply": "a;b c"}, command: "TAGMSG", params: []string{"#c"}, want: "@+draft/reply=a\\:b\\sc TAGMSG #c\r\n"},
		{name: "lf injection", command: "PRIVMSG", params: []string{"#c", "hi\nQUIT :bye"}, wantErr: ErrUnsafe},
		{name: "cr injection", command: "PRIVMSG", params: []string{"#c", "hi\rQUIT"}, wantErr: ErrUnsafe},
		{name: "nul", command: "PRIVMSG", params: []string{"#c", "a\x00"}, wantErr: ErrUnsafe},
		{name: "target injection", command: "PRIVMSG", params: []string{"#c :x\r\nQUIT", "x"}, wantErr: ErrUnsafe},
		{name: "space in middle param", command: "PRIVMSG", params: []string{"#a #b", "x"}, wantErr: ErrUnsafe},
		{name: "empty middle param", command: "PRIVMSG", params: []string{"", "x"}, wantErr: ErrUnsafe},
		{name: "colon middle param", command: "PRIVMSG", params: []string{":x", "x"}, wantErr: ErrUnsafe},
		{name: "bad command", command: "PRIVMSG #c", params: []string{"x"}, wantErr: ErrUnsafe},
		{name: "empty command", command: "", wantErr: ErrUnsafe},
		{name: "tag value lf is escaped", tags: map[string]string{"a": "x\ny"}, command: "PING", params: []string{"x"}, want: "@a=x\\ny PING x\r\n"},
		{name: "tag key injection", tags: map[string]string{"a b": "x"}, command: "PING", params: []string{"x"}, wantErr: ErrUnsafe},
		{name: "exactly max", command: "PRIVMSG", params: []string{"#c", "a " + strings.Repeat("x", MaxLineLen-len("PRIVMSG #c :a "))},
			want: "PRIVMSG #c :a " + strings.Repeat("x", MaxLineLen-len("PRIVMSG #c :a ")) + "\r\n"},
		{name: "one over max", command: "PRIVMSG", params: []string{"#c", "a " + strings.Repeat("x", MaxLineLen-len("PRIVMSG #c :a ")+1)}, wantErr: ErrTooLong},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Build(tt.tags, tt.command, tt.params...)
			if string(got) != tt.want || !errors.Is(err, tt.wantErr) {
				t.Errorf("Build(%q, %q) = %q, %v, want %q, %v", tt.command, tt.params, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestClean(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain", "plain"},
		{"a\r\nb", "a b"},
		{"a\nb\rc", "a b c"},
		{"a\x00b", "ab"},
		{"", ""},
	}
	for _, tt := range tests {
		if got := Clean(tt.in); got != tt.want {
			t.Errorf("Clean(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// FuzzParseLine feeds arbitrary lines to Parse: it must never panic, and whatever it accepts must
// be a well-formed message that Build turns back into an equivalent line.
//
//	go test ./bridges/irc/ircline -run '^$' -fuzz FuzzParseLine -fuzztime 30s
func FuzzParseLine(f *testing.F) {
	for _, s := range []string{
		":nick!user@host PRIVMSG #chan :hello\r\n",
		`@time=2026-01-02T03:04:05.678Z;msgid=a\sb\:c\\d;+x PRIVMSG #c :hi`,
		"@a=b\\ PING x",
		": PRIVMSG #c :x",
		":s 005 me CHANTYPES=# CASEMAPPING=rfc1459 :are supported",
		"PING",
		"@;; PING",
		"@=x PING",
		":s PRIVMSG #c :\x01ACTION waves\x01",
		"\x00\r\n",
		":s\tPRIVMSG #c x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		msg, err := Parse(line)
		if err != nil {
			if msg.Command != "" || msg.Params != nil {
				t.Fatalf("Parse(%q) returned a message with error %v", line, err)
			}
			return
		}
		if msg.Command == "" || strings.ContainsAny(msg.Command, " \r\n\x00") {
			t.Fatalf("Parse(%q) command = %q", line, msg.Command)
		}
		for i, p := range msg.Params {
			if strings.ContainsAny(p, "\r\n\x00") {
				t.Fatalf("Parse(%q) param %d = %q has CR, LF or NUL", line, i, p)
			}
			if i < len(msg.Params)-1 && (p == "" || p[0] == ':' || strings.IndexByte(p, ' ') >= 0) {
				t.Fatalf("Parse(%q) middle param %d = %q", line, i, p)
			}
		}
		_ = Param(&msg, 3)
		_ = ServerTime(&msg, time.Time{})
		b, err := Build(nil, msg.Command, msg.Params...)
		if err != nil {
			return // e.g. longer than a client may send
		}
		again, err := Parse(string(b))
		if err != nil || again.Command != msg.Command || !slices.Equal(again.Params, msg.Params) {
			t.Fatalf("Parse(Build(Parse(%q))) = %q %q, %v, want %q %q", line, again.Command, again.Params, err, msg.Command, msg.Params)
		}
	})
}

// FuzzBuild checks that no parameters make Build emit more than one line.
//
//	go test ./bridges/irc/ircline -run '^$' -fuzz FuzzBuild -fuzztime 30s
func FuzzBuild(f *testing.F) {
	f.Add("PRIVMSG", "#c", "hi\r\nQUIT :x")
	f.Add("NOTICE", "a b", "x")
	f.Fuzz(func(t *testing.T, command, p1, p2 string) {
		b, err := Build(nil, command, p1, p2)
		if err != nil {
			return
		}
		s := string(b)
		if !strings.HasSuffix(s, "\r\n") || strings.ContainsAny(s[:len(s)-2], "\r\n\x00") || len(s) > MaxLineLen+2 {
			t.Fatalf("Build(%q, %q, %q) = %q: not exactly one line within the limit", command, p1, p2, s)
		}
		msg, err := Parse(s)
		if err != nil || msg.Command != command || !slices.Equal(msg.Params, []string{p1, p2}) {
			t.Fatalf("Parse(Build(%q, %q, %q)) = %q %q, %v", command, p1, p2, msg.Command, msg.Params, err)
		}
	})
}

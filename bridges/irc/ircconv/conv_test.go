package ircconv

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/custodian-matrix/custodian/bridges/irc/ircline"
)

func TestToMatrix(t *testing.T) {
	tests := []struct {
		name, in, wantPlain, wantHTML string
	}{
		{"plain", "hello <world>", "hello <world>", ""},
		{"bold", "a \x02bold\x02 b", "a bold b", "a <b>bold</b> b"},
		{"unterminated", "\x02bold", "bold", "<b>bold</b>"},
		{"nested", "\x02b\x1dbi\x02i", "bbii", "<b>b</b><b><i>bi</i></b><i>i</i>"},
		{"underline strike mono", "\x1fu\x1f\x1es\x1e\x11m", "usm", "<u>u</u><del>s</del><code>m</code>"},
		{"colour", "\x0304red\x03 none", "red none", `<font data-mx-color="#ff0000">red</font> none`},
		{"colour bg", "\x034,2x", "x", `<font data-mx-color="#ff0000" data-mx-bg-color="#00007f">x</font>`},
		{"colour digits kept", "\x03045", "5", `<font data-mx-color="#ff0000">5</font>`},
		{"comma without bg", "\x0304,x", ",x", `<font data-mx-color="#ff0000">,x</font>`},
		{"extended colour ignored", "\x0350x", "x", ""},
		{"hex colour", "\x04FF8800x", "x", `<font data-mx-color="#ff8800">x</font>`},
		{"reset", "\x02\x1dab\x0fc", "abc", "<b><i>ab</i></b>c"},
		{"escape", "\x02<b>&", "<b>&", "<b>&lt;b&gt;&amp;</b>"},
		{"control dropped", "a\x01b\x07c", "abc", ""},
		{"codes only", "\x02\x02", "", ""},
		{"reverse ignored", "\x16x", "x", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plain, formatted := ToMatrix(tt.in)
			if plain != tt.wantPlain || formatted != tt.wantHTML {
				t.Errorf("ToMatrix(%q) = %q, %q, want %q, %q", tt.in, plain, formatted, tt.wantPlain, tt.wantHTML)
			}
		})
	}
}

func TestDecodeText(t *testing.T) {
	tests := []struct{ in, want string }{
		{"héllo", "héllo"},
		{"h\xe9llo", "héllo"},
		{"\xff\xfe", "ÿþ"},
		{"", ""},
	}
	for _, tt := range tests {
		if got := DecodeText(tt.in); got != tt.want {
			t.Errorf("DecodeText(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestParseCTCP(t *testing.T) {
	tests := []struct {
		in               string
		wantCmd, wantArg string
		wantOK           bool
	}{
		{"\x01ACTION waves\x01", "ACTION", "waves", true},
		{"\x01action waves", "ACTION", "waves", true},
		{"\x01VERSION\x01", "VERSION", "", true},
		{"\x01\x01", "", "", false},
		{"hello", "", "", false},
		{"\x01", "", "", false},
	}
	for _, tt := range tests {
		cmd, arg, ok := ParseCTCP(tt.in)
		if cmd != tt.wantCmd || arg != tt.wantArg || ok != tt.wantOK {
			t.Errorf("ParseCTCP(%q) = %q, %q, %v, want %q, %q, %v", tt.in, cmd, arg, ok, tt.wantCmd, tt.wantArg, tt.wantOK)
		}
	}
}

func TestHTMLToIRC(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"text", "hello &amp; bye", "hello & bye"},
		{"bold italic", "<b>b</b> <em>i</em> <strong>s</strong>", "\x02b\x02 \x1di\x1d \x02s\x02"},
		{"nested bold", "<b>a<b>b</b>c</b>", "\x02abc\x02"},
		{"underline strike code", "<u>u</u><del>d</del><code>c</code>", "\x1fu\x1f\x1ed\x1e\x11c\x11"},
		{"br", "a<br>b<br/>c", "a\nb\nc"},
		{"paragraphs", "<p>a</p>\n<p>b</p>", "a\nb"},
		{"whitespace collapsed", "a \n  b", "a b"},
		{"list", "<ul><li>x</li><li>y</li></ul>", "• x\n• y"},
		{"ordered list", `<ol start="3"><li>x</li><li>y</li></ol>`, "3. x\n4. y"},
		{"quote", "<blockquote><p>q1</p><p>q2</p></blockquote><p>a</p>", "> q1\n> q2\na"},
		{"pre", "<pre><code>a  b\nc</code></pre>", "\x11a  b\nc\x11"},
		{"link", `<a href="https://e.org">site</a>`, "site (https://e.org)"},
		{"bare link", `<a href="https://e.org">https://e.org</a>`, "https://e.org"},
		{"mention", `<a href="https://matrix.to/#/@a:b">Alice</a>: hi`, "Alice: hi"},
		{"reply fallback dropped", "<mx-reply><blockquote>old</blockquote></mx-reply>new", "new"},
		{"colour", `<font data-mx-color="#ff0000">red</font> x`, "\x0304red\x03 x"},
		{"nested colour", `<font color="#ff0000">a<span data-mx-color="#0000fc">b</span>c</font>`, "\x0304a\x0312b\x0304c\x03"},
		{"spoiler", `<span data-mx-spoiler="">s</span>`, "\x0301,01s\x03"},
		{"heading", "<h1>T</h1>body", "\x02T\x02\nbody"},
		{"image alt", `<img src="mxc://a/b" alt="cat">`, "cat"},
		{"script dropped", "<script>x()</script>y", "y"},
		{"control chars", "a\x01b\x03c", "abc"},
		{"unclosed", "<b>x", "\x02x\x02"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := HTMLToIRC(tt.in); got != tt.want {
				t.Errorf("HTMLToIRC(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestSplit(t *testing.T) {
	long := strings.Repeat("word ", 30) // 150 bytes
	tests := []struct {
		name   string
		in     string
		budget int
		want   []string
	}{
		{"fits", "hello", 64, []string{"hello"}},
		{"newlines", "a\nb\r\n\nc", 64, []string{"a", "b", "c"}},
		{"word wrap", long, 64, []string{
			strings.Repeat("word ", 12), strings.Repeat("word ", 12), strings.Repeat("word ", 6),
		}},
		{"hard cut", strings.Repeat("x", 130), 64, []string{strings.Repeat("x", 64), strings.Repeat("x", 64), "xx"}},
		{"utf8 not cut", strings.Repeat("é", 40), 64, []string{strings.Repeat("é", 32), strings.Repeat("é", 8)}},
		{"formatting carried", "\x02" + strings.Repeat("x", 70), 64, []string{"\x02" + strings.Repeat("x", 63), "\x02" + strings.Repeat("x", 7)}},
		{"formatting carried over newline", "\x1da\nb", 64, []string{"\x1da", "\x1db"}},
		{"colour carried", "\x0304,02" + strings.Repeat("x", 60), 64, []string{"\x0304,02" + strings.Repeat("x", 58), "\x0304,02xx"}},
		{"colour guard", "\x0304" + strings.Repeat("x", 61) + "123", 64, []string{"\x0304" + strings.Repeat("x", 61), "\x0304\x02\x02123"}},
		{"code not cut", strings.Repeat("x", 62) + "\x0304,02y", 64, []string{strings.Repeat("x", 62), "\x0304,02y"}},
		{"codes only dropped", "\x02\x02\n\x0f", 64, nil},
		{"nul dropped", "a\x00b", 64, []string{"ab"}},
		{"invalid utf8 kept bytewise", "\xc3", 64, []string{"\xc3"}}, // found by FuzzSplit
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Split(tt.in, tt.budget)
			if err != nil || !slices.Equal(got, tt.want) {
				t.Errorf("Split(%q, %d) = %q, %v, want %q", tt.in, tt.budget, got, err, tt.want)
			}
		})
	}
	if _, err := Split("x", MinBudget-1); !errors.Is(err, ErrBudget) {
		t.Errorf("Split with a tiny budget: err = %v, want ErrBudget", err)
	}
}

func TestRender(t *testing.T) {
	tests := []struct {
		name string
		in   Message
		want []Line
	}{
		{"text", Message{Text: "hi"}, []Line{{"PRIVMSG", "hi"}}},
		{"notice", Message{Kind: KindNotice, Text: "hi\nthere"}, []Line{{"NOTICE", "hi"}, {"NOTICE", "there"}}},
		{"emote", Message{Kind: KindEmote, Text: "waves\nand leaves"}, []Line{{"PRIVMSG", "\x01ACTION waves\x01"}, {"PRIVMSG", "\x01ACTION and leaves\x01"}}},
		{"ctcp injection", Message{Text: "\x01VERSION\x01"}, []Line{{"PRIVMSG", "VERSION"}}},
		{"reply", Message{Text: "yes", Reply: &Reply{Nick: "bob", Text: "is it?\nsecond line"}},
			[]Line{{"PRIVMSG", "> <bob> is it?…"}, {"PRIVMSG", "bob: yes"}}},
		{"reply long excerpt", Message{Text: "ok", Reply: &Reply{Nick: "bob", Text: strings.Repeat("é", 50)}},
			[]Line{{"PRIVMSG", "> <bob> " + strings.Repeat("é", 40) + "…"}, {"PRIVMSG", "bob: ok"}}},
		{"reply emote not addressed", Message{Kind: KindEmote, Text: "nods", Reply: &Reply{Nick: "bob", Text: "q"}},
			[]Line{{"PRIVMSG", "> <bob> q"}, {"PRIVMSG", "\x01ACTION nods\x01"}}},
		{"edit", Message{Text: "fixed", Edit: true, Reply: &Reply{Nick: "bob", Text: "q"}}, []Line{{"PRIVMSG", "* fixed"}}},
		{"empty", Message{Text: "\n\n"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Render(tt.in, 400)
			if err != nil || !slices.Equal(got, tt.want) {
				t.Errorf("Render(%+v) = %q, %v, want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestBudget(t *testing.T) {
	src := "nick!user@host"
	b := Budget(src, "PRIVMSG", "#chan")
	line := ":" + src + " PRIVMSG #chan :" + strings.Repeat("x", b) + "\r\n"
	if len(line) != MaxLine {
		t.Errorf("a line filling Budget is %d bytes, want %d", len(line), MaxLine)
	}
	if got := len(ConservativeSource("nick")); got != len("nick")+2+assumedUserLen+assumedHostLen {
		t.Errorf("len(ConservativeSource) = %d", got)
	}
}

func TestMediaText(t *testing.T) {
	tests := []struct{ name, url, want string }{
		{"cat.png", "https://x/cat.png", "cat.png: https://x/cat.png"},
		{"", "https://x/y", "https://x/y"},
		{"https://x/y", "https://x/y", "https://x/y"},
		{"a\nb", "u", "a\nb: u"},
	}
	for _, tt := range tests {
		if got := MediaText(tt.name, tt.url); got != tt.want {
			t.Errorf("MediaText(%q, %q) = %q, want %q", tt.name, tt.url, got, tt.want)
		}
	}
}

// visible returns text as an IRC user reads it once Split has removed CR and NUL (first):
// each line parsed on its own, as IRC clients do, and the lines joined.
func visible(text string) string {
	return visibleLines(strings.Split(crNul.Replace(text), "\n"))
}

// visibleLines returns the text of IRC lines as a user reads them, joined.
func visibleLines(lines []string) string {
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(Strip(l))
	}
	return b.String()
}

// FuzzSplit checks Split's promises for any text and budget: every line fits, no line cuts a
// UTF-8 sequence of valid input, and no visible text is lost, added or reordered.
//
//	go test ./bridges/irc/ircconv -run '^$' -fuzz FuzzSplit -fuzztime 30s
func FuzzSplit(f *testing.F) {
	for _, s := range []string{"hello world", strings.Repeat("word ", 40), "\x02" + strings.Repeat("é", 60),
		"\x0304,02" + strings.Repeat("x", 70) + "12", "a\nb\r\n", "\x04ff0000,00ff00" + strings.Repeat("y ", 50), "\x03\x031,\x03,5"} {
		f.Add(s, 64)
	}
	f.Fuzz(func(t *testing.T, text string, budget int) {
		budget = MinBudget + abs(budget)%400
		lines, err := Split(text, budget)
		if err != nil {
			t.Fatalf("Split(%q, %d) = %v", text, budget, err)
		}
		for _, l := range lines {
			if len(l) > budget {
				t.Fatalf("Split(%q, %d) line %q is %d bytes", text, budget, l, len(l))
			}
			if utf8.ValidString(text) && !utf8.ValidString(l) {
				t.Fatalf("Split(%q, %d) line %q is not valid UTF-8", text, budget, l)
			}
			if strings.ContainsAny(l, "\r\n\x00") || Strip(l) == "" {
				t.Fatalf("Split(%q, %d) line %q has CR/LF/NUL or no text", text, budget, l)
			}
		}
		if got, want := visibleLines(lines), visible(text); got != want {
			t.Fatalf("Split(%q, %d) text = %q, want %q", text, budget, got, want)
		}
	})
}

// FuzzRender checks that whatever a Matrix user sends becomes IRC lines that each fit 512 bytes
// as the server relays them, are one line each, and keep the text.
//
//	go test ./bridges/irc/ircconv -run '^$' -fuzz FuzzRender -fuzztime 30s
func FuzzRender(f *testing.F) {
	f.Add("hello\nworld", "<b>hi</b>", uint8(0), "somenick")
	f.Add(strings.Repeat("long ", 300), "", uint8(2), "n")
	f.Add("x\r\nQUIT :bye", "<p>a</p><p>\x01b</p>", uint8(1), strings.Repeat("n", 30))
	f.Fuzz(func(t *testing.T, body, formatted string, kind uint8, nick string) {
		nick = strings.Map(func(r rune) rune {
			if r <= ' ' || r > '~' || r == '!' || r == '@' {
				return -1
			}
			return r
		}, nick)
		if nick == "" || len(nick) > 30 {
			nick = "n"
		}
		src := ConservativeSource(nick)
		target := "#some-channel"
		budget := Budget(src, "PRIVMSG", target)
		text := PlainToIRC(body)
		if formatted != "" {
			text = HTMLToIRC(formatted)
		}
		m := Message{Kind: Kind(kind % 3), Text: text}
		lines, err := Render(m, budget)
		if err != nil {
			t.Fatalf("Render: %v", err)
		}
		var texts []string
		for _, l := range lines {
			b, err := ircline.Build(nil, l.Command, target, l.Text)
			if err != nil {
				t.Fatalf("Build(%q, %q) = %v", l.Command, l.Text, err)
			}
			if relayed := len(":"+src+" ") + len(b); relayed > MaxLine {
				t.Fatalf("line %q is %d bytes as relayed", b, relayed)
			}
			if !utf8.ValidString(l.Text) {
				t.Fatalf("line %q is not valid UTF-8", l.Text)
			}
			s := l.Text
			if m.Kind == KindEmote {
				s = strings.TrimSuffix(strings.TrimPrefix(s, "\x01ACTION "), "\x01")
			}
			if strings.ContainsRune(s, '\x01') {
				t.Fatalf("line %q contains a stray CTCP delimiter", l.Text)
			}
			texts = append(texts, s)
		}
		if got, want := visibleLines(texts), visible(sanitize(text)); got != want {
			t.Fatalf("Render text = %q, want %q", got, want)
		}
	})
}

// FuzzHTMLToIRC checks that any HTML converts without panicking to valid UTF-8 with no control
// characters but formatting codes and newlines.
//
//	go test ./bridges/irc/ircconv -run '^$' -fuzz FuzzHTMLToIRC -fuzztime 30s
func FuzzHTMLToIRC(f *testing.F) {
	for _, s := range []string{"<b>x</b>", "<ol start=99999999999><li>a", "<blockquote><pre>a\nb</pre></blockquote>",
		`<font color="#abc" data-mx-bg-color="#zzzzzz">x</font>`, "<a href=x><br>t</a>", "\xff<p>\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out := HTMLToIRC(in)
		if !utf8.ValidString(out) {
			t.Fatalf("HTMLToIRC(%q) = %q: invalid UTF-8", in, out)
		}
		for _, r := range out {
			if r < 0x20 && r != '\n' && !strings.ContainsRune("\x02\x03\x04\x0f\x11\x16\x1d\x1e\x1f", r) {
				t.Fatalf("HTMLToIRC(%q) = %q: control character %U", in, out, r)
			}
		}
	})
}

// FuzzToMatrix checks that any IRC text converts to valid UTF-8 whose plain body is the text as
// an IRC user reads it.
//
//	go test ./bridges/irc/ircconv -run '^$' -fuzz FuzzToMatrix -fuzztime 30s
func FuzzToMatrix(f *testing.F) {
	for _, s := range []string{"\x02b\x02", "\x0304,02x", "\x04ff0000x", "h\xe9", "\x03,5", "<&>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		text := DecodeText(in)
		plain, formatted := ToMatrix(text)
		if !utf8.ValidString(plain) || !utf8.ValidString(formatted) {
			t.Fatalf("ToMatrix(%q) = %q, %q: invalid UTF-8", text, plain, formatted)
		}
		want := strings.Map(func(r rune) rune {
			if r < 0x20 && r != '\t' || r == 0x7f {
				return -1
			}
			return r
		}, Strip(text))
		if plain != want {
			t.Fatalf("ToMatrix(%q) plain = %q, want %q", text, plain, want)
		}
		if strings.Contains(formatted, "<script") {
			t.Fatalf("ToMatrix(%q) formatted = %q", text, formatted)
		}
	})
}

func abs(n int) int {
	if n < 0 {
		if n == -n { // math.MinInt
			return 0
		}
		return -n
	}
	return n
}

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
			[]Line{{"PRIVMSG", `bob: "is it?…" <- yes`}}},
		{"reply long excerpt", Message{Text: "ok", Reply: &Reply{Nick: "bob", Text: strings.Repeat("é", 50)}},
			[]Line{{"PRIVMSG", `bob: "` + strings.Repeat("é", 20) + `…" <- ok`}}},
		{"reply quote cut at a word", Message{Text: "ok", Reply: &Reply{Nick: "bob", Text: "the quick brown fox jumps over the lazy dog again"}},
			[]Line{{"PRIVMSG", `bob: "the quick brown fox jumps over the lazy…" <- ok`}}},
		{"reply quotes no fallback", Message{Text: "ok", Reply: &Reply{Nick: "bob", Text: "> <@carol:example.org> first\n> more\n\nbob's own words"}},
			[]Line{{"PRIVMSG", `bob: "bob's own words" <- ok`}}},
		{"reply custom format", Message{Text: "ok", ReplyFormat: "<{nick}> {quote} | {text}", ReplyQuoteLen: 5, Reply: &Reply{Nick: "bob", Text: "abcdefgh"}},
			[]Line{{"PRIVMSG", "<bob> abcde… | ok"}}},
		{"reply format without text falls back", Message{Text: "ok", ReplyFormat: "{nick}", Reply: &Reply{Nick: "bob", Text: "q"}},
			[]Line{{"PRIVMSG", `bob: "q" <- ok`}}},
		{"reply format does not expand twice", Message{Text: "ok", Reply: &Reply{Nick: "bob", Text: "{text}{nick}"}},
			[]Line{{"PRIVMSG", `bob: "{text}{nick}" <- ok`}}},
		{"reply emote not quoted", Message{Kind: KindEmote, Text: "nods", Reply: &Reply{Nick: "bob", Text: "q"}},
			[]Line{{"PRIVMSG", "\x01ACTION nods\x01"}}},
		{"edit small change", Message{Text: "the quick brown fox jumps", Previous: "the quick brwn fox jumps", Edit: true, EditMaxChange: 0.5},
			[]Line{{"PRIVMSG", "s/brwn/brown/"}}},
		{"edit nothing changed", Message{Text: "same  words", Previous: "same words", Edit: true, EditMaxChange: 0.5}, nil},
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

func TestEditLine(t *testing.T) {
	tests := []struct {
		name, previous, next string
		maxChange            float64
		want                 string
		wantOK               bool
	}{
		{"one word replaced", "I love you too much", "I love them too much", 0.5, "s/you/them/", true},
		{"word added at the end", "see you at eight", "see you at eight tomorrow", 0.5, "s/eight/eight tomorrow/", true},
		{"word added at the start", "meeting at eight tomorrow", "no meeting at eight tomorrow", 0.5, "s/meeting/no meeting/", true},
		{"word removed", "this is not fine at all", "this is fine at all", 0.5, "s/is not/is/", true},
		{"large change", "hello there", "goodbye everyone", 0.5, "* goodbye everyone", true},
		{"ratio is configurable", "alpha bravo charlie delta echo foxtrot golf hotel", "alpha xray yankee delta echo foxtrot golf hotel", 0.2,
			"* alpha xray yankee delta echo foxtrot golf hotel", true},
		{"ratio allows more", "alpha bravo charlie delta echo foxtrot golf hotel", "alpha xray yankee delta echo foxtrot golf hotel", 0.25,
			"s/bravo charlie/xray yankee/", true},
		{"corrections off", "I love you too much", "I love them too much", 0, "* I love them too much", true},
		{"previous unknown", "", "fixed text", 0.5, "* fixed text", true},
		{"several lines", "one\ntwo", "one\nthree", 0.5, "* one\nthree", true},
		{"correction not shorter", "a b", "a c", 1, "* a c", true},
		{"unchanged", "same words", "same words", 0.5, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := EditLine(tt.previous, tt.next, tt.maxChange)
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("EditLine(%q, %q, %v) = %q, %v, want %q, %v", tt.previous, tt.next, tt.maxChange, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestStripReplyFallback(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"fallback", "> <@bob:example.org> question\n> second\n\nanswer", "answer"},
		{"emote fallback", "> * <@bob:example.org> waves\n\nhi", "hi"},
		{"only fallback", "> <@bob:example.org> question", ""},
		{"own quote stays", "> a quote I wrote\n\nmy words", "> a quote I wrote\n\nmy words"},
		{"no fallback", "plain words", "plain words"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := StripReplyFallback(tt.in); got != tt.want {
				t.Errorf("StripReplyFallback(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestLongMessages(t *testing.T) {
	const budget = 100
	lines := []Line{{"PRIVMSG", "first line"}, {"PRIVMSG", "second"}, {"PRIVMSG", "third"}, {"PRIVMSG", "fourth"}}
	if IsLong(lines[:3], 3, 0) || !IsLong(lines, 3, 0) {
		t.Error("IsLong does not count lines against the limit")
	}
	if IsLong(lines, 0, 100) || !IsLong(lines[:1], 0, 5) {
		t.Error("IsLong does not count bytes against the limit")
	}
	link := "https://media.example.org/media/tok/message.txt"
	got := Condense(lines, budget, link)
	if want := []Line{{"PRIVMSG", "first line\x0f… (full message: " + link + ")"}}; !slices.Equal(got, want) {
		t.Errorf("Condense = %q, want %q", got, want)
	}
	long := []Line{{"PRIVMSG", strings.Repeat("word ", 40)}, {"PRIVMSG", "more"}}
	got = Condense(long, budget, link)
	if len(got) != 1 || len(got[0].Text) > budget || !strings.HasSuffix(got[0].Text, link+")") || !strings.HasPrefix(got[0].Text, "word word") {
		t.Errorf("Condense of a long first line = %q, want one line of at most %d bytes ending in the link", got, budget)
	}
	emote := []Line{{"PRIVMSG", "\x01ACTION waves a lot\x01"}, {"PRIVMSG", "\x01ACTION more\x01"}}
	if got = Condense(emote, budget, link); len(got) != 1 || got[0].Text != "\x01ACTION waves a lot\x0f… (full message: "+link+")\x01" {
		t.Errorf("Condense of an emote = %q", got)
	}
	got = Truncate(lines, budget, 2)
	if want := []Line{{"PRIVMSG", "first line"}, {"PRIVMSG", "second\x0f" + TruncatedMarker}}; !slices.Equal(got, want) {
		t.Errorf("Truncate = %q, want %q", got, want)
	}
	if lines[1].Text != "second" {
		t.Error("Truncate changed its input")
	}
	got = Truncate(long, budget, 1)
	if len(got) != 1 || len(got[0].Text) > budget || !strings.HasSuffix(got[0].Text, TruncatedMarker) {
		t.Errorf("Truncate of a long line = %q, want one line of at most %d bytes with the marker", got, budget)
	}
}

func TestMentioned(t *testing.T) {
	fold := func(s string) string {
		return strings.Map(func(r rune) rune {
			switch {
			case r >= 'A' && r <= 'Z':
				return r + 'a' - 'A'
			case r == '[':
				return '{'
			case r == ']':
				return '}'
			case r == '\\':
				return '|'
			}
			return r
		}, s)
	}
	nicks := []string{"alice[m]", "bob[m]", "al"}
	tests := []struct {
		name, text string
		want       []string
	}{
		{"prefix colon", "alice[m]: hi", []string{"alice[m]"}},
		{"prefix comma", "Alice{M}, hi", []string{"alice[m]"}},
		{"mid-line", "thanks alice[m]!", []string{"alice[m]"}},
		{"end", "ask bob[m]", []string{"bob[m]"}},
		{"two", "bob[m] and alice[m]: look", []string{"alice[m]", "bob[m]"}},
		{"inside a word", "malice[m] and alice[m]s", nil},
		{"short nick only as a word", "also alright, al?", []string{"al"}},
		{"short nick inside words", "also alright", nil},
		{"none", "hello everyone", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Mentioned(tt.text, nicks, fold); !slices.Equal(got, tt.want) {
				t.Errorf("Mentioned(%q) = %q, want %q", tt.text, got, tt.want)
			}
		})
	}
	if n, ok := LeadingNick("ALICE[m]: hi", "alice[m]", fold); !ok || n != 8 {
		t.Errorf("LeadingNick = %d, %v, want 8, true", n, ok)
	}
	if _, ok := LeadingNick("alice[m] hi", "alice[m]", fold); ok {
		t.Error("LeadingNick accepted a nick not followed by : or ,")
	}
}

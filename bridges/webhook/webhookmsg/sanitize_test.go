package webhookmsg

import (
	"errors"
	"strings"
	"testing"

	"golang.org/x/net/html"
	"golang.org/x/net/html/atom"
)

func TestSanitizeHTML(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string
	}{
		{name: "plain text", in: "hello", want: "hello"},
		{name: "text escaped", in: "a &lt; b &amp; c", want: "a &lt; b &amp; c"},
		{name: "formatting kept", in: "<b>b</b><i>i</i><code>c</code><del>d</del>", want: "<b>b</b><i>i</i><code>c</code><del>d</del>"},
		{name: "script dropped with content", in: "a<script>alert(1)</script>b", want: "ab"},
		{name: "style dropped with content", in: "<style>body{}</style>text", want: "text"},
		{name: "unknown tag unwrapped", in: "<blink>x</blink>", want: "x"},
		{name: "img dropped", in: `<img src="https://evil/x.png" alt="alt">y`, want: "y"},
		{name: "event handler dropped", in: `<b onclick="evil()">x</b>`, want: "<b>x</b>"},
		{name: "style attribute dropped", in: `<span style="color:red">x</span>`, want: "<span>x</span>"},
		{name: "http link kept", in: `<a href="https://example.org/?a=1&amp;b=2">x</a>`, want: `<a href="https://example.org/?a=1&amp;b=2">x</a>`},
		{name: "javascript link stripped", in: `<a href="javascript:alert(1)">x</a>`, want: "<a>x</a>"},
		{name: "javascript link with tab stripped", in: "<a href=\"java\tscript:alert(1)\">x</a>", want: "<a>x</a>"},
		{name: "uppercase scheme", in: `<a href="JAVASCRIPT:alert(1)">x</a>`, want: "<a>x</a>"},
		{name: "data link stripped", in: `<a href="data:text/html,<script>">x</a>`, want: "<a>x</a>"},
		{name: "relative link stripped", in: `<a href="/admin">x</a>`, want: "<a>x</a>"},
		{name: "mailto kept", in: `<a href="mailto:a@example.org">x</a>`, want: `<a href="mailto:a@example.org">x</a>`},
		{name: "unclosed tags closed", in: "<b>bold <i>both", want: "<b>bold <i>both</i></b>"},
		{name: "misnested repaired", in: "<b><i>x</b></i>", want: "<b><i>x</i></b>"},
		{name: "stray closing tag", in: "x</b>y", want: "xy"},
		{name: "comment dropped", in: "a<!-- secret -->b", want: "ab"},
		{name: "ol start kept", in: `<ol start="3"><li>x</li></ol>`, want: `<ol start="3"><li>x</li></ol>`},
		{name: "ol start junk dropped", in: `<ol start="3;x"><li>x</li></ol>`, want: `<ol><li>x</li></ol>`},
		{name: "code language kept", in: `<pre><code class="language-go">x</code></pre>`, want: `<pre><code class="language-go">x</code></pre>`},
		{name: "code class junk dropped", in: `<code class="x" id="y">x</code>`, want: `<code>x</code>`},
		{name: "spoiler kept", in: `<span data-mx-spoiler="why">x</span>`, want: `<span data-mx-spoiler="why">x</span>`},
		{name: "attribute escaped", in: `<span data-mx-spoiler="&quot;><script>">x</span>`, want: `<span data-mx-spoiler="&#34;&gt;&lt;script&gt;">x</span>`},
		{name: "svg dropped", in: `<svg><script>alert(1)</script><text>t</text></svg>ok`, want: "ok"},
		{name: "math dropped", in: `<math><mi>x</mi></math>ok`, want: "ok"},
		{name: "mx-reply dropped", in: `<mx-reply><blockquote>quoted</blockquote></mx-reply>answer`, want: "answer"},
		{name: "iframe dropped", in: `<iframe src="https://evil"></iframe>x`, want: "x"},
		{name: "br and hr void", in: "a<br>b<hr>c", want: "a<br>b<hr>c"},
		{name: "table kept", in: "<table><tr><td>1</td></tr></table>", want: "<table><tbody><tr><td>1</td></tr></tbody></table>"},
		{name: "form dropped", in: `<form action="x"><input value="v">t</form>u`, want: "u"},
		{name: "entity smuggling", in: "&lt;script&gt;alert(1)&lt;/script&gt;", want: "&lt;script&gt;alert(1)&lt;/script&gt;"},
		{name: "empty", in: "", want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, err := SanitizeHTML(tt.in); err != nil || got != tt.want {
				t.Errorf("SanitizeHTML(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestSanitizeHTMLDeepNesting(t *testing.T) {
	tests := []struct {
		name    string
		depth   int
		wantErr bool
	}{
		{name: "within maxDepth", depth: maxDepth - 1},
		{name: "beyond maxDepth, flattened", depth: 400},
		{name: "beyond the parser's limit", depth: 5000, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := strings.Repeat("<b>", tt.depth) + "x" + strings.Repeat("</b>", tt.depth)
			got, err := SanitizeHTML(in)
			if tt.wantErr {
				if !errors.Is(err, ErrTooDeep) {
					t.Fatalf("SanitizeHTML(<%d nested>) = %v, want ErrTooDeep", tt.depth, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if n := strings.Count(got, "<b>"); n > maxDepth || n != min(tt.depth, maxDepth) {
				t.Errorf("SanitizeHTML kept %d nested elements of %d, want %d", n, tt.depth, min(tt.depth, maxDepth))
			}
			if !strings.Contains(got, "x") {
				t.Errorf("SanitizeHTML lost the text of a deeply nested element")
			}
			checkSanitized(t, got)
		})
	}
}

// checkSanitized fails if html holds anything the allowlist does not allow.
func checkSanitized(t testing.TB, out string) {
	t.Helper()
	z := html.NewTokenizer(strings.NewReader(out))
	for {
		tt := z.Next()
		switch tt {
		case html.ErrorToken:
			return
		case html.StartTagToken, html.SelfClosingTagToken, html.EndTagToken:
			tok := z.Token()
			if !allowedTags[tok.DataAtom] {
				t.Fatalf("sanitized HTML %q has disallowed element %q", out, tok.Data)
			}
			for _, attr := range tok.Attr {
				switch {
				case tok.DataAtom == atom.A && attr.Key == "href":
					if _, ok := safeHref(attr.Val); !ok {
						t.Fatalf("sanitized HTML %q has unsafe link %q", out, attr.Val)
					}
				case tok.DataAtom == atom.Ol && attr.Key == "start",
					tok.DataAtom == atom.Code && attr.Key == "class",
					tok.DataAtom == atom.Span && attr.Key == "data-mx-spoiler":
				default:
					t.Fatalf("sanitized HTML %q has disallowed attribute %s on %s", out, attr.Key, tok.Data)
				}
			}
		case html.CommentToken, html.DoctypeToken:
			t.Fatalf("sanitized HTML %q has a comment or doctype", out)
		}
	}
}

package ircconv

import (
	"strconv"
	"strings"

	"golang.org/x/net/html"
	"golang.org/x/net/html/atom"
)

// HTMLToIRC converts a Matrix formatted_body to IRC text: <b>/<strong> and headings become
// bold, <i>/<em> italic, <u>/<ins> underline, <del>/<s>/<strike> strikethrough, <code> and <pre>
// monospace, data-mx-color / color the nearest of mIRC's 16 colours, spoilers black on black;
// paragraphs, list items, <br> and the like become newlines, list items get "• " or "N. ", and
// block quotes "> ". Links show their URL after the text when the two differ (not for Matrix
// mentions, whose text is the name); images show their alt text. The reply fallback
// (<mx-reply>) is dropped, since [Render] quotes replies itself. It never fails: anything it
// does not understand contributes its text.
func HTMLToIRC(body string) string {
	nodes, err := html.ParseFragment(strings.NewReader(body), &html.Node{Type: html.ElementNode, Data: "div", DataAtom: atom.Div})
	if err != nil {
		// ParseFragment only fails on read errors, which a strings.Reader does not have.
		return PlainToIRC(body)
	}
	w := &htmlWriter{}
	for _, n := range nodes {
		w.node(n)
	}
	return w.result()
}

type htmlWriter struct {
	b           strings.Builder
	counts      [5]int   // nesting of bold, italic, underline, strike, mono
	colours     []string // stack of colour codes in effect
	quoteDepth  int
	pre         int
	atLineStart bool // nothing but quote marks written on the current line
	pendingNL   bool // a block ended; start a new line before more text
	lastSpace   bool // the last text written was whitespace (for collapsing)
}

var toggleCodes = [5]byte{codeBold, codeItalic, codeUnderline, codeStrike, codeMono}

const (
	fmtBold = iota
	fmtItalic
	fmtUnderline
	fmtStrike
	fmtMono
)

func (w *htmlWriter) node(n *html.Node) {
	switch n.Type {
	case html.TextNode:
		w.text(n.Data)
		return
	case html.ElementNode:
	default:
		w.children(n)
		return
	}
	switch n.DataAtom {
	case atom.Script, atom.Style, atom.Head, atom.Title:
		return
	case atom.Br:
		w.newline()
		return
	case atom.Img:
		if alt := attr(n, "alt"); alt != "" {
			w.text(alt)
		} else if title := attr(n, "title"); title != "" {
			w.text(title)
		}
		return
	case atom.Hr:
		w.block()
		w.text("---")
		w.block()
		return
	}
	if n.Data == "mx-reply" {
		return
	}
	switch n.DataAtom {
	case atom.B, atom.Strong:
		w.toggled(n, fmtBold)
	case atom.H1, atom.H2, atom.H3, atom.H4, atom.H5, atom.H6:
		w.block()
		w.toggled(n, fmtBold)
		w.block()
	case atom.I, atom.Em, atom.Cite:
		w.toggled(n, fmtItalic)
	case atom.U, atom.Ins:
		w.toggled(n, fmtUnderline)
	case atom.Del, atom.S, atom.Strike:
		w.toggled(n, fmtStrike)
	case atom.Code:
		w.toggled(n, fmtMono)
	case atom.Pre:
		w.block()
		w.pre++
		w.toggled(n, fmtMono)
		w.pre--
		w.block()
	case atom.Blockquote:
		w.block()
		w.quoteDepth++
		w.children(n)
		w.quoteDepth--
		w.block()
	case atom.Ul, atom.Ol:
		w.block()
		i, _ := strconv.Atoi(attr(n, "start"))
		if i <= 0 || i > 1_000_000 {
			i = 1
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			if c.Type == html.ElementNode && c.DataAtom == atom.Li {
				w.block()
				if n.DataAtom == atom.Ol {
					w.text(strconv.Itoa(i) + ". ")
					i++
				} else {
					w.text("• ")
				}
				w.children(c)
				w.block()
			} else {
				w.node(c)
			}
		}
		w.block()
	case atom.P, atom.Div, atom.Li, atom.Table, atom.Tr, atom.Details, atom.Summary, atom.Caption:
		w.block()
		w.children(n)
		w.block()
	case atom.Td, atom.Th:
		w.children(n)
		w.text(" ")
	case atom.A:
		w.link(n)
	case atom.Font, atom.Span:
		w.coloured(n)
	default:
		w.children(n)
	}
}

func (w *htmlWriter) children(n *html.Node) {
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		w.node(c)
	}
}

func (w *htmlWriter) toggled(n *html.Node, f int) {
	w.counts[f]++
	if w.counts[f] == 1 {
		w.code(string(toggleCodes[f]))
	}
	w.children(n)
	w.counts[f]--
	if w.counts[f] == 0 {
		w.code(string(toggleCodes[f]))
	}
}

func (w *htmlWriter) coloured(n *html.Node) {
	code := ""
	if _, spoiler := attrOK(n, "data-mx-spoiler"); spoiler {
		code = "\x0301,01"
	} else {
		fg := nearestColour(firstNonEmpty(attr(n, "data-mx-color"), attr(n, "color")))
		bg := nearestColour(attr(n, "data-mx-bg-color"))
		switch {
		case fg >= 0 && bg >= 0:
			code = "\x03" + twoDigits(fg) + "," + twoDigits(bg)
		case fg >= 0:
			code = "\x03" + twoDigits(fg)
		case bg >= 0:
			// IRC cannot set a background alone; use the default foreground (99).
			code = "\x0399," + twoDigits(bg)
		}
	}
	if code == "" {
		w.children(n)
		return
	}
	w.colours = append(w.colours, code)
	w.code(code)
	w.children(n)
	w.colours = w.colours[:len(w.colours)-1]
	if len(w.colours) > 0 {
		w.code(w.colours[len(w.colours)-1])
	} else {
		w.code("\x03")
	}
}

func (w *htmlWriter) link(n *html.Node) {
	href := attr(n, "href")
	start := w.b.Len()
	w.children(n)
	text := Strip(w.b.String()[start:])
	if href == "" || strings.HasPrefix(href, "https://matrix.to/#/") {
		return
	}
	if strings.TrimSpace(text) == "" {
		w.text(href)
		return
	}
	if strings.TrimSpace(text) != href && strings.TrimPrefix(href, "mailto:") != strings.TrimSpace(text) {
		w.text(" (" + href + ")")
	}
}

// text writes text, collapsing whitespace as HTML does (except inside <pre>).
func (w *htmlWriter) text(s string) {
	s = PlainToIRC(s)
	if w.pre > 0 {
		for i, line := range strings.Split(s, "\n") {
			if i > 0 {
				w.newline()
			}
			if line != "" {
				w.startLine()
				w.b.WriteString(line)
			}
		}
		return
	}
	for _, r := range s {
		if r == ' ' || r == '\n' || r == '\t' || r == '\f' {
			if w.lastSpace || w.atLineStart || w.b.Len() == 0 || w.pendingNL {
				continue
			}
			w.lastSpace = true
			w.b.WriteByte(' ')
			continue
		}
		w.startLine()
		w.lastSpace = false
		w.b.WriteRune(r)
	}
}

// startLine writes a pending newline and the quote marks before text on a new line.
func (w *htmlWriter) startLine() {
	if w.pendingNL {
		w.pendingNL = false
		if w.b.Len() > 0 {
			w.newline()
		}
	}
	if w.atLineStart || w.b.Len() == 0 {
		w.atLineStart = false
		w.b.WriteString(strings.Repeat("> ", w.quoteDepth))
	}
}

func (w *htmlWriter) newline() {
	// Trailing spaces are trimmed in result, not here: link reads back what it wrote.
	w.pendingNL = false
	w.b.WriteByte('\n')
	w.atLineStart = true
	w.lastSpace = false
}

// block marks a block boundary: the next text starts on a new line.
func (w *htmlWriter) block() {
	if w.b.Len() > 0 && !w.atLineStart {
		w.pendingNL = true
	}
}

func (w *htmlWriter) code(c string) {
	if w.pendingNL && w.b.Len() > 0 {
		w.newline()
	}
	w.b.WriteString(c)
}

func (w *htmlWriter) result() string {
	lines := strings.Split(w.b.String(), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " ")
	}
	return strings.Trim(strings.Join(lines, "\n"), "\n")
}

func attr(n *html.Node, key string) string {
	v, _ := attrOK(n, key)
	return v
}

func attrOK(n *html.Node, key string) (string, bool) {
	for _, a := range n.Attr {
		if a.Namespace == "" && a.Key == key {
			return a.Val, true
		}
	}
	return "", false
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// nearestColour returns the mIRC colour (0-15) nearest to a #rrggbb or #rgb colour, or -1.
func nearestColour(c string) int {
	c = strings.TrimPrefix(strings.TrimSpace(c), "#")
	if len(c) == 3 {
		c = string([]byte{c[0], c[0], c[1], c[1], c[2], c[2]})
	}
	if len(c) != 6 || countHex(c, 6) != 6 {
		return -1
	}
	r, g, b := hexByte(c[0:2]), hexByte(c[2:4]), hexByte(c[4:6])
	best, bestDist := -1, 1<<31-1
	for i, p := range palette {
		pr, pg, pb := hexByte(p[1:3]), hexByte(p[3:5]), hexByte(p[5:7])
		d := (r-pr)*(r-pr) + (g-pg)*(g-pg) + (b-pb)*(b-pb)
		if d < bestDist {
			best, bestDist = i, d
		}
	}
	return best
}

func hexByte(s string) int { return unhex(s[0])<<4 | unhex(s[1]) }

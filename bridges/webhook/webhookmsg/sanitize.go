package webhookmsg

import (
	"errors"
	"net/url"
	"regexp"
	"strings"

	"golang.org/x/net/html"
	"golang.org/x/net/html/atom"
)

// maxDepth bounds how deeply nested elements are kept; deeper ones keep only their text.
const maxDepth = 32

// allowedTags are the elements kept by SanitizeHTML: the formatting subset of the Matrix
// specification's recommended HTML, without images (whose src would make every client fetch a
// URL the caller chose) and without inline styles or colours.
var allowedTags = map[atom.Atom]bool{
	atom.B: true, atom.Strong: true, atom.I: true, atom.Em: true, atom.U: true, atom.S: true,
	atom.Del: true, atom.Strike: true, atom.Sub: true, atom.Sup: true, atom.Code: true,
	atom.Pre: true, atom.P: true, atom.Br: true, atom.Hr: true, atom.Blockquote: true,
	atom.Ul: true, atom.Ol: true, atom.Li: true, atom.A: true, atom.Span: true, atom.Div: true,
	atom.H1: true, atom.H2: true, atom.H3: true, atom.H4: true, atom.H5: true, atom.H6: true,
	atom.Table: true, atom.Thead: true, atom.Tbody: true, atom.Tr: true, atom.Th: true,
	atom.Td: true, atom.Caption: true,
}

// droppedTags are removed with everything inside them: their content is code, styling or
// metadata, not text meant for people.
var droppedTags = map[atom.Atom]bool{
	atom.Script: true, atom.Style: true, atom.Iframe: true, atom.Object: true, atom.Embed: true,
	atom.Template: true, atom.Noscript: true, atom.Head: true, atom.Title: true,
	atom.Textarea: true, atom.Select: true, atom.Svg: true, atom.Math: true, atom.Noembed: true,
	atom.Noframes: true, atom.Frameset: true, atom.Frame: true, atom.Applet: true,
	atom.Audio: true, atom.Video: true, atom.Canvas: true, atom.Form: true, atom.Button: true,
	atom.Input: true, atom.Link: true, atom.Meta: true, atom.Base: true, atom.Img: true,
}

// voidTags have no closing tag.
var voidTags = map[atom.Atom]bool{atom.Br: true, atom.Hr: true}

// allowedSchemes are the link schemes kept in <a href>. Anything else (javascript:, data:,
// relative links, which have no meaning in a chat message) loses its href.
var allowedSchemes = map[string]bool{"http": true, "https": true, "mailto": true, "matrix": true}

var codeLanguage = regexp.MustCompile(`^language-[a-zA-Z0-9_+#-]{1,32}$`)

// ErrTooDeep is returned by SanitizeHTML for HTML nested deeper than the HTML parser accepts
// (512 elements).
var ErrTooDeep = errors.New("webhookmsg: HTML is nested too deeply")

// SanitizeHTML returns html reduced to a strict allowlist: only the formatting elements listed
// in allowedTags, only the attributes <a href> (http, https, mailto and matrix links), <ol
// start>, <code class="language-…"> and <span data-mx-spoiler>; everything else is dropped, its
// text kept (or, for script, style and the like, dropped too). The input is parsed as an HTML5
// body fragment, so unclosed and misnested tags are repaired the way browsers repair them, and
// the output is always well-formed with every text and attribute escaped. It may return "". The
// only error is [ErrTooDeep].
func SanitizeHTML(input string) (string, error) {
	context := &html.Node{Type: html.ElementNode, Data: "body", DataAtom: atom.Body}
	nodes, err := html.ParseFragment(strings.NewReader(input), context)
	if err != nil {
		// With a strings.Reader, the parser fails only on excessive nesting.
		return "", ErrTooDeep
	}
	var sb strings.Builder
	for _, node := range nodes {
		writeNode(&sb, node, 0)
	}
	return strings.TrimSpace(sb.String()), nil
}

func writeNode(sb *strings.Builder, node *html.Node, depth int) {
	switch node.Type {
	case html.TextNode:
		sb.WriteString(html.EscapeString(node.Data))
	case html.ElementNode:
		if droppedTags[node.DataAtom] || node.DataAtom == 0 && isDroppedForeign(node) {
			return
		}
		keep := allowedTags[node.DataAtom] && node.Namespace == "" && depth < maxDepth
		if keep {
			sb.WriteByte('<')
			sb.WriteString(node.DataAtom.String())
			writeAttributes(sb, node)
			sb.WriteByte('>')
			if voidTags[node.DataAtom] {
				return
			}
			depth++
		}
		for child := node.FirstChild; child != nil; child = child.NextSibling {
			writeNode(sb, child, depth)
		}
		if keep {
			sb.WriteString("</")
			sb.WriteString(node.DataAtom.String())
			sb.WriteByte('>')
		}
	case html.DocumentNode:
		for child := node.FirstChild; child != nil; child = child.NextSibling {
			writeNode(sb, child, depth)
		}
	}
	// Comments, doctypes and raw nodes are dropped.
}

// isDroppedForeign reports whether an element unknown to the atom table should be dropped with
// its content: anything in the SVG or MathML namespaces, and Matrix reply fallbacks.
func isDroppedForeign(node *html.Node) bool {
	return node.Namespace != "" || strings.EqualFold(node.Data, "mx-reply")
}

func writeAttributes(sb *strings.Builder, node *html.Node) {
	for _, attr := range node.Attr {
		if attr.Namespace != "" {
			continue
		}
		var value string
		switch {
		case node.DataAtom == atom.A && attr.Key == "href":
			var ok bool
			if value, ok = safeHref(attr.Val); !ok {
				continue
			}
		case node.DataAtom == atom.Ol && attr.Key == "start":
			if !isSmallNumber(attr.Val) {
				continue
			}
			value = attr.Val
		case node.DataAtom == atom.Code && attr.Key == "class":
			if !codeLanguage.MatchString(attr.Val) {
				continue
			}
			value = attr.Val
		case node.DataAtom == atom.Span && attr.Key == "data-mx-spoiler":
			value = attr.Val
		default:
			continue
		}
		sb.WriteByte(' ')
		sb.WriteString(attr.Key)
		sb.WriteString(`="`)
		sb.WriteString(html.EscapeString(value))
		sb.WriteByte('"')
	}
}

// safeHref returns href if it is an absolute link with an allowed scheme.
func safeHref(href string) (string, bool) {
	href = strings.TrimSpace(href)
	u, err := url.Parse(href)
	if err != nil || !allowedSchemes[strings.ToLower(u.Scheme)] {
		return "", false
	}
	if (u.Scheme == "http" || u.Scheme == "https") && u.Host == "" {
		return "", false
	}
	return href, true
}

func isSmallNumber(s string) bool {
	if s == "" || len(s) > 6 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

package appservice

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// The tests in this file turn rules the team cares about into failures: every package has a doc
// comment, logging never dumps values wholesale, and imports flow one way.

const modulePath = "github.com/custodian-matrix/custodian"

// goPackages returns every directory of the module with Go files, mapped to its files' parsed
// ASTs (comments included).
func goPackages(t *testing.T) map[string][]*ast.File {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err = os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found at %s: %v", root, err)
	}
	pkgs := make(map[string][]*ast.File)
	fset := token.NewFileSet()
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "bin") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		file, err := parser.ParseFile(fset, path, nil, parser.ParseComments|parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, filepath.Dir(path))
		pkgs[filepath.ToSlash(rel)] = append(pkgs[filepath.ToSlash(rel)], file)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return pkgs
}

func TestEveryPackageHasADocComment(t *testing.T) {
	for dir, files := range goPackages(t) {
		var docs int
		var nonTest bool
		for _, file := range files {
			if strings.HasSuffix(file.Name.Name, "_test") {
				continue
			}
			nonTest = true
			// A command's doc may start with its own name ("Custodian runs …"), as Go's do.
			if file.Doc != nil && (strings.HasPrefix(file.Doc.Text(), "Package "+file.Name.Name+" ") || file.Name.Name == "main") {
				docs++
			}
		}
		if nonTest && docs == 0 {
			t.Errorf("package in %s has no doc comment (\"Package <name> …\")", dir)
		}
		if docs > 1 {
			t.Errorf("package in %s has %d package doc comments, want exactly one", dir, docs)
		}
	}
}

// bannedLogCalls are zerolog calls that format or dump whole values, which is how message bodies
// and secrets leak into logs.
var bannedLogCalls = regexp.MustCompile(`\.(Msgf|Interface|Any|RawJSON)\(`)

func TestLogsNeverDumpValues(t *testing.T) {
	root, _ := filepath.Abs("..")
	_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Error(err)
			return nil
		}
		for i, line := range strings.Split(string(data), "\n") {
			if bannedLogCalls.MatchString(line) {
				t.Errorf("%s:%d: %s is banned; log typed fields with constant messages", path, i+1, strings.TrimSpace(line))
			}
		}
		return nil
	})
}

func TestImportsFlowOneWay(t *testing.T) {
	for dir, files := range goPackages(t) {
		for _, file := range files {
			for _, imp := range file.Imports {
				path, _ := strconv.Unquote(imp.Path.Value)
				rel, ok := strings.CutPrefix(path, modulePath+"/")
				if !ok {
					continue
				}
				if msg := importViolation(dir, rel); msg != "" {
					t.Errorf("%s imports %s: %s", dir, rel, msg)
				}
				if path == "maunium.net/go/mautrix/appservice" && (imp.Name == nil || imp.Name.Name != "mxas") {
					t.Errorf("%s imports mautrix's appservice package without naming it mxas", dir)
				}
			}
		}
	}
}

// importViolation returns why package dir must not import package rel (both relative to the
// module), or "" if it may.
func importViolation(dir, rel string) string {
	switch {
	case dir == "appservice/httpjson":
		return "httpjson is a leaf that every layer uses, and imports only the standard library"
	case isPrivacyEngine(dir) && (rel == "appservice" || strings.HasPrefix(rel, "bridges/") || strings.HasPrefix(rel, "cmd/")):
		return "the privacy engine sits below the core and its command layer, and never imports them or a bridge"
	case strings.HasPrefix(dir, "appservice") && (strings.HasPrefix(rel, "bridges/") || strings.HasPrefix(rel, "cmd/")):
		return "the core must not import bridges or commands"
	case strings.HasPrefix(dir, "bridges/") && strings.HasPrefix(rel, "bridges/") && bridgeOf(dir) != bridgeOf(rel):
		return "a bridge must not import another bridge"
	case strings.HasPrefix(dir, "bridges/") && strings.HasPrefix(rel, "cmd/"):
		return "bridges must not import commands"
	}
	return ""
}

func TestImportViolation(t *testing.T) {
	tests := []struct {
		dir, rel string
		bad      bool
	}{
		{"appservice/privacy", "appservice", true},
		{"appservice/privacy", "bridges/irc", true},
		{"appservice/privacy", "appservice/database", false},
		{"appservice", "appservice/privacy", false},
		{"appservice", "bridges/irc", true},
		{"bridges/irc", "appservice", false},
		{"bridges/irc", "bridges/webhook", true},
		{"bridges/irc/ircconn", "bridges/irc", false},
		{"bridges/webhook", "cmd/custodian", true},
		{"appservice/httpjson", "appservice", true},
		{"appservice/httpjson", "appservice/database", true},
		{"appservice/privacy", "appservice/httpjson", false},
	}
	for _, tt := range tests {
		if got := importViolation(tt.dir, tt.rel); (got != "") != tt.bad {
			t.Errorf("importViolation(%q, %q) = %q, want a violation: %v", tt.dir, tt.rel, got, tt.bad)
		}
	}
}

// isPrivacyEngine reports whether dir is the personal-data engine (appservice/privacy) or one
// of its sub-packages.
func isPrivacyEngine(dir string) bool {
	return dir == "appservice/privacy" || strings.HasPrefix(dir, "appservice/privacy/")
}

func bridgeOf(rel string) string {
	parts := strings.SplitN(rel, "/", 3)
	if len(parts) < 2 {
		return rel
	}
	return parts[1]
}

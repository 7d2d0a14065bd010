package main

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/custodian-matrix/custodian/appservice"
)

const cliAdminToken = "cli-admin-token-0123456789abcdefghijkl"

// fakeAdminAPI answers the admin API's export and forget for @alice:example.org and records
// the requests it got.
type fakeAdminAPI struct {
	srv      *httptest.Server
	lock     sync.Mutex
	requests []string
}

func newFakeAdminAPI(t *testing.T) *fakeAdminAPI {
	fa := &fakeAdminAPI{}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+appservice.AdminAPIPrefix+"/users/{userID}/export", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"schema_version":1,"user":"` + r.PathValue("userID") + `","modules":{}}`))
	})
	mux.HandleFunc("POST "+appservice.AdminAPIPrefix+"/users/{userID}/forget", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(&appservice.EraseReceipt{
			JobID: "er_abc", State: "done", Trigger: appservice.TriggerAdmin, UserHash: "deadbeef",
			Erased:         map[string]map[string]int64{"core": {"users": 1, "as_activity": 2}, "webhook": {"webhook_hook": 3}},
			RemoteFailures: []string{"webhook"},
		})
	})
	fa.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fa.lock.Lock()
		fa.requests = append(fa.requests, r.Method+" "+r.URL.EscapedPath())
		fa.lock.Unlock()
		if r.Header.Get("Authorization") != "Bearer "+cliAdminToken {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"errcode":"M_UNAUTHORIZED","error":"Unauthorized"}`))
			return
		}
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(fa.srv.Close)
	return fa
}

func (fa *fakeAdminAPI) addr() string { return strings.TrimPrefix(fa.srv.URL, "http://") }

func (fa *fakeAdminAPI) got() []string {
	fa.lock.Lock()
	defer fa.lock.Unlock()
	return append([]string(nil), fa.requests...)
}

// writeAdminConfig writes the example configuration with the admin API at listen ("" for off)
// and the given token in its token file, and returns the config's path.
func writeAdminConfig(t *testing.T, listen, token string) string {
	dir := t.TempDir()
	tokenPath := filepath.Join(dir, "admin-api.token")
	if err := os.WriteFile(tokenPath, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := appservice.ExampleConfig(bridges)
	if listen != "" {
		block := "admin_api:\n"
		i := strings.Index(cfg, block)
		rest := cfg[i:]
		rest = strings.Replace(rest, "listen: null", "listen: "+listen, 1)
		rest = strings.Replace(rest, "token_file: null", "token_file: "+tokenPath, 1)
		cfg = cfg[:i] + rest
	}
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestExportCommand(t *testing.T) {
	fa := newFakeAdminAPI(t)
	cfgPath := writeAdminConfig(t, fa.addr(), cliAdminToken)

	code, stdout, stderr := runCLI(t, "export", "@alice:example.org", "-c", cfgPath)
	if code != exitOK || !strings.Contains(stdout, `"user": "@alice:example.org"`) {
		t.Fatalf("export = %d, stdout %q, stderr %q; want the export indented on stdout", code, stdout, stderr)
	}
	if got := fa.got(); len(got) != 1 || got[0] != "GET /_custodian/admin/v1/users/@alice:example.org/export" {
		t.Errorf("requests = %v, want one export request", got)
	}

	out := filepath.Join(t.TempDir(), "alice.json")
	code, stdout, stderr = runCLI(t, "export", "-c", cfgPath, "-o", out, "@alice:example.org")
	if code != exitOK || stdout != "" || !strings.Contains(stderr, "Wrote the export") {
		t.Fatalf("export -o = %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	info, err := os.Stat(out)
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("export file = %v, %v; want mode 0600", info, err)
	}
	if data, _ := os.ReadFile(out); !json.Valid(data) {
		t.Errorf("export file holds %q, want JSON", data)
	}
}

func TestForgetCommand(t *testing.T) {
	fa := newFakeAdminAPI(t)
	cfgPath := writeAdminConfig(t, fa.addr(), cliAdminToken)
	tests := []struct {
		name       string
		args       []string
		input      string
		wantCode   int
		wantStdout []string
		wantStderr string
		wantForget bool
	}{
		{name: "yes", args: []string{"--yes"}, wantCode: exitOK, wantForget: true,
			wantStdout: []string{"Erased @alice:example.org: job er_abc, done, 6 rows.", "core: 3 rows", "webhook: 3 rows", "Remote erasure failed for: webhook", "deadbeef"}},
		{name: "typed the ID", input: "@alice:example.org\n", wantCode: exitOK, wantForget: true, wantStdout: []string{"job er_abc"}},
		{name: "typed something else", input: "yes\n", wantCode: exitConfig, wantStderr: "not confirmed; nothing was erased"},
		{name: "no input", wantCode: exitConfig, wantStderr: "not confirmed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdin = strings.NewReader(tt.input)
			t.Cleanup(func() { stdin = os.Stdin })
			before := len(fa.got())
			code, stdout, stderr := runCLI(t, append([]string{"forget", "@alice:example.org", "-c", cfgPath}, tt.args...)...)
			if code != tt.wantCode {
				t.Errorf("forget = %d, want %d (stderr %q)", code, tt.wantCode, stderr)
			}
			for _, want := range tt.wantStdout {
				if !strings.Contains(stdout, want) {
					t.Errorf("stdout = %q, want it to contain %q", stdout, want)
				}
			}
			if !strings.Contains(stderr, tt.wantStderr) {
				t.Errorf("stderr = %q, want it to contain %q", stderr, tt.wantStderr)
			}
			if forgot := len(fa.got()) > before; forgot != tt.wantForget {
				t.Errorf("forget request sent = %v, want %v", forgot, tt.wantForget)
			}
		})
	}
}

func TestPrivacyCommandErrors(t *testing.T) {
	fa := newFakeAdminAPI(t)
	// A port nothing listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	_ = ln.Close()
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStderr string
	}{
		{name: "admin API off", args: []string{"export", "@alice:example.org", "-c", writeAdminConfig(t, "", cliAdminToken)},
			wantCode: exitConfig, wantStderr: "the admin API is off (admin_api.listen is null"},
		{name: "unreachable", args: []string{"export", "@alice:example.org", "-c", writeAdminConfig(t, closed, cliAdminToken)},
			wantCode: exitRuntime, wantStderr: "cannot reach the admin API at http://" + closed},
		{name: "wrong token", args: []string{"forget", "--yes", "@alice:example.org", "-c", writeAdminConfig(t, fa.addr(), "wrong-token-0123456789abcdefghijklmnop")},
			wantCode: exitRuntime, wantStderr: "the admin API refused the token from"},
		{name: "no user", args: []string{"export", "-c", "x.yaml"}, wantCode: exitConfig, wantStderr: "want exactly one user ID, got 0"},
		{name: "two users", args: []string{"forget", "@a:x", "@b:x"}, wantCode: exitConfig, wantStderr: "want exactly one user ID, got 2"},
		{name: "not a user", args: []string{"export", "alice"}, wantCode: exitConfig, wantStderr: `"alice" is not a Matrix user ID`},
		{name: "missing config", args: []string{"export", "@alice:example.org", "-c", "/nonexistent/c.yaml"}, wantCode: exitConfig, wantStderr: "/nonexistent/c.yaml"},
		{name: "help", args: []string{"forget", "-h"}, wantCode: exitOK, wantStderr: "Usage: custodian forget"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, tt.args...)
			if code != tt.wantCode || !strings.Contains(stderr, tt.wantStderr) {
				t.Errorf("run(%q) = %d, stderr %q; want %d with %q", tt.args, code, stderr, tt.wantCode, tt.wantStderr)
			}
		})
	}
}

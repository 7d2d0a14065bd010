package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custodian-matrix/custodian/appservice"
	"github.com/custodian-matrix/custodian/bridges/irc"
)

// fakePortalsAPI answers the IRC bridge's portal endpoints of the admin API with one portal,
// and records the requests it got.
func fakePortalsAPI(t *testing.T) (addr string, got func() []string) {
	var lock sync.Mutex
	var requests []string
	portal := &irc.AdminPortal{
		Network: "libera", Channel: "#custodian", RoomID: "!old:example.org", Alias: "#irc_libera_custodian:example.org",
		LinkedBy: "@alice:example.org", CreatedAt: time.Date(2026, 11, 3, 12, 0, 0, 0, time.UTC),
	}
	prefix := appservice.AdminAPIPrefix + "/bridges/irc/portals"
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+prefix, func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(&irc.AdminPortals{Portals: []*irc.AdminPortal{portal}})
	})
	mux.HandleFunc("POST "+prefix+"/{room}/unlink", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(&irc.AdminPortalChange{Old: portal})
	})
	mux.HandleFunc("POST "+prefix+"/{room}/reset", func(w http.ResponseWriter, r *http.Request) {
		np := *portal
		np.RoomID, np.LinkedBy = "!new:example.org", ""
		_ = json.NewEncoder(w).Encode(&irc.AdminPortalChange{Old: portal, New: &np})
	})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		lock.Lock()
		requests = append(requests, r.Method+" "+r.URL.EscapedPath())
		lock.Unlock()
		if r.Header.Get("Authorization") != "Bearer "+cliAdminToken {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), func() []string {
		lock.Lock()
		defer lock.Unlock()
		return append([]string(nil), requests...)
	}
}

func TestPortalsCommands(t *testing.T) {
	addr, got := fakePortalsAPI(t)
	cfgPath := writeAdminConfig(t, addr, cliAdminToken)
	tests := []struct {
		name        string
		args        []string
		input       string
		wantCode    int
		wantStdout  []string
		wantStderr  string
		wantRequest string // "" for none
	}{
		{name: "list", args: []string{"portals", "list", "-c", cfgPath}, wantCode: exitOK,
			wantStdout:  []string{"NETWORK", "libera", "#custodian", "!old:example.org", "#irc_libera_custodian:example.org", "@alice:example.org", "2026-11-03"},
			wantRequest: "GET /_custodian/admin/v1/bridges/irc/portals"},
		{name: "list as JSON", args: []string{"portals", "-c", cfgPath, "list", "--json"}, wantCode: exitOK,
			wantStdout:  []string{`"room_id": "!old:example.org"`},
			wantRequest: "GET /_custodian/admin/v1/bridges/irc/portals"},
		{name: "unlink by alias", args: []string{"portal", "unlink", "#irc_libera_custodian:example.org", "-c", cfgPath, "--yes"}, wantCode: exitOK,
			wantStdout:  []string{"Unlinked !old:example.org from #custodian on libera."},
			wantRequest: "POST /_custodian/admin/v1/bridges/irc/portals/%23irc_libera_custodian:example.org/unlink"},
		{name: "unlink confirmed", args: []string{"portal", "unlink", "!old:example.org", "-c", cfgPath}, input: "unlink\n", wantCode: exitOK,
			wantStdout:  []string{"Unlinked"},
			wantRequest: "POST /_custodian/admin/v1/bridges/irc/portals/%21old:example.org/unlink"},
		{name: "unlink not confirmed", args: []string{"portal", "unlink", "!old:example.org", "-c", cfgPath}, input: "yes\n", wantCode: exitConfig,
			wantStderr: "not confirmed; nothing was changed"},
		{name: "reset", args: []string{"portal", "reset", "!old:example.org", "-c", cfgPath, "--yes"}, wantCode: exitOK,
			wantStdout:  []string{"!new:example.org replaces !old:example.org"},
			wantRequest: "POST /_custodian/admin/v1/bridges/irc/portals/%21old:example.org/reset"},
		{name: "no subcommand", args: []string{"portals", "-c", cfgPath}, wantCode: exitConfig, wantStderr: "want the subcommand list"},
		{name: "unknown operation", args: []string{"portal", "delete", "!old:example.org", "-c", cfgPath}, wantCode: exitConfig, wantStderr: "want unlink or reset"},
		{name: "not a room", args: []string{"portal", "unlink", "old", "-c", cfgPath}, wantCode: exitConfig, wantStderr: `"old" is not a room ID`},
		{name: "help", args: []string{"portal", "-h"}, wantCode: exitOK, wantStderr: "Usage: custodian portal unlink|reset"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdin = strings.NewReader(tt.input)
			t.Cleanup(func() { stdin = os.Stdin })
			before := len(got())
			code, stdout, stderr := runCLI(t, tt.args...)
			if code != tt.wantCode {
				t.Errorf("%q = %d, want %d (stderr %q)", tt.args, code, tt.wantCode, stderr)
			}
			for _, want := range tt.wantStdout {
				if !strings.Contains(stdout, want) {
					t.Errorf("stdout = %q, want it to contain %q", stdout, want)
				}
			}
			if !strings.Contains(stderr, tt.wantStderr) {
				t.Errorf("stderr = %q, want it to contain %q", stderr, tt.wantStderr)
			}
			requests := got()[before:]
			switch {
			case tt.wantRequest == "" && len(requests) != 0:
				t.Errorf("requests = %v, want none", requests)
			case tt.wantRequest != "" && (len(requests) != 1 || requests[0] != tt.wantRequest):
				t.Errorf("requests = %v, want [%s]", requests, tt.wantRequest)
			}
		})
	}
}

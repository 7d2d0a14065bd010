package appservice

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/custodian-matrix/custodian/appservice/astest"
)

const pvAdminAPIToken = "admin-api-token-for-tests-0123456789abcdef"

// withAdminAPI turns the admin API on, on a random loopback port, with token in its token file.
func withAdminAPI(t *testing.T, token string) func(cfg *Config) {
	path := filepath.Join(t.TempDir(), "admin-api.token")
	if err := os.WriteFile(path, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	listen := "127.0.0.1:0"
	return func(cfg *Config) {
		cfg.AdminAPI.Listen = &listen
		cfg.AdminAPI.TokenFile = &path
	}
}

// adminRequest sends one admin API request and returns the status and body.
func (env *privacyEnv) adminRequest(method, path, token, body string) (int, []byte) {
	env.t.Helper()
	req, err := http.NewRequest(method, "http://"+env.svc.privacy.adminAddr.String()+path, strings.NewReader(body))
	if err != nil {
		env.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		env.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		env.t.Fatal(err)
	}
	return resp.StatusCode, data
}

func userPath(user string) string {
	return AdminAPIPrefix + "/users/" + url.PathEscape(user)
}

func TestAdminAPIRefusesWithoutTheToken(t *testing.T) {
	env := newPrivacyEnv(t, astest.SQLite, withAdminAPI(t, pvAdminAPIToken)).start()
	env.seedUser(pvAlice, pvDM)
	paths := []struct{ method, path string }{
		{http.MethodGet, userPath(pvAlice.String()) + "/export"},
		{http.MethodPost, userPath(pvAlice.String()) + "/forget"},
		{http.MethodGet, userPath(pvAlice.String()) + "/erasures"},
		{http.MethodGet, AdminAPIPrefix + "/erasures/er_123"},
		{http.MethodGet, AdminAPIPrefix + "/keys"},
		{http.MethodGet, AdminAPIPrefix + "/deactivation-suspects"},
		{http.MethodGet, AdminAPIPrefix + "/no/such/endpoint"},
	}
	tokens := []struct{ name, header string }{
		{"none", ""},
		{"wrong", "Bearer " + strings.Repeat("x", len(pvAdminAPIToken))},
		{"prefix of the right one", "Bearer " + pvAdminAPIToken[:10]},
		{"not bearer", pvAdminAPIToken},
		{"homeserver token", "Bearer " + testHSToken},
	}
	const want = `{"errcode":"M_UNAUTHORIZED","error":"Unauthorized"}`
	for _, p := range paths {
		for _, tok := range tokens {
			status, body := env.adminRequest(p.method, p.path, tok.header, "")
			if status != http.StatusUnauthorized || strings.TrimSpace(string(body)) != want {
				t.Errorf("%s %s with %s token = %d %s, want 401 %s", p.method, p.path, tok.name, status, body, want)
			}
		}
	}
	if exists, _ := env.svc.db.User.Exists(env.ctx, pvAlice); !exists {
		t.Error("an unauthorized forget erased the user")
	}
}

func TestAdminAPIEndpoints(t *testing.T) {
	env := newPrivacyEnv(t, astest.SQLite, withAdminAPI(t, pvAdminAPIToken))
	env.svc.vault = &fakeVault{key: []byte("0123456789abcdef0123456789abcdef")}
	env.start()
	env.seedUser(pvAlice, pvDM)
	auth := "Bearer " + pvAdminAPIToken

	status, body := env.adminRequest(http.MethodGet, userPath(pvAlice.String())+"/export", auth, "")
	var export Export
	if status != http.StatusOK || json.Unmarshal(body, &export) != nil || export.User != pvAlice || export.Modules["hooks"]["hooks_hook"].RowCount != 2 {
		t.Fatalf("export = %d %.200s, want alice's export", status, body)
	}

	tests := []struct {
		name       string
		method     string
		path       string
		body       string
		wantStatus int
		wantBody   string // substring
	}{
		{name: "bad user ID", method: http.MethodGet, path: userPath("alice") + "/export", wantStatus: http.StatusBadRequest, wantBody: "M_INVALID_PARAM"},
		{name: "forget unknown module", method: http.MethodPost, path: userPath(pvAlice.String()) + "/forget", body: `{"modules":["nope"]}`, wantStatus: http.StatusBadRequest, wantBody: "Unknown module"},
		{name: "forget bad body", method: http.MethodPost, path: userPath(pvAlice.String()) + "/forget", body: `[`, wantStatus: http.StatusBadRequest, wantBody: "M_NOT_JSON"},
		{name: "unknown job", method: http.MethodGet, path: AdminAPIPrefix + "/erasures/er_nope", wantStatus: http.StatusNotFound, wantBody: "M_NOT_FOUND"},
		{name: "keys", method: http.MethodGet, path: AdminAPIPrefix + "/keys", wantStatus: http.StatusOK, wantBody: `{"enabled":true,"keys":{"kek1":3}}`},
		{name: "unknown endpoint", method: http.MethodGet, path: AdminAPIPrefix + "/nope", wantStatus: http.StatusNotFound, wantBody: "M_UNRECOGNIZED"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := env.adminRequest(tt.method, tt.path, auth, tt.body)
			if status != tt.wantStatus || !strings.Contains(string(body), tt.wantBody) {
				t.Errorf("%s %s = %d %s, want %d with %q", tt.method, tt.path, status, body, tt.wantStatus, tt.wantBody)
			}
		})
	}

	status, body = env.adminRequest(http.MethodPost, userPath(pvAlice.String())+"/forget", auth, "")
	var receipt EraseReceipt
	if status != http.StatusOK || json.Unmarshal(body, &receipt) != nil || receipt.JobID == "" || receipt.Trigger != TriggerAdmin || receipt.Total() == 0 {
		t.Fatalf("forget = %d %s, want a receipt", status, body)
	}
	if strings.Contains(string(body), pvAlice.String()) {
		t.Errorf("receipt %s names the user", body)
	}
	if exists, _ := env.svc.db.User.Exists(env.ctx, pvAlice); exists {
		t.Error("forget through the admin API left the users row")
	}
	status, body = env.adminRequest(http.MethodGet, AdminAPIPrefix+"/erasures/"+receipt.JobID, auth, "")
	if status != http.StatusOK || !strings.Contains(string(body), `"state":"done"`) || strings.Contains(string(body), pvAlice.String()) {
		t.Errorf("erasure status = %d %s, want done, without the user", status, body)
	}
	status, body = env.adminRequest(http.MethodGet, userPath(pvAlice.String())+"/erasures", auth, "")
	var tombstones AdminTombstones
	if status != http.StatusOK || json.Unmarshal(body, &tombstones) != nil || len(tombstones.Erasures) != 1 || tombstones.Erasures[0].JobID != receipt.JobID {
		t.Errorf("tombstones = %d %s, want the erasure", status, body)
	}
}

func TestAdminAPINeedsALongToken(t *testing.T) {
	env := newPrivacyEnv(t, astest.SQLite, withAdminAPI(t, "short"))
	err := env.svc.start(env.ctx)
	env.started = true
	if err == nil || !strings.Contains(err.Error(), "admin_api.token_file") {
		t.Errorf("start with a short admin token = %v, want an error about admin_api.token_file", err)
	}
}

func TestAdminAPIKeysWithoutVault(t *testing.T) {
	env := newPrivacyEnv(t, astest.SQLite, withAdminAPI(t, pvAdminAPIToken)).start()
	status, body := env.adminRequest(http.MethodGet, AdminAPIPrefix+"/keys", "Bearer "+pvAdminAPIToken, "")
	if status != http.StatusOK || strings.TrimSpace(string(body)) != `{"enabled":false}` {
		t.Errorf("keys without a vault = %d %s, want enabled false", status, body)
	}
}

package appservice

import (
	"net/http"
	"strings"
	"testing"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/httpjson"
)

// AdminRoutes gives the test bridge two admin API endpoints: one that echoes a path wildcard,
// and one that lists nothing.
func (pb *privacyBridge) AdminRoutes() []AdminRoute {
	return []AdminRoute{
		{Method: http.MethodGet, Path: "/things", Handler: func(w http.ResponseWriter, r *http.Request) {
			httpjson.Write(w, http.StatusOK, map[string]any{"bridge": pb.id, "things": []string{}})
		}},
		{Method: http.MethodPost, Path: "/things/{thing}/poke", Handler: func(w http.ResponseWriter, r *http.Request) {
			httpjson.Write(w, http.StatusOK, map[string]any{"bridge": pb.id, "poked": r.PathValue("thing")})
		}},
	}
}

func TestAdminAPIBridgeRoutes(t *testing.T) {
	env := newPrivacyEnv(t, astest.SQLite, withAdminAPI(t, pvAdminAPIToken)).start()
	auth := "Bearer " + pvAdminAPIToken
	tests := []struct {
		method, path, token string
		wantStatus          int
		wantBody            string
	}{
		{http.MethodGet, "/bridges/hooks/things", auth, http.StatusOK, `{"bridge":"hooks","things":[]}`},
		{http.MethodPost, "/bridges/other/things/%21room:example.org/poke", auth, http.StatusOK, `{"bridge":"other","poked":"!room:example.org"}`},
		{http.MethodGet, "/bridges/hooks/things", "", http.StatusUnauthorized, `{"errcode":"M_UNAUTHORIZED","error":"Unauthorized"}`},
		{http.MethodPost, "/bridges/hooks/things/x/poke", "Bearer wrong", http.StatusUnauthorized, `{"errcode":"M_UNAUTHORIZED","error":"Unauthorized"}`},
		{http.MethodGet, "/bridges/nosuch/things", auth, http.StatusNotFound, `{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}`},
		{http.MethodDelete, "/bridges/hooks/things", auth, http.StatusNotFound, `{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}`},
	}
	for _, tt := range tests {
		status, body := env.adminRequest(tt.method, AdminAPIPrefix+tt.path, tt.token, "")
		if status != tt.wantStatus || (tt.wantBody != "" && strings.TrimSpace(string(body)) != tt.wantBody) {
			t.Errorf("%s %s = %d %s, want %d %s", tt.method, tt.path, status, body, tt.wantStatus, tt.wantBody)
		}
	}
}

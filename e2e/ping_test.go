//go:build e2e

package e2e_test

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/custodian-matrix/custodian/e2e"
)

// TestPing: Custodian pings the homeserver at startup and logs the success, and answers the
// homeserver's ping, which a client triggers with POST /_matrix/client/v1/appservice/{id}/ping.
func TestPing(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		env := e2e.New(t, backend)
		env.MustWaitForLog(t, "Homeserver ping succeeded", 30*time.Second)

		status, body := env.HSRequest(t, http.MethodPost,
			"/_matrix/client/v1/appservice/"+e2e.AppServiceID+"/ping", env.ASToken(t),
			[]byte(`{"transaction_id":"e2e-ping"}`))
		if status != http.StatusOK {
			t.Fatalf("appservice ping: status %d, want 200: %s", status, body)
		}
		var resp struct {
			DurationMS *int64 `json:"duration_ms"`
		}
		if err := json.Unmarshal(body, &resp); err != nil || resp.DurationMS == nil {
			t.Fatalf("appservice ping answered %s, want {\"duration_ms\": …} (%v)", body, err)
		}
	})
}

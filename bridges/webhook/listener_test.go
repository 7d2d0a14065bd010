package webhook

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/custodian-matrix/custodian/appservice/astest"
)

// TestListenerIsHardened checks that the public listener is appservice.NewHTTPServer's: request
// headers past 16 KiB (here 28 KiB, within the 32 KiB the listener used to allow) are refused
// before any handler runs.
func TestListenerIsHardened(t *testing.T) {
	env := newTestEnv(t, astest.SQLite, nil)
	req, err := http.NewRequest(http.MethodPost, env.base+"/hooks/unknown", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Padding", strings.Repeat("a", 28<<10))
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("28 KiB header: status %d, want 431", resp.StatusCode)
	}
}

package appservice

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/custodian-matrix/custodian/appservice/clock"
)

// headerStatus sends a GET to url with a header of size bytes and returns the status. Go's
// server allows MaxHeaderBytes plus 4 KiB of slack, so 28 KiB is past 16 KiB and within 32 KiB.
func headerStatus(t *testing.T, url string, size int) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Padding", strings.Repeat("a", size))
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode
}

func TestNewHTTPServerIsHardened(t *testing.T) {
	srv := NewHTTPServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}), time.Minute, 2*time.Minute)
	if srv.ReadHeaderTimeout != 10*time.Second || srv.ReadTimeout != time.Minute || srv.WriteTimeout != 2*time.Minute ||
		srv.IdleTimeout != time.Minute || srv.MaxHeaderBytes != 16<<10 || srv.ErrorLog == nil {
		t.Errorf("server = read header %s, read %s, write %s, idle %s, max header %d, error log %v",
			srv.ReadHeaderTimeout, srv.ReadTimeout, srv.WriteTimeout, srv.IdleTimeout, srv.MaxHeaderBytes, srv.ErrorLog)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	base := "http://" + ln.Addr().String() + "/"
	if got := headerStatus(t, base, 1<<10); got != http.StatusOK {
		t.Errorf("1 KiB header: status %d, want 200", got)
	}
	if got := headerStatus(t, base, 28<<10); got != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("28 KiB header: status %d, want 431", got)
	}
	for _, timeouts := range [][2]time.Duration{{0, time.Second}, {time.Second, 0}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("NewHTTPServer with timeouts %v did not panic", timeouts)
				}
			}()
			NewHTTPServer(http.NotFoundHandler(), timeouts[0], timeouts[1])
		}()
	}
}

// TestAppserviceListenerIsHardened checks that the Application Service API's listener is built
// by NewHTTPServer: oversized request headers are refused before any handler runs.
func TestAppserviceListenerIsHardened(t *testing.T) {
	svc := startClockedService(t, deadHomeserver(t).URL, clock.NewFake(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)), io.Discard, nil)
	url := "http://" + svc.listenAddr.String() + "/_matrix/app/v1/ping"
	if got := headerStatus(t, url, 28<<10); got != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("28 KiB header: status %d, want 431", got)
	}
	if svc.server.IdleTimeout != time.Minute || svc.server.MaxHeaderBytes != 16<<10 {
		t.Errorf("listener: idle %s, max header %d; not NewHTTPServer's", svc.server.IdleTimeout, svc.server.MaxHeaderBytes)
	}
}

package webhook

import (
	"net/http"
	"strings"
	"testing"

	"github.com/custodian-matrix/custodian/appservice/astest"
)

// BenchmarkInboundPost measures an inbound POST end to end: HTTP, token check against the
// database, payload parsing and sanitizing, and the send to the (fake) homeserver, with
// parallel callers on one hook.
//
//	go test ./bridges/webhook -run '^$' -bench InboundPost -benchtime 2000x
func BenchmarkInboundPost(b *testing.B) {
	for _, dialect := range astest.Dialects(b) {
		b.Run(dialect, func(b *testing.B) {
			env := newTestEnv(b, dialect, func(cfg *Config) {
				cfg.RateLimit.PerSecond = 1e9
				cfg.RateLimit.Burst = 1 << 30
			})
			env.mustRun(testAlice, "add bench", "Created")
			path, _ := env.lastURL(testAlice)
			url := env.base + path
			body := `{"text": "build 1234 passed", "html": "build <b>1234</b> passed", "username": "CI"}`
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := client.Post(url, "application/json", strings.NewReader(body))
					if err != nil {
						b.Error(err)
						return
					}
					_ = resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "posts/s")
		})
	}
}

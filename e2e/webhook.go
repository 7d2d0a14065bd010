//go:build e2e

package e2e

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// WithWebhookBridge enables the webhook bridge (bridges.webhook) with its public listener on a
// free port of 127.0.0.1, outgoing webhooks allowed to reach loopback (the test's
// [Receiver]), short retry backoffs and a generous rate limit. [Env.WebhookURL] is its public
// URL.
func WithWebhookBridge(t testing.TB) Option {
	t.Helper()
	port := FreePort(t)
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	return func(o *options) {
		o.webhookBase = base
		o.patches = append(o.patches, func(cfg map[string]any) {
			SetPath(cfg, "bridges.webhook", map[string]any{
				"listen":                "127.0.0.1:" + strconv.Itoa(port),
				"public_url":            base,
				"allow_private_targets": true,
				"rate_limit":            map[string]any{"per_second": 100, "burst": 1000},
				"outbound": map[string]any{
					"timeout":      "10s",
					"max_attempts": 5,
					"min_backoff":  "200ms",
					"max_backoff":  "2s",
					"queue_size":   1000,
				},
			})
		})
	}
}

// WebhookURL is the webhook bridge's public URL (without a trailing slash), when the
// environment was created [WithWebhookBridge]; otherwise "".
func (env *Env) WebhookURL() string { return env.opts.webhookBase }

// Delivery is one request a [Receiver] received.
type Delivery struct {
	Path   string
	Query  string // the raw query, without "?"
	Header http.Header
	Body   []byte
	At     time.Time
}

// Receiver is an HTTP server on 127.0.0.1 that plays the receiving end of outgoing webhooks: it
// answers every POST with 200 and records it. Create it with [NewReceiver]; it is closed when the
// test ends. Safe for concurrent use.
type Receiver struct {
	server *httptest.Server

	mu         sync.Mutex
	deliveries []*Delivery
	changed    chan struct{} // closed and replaced whenever a delivery arrives
}

// NewReceiver starts a [Receiver].
func NewReceiver(t testing.TB) *Receiver {
	t.Helper()
	r := &Receiver{changed: make(chan struct{})}
	r.server = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.server.Close)
	return r
}

func (r *Receiver) serve(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, 1<<20))
	if err != nil {
		http.Error(w, "cannot read body", http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	r.deliveries = append(r.deliveries, &Delivery{Path: req.URL.Path, Query: req.URL.RawQuery, Header: req.Header.Clone(), Body: body, At: time.Now()})
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"ok":true}`))
}

// URL returns the receiver's URL for path (which starts with "/").
func (r *Receiver) URL(path string) string { return r.server.URL + path }

// Deliveries returns what the receiver has received so far, in order.
func (r *Receiver) Deliveries() []*Delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*Delivery(nil), r.deliveries...)
}

// WaitFor waits up to timeout for a delivery that pred accepts (looking at earlier ones first)
// and returns it; on a timeout it fails the test, listing what arrived.
func (r *Receiver) WaitFor(t testing.TB, timeout time.Duration, pred func(*Delivery) bool) *Delivery {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	seen := 0
	for {
		r.mu.Lock()
		all := r.deliveries
		changed := r.changed
		r.mu.Unlock()
		for ; seen < len(all); seen++ {
			if pred(all[seen]) {
				return all[seen]
			}
		}
		select {
		case <-changed:
		case <-timer.C:
			t.Fatalf("the receiver got no matching delivery within %v; %d deliveries:\n%s", timeout, len(all), describeDeliveries(all))
			return nil
		}
	}
}

func describeDeliveries(all []*Delivery) string {
	if len(all) > 20 {
		all = all[len(all)-20:]
	}
	var sb strings.Builder
	for _, d := range all {
		body := string(d.Body)
		if len(body) > 200 {
			body = body[:200] + "…"
		}
		fmt.Fprintf(&sb, "  %s %s hook=%s: %s\n", d.At.Format("15:04:05.000"), d.Path, d.Header.Get("X-Custodian-Hook-ID"), body)
	}
	return sb.String()
}

package webhook

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestIsPublicAddr(t *testing.T) {
	tests := []struct {
		addr string
		want bool
	}{
		{"8.8.8.8", true},
		{"1.1.1.1", true},
		{"2606:4700:4700::1111", true},
		{"127.0.0.1", false},
		{"127.255.255.254", false},
		{"10.1.2.3", false},
		{"172.16.0.1", false},
		{"192.168.1.1", false},
		{"169.254.169.254", false}, // cloud metadata
		{"100.64.0.1", false},
		{"0.0.0.0", false},
		{"0.1.2.3", false},
		{"224.0.0.1", false},
		{"255.255.255.255", false},
		{"240.0.0.1", false},
		{"192.0.2.1", false},
		{"198.18.0.1", false},
		{"::1", false},
		{"::", false},
		{"fe80::1", false},
		{"fc00::1", false},
		{"fd12:3456::1", false},
		{"ff02::1", false},
		{"fec0::1", false},
		{"2001:db8::1", false},
		{"::ffff:127.0.0.1", false}, // IPv4-mapped loopback
		{"::ffff:10.0.0.1", false},  // IPv4-mapped private
		{"::ffff:8.8.8.8", true},    // IPv4-mapped public
		{"::127.0.0.1", false},      // IPv4-compatible
		{"64:ff9b::7f00:1", false},  // NAT64 of 127.0.0.1
		{"64:ff9b::a9fe:a9fe", false},
		{"64:ff9b::808:808", true}, // NAT64 of 8.8.8.8
		{"64:ff9b:1::808:808", false},
		{"2002:7f00:1::1", false}, // 6to4 of 127.0.0.1
		{"2002:c0a8:101::1", false},
		{"2002:808:808::1", true},
		{"2001:0:4136:e378:8000:63bf:3fff:fdd2", false}, // Teredo
	}
	for _, tt := range tests {
		addr := netip.MustParseAddr(tt.addr)
		if got := isPublicAddr(addr); got != tt.want {
			t.Errorf("isPublicAddr(%s) = %v, want %v", tt.addr, got, tt.want)
		}
	}
	if isPublicAddr(netip.Addr{}) {
		t.Error("isPublicAddr(invalid) = true")
	}
}

func TestParseTargetURL(t *testing.T) {
	tests := []struct {
		raw          string
		allowPrivate bool
		wantOK       bool
	}{
		{"https://example.org/hook?token=x", false, true},
		{"http://example.org:8080/", false, true},
		{"ftp://example.org/", false, false},
		{"example.org/hook", false, false},
		{"https://", false, false},
		{"https://127.0.0.1/x", false, false},
		{"https://127.0.0.1/x", true, true},
		{"http://[::1]:8080/", false, false},
		{"http://[::ffff:127.0.0.1]/", false, false},
		{"http://localhost:8080/", false, false},
		{"http://LOCALHOST./", false, false},
		{"http://a.localhost/", false, false},
		{"http://169.254.169.254/latest/meta-data", false, false},
		{"https://example.org/" + strings.Repeat("a", 3000), false, false},
	}
	for _, tt := range tests {
		_, problem := parseTargetURL(tt.raw, tt.allowPrivate)
		if (problem == "") != tt.wantOK {
			t.Errorf("parseTargetURL(%q, %v) = %q, want ok=%v", tt.raw, tt.allowPrivate, problem, tt.wantOK)
		}
		if problem != "" && len(tt.raw) > 10 && strings.Contains(problem, tt.raw) {
			t.Errorf("parseTargetURL's message %q quotes the URL", problem)
		}
	}
}

func TestOutboundClientRefusesPrivateTargets(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	port := srv.URL[strings.LastIndex(srv.URL, ":")+1:]
	tests := []struct {
		name         string
		url          string
		allowPrivate bool
		wantRefused  bool
	}{
		{name: "loopback refused", url: srv.URL, wantRefused: true},
		{name: "name resolving to loopback refused at dial time", url: "http://localhost:" + port, wantRefused: true},
		{name: "loopback allowed when configured", url: srv.URL, allowPrivate: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := defaultConfig()
			cfg.AllowPrivateTargets = tt.allowPrivate
			cfg.Outbound.Timeout = 5 * time.Second
			client := newOutboundClient(&cfg)
			req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, tt.url, strings.NewReader("{}"))
			resp, err := client.Do(req)
			if resp != nil {
				_ = resp.Body.Close()
			}
			if tt.wantRefused {
				if !errors.Is(err, errTargetNotAllowed) {
					t.Fatalf("Do(%s) = %v, want errTargetNotAllowed", tt.url, err)
				}
				if reason, retry := classifyDeliveryError(err); retry || strings.Contains(reason, port) {
					t.Errorf("classifyDeliveryError = %q, %v; want no retry and no address", reason, retry)
				}
			} else if err != nil || resp.StatusCode != http.StatusNoContent {
				t.Fatalf("Do(%s) = %v, %v; want 204", tt.url, resp, err)
			}
		})
	}
}

func TestOutboundClientRedirects(t *testing.T) {
	var hits int
	final := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits++
		if r.Method != http.MethodPost || r.Header.Get(SignatureHeader) == "" {
			t.Errorf("redirected request: %s with signature %q, want a signed POST", r.Method, r.Header.Get(SignatureHeader))
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer final.Close()
	redirector := func(code int) *httptest.Server {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, final.URL, code)
		}))
		t.Cleanup(srv.Close)
		return srv
	}
	loop := httptest.NewServer(nil)
	loop.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, loop.URL, http.StatusTemporaryRedirect)
	})
	defer loop.Close()
	tests := []struct {
		name       string
		url        string
		wantStatus int
		wantErr    error
		wantHits   int
	}{
		{name: "307 followed", url: redirector(http.StatusTemporaryRedirect).URL, wantStatus: 200, wantHits: 1},
		{name: "308 followed", url: redirector(http.StatusPermanentRedirect).URL, wantStatus: 200, wantHits: 1},
		{name: "302 not followed", url: redirector(http.StatusFound).URL, wantStatus: 302},
		{name: "redirect loop stopped", url: loop.URL, wantErr: errTooManyRedirects},
	}
	cfg := defaultConfig()
	cfg.AllowPrivateTargets = true
	client := newOutboundClient(&cfg)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hits = 0
			req, _ := http.NewRequestWithContext(context.Background(), http.MethodPost, tt.url, strings.NewReader("{}"))
			req.Header.Set(SignatureHeader, Sign("k", []byte("{}")))
			resp, err := client.Do(req)
			if resp != nil {
				_ = resp.Body.Close()
			}
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Do = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil || resp.StatusCode != tt.wantStatus || hits != tt.wantHits {
				t.Fatalf("Do = %v, %v with %d hits; want status %d with %d hits", resp, err, hits, tt.wantStatus, tt.wantHits)
			}
		})
	}
}

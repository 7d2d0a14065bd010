package irc

import (
	"strings"
	"testing"
)

func TestMediaFileName(t *testing.T) {
	tests := []struct{ in, want string }{
		{"tiny.png", "tiny.png"},
		{"holiday photo.jpg", "holiday_photo.jpg"},
		{"../../etc/passwd", "etcpasswd"},
		{"résumé?.pdf", "rsum.pdf"},
		{"", "file"},
		{"...", "file"},
		{strings.Repeat("a", 100) + ".txt", strings.Repeat("a", 60) + ".txt"},
	}
	for _, tt := range tests {
		if got := mediaFileName(tt.in); got != tt.want {
			t.Errorf("mediaFileName(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestInlineSafe(t *testing.T) {
	tests := []struct {
		contentType string
		want        bool
	}{
		{"image/png", true},
		{"video/mp4", true},
		{"audio/ogg", true},
		{"text/plain", true},
		{"image/svg+xml", false},
		{"text/html", false},
		{"application/javascript", false},
		{"application/octet-stream", false},
	}
	for _, tt := range tests {
		if got := inlineSafe(tt.contentType); got != tt.want {
			t.Errorf("inlineSafe(%q) = %v, want %v", tt.contentType, got, tt.want)
		}
	}
}

func TestHashMediaTokenIsNotTheToken(t *testing.T) {
	token := "abcdefghijklmnopqrstuv"
	h := hashMediaToken(token)
	if len(h) != 64 || strings.Contains(h, token) || h != hashMediaToken(token) {
		t.Errorf("hashMediaToken(%q) = %q, want a stable 64-hex-digit SHA-256", token, h)
	}
}

func TestMediaProxyConfig(t *testing.T) {
	tests := []struct {
		name, src string
		wantErr   string
	}{
		{"valid", "media_proxy: {listen: '127.0.0.1:0', public_url: 'https://m.example.org/irc'}\n", ""},
		{"bad listen", "media_proxy: {listen: nope, public_url: 'https://m.example.org'}\n", "media_proxy.listen"},
		{"bad url", "media_proxy: {listen: '127.0.0.1:1', public_url: 'ftp://x'}\n", "media_proxy.public_url"},
		{"query", "media_proxy: {listen: '127.0.0.1:1', public_url: 'https://x/?a=b'}\n", "media_proxy.public_url"},
		{"negative size", "media_proxy: {listen: '127.0.0.1:1', public_url: 'https://x', max_bytes: -1}\n", "media_proxy.max_bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := decodeConfig(t, tt.src+"networks:\n  testnet:\n    address: 127.0.0.1:6667\n")
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("decodeConfig = %v, want no error", err)
				}
				if cfg.MediaProxy.MaxBytes != defaultMediaMaxBytes {
					t.Errorf("max_bytes = %d, want the default %d", cfg.MediaProxy.MaxBytes, defaultMediaMaxBytes)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("decodeConfig error = %v, want one about %s", err, tt.wantErr)
			}
		})
	}
}

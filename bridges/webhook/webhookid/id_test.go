package webhookid

import (
	"strings"
	"testing"
)

func TestNewIDsAreValidAndDistinct(t *testing.T) {
	seen := make(map[string]bool)
	for range 100 {
		hookID, token, secret := NewHookID(), NewToken(), NewSigningSecret()
		if !ValidHookID(hookID) {
			t.Errorf("ValidHookID(%q) = false for a new hook ID", hookID)
		}
		if !ValidToken(token) {
			t.Errorf("ValidToken(new token) = false")
		}
		if len(secret) != 64 {
			t.Errorf("len(NewSigningSecret()) = %d, want 64", len(secret))
		}
		for _, v := range []string{hookID, token, secret} {
			if seen[v] {
				t.Fatalf("value repeated after %d draws", len(seen))
			}
			seen[v] = true
		}
	}
}

func TestValidHookID(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"0123456789abcdef", true},
		{"0123456789ABCDEF", false},
		{"0123456789abcde", false},
		{"0123456789abcdefa", false},
		{"0123456789abcdeg", false},
		{"../../etc/passwd", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := ValidHookID(tt.in); got != tt.want {
			t.Errorf("ValidHookID(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestValidToken(t *testing.T) {
	good := NewToken()
	tests := []struct {
		name string
		in   string
		want bool
	}{
		{"new token", good, true},
		{"too short", good[1:], false},
		{"too long", good + "a", false},
		{"padding", good[1:] + "=", false},
		{"slash", good[1:] + "/", false},
		{"empty", "", false},
	}
	for _, tt := range tests {
		if got := ValidToken(tt.in); got != tt.want {
			t.Errorf("%s: ValidToken(%q) = %v, want %v", tt.name, tt.in, got, tt.want)
		}
	}
}

func TestTokenMatches(t *testing.T) {
	token := NewToken()
	hash := HashToken(token)
	tests := []struct {
		name   string
		token  string
		stored string
		want   bool
	}{
		{"right token", token, hash, true},
		{"wrong token", NewToken(), hash, false},
		{"dummy hash", token, DummyHash, false},
		{"empty stored hash", token, "", false},
		{"hash presented as token", hash, hash, false},
	}
	for _, tt := range tests {
		if got := TokenMatches(tt.token, tt.stored); got != tt.want {
			t.Errorf("%s: TokenMatches = %v, want %v", tt.name, got, tt.want)
		}
	}
	if strings.Contains(hash, token) || len(hash) != 64 {
		t.Errorf("HashToken = %q, want 64 hex digits not containing the token", hash)
	}
}

func TestNormalizeName(t *testing.T) {
	tests := []struct {
		in     string
		want   string
		wantOK bool
	}{
		{"ci", "ci", true},
		{"Deploy-Bot_2.x", "deploy-bot_2.x", true},
		{strings.Repeat("a", MaxNameLength), strings.Repeat("a", MaxNameLength), true},
		{strings.Repeat("a", MaxNameLength+1), "", false},
		{"", "", false},
		{"-leading", "", false},
		{"has space", "", false},
		{"**bold**", "", false},
		{"`code`", "", false},
		{"<b>", "", false},
		{"ünï", "", false},
	}
	for _, tt := range tests {
		got, ok := NormalizeName(tt.in)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("NormalizeName(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.wantOK)
		}
	}
}

func TestGhostLocalpart(t *testing.T) {
	hookID := NewHookID()
	got, ok := ParseGhostLocalpart(GhostLocalpart(hookID))
	if !ok || got != hookID {
		t.Errorf("ParseGhostLocalpart(GhostLocalpart(%q)) = %q, %v", hookID, got, ok)
	}
	for _, in := range []string{"webhook_", "webhook_xyz", "irc_" + hookID, hookID} {
		if _, ok := ParseGhostLocalpart(in); ok {
			t.Errorf("ParseGhostLocalpart(%q) = ok, want not a ghost", in)
		}
	}
}

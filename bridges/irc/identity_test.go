package irc

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix/id"
)

func TestIdentName(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	otherKey := []byte("fedcba9876543210fedcba9876543210")
	alice := id.UserID("@alice:example.org")
	aliceHash := identHash(key, alice)
	if len(aliceHash) != maxIdentLen || strings.Trim(aliceHash, "abcdefghijklmnopqrstuvwxyz234567") != "" {
		t.Fatalf("identHash = %q, want 10 lowercase base32 characters", aliceHash)
	}
	tests := []struct {
		name     string
		template string
		key      []byte
		user     id.UserID
		want     string
	}{
		{"hash", "{hash}", key, alice, aliceHash},
		{"hash is stable", "{hash}", key, "@alice:example.org", aliceHash},
		{"localpart", "{localpart}", key, alice, "alice"},
		{"localpart cut and cleaned", "{localpart}", key, "@al.ice=x_very_long_name:example.org", "al.icex_ve"},
		{"prefix and hash", "m{hash}", key, alice, ("m" + aliceHash)[:maxIdentLen]},
		{"nothing left falls back to the hash", "{localpart}", key, "@===:example.org", identHash(key, "@===:example.org")},
		{"leading punctuation falls back to the hash", "{localpart}", key, "@_x:example.org", identHash(key, "@_x:example.org")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := identName(tt.template, tt.key, tt.user); got != tt.want {
				t.Errorf("identName(%q, %s) = %q, want %q", tt.template, tt.user, got, tt.want)
			}
		})
	}
	if identHash(key, "@bob:example.org") == aliceHash {
		t.Error("two users have the same ident hash")
	}
	if identHash(key, "@alice:other.example") == aliceHash {
		t.Error("the same localpart on two homeservers has the same ident hash")
	}
	if identHash(otherKey, alice) == aliceHash {
		t.Error("the ident hash does not depend on the key")
	}
	if strings.Contains(identName("{hash}", key, alice), "alice") {
		t.Error("the default ident names the user")
	}
}

func TestRealName(t *testing.T) {
	tests := []struct {
		template    string
		user        id.UserID
		displayName string
		want        string
	}{
		{"{mxid}", "@alice:example.org", "Alice", "@alice:example.org"},
		{"{displayname} ({mxid})", "@alice:example.org", "Alice L.", "Alice L. (@alice:example.org)"},
		{"{localpart}", "@alice:example.org", "Alice", "alice"},
		{"Matrix user on {server}", "@alice:example.org", "", "Matrix user on example.org"},
		{"Custodian bridge user", "@alice:example.org", "Alice", "Custodian bridge user"},
		{"{displayname}", "@alice:example.org", "", "alice"},
		{"{displayname}", "@alice:example.org", "Evil\r\nQUIT :x\x00\x01", "Evil QUIT :x"},
		{"{displayname}", "@alice:example.org", strings.Repeat("é", 150), strings.Repeat("é", 100)},
	}
	for _, tt := range tests {
		if got := realName(tt.template, tt.user, tt.displayName); got != tt.want {
			t.Errorf("realName(%q, %s, %q) = %q, want %q", tt.template, tt.user, tt.displayName, got, tt.want)
		}
	}
}

func TestNewClientCert(t *testing.T) {
	now := time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC)
	certDER, keyDER, err := newClientCert(now)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := x509.ParsePKCS8PrivateKey(keyDER)
	if err != nil {
		t.Fatal(err)
	}
	ek, ok := key.(*ecdsa.PrivateKey)
	if !ok || ek.Curve != elliptic.P256() || !ek.PublicKey.Equal(cert.PublicKey) {
		t.Fatalf("key = %T, want the certificate's ECDSA P-256 key", key)
	}
	if err := cert.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature); err != nil {
		t.Errorf("the certificate is not self-signed: %v", err)
	}
	if !cert.NotBefore.Before(now) || cert.NotAfter.Before(now.AddDate(10, 0, 0)) {
		t.Errorf("validity %s – %s, want from before now for at least 10 years", cert.NotBefore, cert.NotAfter)
	}
	if cert.Subject.CommonName != certSubject || len(cert.EmailAddresses)+len(cert.URIs)+len(cert.DNSNames) != 0 {
		t.Errorf("subject %q with names %v %v %v, want %q and no names", cert.Subject, cert.EmailAddresses, cert.URIs, cert.DNSNames, certSubject)
	}
	fp256, fp512 := certFingerprints(certDER)
	if len(fp256) != 64 || len(fp512) != 128 || strings.ToLower(fp256) != fp256 {
		t.Errorf("fingerprints %q, %q: want lowercase hex SHA-256 and SHA-512", fp256, fp512)
	}
	other, _, err := newClientCert(now)
	if err != nil {
		t.Fatal(err)
	}
	if o256, _ := certFingerprints(other); o256 == fp256 {
		t.Error("two certificates have the same fingerprint")
	}
}

package irc

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/bridges/irc/ircdb"
	"github.com/custodian-matrix/custodian/bridges/irc/ircline"
)

// maxIdentLen is the longest ident user name the bridge sends: USERLEN on most networks.
const maxIdentLen = 10

// identKeySize is the size of the key of the ident hash, made on first start (irc_key).
const identKeySize = 32

// identHash is the {hash} of an ident template: the first 10 characters of the lowercase
// base32 HMAC-SHA-256 of the Matrix ID under the bridge's ident key. It is stable for a user,
// differs between users, and cannot be turned back into the Matrix ID without the key.
func identHash(key []byte, userID id.UserID) string {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(userID))
	enc := base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(mac.Sum(nil))
	return strings.ToLower(enc[:maxIdentLen])
}

// identName fills an ident template for userID: {hash} (see identHash) and {localpart}. It
// keeps ASCII letters and digits (and - _ . of the template), cuts the result to 10 characters,
// and falls back to the hash when nothing is left.
func identName(template string, key []byte, userID id.UserID) string {
	localpart, _, _ := userID.Parse()
	hash := identHash(key, userID)
	filled := strings.NewReplacer("{hash}", hash, "{localpart}", localpart).Replace(template)
	ident := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
			return r
		}
		return -1
	}, filled)
	if len(ident) > maxIdentLen {
		ident = ident[:maxIdentLen]
	}
	if ident == "" || !isAlnum(ident[0]) {
		return hash
	}
	return ident
}

func isAlnum(b byte) bool {
	return b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9'
}

// maxRealnameLen bounds a puppet's real name, in bytes (servers cut it further).
const maxRealnameLen = 200

// realName fills a real-name template for userID: {mxid}, {localpart}, {server} and
// {displayname}. Control characters are removed; the result is cut to 200 bytes on a UTF-8
// boundary, and an empty one becomes the localpart.
func realName(template string, userID id.UserID, displayName string) string {
	localpart, server, _ := userID.Parse()
	name := strings.NewReplacer("{mxid}", string(userID), "{localpart}", localpart, "{server}", server,
		"{displayname}", displayName).Replace(template)
	name = strings.Join(strings.FieldsFunc(ircline.Clean(name), func(r rune) bool { return r < ' ' || r == 0x7f }), " ")
	name = strings.TrimSpace(name)
	if len(name) > maxRealnameLen {
		name = strings.ToValidUTF8(name[:maxRealnameLen], "")
	}
	if name == "" {
		return localpart
	}
	return name
}

// certValidity is how long a generated client certificate is valid. Services match client
// certificates by fingerprint and most ignore their dates, but a TLS stack may not, so it is
// long: a user need not think of it again.
const certValidity = 20 * 365 * 24 * time.Hour

// certSubject is the subject of every generated client certificate. It does not name the
// user: the certificate is sent in the clear in TLS 1.2 handshakes, and the network needs
// only its fingerprint.
const certSubject = "Custodian IRC client"

// newClientCert makes a self-signed ECDSA P-256 client certificate, valid from an hour before
// now for certValidity. ECDSA P-256 is what every TLS stack IRC servers use accepts (OpenSSL,
// GnuTLS, and so InspIRCd, Solanum, UnrealIRCd, OFTC's hybrid); Ed25519 is not everywhere. It
// returns the DER certificate and the PKCS #8 DER private key.
func newClientCert(now time.Time) (certDER, keyDER []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("failed to generate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, fmt.Errorf("failed to generate serial: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: certSubject},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(certValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	certDER, err = x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("failed to make certificate: %w", err)
	}
	keyDER, err = x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("failed to encode key: %w", err)
	}
	return certDER, keyDER, nil
}

// certFingerprints returns the SHA-256 and SHA-512 fingerprints of a DER certificate, in the
// lowercase hex without separators that NickServ CERT ADD takes.
func certFingerprints(certDER []byte) (sha256Hex, sha512Hex string) {
	s256 := sha256.Sum256(certDER)
	s512 := sha512.Sum512(certDER)
	return hex.EncodeToString(s256[:]), hex.EncodeToString(s512[:])
}

// certSecretName is the vault name of a network's client certificate key.
func certSecretName(network string) string { return "client_cert_key/" + network }

// errNoCertKey is returned by tlsCertificate when the sealed key does not open.
var errNoCertKey = errors.New("irc: client certificate key cannot be opened")

// tlsCertificate opens c's sealed key and returns the certificate for a TLS handshake.
func (br *Bridge) tlsCertificate(ctx context.Context, c *ircdb.Cert) (*tls.Certificate, error) {
	keyDER, err := br.host.Vault().Open(ctx, c.UserID, certSecretName(c.Network), c.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNoCertKey, err)
	}
	key, err := x509.ParsePKCS8PrivateKey([]byte(keyDER.Reveal()))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errNoCertKey, err)
	}
	return &tls.Certificate{Certificate: [][]byte{c.Certificate}, PrivateKey: key}, nil
}

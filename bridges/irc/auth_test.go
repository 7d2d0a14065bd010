package irc

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/custodian-matrix/custodian/bridges/irc/irctest"
)

// TestPuppetIdentity checks what a puppet tells the network about its user: the ident user
// name of ident_template, answered by the built-in ident server so that it shows without "~",
// and the real name of realname_template.
func TestPuppetIdentity(t *testing.T) {
	var br atomic.Pointer[Bridge]
	identAddr := func() string {
		if b := br.Load(); b != nil && b.identServer != nil {
			return b.identServer.Addr().String()
		}
		return ""
	}
	ec := envConfig{
		srvOpts: []irctest.Option{irctest.WithIdentd(identAddr)},
		configure: func(cfg *Config) {
			cfg.Identd = IdentdConfig{Enabled: true, Address: "127.0.0.1:0"}
			cfg.Networks[testNet].RealnameTemplate = "{localpart} via Matrix ({server})"
		},
	}
	forEachDialect(t, ec, func(t *testing.T, env *testEnv) {
		br.Store(env.br)
		env.say(testAlice, "who am I")
		env.waitMembers(testChannel, "alice[m]")
		want := identHash(env.br.identKey, testAlice)
		if got := env.srv.User("alice[m]"); got != want {
			t.Errorf("alice's puppet is %s@…, want %s (answered by ident)", got, want)
		}
		if got, want := env.srv.RealName("alice[m]"), "alice via Matrix (example.org)"; got != want {
			t.Errorf("alice's real name = %q, want %q", got, want)
		}
		env.say(testBob, "and I")
		env.waitMembers(testChannel, "bob[m]")
		if a, b := env.srv.User("alice[m]"), env.srv.User("bob[m]"); a == b {
			t.Errorf("alice and bob have the same ident %q", a)
		}
		// Once the puppet is gone, ident no longer answers for its connection.
		env.br.network(testNet).dropPuppet(env.ctx, testAlice, "bye")
		env.eventually("the ident registry forgets alice's connection", func() bool { return env.br.idents.Len() == 2 })
	})
}

// TestLoginWithoutSASL checks !irc login on networks that take the password as the server
// password or through NickServ, and the bridge's own account on each kind of network.
func TestLoginWithoutSASL(t *testing.T) {
	const password = "correct-horse-battery"
	for _, auth := range []string{AuthSASL, AuthPass, AuthNickServ} {
		t.Run(auth, func(t *testing.T) {
			t.Setenv("CUSTODIAN_TEST_IRC_BOT_PASSWORD", "bot-"+password)
			ec := envConfig{
				srvOpts: []irctest.Option{
					irctest.WithAccount("alice", password), irctest.WithAccount("bridgebot", "bot-"+password),
				},
				configure: func(cfg *Config) {
					nc := cfg.Networks[testNet]
					nc.Auth = auth
					nc.BotAccount = &BotAccountConfig{Account: "bridgebot", PasswordEnv: "CUSTODIAN_TEST_IRC_BOT_PASSWORD"}
				},
			}
			if auth != AuthSASL {
				// A network that takes PASS or IDENTIFY offers no SASL.
				ec.srvOpts = append(ec.srvOpts, irctest.WithCaps("server-time", "message-tags", "account-tag", "multi-prefix"))
			}
			forEachDialect(t, ec, func(t *testing.T, env *testEnv) {
				env.srv.WaitUntil(t, "the bridge's connection is logged in", func() bool {
					return env.srv.Account(testBotNick) == "bridgebot"
				})
				env.say(testAlice, "before logging in")
				env.waitMembers(testChannel, "alice[m]")
				res := env.runCommand(testAlice, "login", testNet, "alice", password)
				if res.err != nil || res.userError != "" || !res.replied {
					t.Fatalf("login = %+v, want success", res)
				}
				env.srv.WaitUntil(t, "alice's puppet is logged in", func() bool { return env.srv.Account("alice[m]") == "alice" })
				env.waitMembers(testChannel, "alice[m]")
				if logs := env.logs.String(); strings.Contains(logs, password) {
					t.Error("the logs hold a password")
				}
				passLines := env.srv.Lines(irctest.Match("", "PASS"))
				identifies := env.srv.Lines(func(l irctest.Line) bool {
					return l.Command() == "PRIVMSG" && strings.EqualFold(l.Param(0), "NickServ")
				})
				switch auth {
				case AuthPass:
					if len(passLines) == 0 || len(identifies) != 0 {
						t.Errorf("%d PASS and %d IDENTIFY lines, want PASS only", len(passLines), len(identifies))
					}
				case AuthNickServ:
					if len(passLines) != 0 || len(identifies) == 0 {
						t.Errorf("%d PASS and %d IDENTIFY lines, want IDENTIFY only", len(passLines), len(identifies))
					}
				default:
					if len(passLines)+len(identifies) != 0 {
						t.Errorf("%d PASS and %d IDENTIFY lines, want SASL only", len(passLines), len(identifies))
					}
				}
			})
		})
	}
}

// testServerTLS returns a certificate for an irctest server on 127.0.0.1, and the path of a
// PEM file that trusts it.
func testServerTLS(t *testing.T) (tls.Certificate, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "irctest"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, path
}

// TestCertLogin checks !irc cert: the certificate it makes, its key sealed under the user's
// key, SASL EXTERNAL once the fingerprint is registered, removal, and shredding by erasure.
func TestCertLogin(t *testing.T) {
	serverCert, caFile := testServerTLS(t)
	ec := envConfig{
		srvOpts: []irctest.Option{
			irctest.WithTLS(serverCert), irctest.WithAccount("alice", "alice-password"),
			irctest.WithCaps("sasl=PLAIN,EXTERNAL", "server-time", "message-tags", "account-tag", "multi-prefix"),
		},
		configure: func(cfg *Config) {
			nc := cfg.Networks[testNet]
			nc.TLS = true
			nc.TLSCAFile = caFile
			nc.SASLMechanisms = []string{"PLAIN", "EXTERNAL"}
		},
	}
	forEachDialect(t, ec, func(t *testing.T, env *testEnv) {
		// The command takes no secret material.
		for _, args := range [][]string{{testNet, "hunter2"}, {testNet, "remove", "x"}, {}} {
			if res := env.runCommand(testAlice, "cert", args...); !strings.Contains(res.userError, "Usage") {
				t.Errorf("cert %q = %+v, want the usage", args, res)
			}
		}
		res := env.runCommand(testAlice, "cert", testNet)
		if res.err != nil || res.userError != "" || !res.replied {
			t.Fatalf("cert = %+v, want success", res)
		}
		cert, err := env.br.db.Cert.Get(env.ctx, testAlice, testNet)
		if err != nil || cert == nil {
			t.Fatalf("stored certificate = %v, %v", cert, err)
		}
		parsed, err := x509.ParseCertificate(cert.Certificate)
		if err != nil {
			t.Fatal(err)
		}
		if fp, fp512 := certFingerprints(cert.Certificate); fp != cert.Fingerprint || fp512 != cert.Fingerprint512 {
			t.Error("the stored fingerprints are not the certificate's")
		}
		keyDER, err := env.host.Vault().Open(env.ctx, testAlice, certSecretName(testNet), cert.PrivateKey)
		if err != nil {
			t.Fatalf("the sealed key does not open: %v", err)
		}
		if bytes.Contains(cert.PrivateKey, []byte(keyDER.Reveal())) {
			t.Error("the stored key is not sealed")
		}
		if key, err := x509.ParsePKCS8PrivateKey([]byte(keyDER.Reveal())); err != nil || !key.(*ecdsa.PrivateKey).PublicKey.Equal(parsed.PublicKey) {
			t.Errorf("the sealed key is not the certificate's: %v", err)
		}
		// Running it again shows the same certificate, it does not make another.
		if res := env.runCommand(testAlice, "cert", testNet); !res.replied {
			t.Fatalf("cert again = %+v", res)
		}
		if again, _ := env.br.db.Cert.Get(env.ctx, testAlice, testNet); again == nil || again.Fingerprint != cert.Fingerprint {
			t.Error("running cert again replaced the certificate")
		}

		// The user registers the fingerprint (NickServ CERT ADD) and runs the command again:
		// the puppet logs in with SASL EXTERNAL, over TLS, without a password.
		env.srv.AddCertFP("alice", cert.Fingerprint)
		if res := env.runCommand(testAlice, "cert", testNet); !res.replied {
			t.Fatalf("cert after CERT ADD = %+v", res)
		}
		env.srv.WaitUntil(t, "alice's puppet is logged in with her certificate", func() bool {
			return env.srv.Account("alice[m]") == "alice"
		})
		if got := env.srv.Lines(irctest.Match("", "AUTHENTICATE", "EXTERNAL")); len(got) == 0 {
			t.Error("the puppet did not authenticate with EXTERNAL")
		}
		if got := env.srv.Lines(irctest.Match("", "AUTHENTICATE", "PLAIN")); len(got) != 0 {
			t.Error("a connection used SASL PLAIN")
		}
		env.say(testAlice, "logged in by certificate")
		env.waitMembers(testChannel, "alice[m]")

		// Removing it reconnects the puppet without it.
		if res := env.runCommand(testAlice, "cert", testNet, "remove"); !res.replied {
			t.Fatalf("cert remove = %+v", res)
		}
		if gone, _ := env.br.db.Cert.Get(env.ctx, testAlice, testNet); gone != nil {
			t.Error("cert remove left the certificate")
		}
		env.srv.WaitUntil(t, "alice's puppet reconnected without the certificate", func() bool {
			return containsFold(env.srv.Nicks(), "alice[m]") && env.srv.Account("alice[m]") == ""
		})

		// A new certificate, then the user is forgotten: the row goes with the users row, and
		// the sealed key, in any copy, no longer opens.
		if res := env.runCommand(testAlice, "cert", testNet); !res.replied {
			t.Fatalf("cert = %+v", res)
		}
		cert, err = env.br.db.Cert.Get(env.ctx, testAlice, testNet)
		if err != nil || cert == nil {
			t.Fatalf("stored certificate = %v, %v", cert, err)
		}
		env.host.EraseUser(t, testAlice)
		if left, _ := env.br.db.Cert.Get(env.ctx, testAlice, testNet); left != nil {
			t.Error("the certificate survived the user's erasure")
		}
		if _, err := env.host.Vault().Open(env.ctx, testAlice, certSecretName(testNet), cert.PrivateKey); err == nil {
			t.Error("a copy of the sealed key still opens after the user's erasure")
		}
	})
}

// TestCertInventory checks that an export lists a user's certificates by network and
// fingerprint, and never their keys.
func TestCertInventory(t *testing.T) {
	for _, ut := range New().PersonalData() {
		if ut.Table != "irc_cert" {
			continue
		}
		for _, col := range []string{"network", "fingerprint"} {
			if !slices.Contains(ut.Export, col) {
				t.Errorf("irc_cert export lacks %s", col)
			}
		}
		if slices.Contains(ut.Export, "private_key") || !slices.Contains(ut.Secret, "private_key") {
			t.Errorf("irc_cert: export %v, secret %v: want private_key secret, not exported", ut.Export, ut.Secret)
		}
		if ut.SourceEventColumn == "" {
			t.Error("irc_cert has no provenance: a redaction of the command could not remove it")
		}
		return
	}
	t.Error("irc_cert is not declared")
}

// TestCertRedaction checks that redacting the !irc cert command deletes the certificate, as the
// provenance of the row promises.
func TestCertRedaction(t *testing.T) {
	serverCert, caFile := testServerTLS(t)
	ec := envConfig{
		srvOpts: []irctest.Option{irctest.WithTLS(serverCert), irctest.WithCaps("sasl=PLAIN,EXTERNAL")},
		configure: func(cfg *Config) {
			nc := cfg.Networks[testNet]
			nc.TLS, nc.TLSCAFile, nc.SASLMechanisms = true, caFile, []string{"EXTERNAL"}
		},
	}
	forEachDialect(t, ec, func(t *testing.T, env *testEnv) {
		if res := env.runCommand(testAlice, "cert", testNet); !res.replied {
			t.Fatalf("cert = %+v", res)
		}
		cert, err := env.br.db.Cert.Get(env.ctx, testAlice, testNet)
		if err != nil || cert == nil {
			t.Fatalf("stored certificate = %v, %v", cert, err)
		}
		purged := env.purgeRedacted(testAlice, cert.RoomID, cert.SourceEventID)
		if purged["irc_cert"] != 1 {
			t.Errorf("the redaction purged %v, want the irc_cert row", purged)
		}
		if left, _ := env.br.db.Cert.Get(env.ctx, testAlice, testNet); left != nil {
			t.Error("the certificate survived the redaction of its command")
		}
	})
}

//go:build e2e

package e2e_test

import (
	"regexp"
	"strings"
	"testing"

	"github.com/ergochat/irc-go/ircmsg"

	"github.com/custodian-matrix/custodian/e2e"
)

// fingerprintRE finds a SHA-256 fingerprint (lowercase hex) in the bot's answer to !irc cert.
var fingerprintRE = regexp.MustCompile(`\b[0-9a-f]{64}\b`)

// hashIdentRE matches the ident of the default ident_template, {hash}.
var hashIdentRE = regexp.MustCompile(`^[a-z2-7]{10}$`)

// TestIRCCertAndIdent runs !irc cert against InspIRCd + Atheme over TLS: the user gets a
// certificate's fingerprint, registers it with NickServ CERT ADD as their account, and their
// puppet then logs in with SASL EXTERNAL (WHOIS shows the account). InspIRCd asks the bridge's
// built-in ident server who each connection is: the puppet shows its templated ident, without
// the "~" of unverified ones, and the bridge's own connection its own.
func TestIRCCertAndIdent(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		ircNet := e2e.StartIRC(t)
		tlsAddr := ircNet.TLSAddr(t)
		env := e2e.New(t, backend, e2e.WithIRCBridge(ircNet), e2e.WithConfig(func(cfg map[string]any) {
			e2e.SetPath(cfg, "bridges.irc.identd", map[string]any{"enabled": true, "address": "127.0.0.1:113"})
			net := "bridges.irc.networks." + e2e.IRCNetworkID
			e2e.SetPath(cfg, net+".address", tlsAddr)
			e2e.SetPath(cfg, net+".tls", true)
			e2e.SetPath(cfg, net+".tls_ca_file", ircNet.TLSCAFile())
			e2e.SetPath(cfg, net+".sasl_mechanisms", []any{"PLAIN", "EXTERNAL"})
			e2e.SetPath(cfg, net+".ident_template", "{hash}")
		}))
		alice := env.Register(t, "alice")
		password := "pw-" + e2e.RandomHex(t, 12)
		ircNet.RegisterAccount(t, "alicecrt", password)

		dm := env.MustCreateDMWithBot(t, alice)
		cmd := env.SendText(t, alice, dm, "!irc cert testnet")
		reply := mustBotReply(t, env, alice, dm, cmd, "CERT ADD")
		fp := fingerprintRE.FindString(reply.Content.AsMessage().Body)
		if fp == "" {
			t.Fatalf("the bot's answer holds no SHA-256 fingerprint: %q", reply.Content.AsMessage().Body)
		}
		if strings.Contains(reply.Content.AsMessage().Body, "PRIVATE KEY") {
			t.Fatal("the bot's answer holds a private key")
		}

		// The account's owner registers the fingerprint, logged in to the account.
		owner := ircNet.Connect(t, "alicecrt", e2e.WithSASL("alicecrt", password))
		owner.Privmsg(t, "NickServ", "CERT ADD "+fp)
		owner.WaitFor(t, ircWait, func(m *ircmsg.Message) bool {
			return m.Command == "NOTICE" && strings.EqualFold(m.Nick(), "NickServ") && len(m.Params) > 1 &&
				strings.Contains(strings.ToLower(m.Params[len(m.Params)-1]), "added")
		})

		again := env.SendText(t, alice, dm, "!irc cert testnet")
		mustBotReply(t, env, alice, dm, again, "uses this client certificate")
		w := owner.WaitWhois(t, ircWait, "alice[m]", func(w e2e.IRCWhois) bool { return w.Account == "alicecrt" })
		if !hashIdentRE.MatchString(w.User) {
			t.Errorf("alice's puppet is %s@%s, want the ident server's {hash} answer (10 base32 characters, no ~)", w.User, w.Host)
		}
		if w.RealName != alice.UserID.String() {
			t.Errorf("alice's puppet's real name = %q, want her Matrix ID (realname_template {mxid})", w.RealName)
		}
		if bot := owner.Whois(t, "custodianbot"); bot.User != "custodian" {
			t.Errorf("the bridge's connection is %s@%s, want custodian answered by ident", bot.User, bot.Host)
		}
		if n := ircRows(t, env, "irc_cert", alice.UserID); n != 1 {
			t.Errorf("irc_cert has %d rows for alice, want 1", n)
		}

		// Removing the certificate reconnects the puppet without it.
		remove := env.SendText(t, alice, dm, "!irc cert testnet remove")
		mustBotReply(t, env, alice, dm, remove, "deleted")
		owner.WaitWhois(t, ircWait, "alice[m]", func(w e2e.IRCWhois) bool { return w.Online && w.Account == "" })
		if n := ircRows(t, env, "irc_cert", alice.UserID); n != 0 {
			t.Errorf("after remove irc_cert has %d rows for alice", n)
		}
	})
}

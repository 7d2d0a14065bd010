package irc

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/format"

	"github.com/custodian-matrix/custodian/appservice"
	"github.com/custodian-matrix/custodian/appservice/vault"
	"github.com/custodian-matrix/custodian/bridges/irc/ircdb"
	"github.com/custodian-matrix/custodian/bridges/irc/ircid"
)

// Commands returns the !irc commands. Every handler is idempotent on the command's event: run
// again after a crash, it stores the same rows and sends replies the homeserver deduplicates.
func (br *Bridge) Commands() []*appservice.Command {
	return []*appservice.Command{
		{
			Name: "login", Args: "<network> <account> <password>", Scope: appservice.ScopeDM, Sensitive: true,
			Help: "Link your account on an IRC network: your connection logs in to it with SASL. " +
				"I delete your message at once and keep the password sealed under your own key.",
			Handler: br.cmdLogin,
		},
		{
			Name: "logout", Args: "<network>", Scope: appservice.ScopeDM,
			Help:    "Unlink your account on a network: I delete the credentials and reconnect you without logging in.",
			Handler: br.cmdLogout,
		},
		{
			Name: "cert", Args: "<network> [renew|remove]", Scope: appservice.ScopeDM,
			Help: "Make a client certificate for a network (or show yours again): register its fingerprint with " +
				"NickServ, and your connection logs in with it (SASL EXTERNAL), without a password. " +
				"`renew` replaces it, `remove` deletes it. I keep its key sealed under your own key.",
			Handler: br.cmdCert,
		},
		{
			Name: "nick", Args: "<network> [nick]", Scope: appservice.ScopeDM,
			Help:    "Choose your nick on a network, or go back to the default one without a nick.",
			Handler: br.cmdNick,
		},
		{
			Name: "link", Args: "<network> <#channel> [key] [op=<nick>]", Scope: appservice.ScopeRoom, RoomConfig: true,
			Sensitive: true,
			Help: "Bridge this room to an IRC channel, with the channel's key if it has one (+k). Unless the network " +
				"links at once, I first ask an operator of the channel on IRC (the one you name with op=) to agree. " +
				"I delete your message at once, since it may carry the key; unlink the room with !irc unlink.",
			Handler: br.cmdLink,
		},
		{
			Name: "key", Args: "[key]", Scope: appservice.ScopeRoom, RoomConfig: true, Sensitive: true,
			Help: "Give me the key (+k) of this room's IRC channel, sealed under your own key, or forget it. " +
				"I delete your message at once.",
			Handler: br.cmdKey,
		},
		{
			Name: "unlink", Scope: appservice.ScopeRoom, RoomConfig: true,
			Help:    "Stop bridging this room to its IRC channel.",
			Handler: br.cmdUnlink,
		},
		{
			Name: "networks", Aliases: []string{"status"},
			Help:    "List the IRC networks, how to join their channels, and your connection to each.",
			Handler: br.cmdNetworks,
		},
	}
}

// networkArg returns the network an argument names, or a UserError listing the valid ones.
func (br *Bridge) networkArg(ce *appservice.CommandEvent, arg string) (*network, error) {
	if n := br.network(strings.ToLower(arg)); n != nil {
		return n, nil
	}
	return nil, appservice.UserErrorf("There is no network %s here. Networks: %s.",
		format.SafeMarkdownCode(arg), strings.Join(br.netIDs, ", "))
}

func (br *Bridge) cmdLogin(ctx context.Context, ce *appservice.CommandEvent) error {
	if len(ce.Args) != 3 {
		return appservice.UserErrorf("Usage: %s (in this direct chat only; I delete the message at once)",
			format.SafeMarkdownCode(ce.Prefix()+"irc login <network> <account> <password>"))
	}
	n, err := br.networkArg(ce, ce.Args[0])
	if err != nil {
		return err
	}
	if !n.cfg.AllowsLogin() {
		return appservice.UserErrorf("%s does not allow linking accounts here.", n.cfg.Name)
	}
	account := ce.Args[1]
	if !ircid.ValidNick(account) {
		return appservice.UserErrorf("That is not a valid account name.")
	}
	password := vault.NewSecret(ce.Args[2])
	// Only SASL says whether the credentials are right before registration ends: with PASS or
	// IDENTIFY, services answer later and in their own words, so those are not checked here.
	if n.cfg.Auth == AuthSASL {
		if err = br.verifyLogin(ctx, n, ce.Sender, account, password); err != nil {
			zerolog.Ctx(ctx).Info().Err(err).Str("network", n.cfg.ID).Msg("Account check failed")
			return &appservice.UserError{
				Message: fmt.Sprintf("I could not log in to %s: %s. I did not keep your credentials.", n.cfg.Name, userFacingDialError(err)),
				Err:     err,
			}
		}
	}
	sealed, err := br.host.Vault().Seal(ctx, ce.Sender, secretName(n.cfg.ID), password)
	if errors.Is(err, appservice.ErrVaultDisabled) {
		return appservice.UserErrorf("This Custodian has no credential vault configured, so it cannot keep passwords. " +
			"Ask its administrator to set `vault.key_file`.")
	} else if err != nil {
		return fmt.Errorf("failed to seal password: %w", err)
	}
	err = br.db.DoTxn(ctx, nil, func(ctx context.Context) error {
		if err := br.host.EnsureUser(ctx, ce.Sender); err != nil {
			return err
		}
		return br.db.Account.Put(ctx, &ircdb.Account{
			UserID: ce.Sender, Network: n.cfg.ID, Account: account, Password: sealed,
			RoomID: ce.RoomID, SourceEventID: ce.Event.ID, CreatedAt: br.clock.Now(),
		})
	})
	if err != nil {
		return fmt.Errorf("failed to store account: %w", err)
	}
	zerolog.Ctx(ctx).Info().Str("network", n.cfg.ID).Msg("Linked IRC account")
	// Connect (or reconnect) the puppet now, logged in, so the user is known by their account.
	p, err := n.puppetFor(ce.Sender, true)
	if err != nil {
		return ce.Reply(ctx, fmt.Sprintf("Your account on %s is linked, but %s; you will be logged in once you can connect.",
			n.cfg.Name, strings.TrimPrefix(err.Error(), "irc: ")))
	}
	p.saslFailed.Store(false)
	if p.sess.current() != nil {
		p.sess.reconnect(ctx, "Logging in")
	}
	if n.cfg.Auth != AuthSASL {
		how := "the server password"
		if n.cfg.Auth == AuthNickServ {
			how = "NickServ IDENTIFY"
		}
		return ce.Reply(ctx, fmt.Sprintf("Linked your account %s on %s: your connection logs in with %s each time it connects "+
			"(%s cannot check the password in advance; %s shows whether you are logged in). I deleted your message with "+
			"the password. %s unlinks the account.", format.SafeMarkdownCode(account), n.cfg.Name, how, n.cfg.Name,
			format.SafeMarkdownCode(ce.Prefix()+"irc networks"), format.SafeMarkdownCode(ce.Prefix()+"irc logout "+n.cfg.ID)))
	}
	return ce.Reply(ctx, fmt.Sprintf("Logged in to %s as %s. I deleted your message with the password. "+
		"%s unlinks the account.", n.cfg.Name, format.SafeMarkdownCode(account),
		format.SafeMarkdownCode(ce.Prefix()+"irc logout "+n.cfg.ID)))
}

func (br *Bridge) cmdLogout(ctx context.Context, ce *appservice.CommandEvent) error {
	if len(ce.Args) != 1 {
		return appservice.UserErrorf("Usage: %s", format.SafeMarkdownCode(ce.Prefix()+"irc logout <network>"))
	}
	n, err := br.networkArg(ce, ce.Args[0])
	if err != nil {
		return err
	}
	had, err := br.db.Account.Delete(ctx, ce.Sender, n.cfg.ID)
	if err != nil {
		return fmt.Errorf("failed to delete account: %w", err)
	}
	if !had {
		return ce.Reply(ctx, fmt.Sprintf("You have no linked account on %s.", n.cfg.Name))
	}
	if p, _ := n.puppetFor(ce.Sender, false); p != nil {
		p.sess.reconnect(ctx, "Logging out")
	}
	zerolog.Ctx(ctx).Info().Str("network", n.cfg.ID).Msg("Unlinked IRC account")
	return ce.Reply(ctx, fmt.Sprintf("Logged out of %s: I deleted your credentials and reconnect you without them.", n.cfg.Name))
}

func (br *Bridge) cmdNick(ctx context.Context, ce *appservice.CommandEvent) error {
	if len(ce.Args) < 1 || len(ce.Args) > 2 {
		return appservice.UserErrorf("Usage: %s", format.SafeMarkdownCode(ce.Prefix()+"irc nick <network> [nick]"))
	}
	n, err := br.networkArg(ce, ce.Args[0])
	if err != nil {
		return err
	}
	if len(ce.Args) == 1 {
		if err = br.db.Nick.Delete(ctx, ce.Sender, n.cfg.ID); err != nil {
			return fmt.Errorf("failed to delete nick: %w", err)
		}
	} else {
		nick := ce.Args[1]
		if !ircid.ValidNick(nick) || len(nick) > 30 || strings.ContainsAny(nick, "#&!@.,*?") {
			return appservice.UserErrorf("%s is not a nick IRC accepts.", format.SafeMarkdownCode(nick))
		}
		if n.puppetFormOfOther(ctx, nick, ce.Sender) {
			return appservice.UserErrorf("%s looks like the nick of another Matrix user's connection (%s), so only they can have it. "+
				"Please choose a nick of another form.", format.SafeMarkdownCode(nick), format.SafeMarkdownCode(n.cfg.NickTemplate))
		}
		if taken, err := n.nickTakenByOther(ctx, nick, ce.Sender); err != nil {
			return err
		} else if taken {
			return appservice.UserErrorf("%s is the nick of another Matrix user's connection to %s. Please choose another nick.",
				format.SafeMarkdownCode(nick), n.cfg.Name)
		}
		err = br.db.DoTxn(ctx, nil, func(ctx context.Context) error {
			if err := br.host.EnsureUser(ctx, ce.Sender); err != nil {
				return err
			}
			return br.db.Nick.Put(ctx, &ircdb.Nick{
				UserID: ce.Sender, Network: n.cfg.ID, Nick: nick, RoomID: ce.RoomID, SourceEventID: ce.Event.ID, UpdatedAt: br.clock.Now(),
			})
		})
		if err != nil {
			return fmt.Errorf("failed to store nick: %w", err)
		}
	}
	nick, nickEvent, err := br.puppetNick(ctx, n, ce.Sender)
	if err != nil {
		return err
	}
	if p, _ := n.puppetFor(ce.Sender, false); p != nil {
		p.nickEvent.Store(&nickEvent)
		if c := p.sess.current(); c != nil && c.Nick() != nick {
			// The next connection asks for it anyway; this one changes now.
			if err = c.Send(ctx, nil, "NICK", nick); err != nil {
				zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to send NICK")
			}
		}
	}
	return ce.Reply(ctx, fmt.Sprintf("Your nick on %s is now %s (if it is taken, the network gives you a variant).",
		n.cfg.Name, format.SafeMarkdownCode(nick)))
}

func (br *Bridge) cmdLink(ctx context.Context, ce *appservice.CommandEvent) error {
	usage := appservice.UserErrorf("Usage: %s (I delete the message at once, since it may carry the key)",
		format.SafeMarkdownCode(ce.Prefix()+"irc link <network> <#channel> [key] [op=<nick>]"))
	if len(ce.Args) < 2 || len(ce.Args) > 4 {
		return usage
	}
	n, err := br.networkArg(ce, ce.Args[0])
	if err != nil {
		return err
	}
	channel := ce.Args[1]
	if !ircid.ValidChannel(channel) {
		return appservice.UserErrorf("%s is not a channel name.", format.SafeMarkdownCode(channel))
	}
	var key vault.Secret
	var opNick string
	for _, arg := range ce.Args[2:] {
		if nick, ok := strings.CutPrefix(arg, "op="); ok && opNick == "" && ircid.ValidNick(nick) {
			opNick = nick
		} else if key.IsZero() && validChannelKey(arg) {
			key = vault.NewSecret(arg)
		} else {
			return usage
		}
	}
	if !n.channelAllowed(channel) {
		return appservice.UserErrorf("%s may not be bridged on %s: this Custodian's administrator does not allow it.", channel, n.cfg.Name)
	}
	if existing, err := br.targetFor(ctx, ce.RoomID); err != nil {
		return err
	} else if existing != nil {
		if existing.portal != nil && existing.portal.SourceEventID == ce.Event.ID {
			return ce.Reply(ctx, fmt.Sprintf("This room is bridged to %s on %s.", existing.name, n.cfg.Name))
		}
		return appservice.UserErrorf("This room is already bridged to IRC; %s first.", format.SafeMarkdownCode(ce.Prefix()+"irc unlink"))
	}
	if p := n.portal(ctx, n.fold(channel)); p != nil {
		alias, _ := ircid.AliasLocalpart(n.cfg.ID, n.casemapping(), channel)
		return appservice.UserErrorf("%s on %s is already bridged to another room (%s).", channel, n.cfg.Name,
			format.SafeMarkdownCode("#"+alias+":"+br.host.Domain()))
	}
	if n.cfg.ConsentRequired() {
		return br.askConsent(ctx, ce, n, channel, opNick, key)
	}
	prov := appservice.Provenance{Actor: ce.Sender, RoomID: ce.RoomID, EventID: ce.Event.ID, At: br.clock.Now()}
	outcome, err := br.linkRoom(ctx, n, ce.RoomID, channel, key, prov)
	if err != nil {
		return err
	}
	return ce.Reply(ctx, fmt.Sprintf("On %s, %s %s undoes it.", n.cfg.Name, outcome,
		format.SafeMarkdownCode(ce.Prefix()+"irc unlink")))
}

func (br *Bridge) cmdUnlink(ctx context.Context, ce *appservice.CommandEvent) error {
	p, err := br.db.Portal.GetByRoom(ctx, ce.RoomID)
	if err != nil {
		return fmt.Errorf("failed to get portal: %w", err)
	}
	if p == nil {
		return ce.Reply(ctx, "This room is not bridged to IRC.")
	}
	if err = br.unlinkPortal(ctx, p, "The room was unlinked"); err != nil {
		return err
	}
	zerolog.Ctx(ctx).Info().Str("network", p.Network).Msg("Unlinked room from IRC channel")
	return ce.Reply(ctx, fmt.Sprintf("This room is no longer bridged to %s.", p.ChannelName))
}

func (br *Bridge) cmdNetworks(ctx context.Context, ce *appservice.CommandEvent) error {
	var sb strings.Builder
	sb.WriteString("IRC networks:\n\n")
	for _, netID := range br.netIDs {
		n := br.networks[netID]
		fmt.Fprintf(&sb, "* **%s** (`%s`): join a channel through `#irc_%s_<channel>:%s`", n.cfg.Name, netID, netID, br.host.Domain())
		state := "not connected"
		if p, _ := n.puppetFor(ce.Sender, false); p != nil {
			if c := p.sess.current(); c != nil {
				state = "connected as " + format.SafeMarkdownCode(c.Nick())
				if acct := c.Account(); acct != "" {
					state += ", logged in as " + format.SafeMarkdownCode(acct)
				}
			} else {
				state = "connecting"
			}
		}
		acct, err := br.db.Account.Get(ctx, ce.Sender, netID)
		if err != nil {
			return fmt.Errorf("failed to get account: %w", err)
		}
		if acct != nil {
			state += "; linked account " + format.SafeMarkdownCode(acct.Account)
		}
		cert, err := br.db.Cert.Get(ctx, ce.Sender, netID)
		if err != nil {
			return fmt.Errorf("failed to get client certificate: %w", err)
		}
		if cert != nil {
			state += "; client certificate " + format.SafeMarkdownCode(cert.Fingerprint)
		}
		fmt.Fprintf(&sb, "; you: %s\n", state)
	}
	return ce.Reply(ctx, sb.String())
}

func (br *Bridge) cmdCert(ctx context.Context, ce *appservice.CommandEvent) error {
	usage := appservice.UserErrorf("Usage: %s", format.SafeMarkdownCode(ce.Prefix()+"irc cert <network> [renew|remove]"))
	// The command takes no secret: anything but the words it knows is refused unseen.
	if len(ce.Args) < 1 || len(ce.Args) > 2 {
		return usage
	}
	action := ""
	if len(ce.Args) == 2 {
		action = strings.ToLower(ce.Args[1])
		if action != "renew" && action != "remove" {
			return usage
		}
	}
	n, err := br.networkArg(ce, ce.Args[0])
	if err != nil {
		return err
	}
	if action == "remove" {
		had, err := br.db.Cert.Delete(ctx, ce.Sender, n.cfg.ID)
		if err != nil {
			return fmt.Errorf("failed to delete client certificate: %w", err)
		}
		if !had {
			return ce.Reply(ctx, fmt.Sprintf("You have no client certificate for %s.", n.cfg.Name))
		}
		if p, _ := n.puppetFor(ce.Sender, false); p != nil {
			if ev := p.certEvent.Load(); ev != nil && *ev != "" {
				p.sess.reconnect(ctx, "Reconnecting")
			}
		}
		zerolog.Ctx(ctx).Info().Str("network", n.cfg.ID).Msg("Removed IRC client certificate")
		return ce.Reply(ctx, fmt.Sprintf("I deleted your client certificate for %s. Remove its fingerprint from your account "+
			"too (%s).", n.cfg.Name, format.SafeMarkdownCode("/msg NickServ CERT DEL <fingerprint>")))
	}
	if !n.cfg.AllowsCert() {
		return appservice.UserErrorf("%s does not allow logging in with a client certificate here.", n.cfg.Name)
	}
	cert, err := br.db.Cert.Get(ctx, ce.Sender, n.cfg.ID)
	if err != nil {
		return fmt.Errorf("failed to get client certificate: %w", err)
	}
	made := false
	if cert == nil || action == "renew" && cert.SourceEventID != ce.Event.ID {
		if cert, err = br.makeCert(ctx, ce, n); err != nil {
			return err
		}
		made = true
	}
	// Use it from the next connection on, also after the network refused it before. A new
	// certificate is not registered yet, so only a known one reconnects the puppet at once.
	p, _ := n.puppetFor(ce.Sender, !made)
	if p != nil {
		p.certFailed.Store(false)
		if ev := p.certEvent.Load(); !made && p.sess.current() != nil && (ev == nil || *ev == "") {
			p.sess.reconnect(ctx, "Logging in")
		}
	}
	var sb strings.Builder
	if made {
		fmt.Fprintf(&sb, "I made a client certificate for your connection to %s. ", n.cfg.Name)
	} else {
		fmt.Fprintf(&sb, "Your connection to %s uses this client certificate. ", n.cfg.Name)
	}
	fmt.Fprintf(&sb, "Its fingerprint is:\n\n* SHA-256: %s\n* SHA-512: %s\n\n", format.SafeMarkdownCode(cert.Fingerprint),
		format.SafeMarkdownCode(cert.Fingerprint512))
	fmt.Fprintf(&sb, "Log in to your account on %s and register the fingerprint with %s "+
		"(most networks use SHA-256; some take SHA-512). Then run %s again: from then on, your connection logs in with the "+
		"certificate, without a password. %s deletes it.", n.cfg.Name,
		format.SafeMarkdownCode("/msg NickServ CERT ADD "+cert.Fingerprint),
		format.SafeMarkdownCode(ce.Prefix()+"irc cert "+n.cfg.ID), format.SafeMarkdownCode(ce.Prefix()+"irc cert "+n.cfg.ID+" remove"))
	return ce.Reply(ctx, sb.String())
}

// makeCert makes a client certificate for the sender on n and stores it, its key sealed under
// the sender's key.
func (br *Bridge) makeCert(ctx context.Context, ce *appservice.CommandEvent, n *network) (*ircdb.Cert, error) {
	certDER, keyDER, err := newClientCert(br.clock.Now())
	if err != nil {
		return nil, err
	}
	if err = br.host.EnsureUser(ctx, ce.Sender); err != nil {
		return nil, err
	}
	key := vault.NewSecret(string(keyDER))
	clear(keyDER)
	sealed, err := br.host.Vault().Seal(ctx, ce.Sender, certSecretName(n.cfg.ID), key)
	if errors.Is(err, appservice.ErrVaultDisabled) {
		return nil, appservice.UserErrorf("This Custodian has no credential vault configured, so it cannot keep certificate keys. " +
			"Ask its administrator to set `vault.key_file`.")
	} else if err != nil {
		return nil, fmt.Errorf("failed to seal certificate key: %w", err)
	}
	fp256, fp512 := certFingerprints(certDER)
	cert := &ircdb.Cert{
		UserID: ce.Sender, Network: n.cfg.ID, Fingerprint: fp256, Fingerprint512: fp512, Certificate: certDER,
		PrivateKey: sealed, RoomID: ce.RoomID, SourceEventID: ce.Event.ID, CreatedAt: br.clock.Now(),
	}
	err = br.db.DoTxn(ctx, nil, func(ctx context.Context) error {
		if err := br.host.EnsureUser(ctx, ce.Sender); err != nil {
			return err
		}
		return br.db.Cert.Put(ctx, cert)
	})
	if err != nil {
		return nil, fmt.Errorf("failed to store client certificate: %w", err)
	}
	zerolog.Ctx(ctx).Info().Str("network", n.cfg.ID).Msg("Made IRC client certificate")
	return cert, nil
}

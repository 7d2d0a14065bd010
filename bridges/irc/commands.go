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
			Name: "nick", Args: "<network> [nick]", Scope: appservice.ScopeDM,
			Help:    "Choose your nick on a network, or go back to the default one without a nick.",
			Handler: br.cmdNick,
		},
		{
			Name: "link", Args: "<network> <#channel>", Scope: appservice.ScopeRoom, RoomConfig: true,
			Help:    "Bridge this room to an IRC channel. Redacting this command unlinks the room again.",
			Handler: br.cmdLink,
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
	if err = br.verifyLogin(ctx, n, ce.Sender, account, password); err != nil {
		zerolog.Ctx(ctx).Info().Err(err).Str("network", n.cfg.ID).Msg("Account check failed")
		return &appservice.UserError{
			Message: fmt.Sprintf("I could not log in to %s: %s. I did not keep your credentials.", n.cfg.Name, userFacingDialError(err)),
			Err:     err,
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
	if len(ce.Args) != 2 {
		return appservice.UserErrorf("Usage: %s", format.SafeMarkdownCode(ce.Prefix()+"irc link <network> <#channel>"))
	}
	n, err := br.networkArg(ce, ce.Args[0])
	if err != nil {
		return err
	}
	channel := ce.Args[1]
	if !ircid.ValidChannel(channel) {
		return appservice.UserErrorf("%s is not a channel name.", format.SafeMarkdownCode(channel))
	}
	if existing, err := br.targetFor(ctx, ce.RoomID); err != nil {
		return err
	} else if existing != nil {
		if existing.portal != nil && existing.portal.SourceEventID == ce.Event.ID {
			return ce.Reply(ctx, fmt.Sprintf("This room is bridged to %s on %s.", existing.name, n.cfg.Name))
		}
		return appservice.UserErrorf("This room is already bridged to IRC; %s first.", format.SafeMarkdownCode(ce.Prefix()+"irc unlink"))
	}
	folded := n.fold(channel)
	_, err = br.recordPortal(ctx, n, &ircdb.Portal{
		Network: n.cfg.ID, Channel: folded, ChannelName: channel, RoomID: ce.RoomID, CreatedAt: br.clock.Now(),
	}, appservice.Provenance{Actor: ce.Sender, RoomID: ce.RoomID, EventID: ce.Event.ID, At: br.clock.Now()})
	if errors.Is(err, errPortalExists) {
		alias, _ := ircid.AliasLocalpart(n.cfg.ID, n.casemapping(), channel)
		return appservice.UserErrorf("%s on %s is already bridged to another room (%s).", channel, n.cfg.Name,
			format.SafeMarkdownCode("#"+alias+":"+br.host.Domain()))
	} else if err != nil {
		return err
	}
	zerolog.Ctx(ctx).Info().Str("network", n.cfg.ID).Msg("Linked room to IRC channel")
	return ce.Reply(ctx, fmt.Sprintf("This room is now bridged to **%s** on %s. Redact this command or use %s to undo it.",
		channel, n.cfg.Name, format.SafeMarkdownCode(ce.Prefix()+"irc unlink")))
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
		fmt.Fprintf(&sb, "; you: %s\n", state)
	}
	return ce.Reply(ctx, sb.String())
}

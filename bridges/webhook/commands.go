package webhook

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/format"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice"
	"github.com/custodian-matrix/custodian/appservice/vault"
	"github.com/custodian-matrix/custodian/bridges/webhook/webhookdb"
	"github.com/custodian-matrix/custodian/bridges/webhook/webhookid"
)

// cmdCall is one invocation of a !webhook command. It carries what the handlers need from
// [appservice.CommandEvent], so that they can be tested without the core's bot.
type cmdCall struct {
	evt    *event.Event
	roomID id.RoomID
	sender id.UserID
	args   []string
	// prefix is what the sender types before commands here ("!").
	prefix string
	reply  func(ctx context.Context, markdown string) error
}

// Commands returns the !webhook commands. Every handler is idempotent on the command's event:
// run again after a crash, it neither creates a second hook nor sends a second message.
func (br *Bridge) Commands() []*appservice.Command {
	wrap := func(fn func(context.Context, *cmdCall) error) func(context.Context, *appservice.CommandEvent) error {
		return func(ctx context.Context, ce *appservice.CommandEvent) error {
			return fn(ctx, &cmdCall{
				evt: ce.Event, roomID: ce.RoomID, sender: ce.Sender, args: ce.Args, prefix: ce.Prefix(), reply: ce.Reply,
			})
		}
	}
	return []*appservice.Command{
		{
			Name: "add", Args: "<name>", Scope: appservice.ScopeRoom, RoomConfig: true,
			Help:    "Create an incoming webhook: a secret URL whose POSTs appear in this room. I send you the URL in a direct chat.",
			Handler: wrap(br.cmdAdd),
		},
		{
			Name: "out", Args: "<url> [name]", Scope: appservice.ScopeRoom, RoomConfig: true, Sensitive: true,
			Help:    "Send this room's messages, signed, to a URL (an outgoing webhook). I send you the signing secret in a direct chat.",
			Handler: wrap(br.cmdOut),
		},
		{
			Name: "list", Scope: appservice.ScopeRoom,
			Help:    "List this room's webhooks with their status; never their URLs.",
			Handler: wrap(br.cmdList),
		},
		{
			Name: "remove", Aliases: []string{"delete"}, Args: "<name>", Scope: appservice.ScopeRoom, RoomConfig: true,
			Help:    "Delete a webhook. Redacting the command that created it does the same.",
			Handler: wrap(br.cmdRemove),
		},
		{
			Name: "rotate", Args: "<name>", Scope: appservice.ScopeRoom, RoomConfig: true,
			Help:    "Replace a webhook's secret (the URL of an incoming one, the signing secret of an outgoing one) and send you the new one.",
			Handler: wrap(br.cmdRotate),
		},
		{
			Name: "resume", Args: "<name>", Scope: appservice.ScopeRoom, RoomConfig: true,
			Help:    "Resume your outgoing webhook, suspended when you left, were banned or lost the power level.",
			Handler: wrap(br.cmdResume),
		},
	}
}

// noVaultMessage is shown when !webhook out cannot seal the URL.
const noVaultMessage = "This Custodian has no credential vault configured, so it cannot keep outgoing webhook URLs, " +
	"which carry secrets. Ask its administrator to set `vault.key_file`."

func (br *Bridge) cmdAdd(ctx context.Context, c *cmdCall) error {
	if len(c.args) != 1 {
		return appservice.UserErrorf("Usage: %s", format.SafeMarkdownCode(c.prefix+"webhook add <name>"))
	}
	name, err := br.freeName(ctx, c, c.args[0])
	if err != nil {
		return err
	}
	now := br.clock.Now()
	hook, err := br.replayedHook(ctx, c)
	if err != nil {
		return err
	}
	var token string
	if hook == nil {
		token = webhookid.NewToken()
		hook = &webhookdb.Hook{
			ID: webhookid.NewHookID(), RoomID: c.roomID, Name: name, Kind: webhookdb.KindInbound,
			Actor: c.sender, SourceEventID: c.evt.ID, CreatedAt: now, UpdatedAt: now,
			TokenHash: webhookid.HashToken(token),
		}
		if err = br.insertHook(ctx, hook); err != nil {
			return err
		}
	}
	if err = br.claimRoom(ctx, c, now); err != nil {
		return err
	}
	if err = br.deliverSecret(ctx, c, hook, token); err != nil {
		// A hook whose URL nobody has is of no use; take it back.
		if removeErr := br.removeHook(ctx, hook, "The webhook could not be delivered"); removeErr != nil {
			zerolog.Ctx(ctx).Err(removeErr).Msg("Failed to remove undeliverable webhook")
		}
		return &appservice.UserError{
			Message: "I could not send you a direct message, so I did not create the webhook. " +
				"Make sure you accept invites from me, then try again.",
			Err: err,
		}
	}
	zerolog.Ctx(ctx).Info().Object("hook", hook).Msg("Created incoming webhook")
	return c.reply(ctx, fmt.Sprintf("Created the incoming webhook **%s**. I sent you its URL in a direct chat: "+
		"anyone who has it can post here, so keep it secret.", hook.Name))
}

func (br *Bridge) cmdOut(ctx context.Context, c *cmdCall) error {
	if len(c.args) < 1 || len(c.args) > 2 {
		return appservice.UserErrorf("Usage: %s", format.SafeMarkdownCode(c.prefix+"webhook out <url> [name]"))
	}
	rawURL, nameArg := c.args[0], ""
	if len(c.args) == 2 {
		nameArg = c.args[1]
		if !strings.Contains(rawURL, "://") && strings.Contains(nameArg, "://") {
			rawURL, nameArg = nameArg, rawURL
		}
	}
	if _, problem := parseTargetURL(rawURL, br.cfg.AllowPrivateTargets); problem != "" {
		return &appservice.UserError{Message: problem + " I deleted your message, as URLs often carry secrets."}
	}
	now := br.clock.Now()
	hook, err := br.replayedHook(ctx, c)
	if err != nil {
		return err
	}
	if hook == nil {
		hookID := webhookid.NewHookID()
		name := "out-" + hookID[:6]
		if nameArg != "" {
			if name, err = br.freeName(ctx, c, nameArg); err != nil {
				return err
			}
		}
		hook = &webhookdb.Hook{
			ID: hookID, RoomID: c.roomID, Name: name, Kind: webhookdb.KindOutbound,
			Actor: c.sender, SourceEventID: c.evt.ID, CreatedAt: now, UpdatedAt: now,
		}
		if err = br.host.EnsureUser(ctx, c.sender); err != nil {
			return fmt.Errorf("failed to ensure user: %w", err)
		}
		hook.OutboundURL, hook.SigningSecret, err = br.sealOutbound(ctx, c.sender, hookID, vault.NewSecret(rawURL))
		if err != nil {
			return err
		}
		if err = br.insertHook(ctx, hook); err != nil {
			return err
		}
	}
	if err = br.claimRoom(ctx, c, now); err != nil {
		return err
	}
	if err = br.deliverSecret(ctx, c, hook, ""); err != nil {
		if removeErr := br.removeHook(ctx, hook, "The webhook could not be delivered"); removeErr != nil {
			zerolog.Ctx(ctx).Err(removeErr).Msg("Failed to remove undeliverable webhook")
		}
		return &appservice.UserError{
			Message: "I could not send you the signing secret in a direct message, so I did not create the webhook. " +
				"Make sure you accept invites from me, then try again.",
			Err: err,
		}
	}
	zerolog.Ctx(ctx).Info().Object("hook", hook).Msg("Created outgoing webhook")
	return c.reply(ctx, fmt.Sprintf("Created the outgoing webhook **%s**: this room's messages will be sent to its URL, signed. "+
		"I deleted your message, as the URL is a secret, and sent you the signing secret in a direct chat.", hook.Name))
}

func (br *Bridge) cmdList(ctx context.Context, c *cmdCall) error {
	hooks, err := br.db.Hook.GetActiveInRoom(ctx, c.roomID)
	if err != nil {
		return fmt.Errorf("failed to list hooks: %w", err)
	}
	if len(hooks) == 0 {
		return c.reply(ctx, fmt.Sprintf("This room has no webhooks. Create one with %s (incoming) or %s (outgoing).",
			format.SafeMarkdownCode(c.prefix+"webhook add <name>"), format.SafeMarkdownCode(c.prefix+"webhook out <url> [name]")))
	}
	var sb strings.Builder
	sb.WriteString("Webhooks in this room:\n\n")
	for _, hook := range hooks {
		fmt.Fprintf(&sb, "* **%s**: %s, set up by %s on %s; %s", hook.Name, hook.Kind, format.SafeMarkdownCode(hook.Actor),
			formatTime(hook.UpdatedAt), hookStatus(hook))
		if hook.Kind == webhookdb.KindOutbound {
			if !hook.SuspendedAt.IsZero() {
				fmt.Fprintf(&sb, " (its owner can resume it with %s)", format.SafeMarkdownCode(c.prefix+"webhook resume "+hook.Name))
			}
			if !hook.LastSuccessAt.IsZero() {
				fmt.Fprintf(&sb, "; last delivered %s", formatTime(hook.LastSuccessAt))
			}
			if hook.LastError != "" && !hook.LastFailureAt.IsZero() {
				fmt.Fprintf(&sb, "; last error %s: %s", formatTime(hook.LastFailureAt), format.EscapeMarkdown(hook.LastError))
			}
			if hook.DroppedCount > 0 {
				fmt.Fprintf(&sb, "; %d messages dropped", hook.DroppedCount)
			}
		}
		sb.WriteString("\n")
	}
	return c.reply(ctx, sb.String())
}

func (br *Bridge) cmdRemove(ctx context.Context, c *cmdCall) error {
	hook, err := br.hookByNameArg(ctx, c, "remove")
	if err != nil {
		return err
	}
	if err = br.removeHook(ctx, hook, "The webhook was removed"); err != nil {
		return err
	}
	zerolog.Ctx(ctx).Info().Object("hook", hook).Msg("Removed webhook on request")
	msg := fmt.Sprintf("Removed the webhook **%s**.", hook.Name)
	if hook.Kind == webhookdb.KindInbound {
		msg += " Its URL no longer works."
	}
	return c.reply(ctx, msg)
}

func (br *Bridge) cmdRotate(ctx context.Context, c *cmdCall) error {
	hook, err := br.hookByNameArg(ctx, c, "rotate")
	if err != nil {
		return err
	}
	replay := hook.SourceEventID == c.evt.ID
	if !replay && !hook.SuspendedAt.IsZero() {
		// Rotating would make the sender its owner, who could resume deliveries to a URL the
		// owner who lost the right to it chose.
		return appservice.UserErrorf("The webhook **%s** is suspended: %s. Only its owner can resume it; "+
			"to replace it, delete it with %s and set up a new one.", hook.Name, hook.SuspendedReason,
			format.SafeMarkdownCode(c.prefix+"webhook remove "+hook.Name))
	}
	if replay && hook.SecretSent {
		return br.replyRotated(ctx, c, hook)
	}
	now := br.clock.Now()
	var token string
	if !replay {
		if err = br.host.EnsureUser(ctx, c.sender); err != nil {
			return fmt.Errorf("failed to ensure user: %w", err)
		}
		switch hook.Kind {
		case webhookdb.KindInbound:
			token = webhookid.NewToken()
			if err = br.db.Hook.SetToken(ctx, hook.ID, webhookid.HashToken(token), c.sender, c.evt.ID, now); err != nil {
				return fmt.Errorf("failed to store new token: %w", err)
			}
		case webhookdb.KindOutbound:
			// The URL was sealed for the previous actor; the rotating user becomes the hook's
			// actor, so it is sealed again for them.
			target, err := br.host.Vault().Open(ctx, hook.Actor, webhookid.SecretNameOutboundURL(hook.ID), hook.OutboundURL)
			if err != nil {
				if errors.Is(err, appservice.ErrVaultDisabled) {
					return &appservice.UserError{Message: noVaultMessage}
				} else if errors.Is(err, vault.ErrKeyUnavailable) {
					return &appservice.UserError{
						Message: "Custodian cannot open this webhook's stored URL right now: its vault's master key is unavailable. Ask its administrator.",
						Err:     err,
					}
				}
				return &appservice.UserError{
					Message: "I cannot open this webhook's stored URL any more, so I cannot rotate it. Remove it and set it up again.",
					Err:     err,
				}
			}
			sealedURL, sealedSecret, err := br.sealOutbound(ctx, c.sender, hook.ID, target)
			if err != nil {
				return err
			}
			err = br.db.Hook.SetOutboundSecrets(ctx, hook.ID, sealedURL, sealedSecret, c.sender, c.evt.ID, now)
			if err != nil {
				return fmt.Errorf("failed to store new signing secret: %w", err)
			}
			hook.OutboundURL, hook.SigningSecret = sealedURL, sealedSecret
		}
		hook.Actor, hook.SourceEventID, hook.UpdatedAt, hook.SecretSent = c.sender, c.evt.ID, now, false
		br.profiles.Delete(hook.ID)
	}
	if err = br.deliverSecret(ctx, c, hook, token); err != nil {
		return &appservice.UserError{
			Message: "I replaced the webhook's secret but could not send you the new one in a direct message. " +
				"Make sure you accept invites from me, then rotate it again.",
			Err: err,
		}
	}
	zerolog.Ctx(ctx).Info().Object("hook", hook).Msg("Rotated webhook secret")
	return br.replyRotated(ctx, c, hook)
}

func (br *Bridge) replyRotated(ctx context.Context, c *cmdCall, hook *webhookdb.Hook) error {
	if hook.Kind == webhookdb.KindInbound {
		return c.reply(ctx, fmt.Sprintf("Rotated the webhook **%s**: its old URL no longer works, and I sent you the new one in a direct chat.", hook.Name))
	}
	return c.reply(ctx, fmt.Sprintf("Rotated the webhook **%s**: deliveries are now signed with a new secret, which I sent you in a direct chat.", hook.Name))
}

// freeName validates a hook name argument and makes sure the room has no hook by that name. A
// hook of a user being erased is removed to free its name.
func (br *Bridge) freeName(ctx context.Context, c *cmdCall, arg string) (string, error) {
	name, ok := webhookid.NormalizeName(arg)
	if !ok {
		return "", appservice.UserErrorf("Webhook names are 1 to %d letters, digits, `-`, `_` and `.`, starting with a letter or digit.",
			webhookid.MaxNameLength)
	}
	existing, err := br.db.Hook.GetByName(ctx, c.roomID, name)
	switch {
	case err != nil:
		return "", fmt.Errorf("failed to look up hook name: %w", err)
	case existing == nil, existing.SourceEventID == c.evt.ID:
		return name, nil
	case !existing.RevokedAt.IsZero():
		return name, br.removeHook(ctx, existing, "The webhook was revoked")
	default:
		return "", appservice.UserErrorf("This room already has a webhook named **%s**.", name)
	}
}

// replayedHook returns the hook this very command created in an earlier run that crashed before
// finishing, or nil.
func (br *Bridge) replayedHook(ctx context.Context, c *cmdCall) (*webhookdb.Hook, error) {
	hooks, err := br.db.Hook.GetBySourceEvent(ctx, c.roomID, c.evt.ID)
	if err != nil {
		return nil, fmt.Errorf("failed to look up hooks of this command: %w", err)
	}
	for _, hook := range hooks {
		if hook.RevokedAt.IsZero() {
			return hook, nil
		}
	}
	return nil, nil
}

// hookByNameArg returns the room's hook named by the command's only argument.
func (br *Bridge) hookByNameArg(ctx context.Context, c *cmdCall, command string) (*webhookdb.Hook, error) {
	if len(c.args) != 1 {
		return nil, appservice.UserErrorf("Usage: %s", format.SafeMarkdownCode(c.prefix+"webhook "+command+" <name>"))
	}
	name, _ := webhookid.NormalizeName(c.args[0])
	hook, err := br.db.Hook.GetByName(ctx, c.roomID, name)
	if err != nil {
		return nil, fmt.Errorf("failed to look up hook: %w", err)
	} else if hook == nil || !hook.RevokedAt.IsZero() {
		return nil, appservice.UserErrorf("This room has no webhook named %s. Send %s to see its webhooks.",
			format.SafeMarkdownCode(c.args[0]), format.SafeMarkdownCode(c.prefix+"webhook list"))
	}
	return hook, nil
}

// insertHook inserts a new hook, with its actor's users row, in one transaction.
func (br *Bridge) insertHook(ctx context.Context, hook *webhookdb.Hook) error {
	err := br.db.DoTxn(ctx, nil, func(ctx context.Context) error {
		if err := br.host.EnsureUser(ctx, hook.Actor); err != nil {
			return err
		}
		return br.db.Hook.Insert(ctx, hook)
	})
	if err != nil {
		return fmt.Errorf("failed to store hook: %w", err)
	}
	return nil
}

// claimRoom makes sure the room's events reach the bridge, with the command as provenance.
func (br *Bridge) claimRoom(ctx context.Context, c *cmdCall, at time.Time) error {
	err := br.host.ClaimRoom(ctx, c.roomID, appservice.Provenance{Actor: c.sender, RoomID: c.roomID, EventID: c.evt.ID, At: at})
	if err != nil {
		return fmt.Errorf("failed to claim room: %w", err)
	}
	return nil
}

// sealOutbound seals an outbound hook's URL and a fresh signing secret for user.
func (br *Bridge) sealOutbound(ctx context.Context, user id.UserID, hookID string, target vault.Secret) (sealedURL, sealedSecret []byte, err error) {
	store := br.host.Vault()
	sealedURL, err = store.Seal(ctx, user, webhookid.SecretNameOutboundURL(hookID), target)
	if err == nil {
		sealedSecret, err = store.Seal(ctx, user, webhookid.SecretNameSigningSecret(hookID), vault.NewSecret(webhookid.NewSigningSecret()))
	}
	switch {
	case errors.Is(err, appservice.ErrVaultDisabled):
		return nil, nil, &appservice.UserError{Message: noVaultMessage}
	case errors.Is(err, vault.ErrNoKey):
		return nil, nil, &appservice.UserError{
			Message: "Custodian cannot store credentials right now: its vault's master key is unavailable. Ask its administrator.",
			Err:     err,
		}
	case err != nil:
		return nil, nil, fmt.Errorf("failed to seal outbound webhook secrets: %w", err)
	}
	return sealedURL, sealedSecret, nil
}

// deliverSecret sends the hook's secret to the command's sender in their direct chat, unless it
// was sent already, and records that it was. For an inbound hook, token is the token just
// created; if it is empty (a command replayed after a crash, when only the hash survived), a new
// token replaces the old one. An outbound hook's signing secret is opened from the vault.
func (br *Bridge) deliverSecret(ctx context.Context, c *cmdCall, hook *webhookdb.Hook, token string) error {
	if hook.SecretSent {
		return nil
	}
	var markdown, purpose string
	switch hook.Kind {
	case webhookdb.KindInbound:
		if token == "" {
			token = webhookid.NewToken()
			hook.TokenHash = webhookid.HashToken(token)
			if err := br.db.Hook.SetToken(ctx, hook.ID, hook.TokenHash, c.sender, c.evt.ID, br.clock.Now()); err != nil {
				return fmt.Errorf("failed to store new token: %w", err)
			}
		}
		markdown = br.inboundURLMessage(hook, token, c.prefix)
		// A new token is a new message; the same token is the same message.
		purpose = "url-" + hook.TokenHash[:16]
	case webhookdb.KindOutbound:
		secret, err := br.host.Vault().Open(ctx, c.sender, webhookid.SecretNameSigningSecret(hook.ID), hook.SigningSecret)
		if err != nil {
			return fmt.Errorf("failed to open signing secret: %w", err)
		}
		markdown = outboundSecretMessage(hook, secret, c.prefix)
		purpose = "signing-secret"
	}
	if err := br.sendPrivately(ctx, c.sender, markdown, c.evt.ID, purpose); err != nil {
		return err
	}
	if err := br.db.Hook.MarkSecretSent(ctx, hook.ID); err != nil {
		return fmt.Errorf("failed to record that the secret was sent: %w", err)
	}
	hook.SecretSent = true
	return nil
}

// inboundURL returns an inbound hook's URL for token.
func (br *Bridge) inboundURL(hook *webhookdb.Hook, token string) string {
	return br.cfg.publicBase() + "/hooks/" + hook.ID + "/" + token
}

func (br *Bridge) inboundURLMessage(hook *webhookdb.Hook, token, prefix string) string {
	return fmt.Sprintf("Here is the URL of the incoming webhook **%s** in %s:\n\n%s\n\n"+
		"Anyone who has it can post in that room, so treat it like a password. "+
		"POST plain text (`Content-Type: text/plain`), or JSON: "+
		"`{\"text\": \"…\", \"html\": \"…\", \"username\": \"…\", \"avatar_url\": \"mxc://…\"}` "+
		"(only `text` or `html` is required).\n\n"+
		"To replace the URL, send %s in that room; to delete the webhook, %s.",
		hook.Name, roomLink(hook.RoomID), format.SafeMarkdownCode(br.inboundURL(hook, token)),
		format.SafeMarkdownCode(prefix+"webhook rotate "+hook.Name), format.SafeMarkdownCode(prefix+"webhook remove "+hook.Name))
}

func outboundSecretMessage(hook *webhookdb.Hook, secret vault.Secret, prefix string) string {
	return fmt.Sprintf("The outgoing webhook **%s** (ID %s) in %s sends that room's messages to your URL as JSON. "+
		"Every request carries the header `%s: sha256=<hex>`, the HMAC-SHA256 of the request body keyed with this signing secret:\n\n%s\n\n"+
		"Check it on every request, and keep the secret private. To replace it, send %s in that room.",
		hook.Name, format.SafeMarkdownCode(hook.ID), roomLink(hook.RoomID), SignatureHeader,
		format.SafeMarkdownCode(secret.Reveal()), format.SafeMarkdownCode(prefix+"webhook rotate "+hook.Name))
}

// roomLink returns a Markdown link to the room.
func roomLink(roomID id.RoomID) string {
	return format.MarkdownLink("this room", roomID.URI().MatrixToURL())
}

func formatTime(t time.Time) string {
	return t.UTC().Format("2006-01-02 15:04 UTC")
}

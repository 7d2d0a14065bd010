package irc

import (
	"context"
	"errors"
	"fmt"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/format"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice"
	"github.com/custodian-matrix/custodian/appservice/vault"
	"github.com/custodian-matrix/custodian/bridges/irc/ircdb"
)

// Channel keys (+k). A key belongs to a portal's channel, but the credential vault seals per
// user: a key is sealed under the key of the user who gave it (!irc link … <key> or !irc key),
// and its row (irc_channel_key) records that user and the command. Forgetting that user shreds
// their vault key and deletes the row (foreign key), as does redacting the command; the bridge
// then joins without a key, the server answers 475, and whoever linked the room is told to set
// the key again with !irc key. Keys are opened once, when the network starts or the key is
// set, and kept in memory for the JOINs of the bridge's connection and every puppet.

// channelKeyName is the vault name of a channel's key.
func channelKeyName(network, folded string) string { return "channel_key/" + network + "/" + folded }

// channelKey returns the key of channel (folded), or "" if it has none.
func (n *network) channelKey(folded string) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.keys[folded]
}

// setChannelKey caches key for channel (folded); "" forgets it.
func (n *network) setChannelKey(folded, key string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if key == "" {
		delete(n.keys, folded)
	} else {
		n.keys[folded] = key
	}
}

// loadKeys opens the sealed keys of the network's channels into memory. A key that does not
// open (its owner's vault key is gone) is skipped: the channel is joined without it.
func (n *network) loadKeys(ctx context.Context) error {
	keys, err := n.br.db.ChannelKey.GetAll(ctx, n.cfg.ID)
	if err != nil {
		return fmt.Errorf("failed to get channel keys: %w", err)
	}
	for _, k := range keys {
		secret, err := n.br.host.Vault().Open(ctx, k.Actor, channelKeyName(n.cfg.ID, k.Channel), k.Key)
		if err != nil {
			n.log.Warn().Err(err).Msg("Failed to open a channel key; joining without it")
			continue
		}
		n.setChannelKey(k.Channel, secret.Reveal())
	}
	return nil
}

// forgetKeysOf drops from memory the keys userID gave, before their erasure deletes the rows.
func (n *network) forgetKeysOf(ctx context.Context, userID id.UserID) error {
	keys, err := n.br.db.ChannelKey.GetAll(ctx, n.cfg.ID)
	if err != nil {
		return fmt.Errorf("failed to get channel keys: %w", err)
	}
	for _, k := range keys {
		if k.Actor == userID {
			n.setChannelKey(k.Channel, "")
		}
	}
	return nil
}

// reloadKeys replaces the keys in memory with those stored (after a redaction purged some).
func (n *network) reloadKeys(ctx context.Context) error {
	n.mu.Lock()
	clear(n.keys)
	n.mu.Unlock()
	return n.loadKeys(ctx)
}

// sealChannelKey seals key under the actor of prov for channel (folded); the vault refuses
// when none is configured, which is told to the user.
func (br *Bridge) sealChannelKey(ctx context.Context, n *network, folded string, key vault.Secret, prov appservice.Provenance) ([]byte, error) {
	sealed, err := br.host.Vault().Seal(ctx, prov.Actor, channelKeyName(n.cfg.ID, folded), key)
	if errors.Is(err, appservice.ErrVaultDisabled) {
		return nil, appservice.UserErrorf("This Custodian has no credential vault configured, so it cannot keep channel keys. " +
			"Ask its administrator to set `vault.key_file`.")
	} else if err != nil {
		return nil, fmt.Errorf("failed to seal channel key: %w", err)
	}
	return sealed, nil
}

// putChannelKey stores a sealed key of channel (folded), whose portal exists, with prov.
func (br *Bridge) putChannelKey(ctx context.Context, n *network, folded string, sealed []byte, prov appservice.Provenance) error {
	err := br.db.DoTxn(ctx, nil, func(ctx context.Context) error {
		if err := br.host.EnsureUser(ctx, prov.Actor); err != nil {
			return err
		}
		return br.db.ChannelKey.Put(ctx, &ircdb.ChannelKey{
			Network: n.cfg.ID, Channel: folded, Key: sealed, Actor: prov.Actor, RoomID: prov.RoomID,
			SourceEventID: prov.EventID, CreatedAt: br.clock.Now(),
		})
	})
	if err != nil {
		return fmt.Errorf("failed to store channel key: %w", err)
	}
	return nil
}

// rejoinAll makes the bridge's connection and the puppets meant to be in channel (folded) send
// JOIN again, with the channel's current key: after a key change, or a refused join.
func (n *network) rejoinAll(ctx context.Context, folded string) {
	n.mu.Lock()
	sessions := make([]*session, 0, len(n.puppets)+1)
	for _, p := range n.puppets {
		sessions = append(sessions, p.sess)
	}
	n.mu.Unlock()
	if n.bot != nil {
		sessions = append(sessions, n.bot)
	}
	for _, s := range sessions {
		s.rejoin(ctx, folded)
	}
}

// onBadKey handles ERR_BADCHANNELKEY (475) on the bridge's connection: the portal stays, its
// channel stays on the list to join (each reconnect tries again), and whoever gave the key, or
// else linked the room, is told once per command to set the right key with !irc key.
func (n *network) onBadKey(ctx context.Context, folded string) {
	portal := n.portal(ctx, folded)
	if portal == nil {
		return
	}
	n.bot.forgetJoin(folded)
	user, cause := portal.Actor, portal.SourceEventID
	k, err := n.br.db.ChannelKey.Get(ctx, n.cfg.ID, folded)
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to get channel key")
	} else if k != nil {
		user, cause = k.Actor, k.SourceEventID
	}
	// The key given with !irc link is in memory before its row is stored.
	hadKey := n.channelKey(folded) != ""
	zerolog.Ctx(ctx).Warn().Bool("had_key", hadKey).Msg("The channel refused the bridge's key")
	what := "needs a key (+k)"
	if hadKey {
		what = "refused the key I have for it"
	}
	if user == "" {
		n.badKeyInPortal(ctx, portal, what)
		return
	}
	n.br.notifyUser(ctx, user, cause, "bad-key:"+n.cfg.ID+":"+folded, fmt.Sprintf(
		"%s on %s %s, so I cannot join it and the room %s is not bridged for now. "+
			"Send %s in that room to give me the key.",
		portal.ChannelName, n.cfg.Name, what, format.SafeMarkdownCode(string(portal.RoomID)),
		format.SafeMarkdownCode("!irc key <key>")))
}

// badKeyInPortal tells the portal room, as the bot, that its channel wants a key, when nobody is
// left to tell privately (the portal was made through its alias, or whoever gave the key or
// linked the room was erased). The transaction ID is derived from the portal (network, channel,
// room), so the homeserver keeps one notice for all the bridge's reconnects and restarts within
// its transaction window.
func (n *network) badKeyInPortal(ctx context.Context, portal *ircdb.Portal, what string) {
	content := format.RenderMarkdown(fmt.Sprintf(
		"%s on %s %s, so this room is not bridged for now. A room admin can send %s here to give me the key.",
		portal.ChannelName, n.cfg.Name, what, format.SafeMarkdownCode("!irc key <key>")), true, false)
	content.MsgType = event.MsgNotice
	txnID := appservice.TxnIDFor(id.EventID("irc-bad-key:"+n.cfg.ID+":"+portal.Channel+":"+string(portal.RoomID)), "bad-key")
	if _, err := n.br.host.Bot().SendMessageEvent(ctx, portal.RoomID, event.EventMessage, &content,
		mautrix.ReqSendEvent{TransactionID: txnID}); err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to tell the portal its channel needs a key")
	}
}

// cmdKey sets or removes the key of the room's channel.
func (br *Bridge) cmdKey(ctx context.Context, ce *appservice.CommandEvent) error {
	if len(ce.Args) > 1 {
		return appservice.UserErrorf("Usage: %s (I delete the message at once)", format.SafeMarkdownCode(ce.Prefix()+"irc key [key]"))
	}
	p, err := br.db.Portal.GetByRoom(ctx, ce.RoomID)
	if err != nil {
		return fmt.Errorf("failed to get portal: %w", err)
	}
	if p == nil {
		return appservice.UserErrorf("This room is not bridged to IRC.")
	}
	n := br.network(p.Network)
	if n == nil {
		return appservice.UserErrorf("This room's IRC network is no longer configured.")
	}
	if len(ce.Args) == 0 {
		if err = br.db.ChannelKey.Delete(ctx, n.cfg.ID, p.Channel); err != nil {
			return fmt.Errorf("failed to delete channel key: %w", err)
		}
		n.setChannelKey(p.Channel, "")
		return ce.Reply(ctx, fmt.Sprintf("I forgot the key of %s.", p.ChannelName))
	}
	if !validChannelKey(ce.Args[0]) {
		return appservice.UserErrorf("That is not a key IRC accepts (no spaces or commas, at most 64 characters).")
	}
	prov := appservice.Provenance{Actor: ce.Sender, RoomID: ce.RoomID, EventID: ce.Event.ID, At: br.clock.Now()}
	key := vault.NewSecret(ce.Args[0])
	sealed, err := br.sealChannelKey(ctx, n, p.Channel, key, prov)
	if err != nil {
		return err
	}
	if err = br.putChannelKey(ctx, n, p.Channel, sealed, prov); err != nil {
		return err
	}
	n.setChannelKey(p.Channel, key.Reveal())
	n.rejoinAll(ctx, p.Channel)
	zerolog.Ctx(ctx).Info().Str("network", n.cfg.ID).Msg("Stored channel key")
	return ce.Reply(ctx, fmt.Sprintf("I deleted your message and keep the key of %s sealed; I join the channel with it now.", p.ChannelName))
}

// validChannelKey reports whether s can be a channel key: what fits in one JOIN parameter.
func validChannelKey(s string) bool {
	if s == "" || len(s) > 64 || s[0] == ':' {
		return false
	}
	for _, r := range s {
		if r <= ' ' || r == ',' || r == 0x7f {
			return false
		}
	}
	return true
}

package appservice

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/format"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/database"
)

// botHost runs the Custodian bot: invites, setup metadata and commands.
type botHost struct {
	svc      *Service
	commands *commandRegistry
}

// botSetupConfig is the core bot's configuration recorded with a setup (as_bot_setup.config).
type botSetupConfig struct {
	CommandPrefix      string         `json:"command_prefix"`
	CommandPowerLevels map[string]int `json:"command_power_levels,omitempty"`
	CommandGroups      []string       `json:"command_groups,omitempty"`
}

// defaultCommandPrefix is used when bot.command_prefix is empty.
const defaultCommandPrefix = "!"

func newBotHost(svc *Service) *botHost {
	bh := &botHost{svc: svc}
	// A usable registry before init runs, so nothing ever sees a nil one.
	bh.commands, _ = newCommandRegistry(nil, nil)
	return bh
}

// init collects the core commands and every CommandProvider bridge's commands. Problems (a
// duplicate name, a missing handler) are logged and the offending command is left out.
func (bh *botHost) init(ctx context.Context) {
	groups := make(map[string][]*Command)
	for _, bridge := range bh.svc.bridges {
		if cp, ok := bridge.br.(CommandProvider); ok {
			groups[bridge.id] = cp.Commands()
		}
	}
	reg, err := newCommandRegistry(bh.coreCommands(), groups)
	if err != nil {
		zerolog.Ctx(ctx).Error().Err(err).Msg("Some bot commands could not be registered")
	}
	bh.commands = reg
	zerolog.Ctx(ctx).Debug().
		Int("core_commands", len(reg.core.list)).
		Int("command_groups", len(reg.groupIDs)).
		Msg("Bot commands registered")
}

// afterConnect registers the bot user and makes its profile match the configuration. It never
// fails: problems are logged, and the bot works without a profile.
func (bh *botHost) afterConnect(ctx context.Context) {
	log := zerolog.Ctx(ctx)
	bot := bh.svc.as.BotIntent()
	// Synapse lets the registration's sender_localpart user act without being registered, but
	// keeps no profile for it until it is: setting its display name then fails with 500 ("No
	// row found"). Registering it (m.login.application_service) creates the profile; every start
	// asks, and M_USER_IN_USE means an earlier start did.
	if err := bot.Register(ctx); err != nil && !errors.Is(err, mautrix.MUserInUse) {
		log.Warn().Err(err).Msg("Failed to register the bot user; setting its profile may fail")
	}
	cfg := &bh.svc.cfg.AppService
	if cfg.BotDisplayname != "" {
		if err := bh.syncDisplayname(ctx, cfg.BotDisplayname); err != nil {
			log.Warn().Err(err).Msg("Failed to set the bot's displayname")
		}
	}
	if cfg.BotAvatar != "" {
		avatar, err := id.ParseContentURI(cfg.BotAvatar)
		if err != nil {
			log.Warn().Err(err).Msg("Ignoring invalid appservice.bot_avatar")
		} else if err = bh.syncAvatar(ctx, avatar); err != nil {
			log.Warn().Err(err).Msg("Failed to set the bot's avatar")
		}
	}
}

// syncDisplayname sets the bot's displayname unless it already is name. A profile the
// homeserver does not have yet (M_NOT_FOUND, as Synapse answers for the appservice's own user)
// counts as empty.
func (bh *botHost) syncDisplayname(ctx context.Context, name string) error {
	bot := bh.svc.as.BotIntent()
	current, err := bot.GetOwnDisplayName(ctx)
	if err != nil && !errors.Is(err, mautrix.MNotFound) {
		return fmt.Errorf("failed to get current displayname: %w", err)
	} else if err == nil && current != nil && current.DisplayName == name {
		return nil
	}
	if err = bot.Client.SetDisplayName(ctx, name); err != nil {
		return fmt.Errorf("failed to set displayname: %w", err)
	}
	zerolog.Ctx(ctx).Info().Msg("Updated the bot's displayname")
	return nil
}

// syncAvatar sets the bot's avatar unless it already is avatar; see syncDisplayname.
func (bh *botHost) syncAvatar(ctx context.Context, avatar id.ContentURI) error {
	bot := bh.svc.as.BotIntent()
	current, err := bot.GetOwnAvatarURL(ctx)
	if err != nil && !errors.Is(err, mautrix.MNotFound) {
		return fmt.Errorf("failed to get current avatar: %w", err)
	} else if err == nil && current == avatar {
		return nil
	}
	if err = bot.Client.SetAvatarURL(ctx, avatar); err != nil {
		return fmt.Errorf("failed to set avatar: %w", err)
	}
	zerolog.Ctx(ctx).Info().Msg("Updated the bot's avatar")
	return nil
}

// prefix returns the command prefix for group rooms.
func (bh *botHost) prefix() string {
	if p := bh.svc.cfg.Bot.CommandPrefix; p != "" {
		return p
	}
	return defaultCommandPrefix
}

// handleEvent handles one event for the bot: invites and membership changes that start or end
// its setup in a room, and commands.
func (bh *botHost) handleEvent(ctx context.Context, evt *event.Event) error {
	switch evt.Type {
	case event.StateMember:
		return bh.handleMember(ctx, evt)
	case event.EventMessage:
		return bh.handleMessage(ctx, evt)
	}
	return nil
}

func (bh *botHost) handleMember(ctx context.Context, evt *event.Event) error {
	if evt.StateKey == nil {
		return nil
	}
	content := evt.Content.AsMember()
	target := id.UserID(*evt.StateKey)
	botID := bh.svc.as.BotMXID()
	switch {
	case target == botID && content.Membership == event.MembershipInvite:
		return bh.handleInvite(ctx, evt, content)
	case target == botID && content.Membership.IsLeaveOrBan() && evt.Sender != botID:
		zerolog.Ctx(ctx).Info().
			Stringer("room_id", evt.RoomID).
			Stringer("removed_by", evt.Sender).
			Str("membership", string(content.Membership)).
			Msg("Bot was removed from room")
		return bh.endSetup(ctx, evt.RoomID, "bot removed")
	case target != botID && content.Membership.IsLeaveOrBan():
		return bh.checkRoomEmpty(ctx, evt.RoomID)
	}
	return nil
}

// inviteAllowed reports whether policy lets inviter invite the bot: inviter is listed in
// AllowedUsers or its server in AllowedServers, or, when both are empty, inviter is a user of
// ownDomain.
func inviteAllowed(policy InvitePolicy, ownDomain string, inviter id.UserID) bool {
	_, server, err := inviter.Parse()
	if err != nil || server == "" {
		return false
	}
	if len(policy.AllowedUsers) == 0 && len(policy.AllowedServers) == 0 {
		return server == ownDomain
	}
	if slices.Contains(policy.AllowedUsers, string(inviter)) {
		return true
	}
	return slices.ContainsFunc(policy.AllowedServers, func(allowed string) bool {
		// Server names are DNS names or IP literals, which compare case-insensitively.
		return strings.EqualFold(allowed, server)
	})
}

// inviteRejectReason is the reason the bot gives when it rejects an invite. It names the allowed
// servers but never the allowed users, which would tell strangers whose invites count.
func inviteRejectReason(policy InvitePolicy, ownDomain string) string {
	if len(policy.AllowedUsers) == 0 && len(policy.AllowedServers) == 0 {
		return "Custodian only accepts invites from users of " + ownDomain
	}
	var parts []string
	if len(policy.AllowedUsers) > 0 {
		parts = append(parts, "approved users")
	}
	if len(policy.AllowedServers) > 0 {
		parts = append(parts, "users of "+strings.Join(policy.AllowedServers, ", "))
	}
	return "Custodian only accepts invites from " + strings.Join(parts, " and ")
}

// handleInvite accepts or rejects an invite of the bot. Accepting joins the room, records the
// setup and posts a welcome notice; every step is safe to repeat for the same invite event.
func (bh *botHost) handleInvite(ctx context.Context, evt *event.Event, content *event.MemberEventContent) error {
	log := zerolog.Ctx(ctx)
	policy := bh.svc.cfg.Bot.InvitePolicy
	domain := bh.svc.cfg.Homeserver.Domain
	bot := bh.svc.as.BotIntent()
	if !inviteAllowed(policy, domain, evt.Sender) {
		log.Info().
			Stringer("room_id", evt.RoomID).
			Stringer("inviter", evt.Sender).
			Msg("Rejecting invite from a user the invite policy does not allow")
		bh.svc.botRooms.Delete(evt.RoomID)
		_, err := bot.LeaveRoom(ctx, evt.RoomID, &mautrix.ReqLeave{Reason: inviteRejectReason(policy, domain)})
		if err != nil && !isRoomGone(err) {
			return fmt.Errorf("failed to reject invite: %w", err)
		}
		return nil
	}

	if err := bot.EnsureRegistered(ctx); err != nil {
		return err
	}
	bh.svc.botRooms.Delete(evt.RoomID)
	// Whatever the cache still holds from an earlier stay is stale: the bot heard nothing from
	// the room while it was out (power levels, members).
	if err := bh.svc.forgetRoomState(ctx, evt.RoomID); err != nil {
		return fmt.Errorf("failed to drop the room's cached state: %w", err)
	}
	if _, err := bot.JoinRoomByID(ctx, evt.RoomID); err != nil {
		if isRoomGone(err) {
			log.Info().Err(err).Stringer("room_id", evt.RoomID).Msg("Invite is no longer valid; not joining")
			return nil
		}
		return fmt.Errorf("failed to join room: %w", err)
	}
	// The state cache knows nothing of the room yet; the welcome is encrypted, and shared with
	// the right devices, only once it knows the room's encryption and members.
	primeErr := bh.svc.primeRoomState(ctx, evt.RoomID)

	setup := &database.BotSetup{
		RoomID:        evt.RoomID,
		Bot:           bot.UserID,
		Inviter:       evt.Sender,
		InviteEventID: evt.ID,
		InvitedAt:     time.UnixMilli(evt.Timestamp),
		JoinedAt:      time.Now(),
		IsDirect:      content.IsDirect,
		Config:        bh.setupConfig(),
	}
	err := bh.svc.db.DoTxn(ctx, nil, func(ctx context.Context) error {
		if err := bh.svc.db.User.Ensure(ctx, evt.Sender); err != nil {
			return fmt.Errorf("failed to ensure inviter's user row: %w", err)
		}
		return bh.svc.db.BotSetup.Put(ctx, setup)
	})
	if err != nil {
		return fmt.Errorf("failed to record bot setup: %w", err)
	}
	if primeErr != nil {
		// Without the room's state the welcome could go out in plaintext into an encrypted
		// room; the next event in the room updates the state cache, and commands work then.
		return fmt.Errorf("not welcoming: %w", primeErr)
	}
	// The flag only says what the inviter meant; the room is a direct chat if its members say so.
	direct := false
	if content.IsDirect {
		if direct, err = bh.svc.isDirectChat(ctx, evt.RoomID, evt.Sender); err != nil {
			log.Warn().Err(err).Msg("Failed to check whether the room is a direct chat; welcoming it as a group room")
		}
	}
	log.Info().
		Stringer("room_id", evt.RoomID).
		Stringer("inviter", evt.Sender).
		Bool("is_direct", content.IsDirect).
		Bool("direct_chat", direct).
		Msg("Bot joined room on invite")
	return bh.sendWelcome(ctx, evt, direct)
}

// setupConfig is the JSON recorded as the setup's configuration.
func (bh *botHost) setupConfig() json.RawMessage {
	data, err := json.Marshal(&botSetupConfig{
		CommandPrefix:      bh.prefix(),
		CommandPowerLevels: bh.svc.cfg.Bot.CommandPowerLevels,
		CommandGroups:      bh.commands.groupIDs,
	})
	if err != nil {
		// A struct of strings and ints always marshals.
		panic(err)
	}
	return data
}

// sendWelcome posts the bot's welcome notice after it joined on invite evt; isDirect says the
// room is a direct chat by its members, where commands need no prefix. With crypto it goes
// through [SendMessageSensitive], so it is encrypted in an encrypted room.
func (bh *botHost) sendWelcome(ctx context.Context, evt *event.Event, isDirect bool) error {
	help := bh.prefix() + "help"
	if isDirect {
		help = "help"
	}
	msg := "Hello! I'm the Custodian bot. Send " + format.SafeMarkdownCode(help) + " to see what I can do."
	// The warning only while the bot cannot read and write encrypted rooms.
	if !bh.svc.encryptionActive() {
		if encrypted, err := bh.isEncrypted(ctx, evt.RoomID); err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to check whether the room is encrypted")
		} else if encrypted {
			msg += "\n\nThis room is encrypted, and I can't read encrypted messages: talk to me in an unencrypted room."
		}
	}
	content := format.RenderMarkdown(msg, true, false)
	content.MsgType = event.MsgNotice
	content.EnsureHasHTML()
	cli, txnID := bh.svc.as.BotIntent().Client, TxnIDFor(evt.ID, "welcome")
	var err error
	if cli.Crypto != nil {
		// Encrypted in an encrypted room, even when the state cache has not heard of it yet.
		_, err = SendMessageSensitive(ctx, cli, evt.RoomID, event.EventMessage, &content, txnID)
	} else {
		// Without crypto the welcome, which holds nothing private, goes out in plaintext: in an
		// encrypted room it carries the warning that the bot cannot read the room. It is the
		// one send the plaintext guard lets through.
		_, err = cli.SendMessageEvent(allowPlaintext(ctx), evt.RoomID, event.EventMessage, &content, mautrix.ReqSendEvent{TransactionID: txnID})
	}
	if err != nil {
		return fmt.Errorf("failed to send welcome notice: %w", err)
	}
	return nil
}

// isEncrypted reports whether the room has encryption enabled, asking the homeserver if the
// state cache does not know.
func (bh *botHost) isEncrypted(ctx context.Context, roomID id.RoomID) (bool, error) {
	if encrypted, err := bh.svc.stateStore.IsEncrypted(ctx, roomID); err != nil || encrypted {
		return encrypted, err
	}
	var content event.EncryptionEventContent
	err := bh.svc.as.BotIntent().StateEvent(ctx, roomID, event.StateEncryption, "", &content)
	if errors.Is(err, mautrix.MNotFound) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	return content.Algorithm != "", nil
}

// checkRoomEmpty ends the setup and leaves if, after someone left, the bot's only company in
// the room is our own users.
func (bh *botHost) checkRoomEmpty(ctx context.Context, roomID id.RoomID) error {
	botID := bh.svc.as.BotMXID()
	if !bh.svc.stateStore.IsInRoom(ctx, roomID, botID) {
		return nil
	}
	members, err := bh.svc.stateStore.GetRoomMembers(ctx, roomID, event.MembershipJoin)
	if err != nil {
		return fmt.Errorf("failed to get joined members from state store: %w", err)
	}
	if bh.countRealMembers(members) > 0 {
		return nil
	}
	// The cache may be missing members; before leaving, make sure with the homeserver.
	resp, err := bh.svc.as.BotIntent().JoinedMembers(ctx, roomID)
	if err != nil {
		return fmt.Errorf("failed to fetch joined members: %w", err)
	}
	remaining := 0
	for userID := range resp.Joined {
		if !bh.svc.isOwnUser(userID) {
			remaining++
		}
	}
	if remaining > 0 {
		return nil
	}
	if bh.svc.roomKept(ctx, roomID) {
		zerolog.Ctx(ctx).Debug().Stringer("room_id", roomID).Msg("Everyone else left the room; staying, a bridge keeps it")
		return nil
	}
	zerolog.Ctx(ctx).Info().Stringer("room_id", roomID).Msg("Everyone else left the room; leaving")
	// Purge before leaving: if we crash in between, the replayed event still finds the bot in
	// the room and finishes the job, while the other order would leave the setup behind. A
	// failed leave does not undo the purge, as nobody is left who could use the configuration.
	purgeErr := bh.endSetup(ctx, roomID, "room empty")
	bh.svc.botRooms.Delete(roomID)
	_, err = bh.svc.as.BotIntent().LeaveRoom(ctx, roomID, &mautrix.ReqLeave{Reason: "Everyone else left the room"})
	if err != nil && !isRoomGone(err) {
		return errors.Join(purgeErr, fmt.Errorf("failed to leave empty room: %w", err))
	}
	return purgeErr
}

// roomKept reports whether a bridge that claimed roomID keeps it (see [RoomKeeper]). A failure
// to tell counts as kept.
func (svc *Service) roomKept(ctx context.Context, roomID id.RoomID) bool {
	owners, err := svc.roomBridges(ctx, roomID)
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Stringer("room_id", roomID).Msg("Failed to get the room's bridges; keeping the room")
		return true
	}
	for _, claim := range owners {
		owner := claim.BridgeID
		bridge := svc.bridgeByID[owner]
		if bridge == nil {
			continue
		}
		keeper, ok := bridge.br.(RoomKeeper)
		if !ok {
			continue
		}
		kept, err := keeper.KeepsRoom(ctx, roomID)
		if err != nil {
			zerolog.Ctx(ctx).Warn().Err(err).Str("bridge", owner).Stringer("room_id", roomID).Msg("Bridge could not tell whether it keeps the room; keeping it")
			return true
		} else if kept {
			return true
		}
	}
	return false
}

func (bh *botHost) countRealMembers(members map[id.UserID]*event.MemberEventContent) int {
	n := 0
	for userID := range members {
		if !bh.svc.isOwnUser(userID) {
			n++
		}
	}
	return n
}

// endSetup ends the bot's setup in roomID and purges the room's configuration: the setup row,
// every RoomPurger bridge's data and the room's ownership claim. It is safe to repeat. Bridge
// failures do not stop the others; they are returned together.
func (bh *botHost) endSetup(ctx context.Context, roomID id.RoomID, cause string) error {
	log := zerolog.Ctx(ctx)
	deleted, err := bh.svc.db.BotSetup.Delete(ctx, roomID, bh.svc.as.BotMXID())
	if err != nil {
		return err
	}
	var errs []error
	purged := 0
	for _, bridge := range bh.svc.bridges {
		purger, ok := bridge.br.(RoomPurger)
		if !ok {
			continue
		}
		bctx := log.With().Str("bridge", bridge.id).Logger().WithContext(ctx)
		if err := purger.PurgeRoom(bctx, roomID); err != nil {
			errs = append(errs, &BridgeError{Bridge: bridge.id, Op: "purge room", Err: err})
			continue
		}
		purged++
	}
	if err := bh.svc.db.Room.Delete(ctx, roomID); err != nil {
		errs = append(errs, fmt.Errorf("failed to release room claim: %w", err))
	}
	bh.svc.roomOwners.Delete(roomID)
	log.Info().
		Stringer("room_id", roomID).
		Str("cause", cause).
		Bool("setup_deleted", deleted).
		Int("bridges_purged", purged).
		Int("errors", len(errs)).
		Msg("Bot setup ended")
	return errors.Join(errs...)
}

// isRoomGone reports whether err says the bot cannot act in the room any more: the invite was
// withdrawn (M_FORBIDDEN), or the room is unknown or has no servers left (M_NOT_FOUND).
func isRoomGone(err error) bool {
	return errors.Is(err, mautrix.MForbidden) || errors.Is(err, mautrix.MNotFound)
}

package webhook

import (
	"context"
	"errors"
	"fmt"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/format"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice"
	"github.com/custodian-matrix/custodian/bridges/webhook/webhookdb"
)

// outboundCommand is the command whose power level an outbound hook's owner must keep for the
// hook to go on receiving the room's messages.
const outboundCommand = BridgeID + " out"

// Reasons for suspending an outbound hook, shown by !webhook list and in the room's notice.
const (
	suspendedLeft     = "its owner left the room"
	suspendedRemoved  = "its owner was removed from the room"
	suspendedBanned   = "its owner was banned from the room"
	suspendedDemoted  = "its owner no longer has the power level to configure webhooks"
	suspendedNoRights = "its owner is no longer a member with the power level to configure webhooks"
)

// checkOwners suspends the room's delivering outbound hooks whose owner lost the right to them,
// after evt changed the room's members (for the member event's target) or power levels. The
// core has updated the state cache with evt before the bridge sees it. A failure to check one
// owner is returned with the others, and the delivery-time check (see deliver) still applies.
func (br *Bridge) checkOwners(ctx context.Context, evt *event.Event) error {
	hooks, err := br.db.Hook.GetDeliveringInRoom(ctx, evt.RoomID)
	if err != nil {
		return fmt.Errorf("failed to get the room's outbound hooks: %w", err)
	}
	var errs []error
	for _, hook := range hooks {
		if evt.Type == event.StateMember && evt.GetStateKey() != hook.Actor.String() {
			continue
		}
		allowed, err := br.host.MayConfigureRoom(ctx, hook.RoomID, hook.Actor, outboundCommand)
		if err != nil {
			errs = append(errs, fmt.Errorf("failed to check the owner of hook %s: %w", hook.ID, err))
			continue
		} else if allowed {
			continue
		}
		br.suspend(ctx, hook, ownerLossReason(evt), evt.ID)
	}
	return errors.Join(errs...)
}

// ownerLossReason says how evt took an outbound hook's owner the right to it.
func ownerLossReason(evt *event.Event) string {
	if evt.Type != event.StateMember {
		return suspendedDemoted
	}
	switch membership := evt.Content.AsMember().Membership; {
	case membership == event.MembershipBan:
		return suspendedBanned
	case membership == event.MembershipLeave && evt.Sender.String() != evt.GetStateKey():
		return suspendedRemoved
	case membership == event.MembershipLeave:
		return suspendedLeft
	default:
		return suspendedDemoted
	}
}

// suspend suspends hook for reason, drops what waits in its queue, and tells the room in a
// notice that names the hook, never its URL. The notice's transaction ID derives from cause,
// the event that revealed the loss, so handling it again posts nothing new. Suspending a hook
// that already is does nothing.
func (br *Bridge) suspend(ctx context.Context, hook *webhookdb.Hook, reason string, cause id.EventID) {
	log := zerolog.Ctx(ctx).With().Object("hook", hook).Logger()
	suspended, err := br.db.Hook.Suspend(ctx, hook.ID, br.clock.Now(), reason)
	if err != nil {
		log.Err(err).Msg("Failed to suspend outbound webhook whose owner lost the right to it")
		return
	} else if !suspended {
		return
	}
	br.stopQueue(hook.ID)
	log.Info().Str("reason", reason).Msg("Suspended outbound webhook whose owner lost the right to it")
	content := format.RenderMarkdown(suspendedNotice(hook, reason), true, false)
	content.MsgType = event.MsgNotice
	// It names the hook and its owner: encrypted in an encrypted room, never sent there in
	// plaintext (see [appservice.SendMessageSensitive]).
	_, err = appservice.SendMessageSensitive(ctx, br.host.Bot().Client, hook.RoomID, event.EventMessage, &content,
		appservice.TxnIDFor(cause, "webhook-suspended-"+hook.ID))
	if err != nil {
		log.Warn().Err(err).Msg("Failed to tell the room that an outbound webhook was suspended")
	}
}

// suspendedNotice is the notice the room's moderators get when an outbound hook is suspended.
func suspendedNotice(hook *webhookdb.Hook, reason string) string {
	// The bridge does not know the room's command prefix outside a command; "!" is the default.
	return fmt.Sprintf("The outgoing webhook **%s** (ID %s) is suspended: %s, so I stopped sending this room's "+
		"messages to it. Its owner %s can resume it with %s once they are a member with the power level "+
		"to configure webhooks again; a moderator can delete it with %s.",
		hook.Name, format.SafeMarkdownCode(hook.ID), reason, format.SafeMarkdownCode(hook.Actor),
		format.SafeMarkdownCode("!webhook resume "+hook.Name), format.SafeMarkdownCode("!webhook remove "+hook.Name))
}

// cmdResume lets a suspended outbound hook's owner resume it, once they are a member with the
// power level to configure webhooks again. Nobody else can: the hook sends the room's messages
// to a URL only its owner knows.
func (br *Bridge) cmdResume(ctx context.Context, c *cmdCall) error {
	hook, err := br.hookByNameArg(ctx, c, "resume")
	if err != nil {
		return err
	}
	if hook.Kind != webhookdb.KindOutbound || hook.SuspendedAt.IsZero() {
		return appservice.UserErrorf("The webhook **%s** is not suspended.", hook.Name)
	}
	if c.sender != hook.Actor {
		return appservice.UserErrorf("Only the owner of **%s**, %s, can resume it. Anyone with the power level can delete it with %s.",
			hook.Name, format.SafeMarkdownCode(hook.Actor), format.SafeMarkdownCode(c.prefix+"webhook remove "+hook.Name))
	}
	allowed, err := br.host.MayConfigureRoom(ctx, hook.RoomID, c.sender, outboundCommand)
	if err != nil {
		return fmt.Errorf("failed to check the owner's power level: %w", err)
	} else if !allowed {
		return appservice.UserErrorf("You need the power level for %s in this room to resume **%s**.",
			format.SafeMarkdownCode(c.prefix+outboundCommand), hook.Name)
	}
	if err = br.db.Hook.Resume(ctx, hook.ID); err != nil {
		return fmt.Errorf("failed to resume hook: %w", err)
	}
	zerolog.Ctx(ctx).Info().Object("hook", hook).Msg("Resumed outbound webhook on its owner's request")
	return c.reply(ctx, fmt.Sprintf("Resumed the outgoing webhook **%s**: this room's messages are sent to it again.", hook.Name))
}

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
	"maunium.net/go/mautrix/format"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/privacy"
)

// forgetConfirmWindow is how long a !forget waits for its confirmation.
const forgetConfirmWindow = 5 * time.Minute

// pendingForget is a !forget waiting for "forget confirm" from the same user in the same room.
type pendingForget struct {
	modules []string
	roomID  id.RoomID
	expires time.Time
}

// privacyCommands returns the core bot's commands for the user's own data.
func (bh *botHost) privacyCommands() []*Command {
	return []*Command{
		{
			Name:    "mydata",
			Help:    "Show what Custodian and each bridge hold about you.",
			Scope:   ScopeDM,
			Handler: bh.cmdMyData,
		},
		{
			Name:    "export",
			Help:    "Get everything Custodian holds about you as a JSON file.",
			Scope:   ScopeDM,
			Handler: bh.cmdExport,
		},
		{
			Name:    "forget",
			Args:    "[bridge] [confirm]",
			Help:    "Erase everything Custodian holds about you, or only what one bridge holds. Asks for confirmation first.",
			Scope:   ScopeDM,
			Handler: bh.cmdForget,
		},
		{
			Name:    "pause",
			Help:    "Stop bridges acting for you (relaying your messages, keeping remote connections) while keeping your data.",
			Scope:   ScopeDM,
			Handler: bh.cmdPause,
		},
		{
			Name:    "resume",
			Help:    "Let bridges act for you again after `pause`.",
			Scope:   ScopeDM,
			Handler: bh.cmdResume,
		},
	}
}

// recordActivity records that ce's sender ran ce's command: its full name only, never its
// arguments. It is called by the command framework just before a command's handler runs. A
// failure is logged and does not stop the command.
func (svc *Service) recordActivity(ctx context.Context, ce *CommandEvent) {
	if ce.Event == nil || ce.Event.ID == "" {
		return
	}
	err := svc.db.Privacy().RecordActivity(ctx, ce.Event.ID, ce.Sender, ce.RoomID, ce.FullName(), svc.now())
	if err != nil {
		zerolog.Ctx(ctx).Warn().Err(err).Msg("Failed to record command activity")
	}
}

func (bh *botHost) cmdMyData(ctx context.Context, ce *CommandEvent) error {
	svc := bh.svc
	holdings, err := svc.engine.Holdings(ctx, ce.Sender)
	if err != nil {
		return err
	}
	var sb strings.Builder
	found := false
	for _, module := range privacy.SortedModules(holdings) {
		var lines []string
		for _, held := range holdings[module] {
			ut, n := held.Table, held.Rows
			line := fmt.Sprintf("* %s: %s", privacy.Plural(n, "entry", "entries"), ut.Description)
			var notes []string
			if held.Retention > 0 {
				notes = append(notes, "kept for "+privacy.DescribeDuration(held.Retention))
			}
			if len(ut.Secret) > 0 {
				notes = append(notes, "includes encrypted credentials")
			}
			switch ut.Policy {
			case EraseSetNull:
				notes = append(notes, "shared room configuration: erasing removes you from it, not the configuration")
			case EraseRetain:
				notes = append(notes, "kept on erasure: "+ut.Reason)
			}
			if len(notes) > 0 {
				line += " _(" + strings.Join(notes, "; ") + ")_"
			}
			lines = append(lines, line)
		}
		if len(lines) > 0 {
			found = true
			fmt.Fprintf(&sb, "**%s**\n%s\n\n", module, strings.Join(lines, "\n"))
		}
	}
	if !found {
		return ce.Reply(ctx, "Custodian holds nothing about you.")
	}
	paused, err := svc.db.User.IsPaused(ctx, ce.Sender)
	if err != nil {
		return err
	}
	intro := "Here is what Custodian holds about you:\n\n"
	if paused {
		intro = "You have paused Custodian: bridges do not act for you. Here is what it holds about you:\n\n"
	}
	return ce.Reply(ctx, intro+sb.String()+"Send `export` for all of it as a file, `forget` to erase it, "+
		"`pause` to stop bridges acting for you.")
}

func (bh *botHost) cmdExport(ctx context.Context, ce *CommandEvent) error {
	svc := bh.svc
	export, err := svc.engine.Export(ctx, ce.Sender)
	if err != nil {
		return err
	}
	data, err := json.MarshalIndent(export, "", "  ")
	if err != nil {
		return fmt.Errorf("failed to encode export: %w", err)
	}
	fileName := "custodian-export-" + export.GeneratedAt.Format("2006-01-02") + ".json"
	content, err := svc.uploadExportFile(ctx, ce.Sender, ce.RoomID, fileName, data)
	if err != nil {
		return err
	}
	if err = ce.Reply(ctx, "Here is everything Custodian holds about you, as JSON. Secrets are listed by name, never their value. "+
		"The file is encrypted, and it is withdrawn after "+describeTTL(svc.cfg.Privacy.exportTTL())+": save it if you want to keep it."); err != nil {
		return err
	}
	if err = svc.sendExportFile(ctx, ce, content); err != nil {
		return err
	}
	zerolog.Ctx(ctx).Info().Int("size", len(data)).Msg("Sent data export to user")
	return nil
}

func (bh *botHost) cmdForget(ctx context.Context, ce *CommandEvent) error {
	svc := bh.svc
	args := make([]string, len(ce.Args))
	for i, arg := range ce.Args {
		args[i] = strings.ToLower(arg)
	}
	confirm := len(args) > 0 && args[len(args)-1] == "confirm"
	if confirm {
		args = args[:len(args)-1]
	}
	if len(args) > 1 {
		return UserErrorf("Usage: %s, or %s for one bridge.", format.SafeMarkdownCode("forget"), format.SafeMarkdownCode("forget <bridge>"))
	}
	var modules []string
	if len(args) == 1 {
		if _, err := svc.engine.EraseScope(args); err != nil {
			return UserErrorf("There is no bridge %s here. Bridges: %s.", format.SafeMarkdownCode(args[0]), svc.bridgeList())
		}
		modules = args
	}
	if !confirm {
		svc.privacy.lock.Lock()
		if svc.privacy.confirms == nil {
			svc.privacy.confirms = make(map[id.UserID]pendingForget)
		}
		now := svc.now()
		for user, pending := range svc.privacy.confirms {
			if now.After(pending.expires) {
				delete(svc.privacy.confirms, user)
			}
		}
		svc.privacy.confirms[ce.Sender] = pendingForget{modules: modules, roomID: ce.RoomID, expires: now.Add(forgetConfirmWindow)}
		svc.privacy.lock.Unlock()
		what, confirmCmd := "everything Custodian holds about you", "forget confirm"
		if len(modules) > 0 {
			what, confirmCmd = "everything "+modules[0]+" holds about you", "forget "+modules[0]+" confirm"
		}
		return ce.Reply(ctx, fmt.Sprintf("This erases %s (send %s to see what that is), after undoing what bridges did for you on other networks. "+
			"It cannot be undone. To go ahead, send %s within %d minutes.",
			what, format.SafeMarkdownCode("mydata"), format.SafeMarkdownCode(confirmCmd), int(forgetConfirmWindow/time.Minute)))
	}

	requestID := "command:" + string(ce.Event.ID)
	// After a crash the confirmation in memory is gone, but the job this very event started is
	// not: finish it instead of asking again.
	jobID, err := svc.engine.RequestJobID(ctx, requestID)
	if err != nil {
		return err
	}
	existing, err := svc.engine.Store().GetErasure(ctx, jobID)
	if err != nil {
		return err
	}
	if existing == nil {
		svc.privacy.lock.Lock()
		pending, ok := svc.privacy.confirms[ce.Sender]
		valid := ok && pending.roomID == ce.RoomID && svc.now().Before(pending.expires) && slices.Equal(pending.modules, modules)
		if valid {
			delete(svc.privacy.confirms, ce.Sender)
		}
		svc.privacy.lock.Unlock()
		if !valid {
			ask := "forget"
			if len(modules) > 0 {
				ask += " " + modules[0]
			}
			return UserErrorf("There is nothing to confirm: send %s first, then confirm within %d minutes.",
				format.SafeMarkdownCode(ask), int(forgetConfirmWindow/time.Minute))
		}
	}
	_, err = svc.engine.Erase(ctx, ce.Sender, EraseRequest{
		Trigger: TriggerUser, Modules: modules, NotifyRoom: ce.RoomID, RequestID: requestID,
	})
	if errors.Is(err, ErrUnknownModule) {
		return UserErrorf("There is no bridge %s here.", format.SafeMarkdownCode(modules[0]))
	}
	// The receipt is posted by the erasure itself, once the data is gone.
	return err
}

// bridgeList returns the bridge IDs, formatted for a reply.
func (svc *Service) bridgeList() string {
	if len(svc.bridges) == 0 {
		return "none"
	}
	names := make([]string, len(svc.bridges))
	for i, bh := range svc.bridges {
		names[i] = format.SafeMarkdownCode(bh.id)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

func (bh *botHost) cmdPause(ctx context.Context, ce *CommandEvent) error {
	if err := bh.svc.db.User.SetPaused(ctx, ce.Sender, true); err != nil {
		return fmt.Errorf("failed to pause user: %w", err)
	}
	return ce.Reply(ctx, "Paused. Bridges no longer act for you: your messages are not relayed to other networks and "+
		"they keep no connections open for you. Your data and settings are kept. Send `resume` to undo this.")
}

func (bh *botHost) cmdResume(ctx context.Context, ce *CommandEvent) error {
	paused, err := bh.svc.db.User.IsPaused(ctx, ce.Sender)
	if err != nil {
		return err
	}
	if !paused {
		return ce.Reply(ctx, "You have not paused Custodian; bridges act for you as usual.")
	}
	if err = bh.svc.db.User.SetPaused(ctx, ce.Sender, false); err != nil {
		return fmt.Errorf("failed to resume user: %w", err)
	}
	return ce.Reply(ctx, "Resumed. Bridges act for you again.")
}

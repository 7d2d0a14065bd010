package appservice

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"maunium.net/go/mautrix/format"
)

// coreCommands returns the commands of the core bot, invoked without a group, including the
// privacy commands (mydata, export, forget, pause, resume; see privacycommands.go).
func (bh *botHost) coreCommands() []*Command {
	return append([]*Command{
		{
			Name:    "help",
			Args:    "[group or command]",
			Help:    "Show the commands, or one group or command in detail.",
			Handler: bh.cmdHelp,
		},
		{
			Name:    "ping",
			Help:    "Check that I am alive.",
			Handler: cmdPing,
		},
		{
			Name:    "setup",
			Help:    "Show who set me up in this room, when, and how I was configured then.",
			Handler: bh.cmdSetup,
		},
	}, bh.privacyCommands()...)
}

func (bh *botHost) cmdHelp(ctx context.Context, ce *CommandEvent) error {
	if len(ce.Args) == 0 {
		return ce.Reply(ctx, bh.coreHelp(ce.Prefix()))
	}
	pc := parsedCommand{Name: strings.ToLower(ce.Args[0])}
	if cs := bh.commands.groups[pc.Name]; cs != nil {
		if len(ce.Args) == 1 {
			return ce.Reply(ctx, bh.groupHelp(cs, ce.Prefix()))
		}
		pc.Group, pc.Name = pc.Name, strings.ToLower(ce.Args[1])
	}
	if cmd := bh.commands.lookup(pc); cmd != nil {
		var sb strings.Builder
		writeCommandHelp(&sb, pc.Group, cmd, bh.svc.cfg.Bot.CommandPowerLevels)
		return ce.Reply(ctx, sb.String())
	}
	msg := "There is no command or group " + format.SafeMarkdownCode(commandKey(pc.Group, pc.Name)) + "."
	if suggestion, _ := bh.commands.suggest(pc); suggestion != "" {
		msg += " Did you mean " + format.SafeMarkdownCode(suggestion) + "?"
	} else {
		msg += " Send " + format.SafeMarkdownCode(ce.Prefix()+"help") + " for the list of commands."
	}
	return ce.Reply(ctx, msg)
}

// cmdPing answers every ping with exactly one "Pong", also when the ping is handled again after a
// crash: the end-to-end tests count the replies.
func cmdPing(ctx context.Context, ce *CommandEvent) error {
	return ce.Reply(ctx, "Pong")
}

func (bh *botHost) cmdSetup(ctx context.Context, ce *CommandEvent) error {
	setup, err := bh.svc.db.BotSetup.Get(ctx, ce.RoomID, bh.svc.as.BotMXID())
	if err != nil {
		return err
	} else if setup == nil {
		return ce.Reply(ctx, "This bot has no setup record in this room.")
	}
	var sb strings.Builder
	sb.WriteString("I was set up in this room by ")
	if setup.Inviter != "" {
		// As code, not a pill: showing the setup should not ping the inviter.
		sb.WriteString(format.SafeMarkdownCode(setup.Inviter))
	} else {
		sb.WriteString("a user whose data has since been erased")
	}
	fmt.Fprintf(&sb, ", who invited me at %s (event %s). I joined at %s.",
		formatTime(setup.InvitedAt), format.SafeMarkdownCode(setup.InviteEventID), formatTime(setup.JoinedAt))
	if setup.IsDirect {
		sb.WriteString(" The invite marked this room as a direct chat.")
	}
	sb.WriteString("\n\nConfiguration at setup:\n")
	var cfg botSetupConfig
	if err := json.Unmarshal(setup.Config, &cfg); err != nil {
		return fmt.Errorf("failed to parse setup configuration: %w", err)
	}
	fmt.Fprintf(&sb, "* command prefix: %s\n", format.SafeMarkdownCode(cfg.CommandPrefix))
	if len(cfg.CommandGroups) > 0 {
		fmt.Fprintf(&sb, "* command groups: %s\n", strings.Join(cfg.CommandGroups, ", "))
	}
	if len(cfg.CommandPowerLevels) > 0 {
		keys := slices.Sorted(maps.Keys(cfg.CommandPowerLevels))
		levels := make([]string, len(keys))
		for i, key := range keys {
			levels[i] = fmt.Sprintf("%s %d", format.SafeMarkdownCode(key), cfg.CommandPowerLevels[key])
		}
		fmt.Fprintf(&sb, "* power levels for commands: %s\n", strings.Join(levels, ", "))
	} else {
		sb.WriteString("* room settings need the room's power level for state events\n")
	}
	return ce.Reply(ctx, sb.String())
}

func formatTime(t time.Time) string {
	return t.UTC().Format("2006-01-02 15:04:05 MST")
}

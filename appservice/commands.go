package appservice

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"unicode"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/format"
	"maunium.net/go/mautrix/id"
)

// CommandScope says where a [Command] may be used.
type CommandScope int

const (
	// ScopeAnywhere allows the command both in a direct chat with the bot and in other rooms.
	ScopeAnywhere CommandScope = iota
	// ScopeDM allows the command only in a direct chat with the bot. Use it for commands that
	// concern the sender alone (logging in, personal data).
	ScopeDM
	// ScopeRoom allows the command only in rooms that are not a direct chat with the bot. Use it
	// for commands about the room itself.
	ScopeRoom
)

// String returns the scope's name as used in logs.
func (s CommandScope) String() string {
	switch s {
	case ScopeAnywhere:
		return "anywhere"
	case ScopeDM:
		return "dm"
	case ScopeRoom:
		return "room"
	default:
		return "unknown"
	}
}

// Command is one command of the Custodian bot. Core commands are invoked by name ("!help");
// a bridge's commands (see [CommandProvider]) are grouped under the bridge's ID ("!irc login").
// The core validates commands once at startup and logs and skips any it cannot register (an
// invalid name, a missing handler, a name or alias used twice in the same group).
type Command struct {
	// Name is the command's name: lowercase letters, digits, "-" and "_". It is unique within its
	// group; as part of "<group> <name>" it is the key of bot.command_power_levels.
	Name string
	// Aliases are other names that invoke the command. They share the name space of Name.
	Aliases []string
	// Args is the usage shown in help: "<required> [optional]". Empty means no arguments.
	Args string
	// Help is a one-line description, in Markdown, shown in help.
	Help string
	// Scope says where the command may be used; the zero value allows it anywhere.
	Scope CommandScope
	// RoomConfig marks a command that changes the room's configuration. The sender needs the
	// power level bot.command_power_levels sets for it, or by default the level the room requires
	// for state events (state_default). The check runs before Handler.
	RoomConfig bool
	// Sensitive marks a command whose message carries a secret. The bot redacts the message as
	// soon as it is read, before any other check, and does not run the command if it cannot.
	// The core never logs the arguments of any command, sensitive or not.
	Sensitive bool
	// Handler runs the command. It is called on the room's event goroutine, so events of the
	// same room wait for it; commands in different rooms run concurrently. It must be idempotent
	// on ce.Event.ID, because after a crash the same command may run again: [CommandEvent.Reply]
	// and [CommandEvent.TxnID] make Matrix sends safe to repeat. A [UserError] is shown to the
	// sender as is; any other error is logged by the core and the sender is told that something
	// went wrong.
	Handler func(ctx context.Context, ce *CommandEvent) error
}

// CommandEvent is one invocation of a [Command], handed to its Handler.
type CommandEvent struct {
	// Event is the m.room.message event that carried the command.
	Event *event.Event
	// RoomID is the room the command was sent in; Sender is who sent it.
	RoomID id.RoomID
	Sender id.UserID
	// Group is the ID of the bridge the command belongs to, or "" for a core command.
	Group string
	// Command is the command's Name, even if it was invoked through an alias.
	Command string
	// Args are the words after the command, split on white space; RawArgs is the same text
	// unsplit, with leading white space removed. For a Sensitive command they hold the secret:
	// never log them.
	Args    []string
	RawArgs string
	// IsDM is true in a direct chat with the bot.
	IsDM bool

	bot     *botHost
	replies int
}

// FullName returns the command as it is invoked, without prefix: "help" or "irc login". It is
// also the key of bot.command_power_levels.
func (ce *CommandEvent) FullName() string {
	return commandKey(ce.Group, ce.Command)
}

// Prefix returns the command prefix the sender has to type in this room: the configured prefix,
// or "" in a direct chat with the bot, where the prefix is optional.
func (ce *CommandEvent) Prefix() string {
	if ce.IsDM {
		return ""
	}
	return ce.bot.prefix()
}

// TxnID returns a Matrix transaction ID for a send this command causes, unique per purpose
// ("reply-1", "room-state") and stable across runs: pass it in mautrix.ReqSendEvent so that
// running the same command again after a crash does not send twice. Purposes starting with
// "reply-" are used by Reply.
func (ce *CommandEvent) TxnID(purpose string) string {
	return TxnIDFor(ce.Event.ID, "command:"+purpose)
}

// Reply sends markdown as an m.notice (with HTML) in reply to the command, in the command's
// thread if it was sent in one. Raw HTML in markdown is escaped, not rendered. Each call on one
// CommandEvent sends a distinct message whose transaction ID is derived from the command event
// and the call's position, so a handler that runs again after a crash and replies the same way
// does not post twice. Replies carry secrets (links, tokens), so, like every sensitive send
// ([SendMessageSensitive]), one is never logged, and is refused with [ErrNoEncryption] rather
// than sent in plaintext into an encrypted room while encryption is unavailable. Reply blocks
// until the homeserver accepted the message; it is not safe for concurrent use.
func (ce *CommandEvent) Reply(ctx context.Context, markdown string) error {
	ce.replies++
	content := format.RenderMarkdown(markdown, true, false)
	content.MsgType = event.MsgNotice
	content.EnsureHasHTML()
	content.SetReply(ce.Event)
	if root := ce.Event.Content.AsMessage().RelatesTo.GetThreadParent(); root != "" {
		// Answer in the thread the command was sent in.
		content.RelatesTo.SetThread(root, "")
	}
	_, err := SendMessageSensitive(ctx, ce.bot.svc.as.BotIntent().Client, ce.RoomID, event.EventMessage, &content, ce.TxnID(fmt.Sprintf("reply-%d", ce.replies)))
	if err != nil {
		return fmt.Errorf("failed to send command reply: %w", err)
	}
	return nil
}

// UserError is an error whose Message is meant for the person who sent a command. When a
// command's Handler returns one (possibly wrapped), the bot replies with Message and the core
// does not treat it as a failure; Err, if set, is logged at debug level.
type UserError struct {
	// Message is Markdown shown to the user. It must not contain secrets.
	Message string
	// Err is the underlying cause, for the log; may be nil.
	Err error
}

// UserErrorf returns a [UserError] whose Message is fmt.Sprintf(format, args...).
func UserErrorf(format string, args ...any) *UserError {
	return &UserError{Message: fmt.Sprintf(format, args...)}
}

// Error returns the message and the cause, if any.
func (e *UserError) Error() string {
	if e.Err != nil {
		return e.Message + ": " + e.Err.Error()
	}
	return e.Message
}

// Unwrap returns the underlying cause, or nil.
func (e *UserError) Unwrap() error { return e.Err }

// commandSet is the commands of one group: the core's ("") or one bridge's.
type commandSet struct {
	group  string
	list   []*Command          // sorted by name
	byName map[string]*Command // names and aliases
}

var commandNameRegex = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)

// newCommandSet validates cmds and indexes them. Invalid or duplicate commands are left out and
// reported in the returned error; the set is usable either way.
func newCommandSet(group string, cmds []*Command) (*commandSet, error) {
	cs := &commandSet{group: group, byName: make(map[string]*Command)}
	var errs []error
	for _, cmd := range cmds {
		if cmd == nil {
			continue
		}
		if err := cs.add(cmd); err != nil {
			errs = append(errs, err)
		}
	}
	slices.SortFunc(cs.list, func(a, b *Command) int { return strings.Compare(a.Name, b.Name) })
	return cs, errors.Join(errs...)
}

func (cs *commandSet) add(cmd *Command) error {
	key := commandKey(cs.group, cmd.Name)
	switch {
	case !commandNameRegex.MatchString(cmd.Name):
		return fmt.Errorf("command %q: invalid name", key)
	case cmd.Handler == nil:
		return fmt.Errorf("command %q: no handler", key)
	case cmd.Scope < ScopeAnywhere || cmd.Scope > ScopeRoom:
		return fmt.Errorf("command %q: invalid scope %d", key, cmd.Scope)
	}
	names := append([]string{cmd.Name}, cmd.Aliases...)
	for i, name := range names {
		if !commandNameRegex.MatchString(name) {
			return fmt.Errorf("command %q: invalid alias %q", key, name)
		} else if _, taken := cs.byName[name]; taken || slices.Contains(names[:i], name) {
			return fmt.Errorf("command %q: name %q is already taken", key, name)
		}
	}
	for _, name := range names {
		cs.byName[name] = cmd
	}
	cs.list = append(cs.list, cmd)
	return nil
}

// commandRegistry holds every command of the bot: the core's and each bridge's group.
type commandRegistry struct {
	core     *commandSet
	groups   map[string]*commandSet
	groupIDs []string // sorted
}

// newCommandRegistry builds the registry. Groups whose ID collides with a core command name are
// left out. Problems are reported in the returned error; the registry is usable either way.
func newCommandRegistry(core []*Command, groups map[string][]*Command) (*commandRegistry, error) {
	reg := &commandRegistry{groups: make(map[string]*commandSet)}
	var errs []error
	var err error
	reg.core, err = newCommandSet("", core)
	if err != nil {
		errs = append(errs, err)
	}
	for groupID, cmds := range groups {
		if _, taken := reg.core.byName[groupID]; taken {
			errs = append(errs, fmt.Errorf("command group %q: the name is taken by a core command", groupID))
			continue
		} else if !commandNameRegex.MatchString(groupID) {
			errs = append(errs, fmt.Errorf("command group %q: invalid name", groupID))
			continue
		}
		cs, err := newCommandSet(groupID, cmds)
		if err != nil {
			errs = append(errs, err)
		}
		if len(cs.list) > 0 {
			reg.groups[groupID] = cs
			reg.groupIDs = append(reg.groupIDs, groupID)
		}
	}
	slices.Sort(reg.groupIDs)
	return reg, errors.Join(errs...)
}

func (reg *commandRegistry) isGroup(word string) bool {
	_, ok := reg.groups[word]
	return ok
}

// parsedCommand is a message split into command words and arguments, not yet looked up.
type parsedCommand struct {
	// Group is a bridge ID if the first word named a command group, else "".
	Group string
	// Name is the lowercased command word as typed (maybe an alias). It is "" if the message
	// named only a group ("!irc").
	Name    string
	Args    []string
	RawArgs string
}

// parseCommand splits text into a command. With prefixOptional (a direct chat with the bot) any
// text is a command, with or without prefix; otherwise text must start with prefix, immediately
// followed by the command. isGroup says whether a word is a command group's ID. It reports
// false if text is not a command.
func parseCommand(text, prefix string, prefixOptional bool, isGroup func(string) bool) (parsedCommand, bool) {
	rest, hadPrefix := cutPrefixFold(text, prefix)
	if prefix == "" || !hadPrefix {
		if !prefixOptional {
			return parsedCommand{}, false
		}
		rest = text
	} else if !prefixOptional && (rest == "" || unicode.IsSpace([]rune(rest)[0])) {
		return parsedCommand{}, false
	}
	first, rest := cutWord(rest)
	if first == "" {
		return parsedCommand{}, false
	}
	var pc parsedCommand
	first = strings.ToLower(first)
	if isGroup != nil && isGroup(first) {
		pc.Group = first
		first, rest = cutWord(rest)
		first = strings.ToLower(first)
	}
	pc.Name = first
	pc.RawArgs = rest
	pc.Args = strings.Fields(rest)
	return pc, true
}

// cutPrefixFold is strings.CutPrefix ignoring case.
func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || !strings.EqualFold(s[:len(prefix)], prefix) {
		return s, false
	}
	return s[len(prefix):], true
}

// cutWord returns the first white-space separated word of s and the rest of s after it, with
// leading white space removed from both.
func cutWord(s string) (word, rest string) {
	s = strings.TrimLeftFunc(s, unicode.IsSpace)
	end := strings.IndexFunc(s, unicode.IsSpace)
	if end < 0 {
		return s, ""
	}
	return s[:end], strings.TrimLeftFunc(s[end:], unicode.IsSpace)
}

// lookup returns the command pc names, or nil.
func (reg *commandRegistry) lookup(pc parsedCommand) *Command {
	cs := reg.core
	if pc.Group != "" {
		cs = reg.groups[pc.Group]
	}
	if cs == nil {
		return nil
	}
	return cs.byName[pc.Name]
}

// suggest returns the full name of the known command closest to what pc asked for, and whether
// that command is sensitive; "" if nothing is close enough to be a likely typo.
func (reg *commandRegistry) suggest(pc parsedCommand) (string, bool) {
	type candidate struct {
		name string
		cmd  *Command
	}
	var candidates []candidate
	if pc.Group != "" {
		if cs := reg.groups[pc.Group]; cs != nil {
			for name, cmd := range cs.byName {
				candidates = append(candidates, candidate{name, cmd})
			}
		}
	} else {
		for name, cmd := range reg.core.byName {
			candidates = append(candidates, candidate{name, cmd})
		}
		for _, groupID := range reg.groupIDs {
			candidates = append(candidates, candidate{groupID, nil})
		}
	}
	maxDist := 2
	if len([]rune(pc.Name)) <= 3 {
		maxDist = 1
	}
	best, bestDist := candidate{}, maxDist+1
	for _, c := range candidates {
		d := editDistance(pc.Name, c.name)
		if d < bestDist || (d == bestDist && c.name < best.name) {
			best, bestDist = c, d
		}
	}
	if best.name == "" {
		return "", false
	}
	return commandKey(pc.Group, best.name), best.cmd != nil && best.cmd.Sensitive
}

// sensitive reports whether pc names a Sensitive command or, naming none, is a likely typo of
// one.
func (reg *commandRegistry) sensitive(pc parsedCommand) bool {
	if cmd := reg.lookup(pc); cmd != nil {
		return cmd.Sensitive
	}
	_, sensitive := reg.suggest(pc)
	return sensitive
}

// editDistance is the optimal string alignment distance between a and b: insertions, deletions,
// substitutions and transpositions of adjacent runes each count 1.
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev2 := make([]int, len(rb)+1)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(rb)]
}

func commandKey(group, name string) string {
	if group == "" {
		return name
	}
	if name == "" {
		return group
	}
	return group + " " + name
}

// commandPower compares user's power level in a room with power levels pl to the level the room
// configuration command key needs: the configured override for key, else the room's
// state_default.
func commandPower(overrides map[string]int, key string, pl *event.PowerLevelsEventContent, user id.UserID) (have, required int, ok bool) {
	required, configured := overrides[key]
	if !configured {
		required = pl.StateDefault()
	}
	have = pl.GetUserLevel(user)
	return have, required, have >= required
}

// handleMessage runs the command an m.room.message carries, if any, and removes a message that
// carries a secret (see [SecretDetector]) whether or not it runs as a command.
//
// Commands run only from new m.text messages. A secret in an edit, a notice, an emote or a media
// caption is redacted and the sender is asked to send the command as a new message. An edit is
// not run because it does not make a new command: clients show it in place of the message it
// edits, so running it would run one message's command twice (once per version), and its earlier
// versions stay in the edit history for anyone in the room. The original needs no redaction
// here: it went through this same path when it arrived and was redacted then if it carried a
// secret. Redacting the edit restores the original's text in clients.
func (bh *botHost) handleMessage(ctx context.Context, evt *event.Event) error {
	content, ok := evt.Content.Parsed.(*event.MessageEventContent)
	if !ok {
		return nil
	}
	// Messages another bridge sends on behalf of a user (double puppeting) were typed on some
	// other network, not to us.
	if _, puppeted := evt.Content.Raw["fi.mau.double_puppet_source"]; puppeted || bh.svc.isOwnUser(evt.Sender) {
		return nil
	}
	if !bh.svc.botInRoom(ctx, evt.RoomID) {
		return nil
	}
	secret := bh.carriesSecret(evt)
	isEdit := content.RelatesTo.GetReplaceID() != ""
	if !isEdit && content.MsgType == event.MsgText {
		isDM, err := bh.isDM(ctx, evt.RoomID, evt.Sender)
		if err != nil {
			return err
		}
		pc, ok := parseCommand(commandBody(content), bh.prefix(), isDM, bh.commands.isGroup)
		// A command that is not sensitive itself does not run if another line of the message
		// carries a secret ("!help" above "!irc login …"): the message is withheld instead.
		if ok && (!secret || bh.commands.sensitive(pc)) {
			ce := &CommandEvent{
				Event:   evt,
				RoomID:  evt.RoomID,
				Sender:  evt.Sender,
				Group:   pc.Group,
				Command: pc.Name,
				Args:    pc.Args,
				RawArgs: pc.RawArgs,
				IsDM:    isDM,
				bot:     bh,
			}
			if isDM {
				ctx = bh.svc.useAsManagementRoom(ctx, evt.Sender, evt.RoomID)
			}
			return bh.runCommand(ctx, ce, pc)
		}
	}
	if !secret {
		return nil
	}
	return bh.withholdSecret(ctx, evt, isEdit)
}

// commandBody returns the text of an m.text message the bot runs as a command: its body without
// the reply fallback, with leading white space and invisible format characters trimmed.
func commandBody(content *event.MessageEventContent) string {
	text := content.Body
	if content.RelatesTo.GetReplyTo() != "" {
		text = event.TrimReplyFallbackText(text)
	}
	return strings.TrimLeftFunc(text, func(r rune) bool { return unicode.IsSpace(r) || isFormatChar(r) })
}

// withholdSecret redacts a message that carries a secret but does not run as a command, and
// tells its sender why.
func (bh *botHost) withholdSecret(ctx context.Context, evt *event.Event, isEdit bool) error {
	ce := &CommandEvent{Event: evt, RoomID: evt.RoomID, Sender: evt.Sender, bot: bh}
	zerolog.Ctx(ctx).Debug().Bool("edit", isEdit).Msg("Withholding a message that carries a secret")
	if err := bh.redactCommand(ctx, ce); err != nil {
		replyErr := ce.Reply(ctx, "Your message looks like it carries a secret, and I could not remove it. "+
			"Please redact it yourself, and treat the secret as exposed.")
		return errors.Join(err, replyErr)
	}
	if isEdit {
		return ce.Reply(ctx, "I removed your edit because it looks like it carries a secret, and I did not run it: "+
			"I only run commands from new messages. Please send the command again as a new message.")
	}
	return ce.Reply(ctx, "I removed your message because it looks like it carries a secret. "+
		"To run a command, send it as a plain text message of its own.")
}

// carriesSecret reports whether evt carries a secret by the one definition of [SecretDetector],
// for the bot's registered commands. The dispatcher withholds such messages from bridges, so a
// credential typed into a bridged room never leaves Matrix.
func (bh *botHost) carriesSecret(evt *event.Event) bool {
	return carriesSecret(bh.commands, bh.prefix(), evt)
}

// isDM reports whether roomID is a direct chat between the bot and sender: its joined members,
// read when the command runs, are exactly those two (invariant 9). The invite's is_direct flag
// can only narrow this: a room the bot was invited to as a group room (a private room of one
// user and the bot, say for their webhooks) stays a group room.
func (bh *botHost) isDM(ctx context.Context, roomID id.RoomID, sender id.UserID) (bool, error) {
	// A room known to be no direct chat is none whatever its setup says: no database read.
	if notDirect, _ := bh.svc.directChats.lookup(roomID, bh.svc.now()); notDirect {
		return false, nil
	}
	setup, err := bh.svc.db.BotSetup.Get(ctx, roomID, bh.svc.as.BotMXID())
	if err != nil {
		return false, err
	} else if setup != nil && !setup.IsDirect {
		return false, nil
	}
	return bh.svc.isDirectChat(ctx, roomID, sender)
}

// runCommand looks up and runs one parsed command, replying to the sender with what went wrong
// when it cannot run.
func (bh *botHost) runCommand(ctx context.Context, ce *CommandEvent, pc parsedCommand) error {
	log := zerolog.Ctx(ctx)
	if pc.Name == "" {
		// "!irc" alone: show the group's commands.
		return ce.Reply(ctx, bh.groupHelp(bh.commands.groups[pc.Group], ce.Prefix()))
	}
	cmd := bh.commands.lookup(pc)
	if cmd == nil {
		return bh.replyUnknownCommand(ctx, ce, pc)
	}
	ce.Command = cmd.Name
	ctx = log.With().Str("command", ce.FullName()).Logger().WithContext(ctx)
	log = zerolog.Ctx(ctx)
	log.Debug().Bool("is_dm", ce.IsDM).Msg("Running command")

	if cmd.Sensitive {
		if err := bh.redactCommand(ctx, ce); err != nil {
			replyErr := ce.Reply(ctx, "I could not remove your message, which carries a secret, so I did not run "+
				format.SafeMarkdownCode(ce.FullName())+". Please redact it yourself, and treat the secret as exposed.")
			return errors.Join(err, replyErr)
		}
	}
	switch {
	case cmd.Scope == ScopeDM && !ce.IsDM:
		return ce.Reply(ctx, format.SafeMarkdownCode(ce.FullName())+" only works in a direct chat with me.")
	case cmd.Scope == ScopeRoom && ce.IsDM:
		return ce.Reply(ctx, format.SafeMarkdownCode(ce.FullName())+" only works in a group room, not in a direct chat with me.")
	}
	if cmd.RoomConfig {
		if allowed, err := bh.checkCommandPower(ctx, ce); err != nil || !allowed {
			return err
		}
	}

	bh.svc.recordActivity(ctx, ce)
	err := cmd.Handler(ctx, ce)
	if err == nil {
		return nil
	}
	var userErr *UserError
	if errors.As(err, &userErr) {
		if userErr.Err != nil {
			log.Debug().Err(userErr.Err).Msg("Command failed with a user error")
		}
		return ce.Reply(ctx, userErr.Message)
	}
	replyErr := ce.Reply(ctx, "Something went wrong, the error was logged (event "+format.SafeMarkdownCode(ce.Event.ID)+").")
	return errors.Join(fmt.Errorf("command %s failed: %w", ce.FullName(), err), replyErr)
}

// redactCommand redacts the command's message. The transaction ID makes a repeat harmless.
func (bh *botHost) redactCommand(ctx context.Context, ce *CommandEvent) error {
	_, err := bh.svc.as.BotIntent().RedactEvent(ctx, ce.RoomID, ce.Event.ID, mautrix.ReqRedact{
		Reason: "The message carried a secret",
		TxnID:  ce.TxnID("redact"),
	})
	if err != nil {
		return fmt.Errorf("failed to redact message carrying a secret: %w", err)
	}
	zerolog.Ctx(ctx).Debug().Msg("Redacted message carrying a secret")
	return nil
}

func (bh *botHost) replyUnknownCommand(ctx context.Context, ce *CommandEvent, pc parsedCommand) error {
	zerolog.Ctx(ctx).Debug().Str("group", pc.Group).Msg("Received unknown command")
	suggestion, sensitive := bh.commands.suggest(pc)
	var redactErr error
	if sensitive {
		// A mistyped "!irc lgoin <password>" carries a secret just as much.
		redactErr = bh.redactCommand(ctx, ce)
	}
	msg := "Unknown command " + format.SafeMarkdownCode(commandKey(pc.Group, pc.Name)) + "."
	if suggestion != "" {
		msg += " Did you mean " + format.SafeMarkdownCode(suggestion) + "?"
	} else if pc.Group != "" {
		msg += " Send " + format.SafeMarkdownCode(ce.Prefix()+"help "+pc.Group) + " for the " + pc.Group + " commands."
	} else {
		msg += " Send " + format.SafeMarkdownCode(ce.Prefix()+"help") + " for the list of commands."
	}
	return errors.Join(redactErr, ce.Reply(ctx, msg))
}

// checkCommandPower reports whether ce's sender has the power level ce's room configuration
// command needs, and tells them if not.
func (bh *botHost) checkCommandPower(ctx context.Context, ce *CommandEvent) (bool, error) {
	pl, err := bh.roomPowerLevels(ctx, ce.RoomID)
	if err != nil {
		replyErr := ce.Reply(ctx, "I could not check your power level in this room, so I did not run "+
			format.SafeMarkdownCode(ce.FullName())+". Please try again later.")
		return false, errors.Join(err, replyErr)
	}
	if have, required, ok := commandPower(bh.svc.cfg.Bot.CommandPowerLevels, ce.FullName(), pl, ce.Sender); !ok {
		zerolog.Ctx(ctx).Debug().Int("required_level", required).Int("user_level", have).
			Msg("Refused room configuration command for lack of power level")
		return false, ce.Reply(ctx, fmt.Sprintf("You need power level %d in this room to use %s (you have %d).",
			required, format.SafeMarkdownCode(ce.FullName()), have))
	}
	return true, nil
}

// roomPowerLevels returns the room's power levels from the state cache, fetching them (and the
// create event, which decides creators' power in room v12+) from the homeserver if missing.
func (bh *botHost) roomPowerLevels(ctx context.Context, roomID id.RoomID) (*event.PowerLevelsEventContent, error) {
	pl, err := bh.svc.stateStore.GetPowerLevels(ctx, roomID)
	if err != nil {
		return nil, fmt.Errorf("failed to get cached power levels: %w", err)
	} else if pl != nil && pl.CreateEvent != nil {
		return pl, nil
	}
	pl, err = bh.svc.as.BotIntent().PowerLevels(ctx, roomID)
	if pl == nil {
		return nil, fmt.Errorf("failed to fetch power levels: %w", err)
	} else if err != nil {
		// Without the create event, creators of v12+ rooms look like ordinary users: that can
		// only refuse a command wrongly, never allow one.
		zerolog.Ctx(ctx).Debug().Err(err).Msg("Failed to fetch create event for power levels")
	}
	return pl, nil
}

// coreHelp formats the overview of every command for !help.
func (bh *botHost) coreHelp(prefix string) string {
	var sb strings.Builder
	if bh.prefix() != "" {
		fmt.Fprintf(&sb, "In rooms, start commands with %s; in a direct chat with me the prefix is optional.\n",
			format.SafeMarkdownCode(bh.prefix()))
	}
	sb.WriteString("Arguments in <angle brackets> are required, those in [square brackets] optional.\n\n")
	sb.WriteString("#### Custodian\n")
	for _, cmd := range bh.commands.core.list {
		writeCommandHelp(&sb, "", cmd, bh.svc.cfg.Bot.CommandPowerLevels)
	}
	if len(bh.commands.groupIDs) > 0 {
		sb.WriteString("\n#### Bridges and bots\n")
		for _, groupID := range bh.commands.groupIDs {
			cs := bh.commands.groups[groupID]
			names := make([]string, len(cs.list))
			for i, cmd := range cs.list {
				names[i] = cmd.Name
			}
			fmt.Fprintf(&sb, "* **%s**: %s. Send %s for details.\n", groupID, strings.Join(names, ", "),
				format.SafeMarkdownCode(prefix+"help "+groupID))
		}
	}
	return sb.String()
}

// groupHelp formats one group's commands in detail; prefix is what the sender has to type.
func (bh *botHost) groupHelp(cs *commandSet, prefix string) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "#### %s commands\nSend them as %s.\n\n", cs.group,
		format.SafeMarkdownCode(prefix+cs.group+" <command> [arguments]"))
	for _, cmd := range cs.list {
		writeCommandHelp(&sb, cs.group, cmd, bh.svc.cfg.Bot.CommandPowerLevels)
	}
	if slices.ContainsFunc(cs.list, func(cmd *Command) bool { return cmd.RoomConfig }) {
		sb.WriteString("\nRoom settings need the power level the room requires for changing its state, unless the administrator set another.\n")
	}
	return sb.String()
}

func writeCommandHelp(sb *strings.Builder, group string, cmd *Command, overrides map[string]int) {
	sb.WriteString("* **")
	sb.WriteString(commandKey(group, cmd.Name))
	sb.WriteString("**")
	if cmd.Args != "" {
		sb.WriteByte(' ')
		sb.WriteString(format.EscapeMarkdown(cmd.Args))
	}
	if cmd.Help != "" {
		sb.WriteString(": ")
		sb.WriteString(cmd.Help)
	}
	var notes []string
	switch cmd.Scope {
	case ScopeDM:
		notes = append(notes, "direct chat only")
	case ScopeRoom:
		notes = append(notes, "group rooms only")
	}
	if cmd.RoomConfig {
		if level, ok := overrides[commandKey(group, cmd.Name)]; ok {
			notes = append(notes, fmt.Sprintf("room setting, power level %d", level))
		} else {
			notes = append(notes, "room setting")
		}
	}
	if cmd.Sensitive {
		notes = append(notes, "I delete your message as soon as I read it")
	}
	if len(cmd.Aliases) > 0 {
		notes = append(notes, "also "+strings.Join(cmd.Aliases, ", "))
	}
	if len(notes) > 0 {
		sb.WriteString(" _(")
		sb.WriteString(strings.Join(notes, "; "))
		sb.WriteString(")_")
	}
	sb.WriteByte('\n')
}

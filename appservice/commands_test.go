package appservice

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

func noopCommandHandler(context.Context, *CommandEvent) error { return nil }

// testCommandRegistry is the core commands plus an "irc" group, as the bot would see them.
func testCommandRegistry(t testing.TB) *commandRegistry {
	t.Helper()
	bh := &botHost{}
	reg, err := newCommandRegistry(bh.coreCommands(), map[string][]*Command{
		"irc": {
			{Name: "login", Sensitive: true, Scope: ScopeDM, Handler: noopCommandHandler},
			{Name: "link", RoomConfig: true, Aliases: []string{"bridge"}, Handler: noopCommandHandler},
		},
	})
	if err != nil {
		t.Fatalf("newCommandRegistry failed: %v", err)
	}
	return reg
}

func TestParseCommand(t *testing.T) {
	reg := testCommandRegistry(t)
	tests := []struct {
		name   string
		text   string
		prefix string
		isDM   bool
		want   parsedCommand
		wantOK bool
	}{
		{name: "prefixed in room", text: "!ping", prefix: "!", want: parsedCommand{Name: "ping", Args: []string{}}, wantOK: true},
		{name: "args ignored by parser", text: "!ping 17", prefix: "!", want: parsedCommand{Name: "ping", Args: []string{"17"}, RawArgs: "17"}, wantOK: true},
		{name: "case folded", text: "!PiNg", prefix: "!", want: parsedCommand{Name: "ping", Args: []string{}}, wantOK: true},
		{name: "no prefix in room", text: "ping", prefix: "!", wantOK: false},
		{name: "space after prefix in room", text: "! ping", prefix: "!", wantOK: false},
		{name: "prefix alone in room", text: "!", prefix: "!", wantOK: false},
		{name: "plain chat in room", text: "hello there", prefix: "!", wantOK: false},
		{name: "prefix mid-text", text: "say !ping", prefix: "!", wantOK: false},
		{name: "no prefix in DM", text: "help", prefix: "!", isDM: true, want: parsedCommand{Name: "help", Args: []string{}}, wantOK: true},
		{name: "prefix in DM", text: "!help irc", prefix: "!", isDM: true, want: parsedCommand{Name: "help", Args: []string{"irc"}, RawArgs: "irc"}, wantOK: true},
		{name: "empty DM message", text: "   ", prefix: "!", isDM: true, wantOK: false},
		{name: "multi-char prefix", text: "c/ping", prefix: "c/", want: parsedCommand{Name: "ping", Args: []string{}}, wantOK: true},
		{
			name: "bridge group", text: "!irc login libera  hunter2 ", prefix: "!",
			want:   parsedCommand{Group: "irc", Name: "login", Args: []string{"libera", "hunter2"}, RawArgs: "libera  hunter2 "},
			wantOK: true,
		},
		{name: "group in DM without prefix", text: "IRC Link #chan", prefix: "!", isDM: true, want: parsedCommand{Group: "irc", Name: "link", Args: []string{"#chan"}, RawArgs: "#chan"}, wantOK: true},
		{name: "group alone", text: "!irc", prefix: "!", want: parsedCommand{Group: "irc", Args: []string{}}, wantOK: true},
		{name: "multi-line", text: "!setup\nplease", prefix: "!", want: parsedCommand{Name: "setup", Args: []string{"please"}, RawArgs: "please"}, wantOK: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := parseCommand(tt.text, tt.prefix, tt.isDM, reg.isGroup)
			if ok != tt.wantOK {
				t.Fatalf("parseCommand(%q) ok = %v, want %v", tt.text, ok, tt.wantOK)
			}
			if !ok {
				return
			}
			if got.Group != tt.want.Group || got.Name != tt.want.Name || got.RawArgs != tt.want.RawArgs || !slices.Equal(got.Args, tt.want.Args) {
				t.Errorf("parseCommand(%q) = %+v, want %+v", tt.text, got, tt.want)
			}
		})
	}
}

func TestCommandLookupAndSuggest(t *testing.T) {
	reg := testCommandRegistry(t)
	tests := []struct {
		name          string
		in            parsedCommand
		wantFound     string // full name of the command found, "" if none
		wantSuggest   string
		wantSensitive bool
	}{
		{name: "core", in: parsedCommand{Name: "ping"}, wantFound: "ping"},
		{name: "group command", in: parsedCommand{Group: "irc", Name: "login"}, wantFound: "irc login"},
		{name: "alias", in: parsedCommand{Group: "irc", Name: "bridge"}, wantFound: "irc link"},
		{name: "group command is not core", in: parsedCommand{Name: "login"}},
		{name: "typo", in: parsedCommand{Name: "hlep"}, wantSuggest: "help"},
		{name: "missing letter", in: parsedCommand{Name: "stup"}, wantSuggest: "setup"},
		{name: "group typo", in: parsedCommand{Name: "irq"}, wantSuggest: "irc"},
		{name: "typo of sensitive command", in: parsedCommand{Group: "irc", Name: "lgoin"}, wantSuggest: "irc login", wantSensitive: true},
		{name: "typo of alias", in: parsedCommand{Group: "irc", Name: "bridg"}, wantSuggest: "irc bridge"},
		{name: "nothing close", in: parsedCommand{Name: "foo"}},
		{name: "nothing close in group", in: parsedCommand{Group: "irc", Name: "weather"}},
		{name: "short word", in: parsedCommand{Name: "x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := reg.lookup(tt.in)
			var found string
			if cmd != nil {
				found = commandKey(tt.in.Group, cmd.Name)
			}
			if found != tt.wantFound {
				t.Errorf("lookup(%+v) = %q, want %q", tt.in, found, tt.wantFound)
			}
			if cmd != nil {
				return
			}
			suggestion, sensitive := reg.suggest(tt.in)
			if suggestion != tt.wantSuggest || sensitive != tt.wantSensitive {
				t.Errorf("suggest(%+v) = %q, %v; want %q, %v", tt.in, suggestion, sensitive, tt.wantSuggest, tt.wantSensitive)
			}
		})
	}
}

func TestEditDistance(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"", "", 0},
		{"help", "help", 0},
		{"", "abc", 3},
		{"hlep", "help", 1},
		{"hep", "help", 1},
		{"kitten", "sitting", 3},
		{"pnig", "ping", 1},
		{"über", "uber", 1},
	}
	for _, tt := range tests {
		if got := editDistance(tt.a, tt.b); got != tt.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestNewCommandRegistryRejectsBadCommands(t *testing.T) {
	ok := &Command{Name: "fine", Handler: noopCommandHandler}
	tests := []struct {
		name     string
		core     []*Command
		groups   map[string][]*Command
		wantErr  string
		wantCore []string
		wantIDs  []string
	}{
		{name: "valid", core: []*Command{ok}, groups: map[string][]*Command{"irc": {ok}}, wantCore: []string{"fine"}, wantIDs: []string{"irc"}},
		{name: "no handler", core: []*Command{ok, {Name: "broken"}}, wantErr: "no handler", wantCore: []string{"fine"}},
		{name: "bad name", core: []*Command{{Name: "Has Space", Handler: noopCommandHandler}}, wantErr: "invalid name"},
		{name: "duplicate", core: []*Command{ok, {Name: "other", Aliases: []string{"fine"}, Handler: noopCommandHandler}}, wantErr: "already taken", wantCore: []string{"fine"}},
		{name: "group shadows core", core: []*Command{ok}, groups: map[string][]*Command{"fine": {ok}}, wantErr: "taken by a core command", wantCore: []string{"fine"}},
		{name: "empty group dropped", core: []*Command{ok}, groups: map[string][]*Command{"feeds": nil}, wantCore: []string{"fine"}},
		{name: "bad scope", core: []*Command{{Name: "x", Scope: 7, Handler: noopCommandHandler}}, wantErr: "invalid scope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg, err := newCommandRegistry(tt.core, tt.groups)
			if tt.wantErr == "" && err != nil {
				t.Fatalf("newCommandRegistry() error = %v, want nil", err)
			} else if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("newCommandRegistry() error = %v, want one containing %q", err, tt.wantErr)
			}
			var core []string
			for _, cmd := range reg.core.list {
				core = append(core, cmd.Name)
			}
			if !slices.Equal(core, tt.wantCore) || !slices.Equal(reg.groupIDs, tt.wantIDs) {
				t.Errorf("registry has core %v, groups %v; want %v, %v", core, reg.groupIDs, tt.wantCore, tt.wantIDs)
			}
		})
	}
}

func TestInviteAllowed(t *testing.T) {
	const own = "example.org"
	tests := []struct {
		name    string
		policy  InvitePolicy
		inviter id.UserID
		want    bool
	}{
		{name: "default allows own server", inviter: "@alice:example.org", want: true},
		{name: "default refuses other server", inviter: "@mallory:evil.example", want: false},
		{name: "default refuses lookalike server", inviter: "@mallory:example.org.evil", want: false},
		{name: "malformed user ID", inviter: "alice", want: false},
		{name: "listed user", policy: InvitePolicy{AllowedUsers: []string{"@bob:partner.example"}}, inviter: "@bob:partner.example", want: true},
		{name: "unlisted user once users are listed", policy: InvitePolicy{AllowedUsers: []string{"@bob:partner.example"}}, inviter: "@alice:example.org", want: false},
		{name: "listed server", policy: InvitePolicy{AllowedServers: []string{"partner.example"}}, inviter: "@carol:partner.example", want: true},
		{name: "server case-insensitive", policy: InvitePolicy{AllowedServers: []string{"Partner.Example"}}, inviter: "@carol:partner.example", want: true},
		{name: "own server not implied once servers are listed", policy: InvitePolicy{AllowedServers: []string{"partner.example"}}, inviter: "@alice:example.org", want: false},
		{name: "user or server", policy: InvitePolicy{AllowedUsers: []string{"@bob:partner.example"}, AllowedServers: []string{"example.org"}}, inviter: "@alice:example.org", want: true},
		{name: "server with port", policy: InvitePolicy{AllowedServers: []string{"hs.example:8448"}}, inviter: "@dave:hs.example:8448", want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := inviteAllowed(tt.policy, own, tt.inviter); got != tt.want {
				t.Errorf("inviteAllowed(%+v, %q) = %v, want %v", tt.policy, tt.inviter, got, tt.want)
			}
		})
	}
}

func TestInviteRejectReason(t *testing.T) {
	tests := []struct {
		policy InvitePolicy
		want   string
	}{
		{InvitePolicy{}, "Custodian only accepts invites from users of example.org"},
		{InvitePolicy{AllowedServers: []string{"a.example", "b.example"}}, "Custodian only accepts invites from users of a.example, b.example"},
		{InvitePolicy{AllowedUsers: []string{"@secret:example.org"}}, "Custodian only accepts invites from approved users"},
		{InvitePolicy{AllowedUsers: []string{"@x:y"}, AllowedServers: []string{"a.example"}}, "Custodian only accepts invites from approved users and users of a.example"},
	}
	for _, tt := range tests {
		if got := inviteRejectReason(tt.policy, "example.org"); got != tt.want {
			t.Errorf("inviteRejectReason(%+v) = %q, want %q", tt.policy, got, tt.want)
		}
	}
}

func TestCommandPower(t *testing.T) {
	const (
		alice   = id.UserID("@alice:example.org")
		bob     = id.UserID("@bob:example.org")
		creator = id.UserID("@creator:example.org")
	)
	level := func(n int) *int { return &n }
	create := func(version string) *event.Event {
		evt := &event.Event{Type: event.StateCreate, Sender: creator}
		raw, _ := json.Marshal(map[string]any{"room_version": version})
		evt.Content.VeryRaw = raw
		if err := evt.Content.ParseRaw(event.StateCreate); err != nil {
			t.Fatal(err)
		}
		return evt
	}
	tests := []struct {
		name      string
		overrides map[string]int
		key       string
		pl        *event.PowerLevelsEventContent
		user      id.UserID
		wantReq   int
		wantOK    bool
	}{
		{name: "default state_default is 50", key: "irc link", pl: &event.PowerLevelsEventContent{Users: map[id.UserID]int{alice: 50}}, user: alice, wantReq: 50, wantOK: true},
		{name: "below state_default", key: "irc link", pl: &event.PowerLevelsEventContent{Users: map[id.UserID]int{alice: 50}}, user: bob, wantReq: 50, wantOK: false},
		{name: "room's own state_default", key: "irc link", pl: &event.PowerLevelsEventContent{StateDefaultPtr: level(10), UsersDefault: 10}, user: bob, wantReq: 10, wantOK: true},
		{name: "override raises", overrides: map[string]int{"irc link": 100}, key: "irc link", pl: &event.PowerLevelsEventContent{Users: map[id.UserID]int{alice: 50}}, user: alice, wantReq: 100, wantOK: false},
		{name: "override lowers to zero", overrides: map[string]int{"irc link": 0}, key: "irc link", pl: &event.PowerLevelsEventContent{}, user: bob, wantReq: 0, wantOK: true},
		{name: "override for another command", overrides: map[string]int{"webhook add": 0}, key: "irc link", pl: &event.PowerLevelsEventContent{}, user: bob, wantReq: 50, wantOK: false},
		{name: "room v12 creator", key: "irc link", pl: &event.PowerLevelsEventContent{CreateEvent: create("12")}, user: creator, wantReq: 50, wantOK: true},
		{name: "room v11 creator has no implicit power", key: "irc link", pl: &event.PowerLevelsEventContent{CreateEvent: create("11")}, user: creator, wantReq: 50, wantOK: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, required, ok := commandPower(tt.overrides, tt.key, tt.pl, tt.user)
			if required != tt.wantReq || ok != tt.wantOK {
				t.Errorf("commandPower(%v, %q, %s) = %d, %v; want %d, %v", tt.overrides, tt.key, tt.user, required, ok, tt.wantReq, tt.wantOK)
			}
		})
	}
}

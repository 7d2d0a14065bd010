package irc

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/bridges/irc/ircid"
	"github.com/custodian-matrix/custodian/bridges/irc/irctest"
)

func TestGlobMatch(t *testing.T) {
	tests := []struct {
		pattern, s string
		want       bool
	}{
		{"*", "#anything", true},
		{"#libera-*", "#libera-offtopic", true},
		{"#libera-*", "#libera", false},
		{"#?ab", "#cab", true},
		{"#?ab", "#ab", false},
		{"#a*b*c", "#axxbyyc", true},
		{"#a*b*c", "#axxbyy", false},
		{"#[x]", "#[x]", true}, // brackets are literal: IRC channels may hold them
		{"*.example.org", "matrix.example.org", true},
		{"*.example.org", "example.org", false},
		{"", "", true},
		{"", "#x", false},
	}
	for _, tt := range tests {
		if got := globMatch(tt.pattern, tt.s); got != tt.want {
			t.Errorf("globMatch(%q, %q) = %v, want %v", tt.pattern, tt.s, got, tt.want)
		}
	}
}

func TestChannelPolicy(t *testing.T) {
	tests := []struct {
		name        string
		allow, deny []string
		channel     string
		want        bool
	}{
		{name: "no patterns", channel: "#any", want: true},
		{name: "allowed", allow: []string{"#ok-*"}, channel: "#OK-Fine", want: true},
		{name: "not on the allow list", allow: []string{"#ok-*"}, channel: "#other", want: false},
		{name: "denied", deny: []string{"#secret*"}, channel: "#SECRETS", want: false},
		{name: "deny wins", allow: []string{"*"}, deny: []string{"#ops"}, channel: "#ops", want: false},
		// Under rfc1459 casemapping [ and { are the same letter.
		{name: "casemapping", deny: []string{"#a{b}"}, channel: "#A[B]", want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nc := &NetworkConfig{Channels: ChannelPolicy{Allow: tt.allow, Deny: tt.deny}}
			n := &network{cfg: nc}
			if got := n.channelAllowed(tt.channel); got != tt.want {
				t.Errorf("channelAllowed(%q) = %v, want %v", tt.channel, got, tt.want)
			}
		})
	}
}

func TestPolicyConfigProblems(t *testing.T) {
	src := "networks:\n  a:\n    address: x:1\n" +
		"    channels: {allow: ['', 'has space'], deny: ['#ok', 'a,b']}\n" +
		"    puppet_servers: ['bad server', '']\n" +
		"    portal_power_levels: {'notauser': 50, '@mod:example.org': 101, '@neg:example.org': -1}\n"
	_, err := decodeConfig(t, src)
	if err == nil {
		t.Fatal("decodeConfig = nil error, want problems")
	}
	for _, want := range []string{
		`networks.a.channels.allow: "" is not a channel pattern`,
		`networks.a.channels.allow: "has space" is not a channel pattern`,
		`networks.a.channels.deny: "a,b" is not a channel pattern`,
		`networks.a.puppet_servers: "bad server" is not a server name pattern`,
		`networks.a.puppet_servers: "" is not a server name pattern`,
		`networks.a.portal_power_levels: "notauser" is not a Matrix user ID`,
		`networks.a.portal_power_levels: the level of @mod:example.org must be from 0 to 100`,
		`networks.a.portal_power_levels: the level of @neg:example.org must be from 0 to 100`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error = %q, want it to mention %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "#ok") {
		t.Errorf("error = %q, complains about a valid pattern", err)
	}
}

func TestDeniedChannelGetsNoPortal(t *testing.T) {
	forEachDialect(t, envConfig{noPortal: true, configure: func(cfg *Config) {
		cfg.Networks[testNet].Channels = ChannelPolicy{Deny: []string{"#private*"}}
	}}, func(t *testing.T, env *testEnv) {
		for channel, want := range map[string]bool{"#privateops": false, "#public": true} {
			localpart, err := ircid.AliasLocalpart(testNet, ircid.RFC1459, channel)
			if err != nil {
				t.Fatal(err)
			}
			got, err := env.br.QueryAlias(env.ctx, id.NewRoomAlias(localpart, "example.org"))
			if err != nil || got != want {
				t.Errorf("QueryAlias(%s) = %v, %v; want %v", channel, got, err, want)
			}
		}
		if p, err := env.br.db.Portal.Get(env.ctx, testNet, "#privateops"); err != nil || p != nil {
			t.Errorf("portal of a denied channel = %+v, %v", p, err)
		}
		res := env.runCommand(testAlice, "link", testNet, "#PrivateOps")
		if !strings.Contains(res.userError, "may not be bridged") {
			t.Errorf("!irc link of a denied channel = %+v, want a refusal", res)
		}
		if p, err := env.br.db.Portal.Get(env.ctx, testNet, "#privateops"); err != nil || p != nil {
			t.Errorf("portal of a denied channel after !irc link = %+v, %v", p, err)
		}
	})
}

func TestPuppetServers(t *testing.T) {
	remote := id.UserID("@eve:remote.example")
	tests := []struct {
		name    string
		servers []string
		want    map[id.UserID]bool
	}{
		{name: "default: this homeserver only", want: map[id.UserID]bool{testBob: true, remote: false}},
		{name: "listed", servers: []string{"example.org", "*.example"}, want: map[id.UserID]bool{testBob: true, remote: true}},
		{name: "another server only", servers: []string{"remote.example"}, want: map[id.UserID]bool{testBob: false, remote: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			forEachDialect(t, envConfig{configure: func(cfg *Config) {
				cfg.Networks[testNet].PuppetServers = tt.servers
			}}, func(t *testing.T, env *testEnv) {
				for user, want := range tt.want {
					p, err := env.br.network(testNet).puppetFor(user, true)
					if want && (err != nil || p == nil) {
						t.Errorf("puppetFor(%s) = %v, %v; want a puppet", user, p, err)
					} else if !want && !errors.Is(err, ErrPuppetNotAllowed) {
						t.Errorf("puppetFor(%s) = %v, %v; want ErrPuppetNotAllowed", user, p, err)
					}
				}
			})
		})
	}
}

func TestRemoteUserIsNotPuppeted(t *testing.T) {
	remote := id.UserID("@eve:remote.example")
	forEachDialect(t, envConfig{configure: func(cfg *Config) { cfg.Networks[testNet].MaxPuppets = 2 }}, func(t *testing.T, env *testEnv) {
		seq := env.srv.Seq()
		for i := 0; i < 3; i++ {
			env.handle(env.message(testPortalRoom, remote, "m.text", "from afar"))
		}
		// Local users still get puppets: the remote one took none of max_puppets.
		env.say(testAlice, "local one")
		env.say(testBob, "local two")
		env.srv.WaitFor(t, irctest.After(seq, irctest.Match("bob[m]", "PRIVMSG", testChannel, "local two")))
		if got := env.srv.Lines(irctest.After(seq, irctest.Match("", "PRIVMSG", testChannel, "from afar"))); len(got) != 0 {
			t.Errorf("a remote user's message reached IRC: %q", got[0].Raw)
		}
		if env.puppet(remote) != nil {
			t.Error("the remote user has a puppet")
		}
		// The remote user is not told: a notice would cost them a users row and a management
		// room on this server each.
		notices := 0
		for _, evt := range env.host.HS.Events("") {
			var c struct{ Body string }
			if evt.Type.Type == "m.room.message" && json.Unmarshal(evt.Content, &c) == nil && strings.Contains(c.Body, "users of remote.example") {
				notices++
			}
		}
		if notices != 0 || len(env.host.Notices(remote)) != 0 || len(env.host.CreatedRooms()) != 0 {
			t.Errorf("%d notices to the remote user, %d rooms created; want none", notices, len(env.host.CreatedRooms()))
		}
	})
}

func TestPortalPowerLevels(t *testing.T) {
	mod := id.UserID("@mod:example.org")
	forEachDialect(t, envConfig{noPortal: true, configure: func(cfg *Config) {
		cfg.Networks[testNet].PortalPowerLevels = map[id.UserID]int{mod: 100, testBob: 50}
	}}, func(t *testing.T, env *testEnv) {
		req := env.br.portalRoomRequest(env.br.network(testNet), "#new", "")
		users := req.PowerLevelOverride.Users
		if len(users) != 3 || users[mod] != 100 || users[testBob] != 50 || users[env.host.BotID()] != 100 {
			t.Errorf("portal power levels = %v, want the bot's and the configured users'", users)
		}
	})
}

// TestPortalPowerLevelsOnJoin: a user listed in portal_power_levels who joins an existing portal
// gets their level there, if the bot may give it; nobody else's level changes.
func TestPortalPowerLevelsOnJoin(t *testing.T) {
	mod := id.UserID("@mod:example.org")
	forEachDialect(t, envConfig{configure: func(cfg *Config) {
		cfg.Networks[testNet].PortalPowerLevels = map[id.UserID]int{mod: 100}
	}}, func(t *testing.T, env *testEnv) {
		env.host.SetPowerLevels(t, testPortalRoom, &event.PowerLevelsEventContent{
			Users: map[id.UserID]int{env.host.BotID(): 100},
		})
		join := func(user id.UserID) {
			stateKey := string(user)
			env.handle(&event.Event{
				ID: env.newEventID(), RoomID: testPortalRoom, Sender: user, Type: event.StateMember, StateKey: &stateKey,
				Content: event.Content{Parsed: &event.MemberEventContent{Membership: event.MembershipJoin}},
			})
		}
		join(testBob)
		join(mod)
		var pl event.PowerLevelsEventContent
		if err := env.host.Bot().StateEvent(env.ctx, testPortalRoom, event.StatePowerLevels, "", &pl); err != nil {
			t.Fatal(err)
		}
		if pl.GetUserLevel(mod) != 100 || pl.GetUserLevel(testBob) != 0 || pl.GetUserLevel(env.host.BotID()) != 100 {
			t.Errorf("power levels after the joins = %v, want mod at 100 and bob unchanged", pl.Users)
		}
	})
}

// TestRemoteUserCannotOpenPrivateChat: a user whose server gets no puppets cannot open a private
// chat by inviting a ghost; the ghost declines, and no private chat is recorded.
func TestRemoteUserCannotOpenPrivateChat(t *testing.T) {
	remote := id.UserID("@eve:remote.example")
	forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
		room := id.RoomID("!eves-dm:remote.example")
		ghost := ghostID(t, "carol")
		env.host.HS.SetMembership(room, remote, event.MembershipJoin)
		env.host.HS.SetMembership(room, ghost, event.MembershipInvite)
		stateKey := string(ghost)
		env.handle(&event.Event{
			ID: env.newEventID(), RoomID: room, Sender: remote, Type: event.StateMember, StateKey: &stateKey,
			Content: event.Content{Parsed: &event.MemberEventContent{Membership: event.MembershipInvite}},
		})
		if got := env.host.HS.Membership(room, ghost); got == event.MembershipJoin {
			t.Error("the ghost accepted the invite of a user whose server gets no puppets")
		}
		if pm, err := env.br.db.PM.GetByRoom(env.ctx, room); err != nil || pm != nil {
			t.Errorf("private chat = %+v, %v; want none", pm, err)
		}
	})
}

package irc

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice"
	"github.com/custodian-matrix/custodian/bridges/irc/ircid"
	"github.com/custodian-matrix/custodian/bridges/irc/irctest"
)

// adminCall sends one request to the bridge's admin routes, mounted as the core mounts them,
// and decodes a 200 answer into out.
func (env *testEnv) adminCall(method, path string, out any) int {
	env.t.Helper()
	mux := http.NewServeMux()
	for _, route := range env.br.AdminRoutes() {
		mux.HandleFunc(route.Method+" "+route.Path, route.Handler)
	}
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(method, path, nil).WithContext(env.ctx))
	if rec.Code == http.StatusOK && out != nil {
		if err := json.Unmarshal(rec.Body.Bytes(), out); err != nil {
			env.t.Fatalf("%s %s answered %s: %v", method, path, rec.Body, err)
		}
	}
	return rec.Code
}

// testAlias is the test portal's channel alias.
func testAlias(t *testing.T) id.RoomAlias {
	localpart, err := ircid.AliasLocalpart(testNet, ircid.RFC1459, testChannel)
	if err != nil {
		t.Fatal(err)
	}
	return id.NewRoomAlias(localpart, "example.org")
}

func TestAdminListPortals(t *testing.T) {
	forEachDialect(t, envConfig{portalActor: testAlice}, func(t *testing.T, env *testEnv) {
		var got AdminPortals
		if code := env.adminCall(http.MethodGet, "/portals", &got); code != http.StatusOK {
			t.Fatalf("GET /portals = %d", code)
		}
		if len(got.Portals) != 1 {
			t.Fatalf("portals = %+v, want the test portal", got.Portals)
		}
		p := got.Portals[0]
		if p.Network != testNet || p.Channel != testChannel || p.RoomID != testPortalRoom || p.Alias != testAlias(t) ||
			p.LinkedBy != testAlice || p.LinkEventID == "" || p.CreatedAt.IsZero() {
			t.Errorf("portal = %+v", p)
		}
	})
}

func TestAdminUnlinkPortal(t *testing.T) {
	refs := map[string]string{
		"room ID":           string(testPortalRoom),
		"the channel alias": "", // filled in below
	}
	for name, ref := range refs {
		t.Run(name, func(t *testing.T) {
			forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
				if ref == "" {
					ref = string(testAlias(t))
				}
				env.say(testBob, "before the unlink")
				env.srv.WaitFor(t, irctest.Match("bob[m]", "PRIVMSG", testChannel, "before the unlink"))
				seq := env.srv.Seq()
				path := "/portals/" + url.PathEscape(ref) + "/unlink"
				var got AdminPortalChange
				if code := env.adminCall(http.MethodPost, path, &got); code != http.StatusOK {
					t.Fatalf("POST %s = %d", path, code)
				}
				if got.Old == nil || got.Old.RoomID != testPortalRoom || got.New != nil {
					t.Errorf("answer = %+v, want the old portal only", got)
				}
				env.srv.WaitFor(t, irctest.After(seq, irctest.Match(testBotNick, "PART", testChannel)))
				if p, err := env.br.db.Portal.GetByRoom(env.ctx, testPortalRoom); err != nil || p != nil {
					t.Errorf("portal after unlink = %+v, %v; want none", p, err)
				}
				if env.host.Claimed(t, testPortalRoom) {
					t.Error("the room is still claimed")
				}
				if !env.aliasDeleted(testAlias(t)) {
					t.Error("the channel's alias was not removed from the unlinked room")
				}
				if code := env.adminCall(http.MethodPost, path, nil); code != http.StatusNotFound {
					t.Errorf("unlink again = %d, want 404", code)
				}
			})
		})
	}
}

func TestAdminResetPortal(t *testing.T) {
	forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
		irc := env.ircUser("dave")
		env.waitMembers(testChannel, "dave")
		// The channel's key survives the reset (the portal row is not re-inserted).
		prov := appservice.Provenance{Actor: testAlice, RoomID: testPortalRoom, EventID: env.newEventID(), At: time.Now()}
		if err := env.br.putChannelKey(env.ctx, env.br.network(testNet), testChannel, []byte("sealed"), prov); err != nil {
			t.Fatal(err)
		}
		seq := env.srv.Seq()
		var got AdminPortalChange
		if code := env.adminCall(http.MethodPost, "/portals/"+url.PathEscape(string(testPortalRoom))+"/reset", &got); code != http.StatusOK {
			t.Fatalf("reset = %d", code)
		}
		if got.Old == nil || got.Old.RoomID != testPortalRoom || got.New == nil || got.New.RoomID == testPortalRoom || got.New.RoomID == "" {
			t.Fatalf("answer = %+v, want the old and a new room", got)
		}
		newRoom := got.New.RoomID
		if p, err := env.br.db.Portal.Get(env.ctx, testNet, testChannel); err != nil || p == nil || p.RoomID != newRoom {
			t.Fatalf("portal after reset = %+v, %v; want it in %s", p, err, newRoom)
		}
		if k, err := env.br.db.ChannelKey.Get(env.ctx, testNet, testChannel); err != nil || k == nil {
			t.Errorf("channel key after reset = %+v, %v; want it kept", k, err)
		}
		if !env.host.Claimed(t, newRoom) || env.host.Claimed(t, testPortalRoom) {
			t.Error("the claim did not move to the new room")
		}
		var tombstone bool
		for _, evt := range env.host.HS.Events(testPortalRoom) {
			if evt.Type == event.StateTombstone && strings.Contains(string(evt.Content), string(newRoom)) {
				tombstone = true
			}
		}
		if !tombstone {
			t.Error("the old room does not point at the new one")
		}
		if got := env.host.HS.Membership(testPortalRoom, env.host.BotID()); got == event.MembershipJoin {
			t.Error("the bot is still in the old room")
		}
		// The channel stays joined, and is bridged to the new room both ways.
		if _, err := env.srv.Find(irctest.After(seq, irctest.Match(testBotNick, "PART", testChannel)), 200*time.Millisecond); err == nil {
			t.Error("the bridge parted the channel at the reset")
		}
		env.host.SetUpRoom(t, newRoom, testBob)
		env.handle(env.message(newRoom, testBob, event.MsgText, "in the new room"))
		env.srv.WaitFor(t, irctest.After(seq, irctest.Match("bob[m]", "PRIVMSG", testChannel, "in the new room")))
		if err := irc.Privmsg(testChannel, "hello new room"); err != nil {
			t.Fatal(err)
		}
		env.waitMessage(newRoom, ghostID(t, "dave"), "hello new room")
	})
}

func TestAdminPortalNotFound(t *testing.T) {
	forEachDialect(t, envConfig{}, func(t *testing.T, env *testEnv) {
		for _, ref := range []string{"!nosuch:example.org", "#irc_testnet_#nosuch:example.org", "#irc_nonet_#test:example.org", "nonsense"} {
			for _, op := range []string{"unlink", "reset"} {
				if code := env.adminCall(http.MethodPost, "/portals/"+url.PathEscape(ref)+"/"+op, nil); code != http.StatusNotFound {
					t.Errorf("%s %s = %d, want 404", op, ref, code)
				}
			}
		}
		if p, err := env.br.db.Portal.GetByRoom(env.ctx, testPortalRoom); err != nil || p == nil {
			t.Errorf("the test portal after failed lookups = %v, %v; want it kept", p, err)
		}
	})
}

// aliasDeleted reports whether the bridge asked the homeserver to delete alias.
func (env *testEnv) aliasDeleted(alias id.RoomAlias) bool {
	for _, req := range env.host.HS.Requests() {
		if req.Method == http.MethodDelete && strings.HasSuffix(req.Path, "/directory/room/"+string(alias)) {
			return true
		}
	}
	return false
}

// TestRedactedLinkFreesAlias: redacting the !irc link command unlinks the room and frees the
// channel's alias, like every other unlink, so the alias makes a new portal next time.
func TestRedactedLinkFreesAlias(t *testing.T) {
	forEachDialect(t, envConfig{portalActor: testAlice}, func(t *testing.T, env *testEnv) {
		seq := env.srv.Seq()
		if purged := env.purgeRedacted(testAlice, testPortalRoom, env.portal.SourceEventID); purged["irc_portal"] != 1 {
			t.Fatalf("purged = %v, want the portal", purged)
		}
		env.srv.WaitFor(t, irctest.After(seq, irctest.Match(testBotNick, "PART", testChannel)))
		if !env.aliasDeleted(testAlias(t)) {
			t.Error("the channel's alias was not freed")
		}
	})
}

package appservice

import (
	"fmt"
	"strings"
	"testing"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/e2ee"
)

// TestRecentSetIsBoundedAndForgetsUsers fills a set past its bound: the least recently used
// key goes first, a key looked up stays, and a user's keys all go when the user is dropped.
func TestRecentSetIsBoundedAndForgetsUsers(t *testing.T) {
	rs := recentSet[string]{max: 3}
	alice, bob := id.UserID("@alice:example.org"), id.UserID("@bob:remote.example")
	rs.add("a", alice)
	rs.add("b", bob)
	rs.add("c", alice)
	if !rs.has("a") { // "a" is now the most recently used; "b" the least
		t.Fatal("a is missing before the set is full")
	}
	rs.add("d", bob)
	tests := []struct {
		key  string
		want bool
	}{{"a", true}, {"b", false}, {"c", true}, {"d", true}}
	for _, tt := range tests {
		if got := rs.has(tt.key); got != tt.want {
			t.Errorf("has(%q) = %v, want %v", tt.key, got, tt.want)
		}
	}
	if rs.len() != 3 {
		t.Errorf("len = %d, want 3", rs.len())
	}
	rs.dropUser(alice)
	if rs.has("a") || rs.has("c") || !rs.has("d") || rs.len() != 1 {
		t.Errorf("after dropping alice: a=%v c=%v d=%v len=%d, want only d", rs.has("a"), rs.has("c"), rs.has("d"), rs.len())
	}
	var big recentSet[int]
	for i := 0; i < 3*recentRefs; i++ {
		big.add(i, id.UserID(fmt.Sprintf("@u%d:s%d.example", i, i%8)))
	}
	if big.len() != recentRefs {
		t.Errorf("default-bounded set holds %d keys, want %d", big.len(), recentRefs)
	}
}

// TestRecentSetBoundsEachSendersShare floods a set with keys of one remote user, then of many
// users of one remote server, each time after local users and another server's user recorded
// theirs: the flood pushes out only its own oldest keys, and holds at most its share.
func TestRecentSetBoundsEachSendersShare(t *testing.T) {
	const home = "example.org"
	alice, bob := id.UserID("@alice:"+home), id.UserID("@bob:"+home)
	carol := id.UserID("@carol:other.example")
	tests := []struct {
		name string
		// flooder returns the user recording the flood's i'th key.
		flooder func(i int) id.UserID
		// share is the most keys the flood may hold.
		share int
	}{
		{name: "one remote user", flooder: func(int) id.UserID { return "@eve:remote.example" }, share: recentPerUser},
		{name: "many users of one server", flooder: func(i int) id.UserID {
			return id.UserID(fmt.Sprintf("@eve%d:remote.example", i%1000))
		}, share: recentPerServer},
		{name: "one local user", flooder: func(int) id.UserID { return "@mallory:" + home }, share: recentPerUser},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs := recentSet[string]{home: home}
			kept := map[string]id.UserID{}
			for i := 0; i < recentPerUser; i++ {
				for _, user := range []id.UserID{alice, bob, carol} {
					key := fmt.Sprintf("%s-%d", user, i)
					rs.add(key, user)
					kept[key] = user
				}
			}
			flood := 3 * recentRefs
			for i := 0; i < flood; i++ {
				rs.add(fmt.Sprintf("flood-%d", i), tt.flooder(i))
			}
			for key := range kept {
				if !rs.has(key) {
					t.Errorf("the flood pushed out %s", key)
				}
			}
			if n := rs.len() - len(kept); n != tt.share {
				t.Errorf("the flood holds %d keys, want its share %d", n, tt.share)
			}
			if !rs.has(fmt.Sprintf("flood-%d", flood-1)) || rs.has("flood-0") {
				t.Error("the flood's newest key is gone or its oldest stayed")
			}
			rs.dropUser(alice)
			if rs.len() != len(kept)-recentPerUser+tt.share {
				t.Errorf("after dropping alice the set holds %d keys, want %d", rs.len(), len(kept)-recentPerUser+tt.share)
			}
		})
	}
	t.Run("the homeserver's users have no server share", func(t *testing.T) {
		rs := recentSet[int]{home: home}
		for i := 0; i < 2*recentPerServer; i++ {
			rs.add(i, id.UserID(fmt.Sprintf("@u%d:%s", i, home)))
		}
		if rs.len() != 2*recentPerServer {
			t.Errorf("the set holds %d keys of distinct local users, want %d", rs.len(), 2*recentPerServer)
		}
	})
}

// TestUndecryptableNoticeNotRepeatedAfterARemoteFlood tells a local user once that their
// message was unreadable; then a remote partner's messages under thousands of new sessions go
// unread (as from a direct chat): the local user's session comes again and they are not told
// a second time.
func TestUndecryptableNoticeNotRepeatedAfterARemoteFlood(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newE2EEEnv(t, astest.TestDB(t, dialect), nil, nil)
			env.setupCrypto()
			group := id.RoomID("!group:example.org")
			local, remote := id.UserID("@bob:"+testDomain), id.UserID("@eve:remote.example")
			for _, user := range []id.UserID{env.svc.as.BotMXID(), local, remote} {
				env.hs.SetMembership(group, user, event.MembershipJoin)
			}
			sends := func() int { return len(env.hs.RequestsTo(astest.PatternSend)) }
			tell := func() {
				evt := &event.Event{Sender: local, RoomID: group, ID: "$bob-S1", Type: event.EventEncrypted}
				env.svc.tellUndecryptable(env.ctx, evt, &event.EncryptedEventContent{SessionID: "S1"})
			}
			before := sends()
			tell()
			if sends() == before {
				t.Fatal("the local sender was not told; the test would prove nothing")
			}
			for i := 0; i < 2*recentRefs; i++ {
				ref := utdRef{sender: remote, sessionRef: sessionRef{room: "!dm:remote.example", session: id.SessionID(fmt.Sprintf("F%d", i))}}
				if !env.svc.e2ee.firstTell(ref) {
					t.Fatalf("the remote partner's session %d was told before", i)
				}
			}
			told := sends()
			tell()
			if n := sends() - told; n != 0 {
				t.Errorf("the local sender was told %d more times after the remote flood, want 0", n)
			}
		})
	}
}

// TestUndecryptableNoticeGoesOnlyToLocalUsersUnderAStableCause tells three senders in a group
// room (not a direct chat) that their message was unreadable: the local user gets a notice, the
// remote one nothing. The notice's cause is the same after a restart and names no one, and an
// erasure drops the user's entries.
func TestUndecryptableNoticeGoesOnlyToLocalUsersUnderAStableCause(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			db := astest.TestDB(t, dialect)
			env := newE2EEEnv(t, db, nil, nil)
			env.setupCrypto()
			group := id.RoomID("!group:example.org")
			local, remote := id.UserID("@bob:"+testDomain), id.UserID("@eve:remote.example")
			for _, user := range []id.UserID{env.svc.as.BotMXID(), e2eeAlice, local, remote} {
				env.hs.SetMembership(group, user, event.MembershipJoin)
			}
			notices := func() int {
				n := 0
				for _, r := range env.hs.Requests() {
					if strings.Contains(r.Path, "/send/") || strings.HasSuffix(r.Path, "/createRoom") {
						n++
					}
				}
				return n
			}
			tell := func(sender id.UserID, session id.SessionID) {
				evt := &event.Event{Sender: sender, RoomID: group, ID: id.EventID(fmt.Sprintf("$%s-%s", sender.Localpart(), session)), Type: event.EventEncrypted}
				env.svc.tellUndecryptable(env.ctx, evt, &event.EncryptedEventContent{SessionID: session})
			}
			before := notices()
			tell(remote, "S1")
			if n := notices(); n != before {
				t.Errorf("a remote sender in a group room caused %d requests, want none", n-before)
			}
			tell(local, "S1")
			if n := notices(); n == before {
				t.Error("the local sender was not told")
			}
			cause, err := env.svc.undecryptableCause(env.ctx, local, group, "S1")
			if err != nil {
				t.Fatal(err)
			}
			for _, name := range []string{"bob", "group", "S1"} {
				if strings.Contains(cause, name) {
					t.Errorf("cause %q names %q", cause, name)
				}
			}
			if other, _ := env.svc.undecryptableCause(env.ctx, local, group, "S2"); other == cause {
				t.Error("two sessions share a cause")
			}
			restarted := newE2EEEnv(t, db, env, nil)
			restarted.setupCrypto()
			if again, err := restarted.svc.undecryptableCause(restarted.ctx, local, group, "S1"); err != nil || again != cause {
				t.Errorf("cause after a restart = %q, %v; want %q", again, err, cause)
			}

			// Every erasure whose scope covers the crypto store drops the user's entries: a full
			// one, and one of the e2ee module alone (!forget e2ee, the admin API with modules).
			ref := utdRef{sender: local, sessionRef: sessionRef{room: group, session: "S1"}}
			for _, modules := range [][]string{{e2ee.Module}, nil} {
				env.svc.e2ee.firstTell(ref)
				if env.svc.e2ee.firstTell(ref) {
					t.Fatal("the told set lost the local sender before the erasure")
				}
				env.svc.e2ee.gaveUp(ref.sessionRef, local, true)
				if _, err := env.svc.engine.Erase(env.ctx, local, EraseRequest{Trigger: TriggerAdmin, Modules: modules}); err != nil {
					t.Fatalf("Erase(%v) = %v", modules, err)
				}
				if env.svc.e2ee.gaveUp(ref.sessionRef, local, false) {
					t.Errorf("after an erasure of %v the erased user's missing session is still remembered", modules)
				}
				if !env.svc.e2ee.firstTell(ref) {
					t.Errorf("after an erasure of %v the erased user's told entry is still remembered", modules)
				}
			}
		})
	}
}

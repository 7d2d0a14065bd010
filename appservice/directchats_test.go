package appservice

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/clock"
	"github.com/custodian-matrix/custodian/appservice/privacy"
)

const botTestCarol = id.UserID("@carol:example.org")

// groupChatEnv is a bot environment where botTestRoom, which alice invited the bot to as a direct
// chat, has a third member, carol. The state cache does not know the room's full member list (so
// the bot asks the homeserver), and the bot has cached that the room is no direct chat by not
// answering an unprefixed command there.
func groupChatEnv(t *testing.T) *botEnv {
	t.Helper()
	env := newBotEnv(t, nil)
	env.svc.clk = clock.NewFake(time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC))
	env.setUpRoom(true, botTestAlice, botTestCarol)
	env.forgetFetchedMembers()
	// The welcome found the room no direct chat by the state cache.
	env.svc.directChats.invalidateAll()
	env.hs.Reset()
	env.assertAnswersUnprefixed(false)
	return env
}

// forgetFetchedMembers makes the state cache not know botTestRoom's full member list.
func (env *botEnv) forgetFetchedMembers() {
	env.t.Helper()
	if _, err := env.svc.rawDB.Exec(env.ctx, `UPDATE mx_room_state SET members_fetched=false WHERE room_id=$1`, botTestRoom); err != nil {
		env.t.Fatal(err)
	}
}

// assertAnswersUnprefixed sends an unprefixed "ping" from alice and checks that the bot answers
// it (the room is a direct chat) or not (a group room, where commands need the prefix).
func (env *botEnv) assertAnswersUnprefixed(want bool) {
	env.t.Helper()
	before := len(env.hs.Messages(botTestRoom))
	env.mustDeliver(env.text(botTestRoom, botTestAlice, "ping"))
	answered := len(env.hs.Messages(botTestRoom)) > before
	if answered != want {
		env.t.Fatalf("bot answered an unprefixed ping: %v, want %v", answered, want)
	}
}

func TestDirectChatVerdictIsCached(t *testing.T) {
	env := groupChatEnv(t)
	asked := len(env.hs.RequestsTo(astest.PatternJoinedMembers))
	if asked != 1 {
		t.Fatalf("the bot asked for the room's members %d times for the first message, want once", asked)
	}
	for range 3 {
		env.assertAnswersUnprefixed(false)
	}
	if got := len(env.hs.RequestsTo(astest.PatternJoinedMembers)); got != asked {
		t.Errorf("the bot asked for the room's members %d more times for three messages, want none (cached)", got-asked)
	}
	// A verdict is computed again after its lifetime.
	env.svc.clk.(*clock.Fake).Advance(directChatVerdictLifetime)
	env.assertAnswersUnprefixed(false)
	if got := len(env.hs.RequestsTo(astest.PatternJoinedMembers)); got != asked+1 {
		t.Errorf("after the verdict's lifetime the bot asked %d times, want once", got-asked)
	}
}

// TestDirectChatVerdictFollowsMembers checks that however the bot learns that the third member
// of a room left, it treats the room as the direct chat it now is at once; and that a direct
// chat is never cached as one, so a room that gains a member is a group room at once, even if
// the bot missed the join.
func TestDirectChatVerdictFollowsMembers(t *testing.T) {
	tests := []struct {
		name  string
		learn func(env *botEnv) error
		want  bool
	}{
		{"nothing learned", func(env *botEnv) error { return nil }, false},
		{"member event handled", func(env *botEnv) error {
			return env.deliver(env.member(botTestRoom, botTestCarol, botTestCarol, event.MembershipLeave, nil))
		}, true},
		{"member list fetched", func(env *botEnv) error {
			_, err := env.svc.as.BotClient().Members(env.ctx, botTestRoom)
			if err == nil {
				// The fetch filled the state cache; the homeserver must still be asked.
				env.forgetFetchedMembers()
			}
			return err
		}, true},
		{"membership recorded by a client call", func(env *botEnv) error {
			return env.svc.stateStore.SetMembership(env.ctx, botTestRoom, botTestCarol, event.MembershipLeave)
		}, true},
		{"cached members cleared", func(env *botEnv) error {
			return env.svc.stateStore.ClearCachedMembers(env.ctx, botTestRoom)
		}, true},
		{"erasure committed", func(env *botEnv) error {
			engineHost{svc: env.svc}.ErasureCommitted(env.ctx, privacy.CommittedErasure{
				JobID: "job-1", User: "@dave:example.org", Modules: []string{"webhook"}, ErasedAt: time.Now(),
			})
			return nil
		}, true},
		{"room state forgotten", func(env *botEnv) error {
			return env.svc.forgetRoomState(env.ctx, botTestRoom)
		}, true},
		{"verdict lifetime passed", func(env *botEnv) error {
			env.svc.clk.(*clock.Fake).Advance(directChatVerdictLifetime)
			return nil
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := groupChatEnv(t)
			env.hs.SetMembership(botTestRoom, botTestCarol, event.MembershipLeave)
			if err := tt.learn(env); err != nil {
				t.Fatal(err)
			}
			env.assertAnswersUnprefixed(tt.want)
			if !tt.want {
				return
			}
			// Now a direct chat: a join the bot has not heard of makes it a group room at once.
			env.hs.SetMembership(botTestRoom, botTestCarol, event.MembershipJoin)
			env.assertAnswersUnprefixed(false)
		})
	}
}

// TestDirectChatVerdictRacingAMemberChange checks that a verdict computed while the room's
// members changed is not kept.
func TestDirectChatVerdictRacingAMemberChange(t *testing.T) {
	env := newBotEnv(t, nil)
	env.setUpRoom(true, botTestAlice, botTestCarol)
	env.forgetFetchedMembers()
	env.svc.directChats.invalidateAll()
	// The homeserver answers "bot, alice and carol"; just after it did, carol leaves, and the
	// bot records her leave while the answer is on its way.
	recorded := false
	env.hs.OnRequest(astest.PatternJoinedMembers, func() {
		if recorded {
			return
		}
		recorded = true
		if err := env.svc.stateStore.SetMembership(context.Background(), botTestRoom, botTestCarol, event.MembershipLeave); err != nil {
			t.Error(err)
		}
	})
	// This message was handled with the answer from before the leave.
	env.assertAnswersUnprefixed(false)
	if !recorded {
		t.Fatal("the bot did not ask the homeserver for the room's members")
	}
	env.hs.SetMembership(botTestRoom, botTestCarol, event.MembershipLeave)
	env.forgetFetchedMembers()
	env.assertAnswersUnprefixed(true)
}

func TestDirectChatsCache(t *testing.T) {
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	room := id.RoomID("!a:example.org")
	other := id.RoomID("!b:example.org")
	tests := []struct {
		name string
		run  func(dc *directChats)
		want bool
	}{
		{"stored", func(dc *directChats) {
			_, token := dc.lookup(room, now)
			dc.store(room, token, now)
		}, true},
		{"room invalidated after storing", func(dc *directChats) {
			_, token := dc.lookup(room, now)
			dc.store(room, token, now)
			dc.invalidate(room)
		}, false},
		{"room invalidated while computing", func(dc *directChats) {
			_, token := dc.lookup(room, now)
			dc.invalidate(room)
			dc.store(room, token, now)
		}, false},
		{"other room invalidated while computing", func(dc *directChats) {
			_, token := dc.lookup(room, now)
			dc.invalidate(other)
			dc.store(room, token, now)
		}, true},
		{"everything invalidated while computing", func(dc *directChats) {
			_, token := dc.lookup(room, now)
			dc.invalidateAll()
			dc.store(room, token, now)
		}, false},
		{"cache emptied while computing after the room changed", func(dc *directChats) {
			_, token := dc.lookup(room, now)
			dc.invalidate(room)
			for i := range maxDirectChatRooms {
				dc.invalidate(id.RoomID(fmt.Sprintf("!r%d:example.org", i)))
			}
			dc.store(room, token, now)
		}, false},
		{"expired", func(dc *directChats) {
			_, token := dc.lookup(room, now.Add(-directChatVerdictLifetime))
			dc.store(room, token, now.Add(-directChatVerdictLifetime))
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var dc directChats
			tt.run(&dc)
			if got, _ := dc.lookup(room, now); got != tt.want {
				t.Errorf("lookup = %v, want %v", got, tt.want)
			}
		})
	}
	t.Run("bounded", func(t *testing.T) {
		var dc directChats
		for i := range 3 * maxDirectChatRooms {
			r := id.RoomID(fmt.Sprintf("!r%d:example.org", i))
			_, token := dc.lookup(r, now)
			dc.store(r, token, now)
		}
		if n := len(dc.rooms); n > maxDirectChatRooms {
			t.Errorf("cache holds %d rooms, want at most %d", n, maxDirectChatRooms)
		}
	})
}

// TestDirectChatVerdictDroppedAtIngest checks that a membership event drops its room's verdict
// as soon as its transaction is accepted, before the dispatcher reaches it.
func TestDirectChatVerdictDroppedAtIngest(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			db := newTestDB(t, dialect)
			room := id.RoomID("!portal:example.org")
			br := &blockingBridge{
				recordingBridge: newRecordingBridge("rec"),
				blockRoom:       room,
				blocked:         make(chan id.EventID, 10),
				release:         make(chan struct{}),
			}
			svc, base := startTestService(t, db, testConfig(deadHomeserver(t).URL), br)
			// Registered after the service's cleanup, so it runs first.
			t.Cleanup(br.unblock)
			ctx := context.Background()
			if err := br.host.ClaimRoom(ctx, room, Provenance{Actor: "@alice:example.org", RoomID: room, EventID: "$cmd"}); err != nil {
				t.Fatal(err)
			}
			put := func(txnID string, events ...map[string]any) {
				t.Helper()
				status, merr := do(t, base, testRequest{http.MethodPut, "/_matrix/app/v1/transactions/" + txnID, testHSToken, transaction(events...)})
				if status != 200 {
					t.Fatalf("PUT transaction %s = %d %s, want 200", txnID, status, merr.ErrCode)
				}
			}
			put("1", messageEvent("$a", string(room), "@alice:example.org", "one"))
			select {
			case <-br.blocked:
			case <-time.After(10 * time.Second):
				t.Fatal("the bridge was not handed the first event")
			}
			// The room's lane is busy: a verdict cached now is dropped only by the ingest.
			_, token := svc.directChats.lookup(room, svc.now())
			svc.directChats.store(room, token, svc.now())
			put("2", map[string]any{
				"event_id": "$join", "room_id": room, "sender": "@carol:example.org", "type": "m.room.member",
				"state_key": "@carol:example.org", "origin_server_ts": 1700000000001,
				"content": map[string]any{"membership": "join"},
			})
			if notDirect, _ := svc.directChats.lookup(room, svc.now()); notDirect {
				t.Error("a verdict is cached after a membership event of the room was accepted, want none")
			}
		})
	}
}

// queryCounter is a database logger that counts the statements run (Exec, Query and QueryRow;
// not the ends of result sets or the transactions' begins and ends), with the time each took
// until it returned.
type queryCounter struct {
	dbutil.DatabaseLogger
	mu      sync.Mutex
	queries []string
	took    map[string]time.Duration
}

func (qc *queryCounter) QueryTiming(ctx context.Context, method, query string, args []any, nrows int, duration time.Duration, err error) {
	defer qc.DatabaseLogger.QueryTiming(ctx, method, query, args, nrows, duration, err)
	if method != "Exec" && method != "Query" && method != "QueryRow" {
		return
	}
	qc.mu.Lock()
	qc.queries = append(qc.queries, query)
	if qc.took == nil {
		qc.took = make(map[string]time.Duration)
	}
	qc.took[query] += duration
	qc.mu.Unlock()
}

func (qc *queryCounter) ran() []string {
	qc.mu.Lock()
	defer qc.mu.Unlock()
	return slices.Clone(qc.queries)
}

// tookTotal returns the time the statement query took in all so far.
func (qc *queryCounter) tookTotal(query string) time.Duration {
	qc.mu.Lock()
	defer qc.mu.Unlock()
	return qc.took[query]
}

// TestGroupRoomMessageCostsNoReads checks that once the bot knows a room is no direct chat, a
// message there that is no command costs no database statement and no homeserver request.
func TestGroupRoomMessageCostsNoReads(t *testing.T) {
	env := groupChatEnv(t)
	qc := &queryCounter{DatabaseLogger: env.svc.rawDB.Log}
	env.svc.rawDB.Log = qc
	defer func() { env.svc.rawDB.Log = qc.DatabaseLogger }()
	asked := len(env.hs.Requests())
	for range 3 {
		env.assertAnswersUnprefixed(false)
	}
	if got := qc.ran(); len(got) != 0 {
		t.Errorf("three messages in a known group room ran %d statements, want none: %q", len(got), got)
	}
	if got := len(env.hs.Requests()); got != asked {
		t.Errorf("three messages in a known group room made %d homeserver requests, want none", got-asked)
	}
}

package appservice

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/database"
)

// blockingBridge is a recordingBridge whose handler blocks on events of one room until released.
type blockingBridge struct {
	*recordingBridge
	blockRoom id.RoomID
	blocked   chan id.EventID // receives the ID of each event that started blocking
	release   chan struct{}
	once      sync.Once
}

func (bb *blockingBridge) HandleEvent(ctx context.Context, evt *event.Event, _ Route) error {
	if evt.RoomID == bb.blockRoom {
		bb.blocked <- evt.ID
		select {
		case <-bb.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return bb.recordingBridge.HandleEvent(ctx, evt, Route{})
}

// unblock releases every blocked and later event of the blocked room.
func (bb *blockingBridge) unblock() {
	bb.once.Do(func() { close(bb.release) })
}

func TestDispatcherRunsRoomsInParallelAndEachInOrder(t *testing.T) {
	roomA, roomB := id.RoomID("!a:example.org"), id.RoomID("!b:example.org")
	br := &blockingBridge{
		recordingBridge: newRecordingBridge("rec"),
		blockRoom:       roomA,
		blocked:         make(chan id.EventID, 10),
		release:         make(chan struct{}),
	}
	_, base := startTestService(t, astest.TestDB(t, astest.SQLite), testConfig(deadHomeserver(t).URL), br)
	// Registered after the service's cleanup, so it runs first: the stopping service waits for
	// the blocked handler.
	t.Cleanup(br.unblock)
	ctx := context.Background()
	for _, room := range []id.RoomID{roomA, roomB} {
		if err := br.host.ClaimRoom(ctx, room, Provenance{Actor: "@alice:example.org", RoomID: room, EventID: "$cmd"}); err != nil {
			t.Fatal(err)
		}
	}
	put := func(txnID string, events ...map[string]any) {
		t.Helper()
		status, merr := do(t, base, testRequest{http.MethodPut, "/_matrix/app/v1/transactions/" + txnID, testHSToken, transaction(events...)})
		if status != http.StatusOK {
			t.Fatalf("PUT transaction %s = %d %s, want 200", txnID, status, merr.ErrCode)
		}
	}
	waitBlocked := func(want id.EventID) {
		t.Helper()
		select {
		case got := <-br.blocked:
			if got != want {
				t.Fatalf("room A's handler started on %s, want %s", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("room A's handler never started on %s", want)
		}
	}

	put("1", messageEvent("$a1", string(roomA), "@alice:example.org", "a1"))
	waitBlocked("$a1")
	// Room A is stuck in its handler; room B's events, in the same transaction as a later
	// event of room A and in one of their own, are handled anyway, in order.
	put("2",
		messageEvent("$a2", string(roomA), "@alice:example.org", "a2"),
		messageEvent("$b1", string(roomB), "@bob:example.org", "b1"),
	)
	put("3", messageEvent("$b2", string(roomB), "@bob:example.org", "b2"))
	var got []id.EventID
	for range 2 {
		got = append(got, br.next(t).ID)
	}
	if fmt.Sprint(got) != "[$b1 $b2]" {
		t.Fatalf("while room A was blocked the bridge handled %v, want [$b1 $b2]", got)
	}
	// Room A's second event waits for its first.
	select {
	case evt := <-br.blocked:
		t.Fatalf("room A's handler started on %s before %s finished", evt, "$a1")
	default:
	}
	br.assertNoEvent(t, 100*time.Millisecond)

	br.unblock()
	got = nil
	for range 2 {
		got = append(got, br.next(t).ID)
	}
	if fmt.Sprint(got) != "[$a1 $a2]" {
		t.Fatalf("after room A was released the bridge handled %v, want [$a1 $a2]", got)
	}
}

// TestBridgesGetTheRouteOfAnEvent checks that each bridge learns which of its claims an event
// belongs to: its claim on the room, with the provenance ClaimRoom recorded, and the ghost a
// membership event is about; a bridge with neither gets nothing.
func TestBridgesGetTheRouteOfAnEvent(t *testing.T) {
	const (
		claimed   = id.RoomID("!claimed:example.org")
		unclaimed = id.RoomID("!elsewhere:example.org")
		alice     = id.UserID("@alice:example.org")
		recGhost  = id.UserID("@rec_nick:example.org")
		otherGh   = id.UserID("@other_nick:example.org")
	)
	at := time.UnixMilli(1_700_000_000_000)
	claim := &Provenance{Actor: alice, RoomID: claimed, EventID: "$link", At: at}
	member := func(evtID id.EventID, room id.RoomID, target id.UserID) *event.Event {
		stateKey := string(target)
		return &event.Event{ID: evtID, RoomID: room, Sender: alice, Type: event.StateMember, StateKey: &stateKey,
			Content: event.Content{Parsed: &event.MemberEventContent{Membership: event.MembershipInvite}}}
	}
	tests := []struct {
		name string
		evt  *event.Event
		want map[string]Route
	}{
		{"message in a claimed room", &event.Event{ID: "$m1", RoomID: claimed, Sender: alice, Type: event.EventMessage},
			map[string]Route{"rec": {Claim: claim}}},
		{"own ghost in its claimed room", member("$i1", claimed, recGhost),
			map[string]Route{"rec": {Claim: claim, Ghost: recGhost}}},
		{"another bridge's ghost in a claimed room", member("$i2", claimed, otherGh),
			map[string]Route{"rec": {Claim: claim}, "other": {Ghost: otherGh}}},
		{"ghost in an unclaimed room", member("$i3", unclaimed, recGhost),
			map[string]Route{"rec": {Ghost: recGhost}}},
		{"message in an unclaimed room", &event.Event{ID: "$m2", RoomID: unclaimed, Sender: alice, Type: event.EventMessage},
			map[string]Route{}},
	}
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			rec, other := newRecordingBridge("rec"), newRecordingBridge("other")
			log := zerolog.New(astest.LogWriter(t)).Level(zerolog.WarnLevel)
			svc, err := newService(testConfig(deadHomeserver(t).URL), testRegistration(), []Bridge{rec, other}, log, astest.TestDB(t, dialect))
			if err != nil {
				t.Fatal(err)
			}
			ctx := log.WithContext(context.Background())
			if err = svc.upgradeDatabases(ctx); err != nil {
				t.Fatal(err)
			}
			if err = svc.bridgeByID["rec"].ClaimRoom(ctx, claimed, *claim); err != nil {
				t.Fatal(err)
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					got := map[string]Route{}
					for _, r := range svc.routeToBridges(ctx, tt.evt) {
						got[r.bh.id] = r.route
					}
					// Claims are pointers: compare whether there is one here, and its fields below.
					shape := func(routes map[string]Route) string {
						out := map[string]string{}
						for bridgeID, route := range routes {
							out[bridgeID] = fmt.Sprintf("claim=%v ghost=%s", route.Claim != nil, route.Ghost)
						}
						return fmt.Sprint(out)
					}
					if shape(got) != shape(tt.want) {
						t.Errorf("routes = %s, want %s", shape(got), shape(tt.want))
					}
					for bridgeID, route := range got {
						if route.Claim != nil && (route.Claim.Actor != claim.Actor || route.Claim.EventID != claim.EventID ||
							route.Claim.RoomID != claim.RoomID || !route.Claim.At.Equal(claim.At)) {
							t.Errorf("%s's claim = %+v, want %+v", bridgeID, *route.Claim, *claim)
						}
					}
				})
			}
			// The route reaches HandleEvent.
			data, err := json.Marshal(map[string]any{"type": "m.room.message", "event_id": "$m3", "room_id": claimed,
				"sender": alice, "content": map[string]any{"msgtype": "m.text", "body": "hello"}})
			if err != nil {
				t.Fatal(err)
			}
			svc.handleInboxEvent(ctx, &database.InboxEvent{TxnID: "t", EventID: "$m3", RoomID: claimed, Sender: alice, JSON: data})
			if route, ok := rec.routeOf("$m3"); !ok || route.Claim == nil || route.Claim.EventID != "$link" || route.Ghost != "" {
				t.Errorf("HandleEvent got route %+v (delivered %v), want the claim made by $link", route, ok)
			}
			if _, ok := other.routeOf("$m3"); ok {
				t.Error("a bridge without a claim on the room got the event")
			}
		})
	}
}

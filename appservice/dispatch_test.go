package appservice

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
)

// blockingBridge is a recordingBridge whose handler blocks on events of one room until released.
type blockingBridge struct {
	*recordingBridge
	blockRoom id.RoomID
	blocked   chan id.EventID // receives the ID of each event that started blocking
	release   chan struct{}
	once      sync.Once
}

func (bb *blockingBridge) HandleEvent(ctx context.Context, evt *event.Event) error {
	if evt.RoomID == bb.blockRoom {
		bb.blocked <- evt.ID
		select {
		case <-bb.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return bb.recordingBridge.HandleEvent(ctx, evt)
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

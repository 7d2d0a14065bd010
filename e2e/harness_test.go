//go:build e2e

package e2e_test

import (
	"context"
	"net/http"
	"slices"
	"strconv"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/e2e"
)

// TestHarnessSynapseStarts checks the harness on its own, without Custodian: Synapse starts from
// the chroot, users register with the shared secret, and clients sync.
func TestHarnessSynapseStarts(t *testing.T) {
	env := e2e.New(t, e2e.SQLite, e2e.WithoutCustodian())
	alice := env.Register(t, "alice")
	bob := env.Register(t, "bob")
	admin := env.RegisterAdmin(t, "admin")

	roomID := env.MustCreateRoom(t, alice, bob.UserID)
	env.MustSyncUntil(t, bob, 30*time.Second, e2e.IsMember(roomID, bob.UserID, event.MembershipInvite))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := bob.JoinRoomByID(ctx, roomID); err != nil {
		t.Fatalf("bob joining %s: %v", roomID, err)
	}
	hello := env.SendText(t, alice, roomID, "hello bob")
	got := env.MustWaitForMessage(t, bob, roomID, alice.UserID, "", 30*time.Second)
	if got.ID != hello {
		t.Errorf("bob's first message from alice is %s, want %s", got.ID, hello)
	}
	if body := got.Content.AsMessage().Body; body != "hello bob" {
		t.Errorf("message body = %q, want %q", body, "hello bob")
	}
	// The history is kept: a second wait finds the same event again without new traffic.
	again := env.MustSyncUntil(t, bob, 5*time.Second, func(evt *event.Event) bool { return evt.ID == hello })
	if again.ID != hello {
		t.Errorf("second wait found %s, want %s", again.ID, hello)
	}

	status, body := env.HSRequest(t, http.MethodGet, "/_synapse/admin/v2/users/"+alice.UserID.String(), admin.AccessToken, nil)
	if status != http.StatusOK {
		t.Errorf("admin user lookup: status %d, want 200: %s", status, body)
	}
	status, _ = env.HSRequest(t, http.MethodGet, "/_synapse/admin/v2/users/"+alice.UserID.String(), alice.AccessToken, nil)
	if status != http.StatusForbidden {
		t.Errorf("non-admin user lookup: status %d, want 403", status)
	}
}

// TestHarnessSyncFillsGaps checks that SyncUntil sees every event, in order, even when more
// arrive between two syncs than Synapse puts in one timeline (100).
func TestHarnessSyncFillsGaps(t *testing.T) {
	const total = 150
	env := e2e.New(t, e2e.SQLite, e2e.WithoutCustodian())
	alice := env.Register(t, "alice")
	roomID := env.MustCreateRoom(t, alice)
	env.MustSyncUntil(t, alice, 30*time.Second, e2e.IsMember(roomID, alice.UserID, event.MembershipJoin))
	sent := make([]id.EventID, 0, total)
	for i := range total {
		sent = append(sent, env.SendText(t, alice, roomID, strconv.Itoa(i)))
	}
	var got []id.EventID
	env.MustSyncUntil(t, alice, 30*time.Second, func(evt *event.Event) bool {
		if e2e.IsMessageFrom(roomID, alice.UserID)(evt) {
			got = append(got, evt.ID)
		}
		return len(got) == total
	})
	if !slices.Equal(got, sent) {
		t.Errorf("synced messages differ from the sent ones (%d synced, %d sent)", len(got), len(sent))
	}
}

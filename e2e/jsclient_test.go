//go:build e2e

package e2e_test

import (
	"testing"
	"time"

	"maunium.net/go/mautrix/event"

	"github.com/custodian-matrix/custodian/e2e"
)

// TestJSClientEncryptedDM checks the harness's Node client on its own, without Custodian: alice
// creates an encrypted direct chat with bob the way Element does, bob joins, alice sends a
// message, the homeserver holds only ciphertext, and bob's client decrypts it.
func TestJSClientEncryptedDM(t *testing.T) {
	env := e2e.New(t, e2e.SQLite, e2e.WithoutCustodian())
	aliceMx := env.Register(t, "alice")
	bobMx := env.Register(t, "bob")

	alice := env.JSLogin(t, aliceMx.UserID)
	bob := env.JSLogin(t, bobMx.UserID)

	roomID := alice.CreateDM(t, bob.UserID)
	bob.Join(t, roomID)

	const body = "hello bob, this is encrypted"
	sent := alice.SendText(t, roomID, body, 30*time.Second)

	got := bob.WaitForBody(t, roomID, body, 30*time.Second)
	if got.EventID != sent || got.Sender != alice.UserID || !got.Encrypted {
		t.Errorf("bob got %+v, want event %s from %s, encrypted", got, sent, alice.UserID)
	}
	if failures := bob.DecryptionFailures(t); len(failures) > 0 {
		t.Errorf("bob's decryption failures: %+v", failures)
	}

	// What the homeserver stored is ciphertext: a plain client sees m.room.encrypted.
	evt := env.MustSyncUntil(t, bobMx, 30*time.Second, func(evt *event.Event) bool { return evt.ID == sent })
	if evt.Type != event.EventEncrypted {
		t.Errorf("the homeserver holds %s as %s, want %s", sent, evt.Type.Type, event.EventEncrypted.Type)
	}
}

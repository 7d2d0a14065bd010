package appservice

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/database"
)

// indexRowsOf returns how many crypto_message_index rows name eventID.
func indexRowsOf(t *testing.T, env *e2eeEnv, eventID string) int {
	t.Helper()
	var n int
	if err := env.db.QueryRow(env.ctx, `SELECT COUNT(*) FROM crypto_message_index WHERE event_id=$1`, eventID).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// startWithKey starts the service, its start-up probe answered, and then stores Alice's room
// key with the started machine (whose pickle key is the vault's).
func startWithKey(env *e2eeEnv) {
	env.t.Helper()
	echoToDevice(env.hs, env.svc)
	env.start()
	env.shareKey()
}

// groupEvent returns an encrypted message from Alice in a group room the bot is in (no reply
// expected), its room key stored with the started machine.
func groupEvent(t *testing.T, env *e2eeEnv, body string) map[string]any {
	t.Helper()
	room := id.RoomID("!group:" + testDomain)
	for _, user := range []id.UserID{env.svc.as.BotMXID(), e2eeAlice, "@bob:" + testDomain} {
		env.hs.SetMembership(room, user, event.MembershipJoin)
		if err := env.svc.stateStore.SetMembership(env.ctx, room, user, event.MembershipJoin); err != nil {
			t.Fatal(err)
		}
	}
	if err := env.svc.stateStore.SetEncryptionEvent(env.ctx, room, &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}); err != nil {
		t.Fatal(err)
	}
	ogs, err := crypto.NewOutboundGroupSession(room, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ogs.Shared = true
	signing, identity := env.alice.Keys()
	igs, err := crypto.NewInboundGroupSession(identity, signing, room, ogs.Internal.Key(), 0, 0, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	if err = env.svc.crypto.Store().PutGroupSession(env.ctx, igs); err != nil {
		t.Fatal(err)
	}
	plaintext, err := json.Marshal(map[string]any{"room_id": room, "type": event.EventMessage.Type,
		"content": map[string]any{"msgtype": event.MsgText, "body": body}})
	if err != nil {
		t.Fatal(err)
	}
	ciphertext, err := ogs.Encrypt(plaintext)
	if err != nil {
		t.Fatal(err)
	}
	env.seq++
	return map[string]any{
		"event_id": fmt.Sprintf("$group%d", env.seq), "room_id": room, "sender": e2eeAlice,
		"type": event.EventEncrypted.Type, "origin_server_ts": 1700000000000 + env.seq,
		"content": map[string]any{
			"algorithm": id.AlgorithmMegolmV1, "sender_key": identity, "device_id": e2eeAliceDevice,
			"session_id": ogs.ID(), "ciphertext": string(ciphertext),
		},
	}
}

// TestDecryptedEventIsDoneWithItsMessageIndex handles an encrypted event on both dialects and
// checks that once the event is marked done, its message index is in crypto_message_index and
// nothing is left pending: the done marks wrote it.
func TestDecryptedEventIsDoneWithItsMessageIndex(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newE2EEEnv(t, astest.TestDB(t, dialect), nil, nil)
			startWithKey(env)
			evt := groupEvent(t, env, "hello")
			eventID := evt["event_id"].(string)
			env.put("i1", []map[string]any{evt}, nil)
			waitDone(t, env, eventID)
			if n := indexRowsOf(t, env, eventID); n != 1 {
				t.Errorf("message index rows of the done event = %d, want 1", n)
			}
			if n := env.svc.crypto.PendingMessageIndexes(); n != 0 {
				t.Errorf("PendingMessageIndexes() after the done marks = %d, want 0", n)
			}
		})
	}
}

// TestDoneMarksWriteThePendingIndexes checks that the running service keeps a decryption's
// message index in memory and that the next done marks write it, whichever events they mark.
func TestDoneMarksWriteThePendingIndexes(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newE2EEEnv(t, astest.TestDB(t, dialect), nil, nil)
			startWithKey(env)
			raw, err := json.Marshal(env.encrypted(nil, "hello"))
			if err != nil {
				t.Fatal(err)
			}
			var evt event.Event
			if err = json.Unmarshal(raw, &evt); err != nil {
				t.Fatal(err)
			}
			if err = evt.Content.ParseRaw(evt.Type); err != nil {
				t.Fatal(err)
			}
			if _, err = env.svc.crypto.Decrypt(env.ctx, &evt); err != nil {
				t.Fatalf("Decrypt() = %v", err)
			}
			if n := indexRowsOf(t, env, evt.ID.String()); n != 0 {
				t.Fatalf("message index rows right after the decryption = %d, want 0 (pending)", n)
			}
			if n := env.svc.crypto.PendingMessageIndexes(); n != 1 {
				t.Fatalf("PendingMessageIndexes() = %d, want 1", n)
			}
			if err = env.svc.db.Inbox.MarkDone(env.ctx, []database.Done{{TxnID: "other", Index: 0, EventID: "$other"}}, env.svc.now()); err != nil {
				t.Fatal(err)
			}
			if n := indexRowsOf(t, env, evt.ID.String()); n != 1 {
				t.Errorf("message index rows after the done marks = %d, want 1", n)
			}
			if n := env.svc.crypto.PendingMessageIndexes(); n != 0 {
				t.Errorf("PendingMessageIndexes() after the done marks = %d, want 0", n)
			}
		})
	}
}

// waitDone waits, polling for up to 20 seconds, until eventID is marked done.
func waitDone(t *testing.T, env *e2eeEnv, eventID string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		var n int
		if err := env.db.QueryRow(env.ctx, `SELECT COUNT(*) FROM as_event_done WHERE event_id=$1`, eventID).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("timed out waiting for the event to be marked done")
		}
		<-tick.C
	}
}

//go:build e2e

package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix/crypto/attachment"
	"maunium.net/go/mautrix/event"

	"github.com/custodian-matrix/custodian/e2e"
)

// TestMautrixClientTalksToJSClient checks the harness's two E2EE clients against each other,
// without Custodian: alice (mautrix-go's crypto) creates an encrypted direct chat with bob
// (matrix-js-sdk's Rust crypto) the way Element does; bob gets the invite and joins; a message
// each way is decrypted by the other, while the homeserver holds only m.room.encrypted; an
// encrypted attachment alice uploads is downloaded and decrypted by both; and neither device is
// cross-signed until alice sets up cross-signing, after which both see her device as signed by
// her.
func TestMautrixClientTalksToJSClient(t *testing.T) {
	env := e2e.New(t, e2e.SQLite, e2e.WithoutCustodian())
	aliceMx := env.Register(t, "alice")
	bobMx := env.Register(t, "bob")
	alice := env.MXLogin(t, aliceMx.UserID)
	bob := env.JSLogin(t, bobMx.UserID)

	roomID := alice.CreateDM(t, bob.User())
	if got := bob.WaitForInvite(t, alice.User(), 30*time.Second); got != roomID {
		t.Fatalf("bob's invite is to %s, want %s", got, roomID)
	}
	bob.Join(t, roomID)

	toBob := "hello bob, from mautrix " + e2e.RandomHex(t, 4)
	sent := alice.SendText(t, roomID, toBob, 30*time.Second)
	got := bob.WaitFor(t, 30*time.Second, e2e.InRoom(roomID, e2e.WithBody(toBob)))
	if got.EventID != sent || got.Sender != alice.User() || !got.Encrypted {
		t.Errorf("bob got %+v, want event %s from %s, encrypted", got, sent, alice.User())
	}

	toAlice := "hello alice, from js " + e2e.RandomHex(t, 4)
	sent = bob.SendText(t, roomID, toAlice, 30*time.Second)
	got = alice.WaitFor(t, 30*time.Second, e2e.InRoom(roomID, e2e.WithBody(toAlice)))
	if got.EventID != sent || got.Sender != bob.User() || !got.Encrypted {
		t.Errorf("alice got %+v, want event %s from %s, encrypted", got, sent, bob.User())
	}

	// An encrypted attachment: the media repository gets ciphertext, both clients decrypt it.
	plaintext := []byte(`{"hello":"attachment ` + e2e.RandomHex(t, 8) + `"}`)
	file := attachment.NewEncryptedFile()
	ciphertext := bytes.Clone(plaintext)
	file.EncryptInPlace(ciphertext)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	upload, err := alice.Client.UploadBytes(ctx, ciphertext, "application/octet-stream")
	if err != nil {
		t.Fatalf("uploading the attachment: %v", err)
	}
	info := &event.EncryptedFileInfo{EncryptedFile: *file, URL: upload.ContentURI.CUString()}
	fileEvt, err := alice.Client.SendMessageEvent(ctx, roomID, event.EventMessage, &event.MessageEventContent{
		MsgType: event.MsgFile, Body: "attachment.json", File: info,
	})
	if err != nil {
		t.Fatalf("sending the attachment: %v", err)
	}
	msg := bob.WaitFor(t, 30*time.Second, func(m *e2e.Message) bool { return m.EventID == fileEvt.EventID })
	if !msg.Encrypted || msg.MsgType != event.MsgFile || msg.File == nil || msg.File.URL != info.URL {
		t.Fatalf("bob got the attachment message as %+v, want an encrypted m.file with the file's URL", msg)
	}
	if stored := env.DownloadMedia(t, aliceMx, info.URL); !bytes.Equal(stored, ciphertext) {
		t.Errorf("the media repository holds %d bytes other than the ciphertext", len(stored))
	}
	for _, c := range []e2e.E2EEClient{bob, alice} {
		if got := c.Download(t, msg.File); !bytes.Equal(got, plaintext) {
			t.Errorf("%s client decrypted the attachment to %q, want %q", c.Kind(), got, plaintext)
		}
	}
	// A wrong hash is refused: the check is real. (A fresh copy from JSON: the decoded keys
	// are cached in the struct the clients used.)
	raw, err := json.Marshal(msg.File)
	if err != nil {
		t.Fatal(err)
	}
	var tampered event.EncryptedFileInfo
	if err := json.Unmarshal(raw, &tampered); err != nil {
		t.Fatal(err)
	}
	tampered.Hashes.SHA256 = strings.Repeat("A", len(info.Hashes.SHA256))
	if err := tampered.DecryptInPlace(bytes.Clone(ciphertext)); !errors.Is(err, attachment.ErrHashMismatch) {
		t.Errorf("control: decrypting with a wrong hash: %v, want %v", err, attachment.ErrHashMismatch)
	}

	// Cross-signing: bob's device is not cross-signed, and neither is alice's until she sets
	// it up; then both clients see hers as signed by her.
	if alice.DeviceCrossSigned(t, bob.User(), bob.Device()) {
		t.Errorf("alice sees bob's device as cross-signed; it is not")
	}
	if bob.DeviceCrossSigned(t, alice.User(), alice.Device()) {
		t.Errorf("bob sees alice's device as cross-signed before she set up cross-signing")
	}
	alice.CrossSign(t)
	for _, c := range []e2e.E2EEClient{alice, bob} {
		// The js client learns of the new signatures when its sync reports alice's device list
		// as changed and it queries her keys again, a moment after she signed.
		e2e.Eventually(t, 30*time.Second, func() error {
			if !c.DeviceCrossSigned(t, alice.User(), alice.Device()) {
				return fmt.Errorf("the %s client does not see alice's device as cross-signed after she signed it", c.Kind())
			}
			return nil
		})
	}

	for _, c := range []e2e.E2EEClient{alice, bob} {
		if failures := c.DecryptionFailures(t); len(failures) > 0 {
			t.Errorf("%s client's decryption failures: %+v", c.Kind(), failures)
		}
	}
	// The homeserver holds both messages as m.room.encrypted.
	for _, evt := range env.RoomHistory(t, aliceMx, roomID) {
		if evt.Type == event.EventMessage {
			t.Errorf("the homeserver holds %s in plaintext", evt.ID)
		}
	}
}

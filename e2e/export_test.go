//go:build e2e

package e2e_test

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/e2e"
)

// mustGetExportFile sends !export in dm as cli and returns the bot's m.file message. The file
// must be an encrypted attachment: no plain url, the key in the message.
func mustGetExportFile(t *testing.T, env *e2e.Env, cli *mautrix.Client, dm id.RoomID) *event.Event {
	t.Helper()
	cmd := env.SendText(t, cli, dm, "!export")
	file := env.MustSyncUntil(t, cli, replyWait, e2e.After(cmd, func(evt *event.Event) bool {
		return e2e.IsMessageFrom(dm, env.BotUserID())(evt) && evt.Content.AsMessage().MsgType == event.MsgFile
	}))
	content := file.Content.AsMessage()
	if content.URL != "" || content.File == nil || content.File.URL == "" {
		t.Fatalf("the export file has url %q and file %+v; want an encrypted attachment", content.URL, content.File)
	}
	return file
}

// mustDecryptExport downloads the export file of evt as cli, checks that the media repository
// holds only ciphertext, and returns the decrypted JSON.
func mustDecryptExport(t *testing.T, env *e2e.Env, cli *mautrix.Client, evt *event.Event) []byte {
	t.Helper()
	file := evt.Content.AsMessage().File
	ciphertext := env.DownloadMedia(t, cli, file.URL)
	if json.Valid(ciphertext) || strings.Contains(string(ciphertext), cli.UserID.String()) {
		t.Fatalf("the media repository holds the export in plaintext: %.200q", ciphertext)
	}
	data := slices.Clone(ciphertext)
	if err := file.DecryptInPlace(data); err != nil {
		t.Fatalf("decrypting the export with the key in the message: %v", err)
	}
	return data
}

// mediaStatus downloads mxc as cli through the authenticated media API and returns the status.
func mediaStatus(t *testing.T, env *e2e.Env, cli *mautrix.Client, mxc id.ContentURIString) (int, []byte) {
	t.Helper()
	uri, err := mxc.Parse()
	if err != nil {
		t.Fatalf("parsing %q: %v", mxc, err)
	}
	return env.HSRequest(t, http.MethodGet, "/_matrix/client/v1/media/download/"+uri.Homeserver+"/"+uri.FileID, cli.AccessToken, nil)
}

// TestExportWithdrawnAtForget: alice's !export arrives as an encrypted attachment; after her
// !forget the message carrying its key is redacted, and, when Custodian has admin access to the
// homeserver, the upload is gone from the media repository (bob, logged in, gets 404). Without
// admin access only ciphertext stays there.
func TestExportWithdrawnAtForget(t *testing.T) {
	tests := []struct {
		name  string
		admin bool
	}{
		{name: "admin access", admin: true},
		{name: "no admin access"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
				tokenFile := filepath.Join(t.TempDir(), "synapse-admin.token")
				opts := []e2e.Option{e2e.WithoutStart()}
				if tt.admin {
					opts = append(opts, e2e.WithConfigValue("privacy.deactivation.admin_token_file", tokenFile))
				}
				env := e2e.New(t, backend, opts...)
				if tt.admin {
					admin := env.RegisterAdmin(t, "admin")
					if err := os.WriteFile(tokenFile, []byte(admin.AccessToken+"\n"), 0o600); err != nil {
						t.Fatal(err)
					}
				}
				env.StartCustodian(t)
				alice := env.Register(t, "alice")
				bob := env.Register(t, "bob")
				dm := env.MustCreateDMWithBot(t, alice)

				file := mustGetExportFile(t, env, alice, dm)
				var export struct {
					User id.UserID `json:"user"`
				}
				if data := mustDecryptExport(t, env, alice, file); json.Unmarshal(data, &export) != nil || export.User != alice.UserID {
					t.Fatalf("the decrypted export is not alice's: %.200s", data)
				}
				mxc := file.Content.AsMessage().File.URL
				if status, _ := mediaStatus(t, env, bob, mxc); status != http.StatusOK {
					t.Fatalf("control: bob downloading the export before forget: status %d, want 200", status)
				}

				forget := env.SendText(t, alice, dm, "!forget")
				mustBotReply(t, env, alice, dm, forget, "forget confirm")
				confirm := env.SendText(t, alice, dm, "!forget confirm")
				env.MustSyncUntil(t, alice, time.Minute, e2e.After(confirm, func(evt *event.Event) bool {
					return e2e.IsNoticeFrom(dm, env.BotUserID())(evt) && strings.Contains(evt.Content.AsMessage().Body, "Done: I erased everything")
				}))

				// The message with the key is redacted: its content is gone from the room.
				var redacted bool
				for _, evt := range env.RoomHistory(t, alice, dm) {
					if evt.ID != file.ID {
						continue
					}
					if len(evt.Content.VeryRaw) > 2 && string(evt.Content.VeryRaw) != "{}" {
						t.Errorf("the export message's content after forget = %s, want it redacted", evt.Content.VeryRaw)
					}
					redacted = evt.Unsigned.RedactedBecause != nil
				}
				if !redacted {
					t.Errorf("the export message %s was not redacted after forget", file.ID)
				}

				status, body := mediaStatus(t, env, bob, mxc)
				switch {
				case tt.admin && status != http.StatusNotFound:
					t.Errorf("bob downloading the export after forget: status %d, want 404: %.200s", status, body)
				case !tt.admin && status == http.StatusOK && (json.Valid(body) || strings.Contains(string(body), alice.UserID.String())):
					t.Errorf("without admin access the media repository holds the export in plaintext after forget")
				}
			})
		})
	}
}

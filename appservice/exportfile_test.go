package appservice

import (
	"cmp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/privacy"
)

// exportFileEvent returns the ID of the bot's m.file message in roomID, failing the test if there
// is none.
func (env *privacyEnv) exportFileEvent(roomID id.RoomID) id.EventID {
	env.t.Helper()
	for _, sent := range env.hs.Messages(roomID) {
		var content event.MessageEventContent
		if err := sent.Decode(&content); err != nil {
			env.t.Fatal(err)
		}
		if content.MsgType == event.MsgFile {
			return sent.EventID
		}
	}
	env.t.Fatalf("the bot sent no m.file in %s", roomID)
	return ""
}

// redactionsOf counts the redactions of target sent in roomID.
func (env *privacyEnv) redactionsOf(roomID id.RoomID, target id.EventID) int {
	n := 0
	for _, sent := range env.hs.Events(roomID) {
		if sent.Type == event.EventRedaction && sent.Redacts == target {
			n++
		}
	}
	return n
}

func TestExportFileExpires(t *testing.T) {
	tests := []struct {
		name        string
		admin       bool
		wantDeleted []string
	}{
		{name: "with admin access", admin: true, wantDeleted: []string{"example.org/upload1"}},
		{name: "without admin access"},
	}
	for _, dialect := range astest.Dialects(t) {
		for _, tt := range tests {
			t.Run(dialect+"/"+tt.name, func(t *testing.T) {
				var configure func(cfg *Config)
				if tt.admin {
					configure = withAdminToken(t)
				}
				env := newPrivacyEnv(t, dialect, configure)
				env.hs.adminToken = pvAdminToken
				env.start()
				// The first pass runs at start, before anything was exported.
				passes := 0
				wait := func() int64 {
					t.Helper()
					passes++
					return env.pass(exportPass, passes, "export_files")
				}
				wait()
				if env.clock.BlockUntilInterval(astest.Within(t, 10*time.Second), privacy.ExportExpiryInterval) != nil {
					t.Fatal("the export expiry loop did not start its ticker")
				}
				env.setUpRoom(pvDM, true, pvAlice)
				env.text(pvDM, pvAlice, "export")
				if got := env.lastNotice(pvDM); got != "custodian-export-2026-03-01.json" {
					t.Fatalf("last message %q, want the export file", got)
				}
				if !strings.Contains(env.notices(pvDM)[len(env.notices(pvDM))-2], "withdrawn after 1 hour") {
					t.Errorf("the export's message %q does not say when the file is withdrawn", env.notices(pvDM)[len(env.notices(pvDM))-2])
				}
				fileEvent := env.exportFileEvent(pvDM)
				if n := env.count(`SELECT COUNT(*) FROM as_export WHERE user_mxid=$1 AND event_id=$2`, pvAlice, fileEvent); n != 1 {
					t.Fatalf("%d tracked export files with the message's event ID, want 1", n)
				}

				// Before the TTL nothing happens.
				env.clock.Advance(privacy.ExportExpiryInterval)
				if n := wait(); n != 0 || env.redactionsOf(pvDM, fileEvent) != 0 || len(env.hs.mediaDeleted()) != 0 {
					t.Fatalf("before the TTL: %d withdrawn, %d redactions, deleted %v; want nothing", n, env.redactionsOf(pvDM, fileEvent), env.hs.mediaDeleted())
				}

				env.clock.Set(env.clock.Now().Add(time.Hour))
				env.clock.Advance(privacy.ExportExpiryInterval)
				if n := wait(); n != 1 {
					t.Errorf("after the TTL %d files withdrawn, want 1", n)
				}
				if got := env.redactionsOf(pvDM, fileEvent); got != 1 {
					t.Errorf("after the TTL the file's message was redacted %d times, want 1", got)
				}
				if got := env.hs.mediaDeleted(); !slices.Equal(got, tt.wantDeleted) {
					t.Errorf("after the TTL deleted media %v, want %v", got, tt.wantDeleted)
				}
				if n := env.count(`SELECT COUNT(*) FROM as_export`); n != 0 {
					t.Errorf("%d tracked export files after the TTL, want 0", n)
				}
			})
		}
	}
}

// TestForgetWithdrawsExportFiles: forget withdraws the user's export files (their messages
// redacted, their uploads deleted, their rows gone) before the erasing transaction. So does
// forgetting one bridge, since every file holds that bridge's data too; the user's other data
// stays then.
func TestForgetWithdrawsExportFiles(t *testing.T) {
	for _, scope := range []string{"", "hooks"} {
		for _, dialect := range astest.Dialects(t) {
			t.Run(dialect+"/"+cmp.Or(scope, "all"), func(t *testing.T) {
				env := newPrivacyEnv(t, dialect, withAdminToken(t))
				env.hs.adminToken = pvAdminToken
				env.start()
				env.setUpRoom(pvDM, true, pvAlice)
				env.addHook(env.hooks, "h1", pvAlice, pvRoom, "$add1")
				env.text(pvDM, pvAlice, "export")
				fileEvent := env.exportFileEvent(pvDM)
				// The media is deleted while the user's data (and the row tracking the file)
				// still exists: the erasing transaction comes after.
				var rowsAtDelete atomic.Int64
				rowsAtDelete.Store(-1)
				env.hs.lock.Lock()
				env.hs.onMediaDelete = func() {
					rowsAtDelete.Store(int64(env.count(`SELECT COUNT(*) FROM as_export WHERE user_mxid=$1`, pvAlice)))
				}
				env.hs.lock.Unlock()

				forget := strings.TrimSpace("forget " + scope)
				env.text(pvDM, pvAlice, forget)
				env.text(pvDM, pvAlice, forget+" confirm")
				receipt, users := "Done: I erased everything", 0
				if scope != "" {
					receipt, users = "Done: I erased what hooks held about you. Everything else is untouched, but any export file I sent you is withdrawn", 1
				}
				if got := env.lastNotice(pvDM); !strings.Contains(got, receipt) {
					t.Fatalf("last message %q, want the erasure receipt", got)
				}
				if got := env.redactionsOf(pvDM, fileEvent); got != 1 {
					t.Errorf("after %s the file's message was redacted %d times, want 1", forget, got)
				}
				if got, want := env.hs.mediaDeleted(), []string{"example.org/upload1"}; !slices.Equal(got, want) {
					t.Errorf("after %s deleted media %v, want %v", forget, got, want)
				}
				if n := rowsAtDelete.Load(); n != 1 {
					t.Errorf("the media was deleted with %d tracking rows left, want 1 (before the erasure)", n)
				}
				if n := env.count(`SELECT COUNT(*) FROM as_export`); n != 0 {
					t.Errorf("%d tracked export files after %s, want 0", n, forget)
				}
				if n := env.count(`SELECT COUNT(*) FROM users WHERE mxid=$1`, pvAlice); n != users {
					t.Errorf("%d users rows for alice after %s, want %d", n, forget, users)
				}
			})
		}
	}
}

// TestForgetRetriesFailedExportWithdrawal: when the homeserver fails to delete an export file at
// forget, the erasure goes on, and the file's row stays, naming nobody, due at once, so the
// expiry loop withdraws it later.
func TestForgetRetriesFailedExportWithdrawal(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newPrivacyEnv(t, dialect, withAdminToken(t))
			env.hs.adminToken = pvAdminToken
			env.start()
			env.setUpRoom(pvDM, true, pvAlice)
			env.text(pvDM, pvAlice, "export")
			env.exportFileEvent(pvDM)
			env.hs.lock.Lock()
			env.hs.mediaDeleteFails = true
			env.hs.lock.Unlock()

			env.text(pvDM, pvAlice, "forget")
			env.text(pvDM, pvAlice, "forget confirm")
			if !strings.Contains(env.lastNotice(pvDM), "Done: I erased everything") {
				t.Fatalf("last message %q, want the erasure receipt", env.lastNotice(pvDM))
			}
			if got := env.hs.mediaDeleted(); len(got) != 0 {
				t.Fatalf("deleted media %v while the homeserver failed every deletion", got)
			}
			if n := env.count(`SELECT COUNT(*) FROM as_export WHERE user_mxid IS NULL AND expires_at<=$1`, env.svc.now().UnixMilli()); n != 1 {
				t.Fatalf("%d export files left due and naming nobody after a failed withdrawal, want 1", n)
			}

			env.hs.lock.Lock()
			env.hs.mediaDeleteFails = false
			env.hs.lock.Unlock()
			if done, err := env.svc.engine.ExpireExports(env.ctx); err != nil || done != 1 {
				t.Fatalf("ExpireExports() = %d, %v; want 1, nil", done, err)
			}
			if got, want := env.hs.mediaDeleted(), []string{"example.org/upload1"}; !slices.Equal(got, want) {
				t.Errorf("deleted media %v after the retry, want %v", got, want)
			}
			if n := env.count(`SELECT COUNT(*) FROM as_export`); n != 0 {
				t.Errorf("%d tracked export files after the retry, want 0", n)
			}
		})
	}
}

func TestDescribeTTL(t *testing.T) {
	tests := []struct {
		in   time.Duration
		want string
	}{
		{time.Hour, "1 hour"},
		{3 * time.Hour, "3 hours"},
		{90 * time.Minute, "90 minutes"},
		{time.Minute, "1 minute"},
		{90 * time.Second, "1m30s"},
	}
	for _, tt := range tests {
		if got := describeTTL(tt.in); got != tt.want {
			t.Errorf("describeTTL(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

package appservice

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
)

func TestForgetCommandNeedsConfirmation(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newPrivacyEnv(t, dialect, nil).start()
			env.setUpRoom(pvDM, true, pvAlice)
			env.addHook(env.hooks, "h1", pvAlice, pvRoom, "$add1")
			hooks := func() int { return env.count(`SELECT COUNT(*) FROM hooks_hook WHERE owner_mxid=$1`, pvAlice) }

			env.text(pvDM, pvAlice, "forget confirm")
			if got := env.lastNotice(pvDM); !strings.Contains(got, "There is nothing to confirm") || hooks() != 1 {
				t.Fatalf("confirm without a request: reply %q, %d hooks; want a refusal and the data kept", got, hooks())
			}
			env.text(pvDM, pvAlice, "forget")
			if got := env.lastNotice(pvDM); !strings.Contains(got, "`forget confirm`") || !strings.Contains(got, "cannot be undone") || hooks() != 1 {
				t.Fatalf("forget: reply %q, %d hooks; want a request to confirm and the data kept", got, hooks())
			}
			// A confirmation of another scope does not count.
			env.text(pvDM, pvAlice, "forget hooks confirm")
			if got := env.lastNotice(pvDM); !strings.Contains(got, "There is nothing to confirm") || hooks() != 1 {
				t.Fatalf("confirming another scope: reply %q, %d hooks; want a refusal", got, hooks())
			}

			env.text(pvDM, pvAlice, "forget confirm")
			if rows := rowsMentioning(dumpDatabase(t, env.ctx, env.svc.rawDB), pvAlice.String()); len(rows) > 0 {
				t.Errorf("after forget confirm rows name alice:\n%s", strings.Join(rows, "\n"))
			}
			receipt := env.lastNotice(pvDM)
			if !strings.Contains(receipt, "Done: I erased everything") || !strings.Contains(receipt, "hooks: 1 entry") {
				t.Errorf("receipt = %q, want the counts per module", receipt)
			}
			if got := env.hs.Membership(pvDM, pvBot); got != event.MembershipLeave {
				t.Errorf("bot membership in the DM after the receipt = %q, want leave", got)
			}
			if n := env.count(`SELECT COUNT(*) FROM as_bot_setup WHERE room_id=$1`, pvDM); n != 0 {
				t.Errorf("%d setup rows for the DM after leaving, want 0", n)
			}
		})
	}
}

func TestForgetConfirmationExpires(t *testing.T) {
	env := newPrivacyEnv(t, astest.SQLite, nil).start()
	env.setUpRoom(pvDM, true, pvAlice)
	env.addHook(env.hooks, "h1", pvAlice, pvRoom, "$add1")
	env.text(pvDM, pvAlice, "forget")
	env.clock.Advance(forgetConfirmWindow + time.Second)
	env.text(pvDM, pvAlice, "forget confirm")
	if got := env.lastNotice(pvDM); !strings.Contains(got, "There is nothing to confirm") {
		t.Errorf("late confirmation: reply %q, want a refusal", got)
	}
	if n := env.count(`SELECT COUNT(*) FROM hooks_hook`); n != 1 {
		t.Errorf("%d hooks after a late confirmation, want 1", n)
	}
}

func TestForgetOneBridgeCommand(t *testing.T) {
	env := newPrivacyEnv(t, astest.SQLite, nil).start()
	env.setUpRoom(pvDM, true, pvAlice)
	env.addHook(env.hooks, "h1", pvAlice, pvRoom, "$add1")
	env.addHook(env.other, "o1", pvAlice, pvRoom, "$add2")

	env.text(pvDM, pvAlice, "forget nosuch")
	if got := env.lastNotice(pvDM); !strings.Contains(got, "There is no bridge `nosuch`") || !strings.Contains(got, "`hooks`") {
		t.Errorf("forget of an unknown bridge: reply %q, want the list of bridges", got)
	}
	env.text(pvDM, pvAlice, "forget hooks")
	if got := env.lastNotice(pvDM); !strings.Contains(got, "`forget hooks confirm`") {
		t.Fatalf("forget hooks: reply %q, want a request to confirm", got)
	}
	confirm := env.text(pvDM, pvAlice, "forget hooks confirm")
	if n := env.count(`SELECT COUNT(*) FROM hooks_hook`); n != 0 {
		t.Errorf("%d hooks rows after forget hooks, want 0", n)
	}
	if n := env.count(`SELECT COUNT(*) FROM other_hook`); n != 1 {
		t.Errorf("%d other rows after forget hooks, want 1 (untouched)", n)
	}
	if exists, _ := env.svc.db.User.Exists(env.ctx, pvAlice); !exists {
		t.Error("the users row went with a one-bridge erasure")
	}
	receipt := env.lastNotice(pvDM)
	if !strings.Contains(receipt, "what hooks held") || !strings.Contains(receipt, "hooks: 1 entry") || strings.Contains(receipt, "leaving") {
		t.Errorf("receipt = %q, want the hooks count and no leaving", receipt)
	}
	notices := len(env.notices(pvDM))

	// Handled again after a crash (the confirmation in memory is gone): the same job, no new
	// receipt, no new tombstone.
	env.svc.privacy.confirms = nil
	env.redeliver(confirm)
	if n := env.count(`SELECT COUNT(*) FROM as_tombstone`); n != 1 {
		t.Errorf("%d tombstones after the confirmation was handled twice, want 1", n)
	}
	if got := len(env.notices(pvDM)); got != notices {
		t.Errorf("the bot sent %d more messages for the replayed confirmation, want none", got-notices)
	}
}

func TestPrivacyCommandsAreDMOnly(t *testing.T) {
	env := newPrivacyEnv(t, astest.SQLite, nil).start()
	env.setUpRoom(pvRoom, false, pvAlice, pvBob)
	for _, cmd := range []string{"!mydata", "!export", "!forget", "!pause", "!resume"} {
		env.text(pvRoom, pvAlice, cmd)
		if got := env.lastNotice(pvRoom); !strings.Contains(got, "only works in a direct chat") {
			t.Errorf("%s in a group room: reply %q, want a refusal", cmd, got)
		}
	}
}

func TestMyDataCommand(t *testing.T) {
	env := newPrivacyEnv(t, astest.SQLite, nil).start()
	env.setUpRoom(pvDM, true, pvCarol)
	env.text(pvDM, pvCarol, "mydata")
	first := env.lastNotice(pvDM)
	if !strings.Contains(first, "rooms where you invited a bot") || !strings.Contains(first, "commands you sent") {
		t.Errorf("mydata = %q, want the setup and the activity", first)
	}
	env.addHook(env.hooks, "h1", pvCarol, pvRoom, "$add1")
	env.addHook(env.hooks, "h2", pvCarol, pvRoom, "$add2")
	env.text(pvDM, pvCarol, "mydata")
	got := env.lastNotice(pvDM)
	for _, want := range []string{"hooks", "2 entries: webhooks you created", "encrypted credentials", "kept for 14 days", "`export`"} {
		if !strings.Contains(got, want) {
			t.Errorf("mydata = %q, want it to contain %q", got, want)
		}
	}
	if strings.Contains(got, "other") {
		t.Errorf("mydata = %q, mentions a bridge that holds nothing", got)
	}
}

func TestExportCommandSendsAFile(t *testing.T) {
	env := newPrivacyEnv(t, astest.SQLite, nil).start()
	env.setUpRoom(pvDM, true, pvAlice)
	env.addHook(env.hooks, "h1", pvAlice, pvRoom, "$add1")
	cmd := env.text(pvDM, pvAlice, "export")

	var file *event.MessageEventContent
	for _, sent := range env.hs.Messages(pvDM) {
		var content event.MessageEventContent
		if err := sent.Decode(&content); err != nil {
			t.Fatal(err)
		}
		if content.MsgType == event.MsgFile {
			file = &content
		}
	}
	if file == nil {
		t.Fatal("the bot sent no m.file")
	}
	if file.Info == nil || file.Info.MimeType != "application/json" || !strings.HasSuffix(file.FileName, ".json") {
		t.Errorf("file message = %+v, want a JSON file", file)
	}
	// An encrypted attachment: the media repository holds ciphertext, the key is in the message.
	if file.URL != "" || file.File == nil || file.File.URL != "mxc://example.org/upload1" {
		t.Fatalf("file message url %q, file %+v; want an encrypted attachment of the upload, no plain url", file.URL, file.File)
	}
	uploaded := env.hs.upload(0)
	if json.Valid(uploaded) || strings.Contains(string(uploaded), pvAlice.String()) {
		t.Errorf("the upload is readable without the key: %.100q", uploaded)
	}
	data := slices.Clone(uploaded)
	if err := file.File.DecryptInPlace(data); err != nil {
		t.Fatalf("decrypting the upload with the message's key: %v", err)
	}
	var export Export
	if err := json.Unmarshal(data, &export); err != nil {
		t.Fatalf("decrypted export is not JSON: %v", err)
	}
	if export.User != pvAlice || export.SchemaVersion != ExportSchemaVersion {
		t.Errorf("export = user %s, version %d; want %s, %d", export.User, export.SchemaVersion, pvAlice, ExportSchemaVersion)
	}
	if strings.Contains(string(data), "sealed-secret-bytes") || strings.Contains(string(data), "c2VhbGVk") {
		t.Error("the export contains a secret's value")
	}
	// The command's activity is recorded, by name.
	if n := env.count(`SELECT COUNT(*) FROM as_activity WHERE event_id=$1 AND action='export'`, cmd.ID); n != 1 {
		t.Errorf("%d activity rows for the export command, want 1", n)
	}
	// Handled again after a crash, the file is not sent twice.
	files := len(env.hs.Messages(pvDM))
	env.redeliver(cmd)
	if got := len(env.hs.Messages(pvDM)); got != files {
		t.Errorf("replayed export sent %d more messages, want none", got-files)
	}
}

func TestPauseWithholdsEventsFromBridges(t *testing.T) {
	env := newPrivacyEnv(t, astest.SQLite, nil).start()
	env.setUpRoom(pvDM, true, pvAlice)
	if err := env.svc.bridgeByID["hooks"].ClaimRoom(env.ctx, pvRoom, Provenance{Actor: pvBob, EventID: "$claim"}); err != nil {
		t.Fatal(err)
	}
	received := func() []id.EventID {
		env.hooks.lock.Lock()
		defer env.hooks.lock.Unlock()
		var out []id.EventID
		for _, evt := range env.hooks.events {
			if evt.Type == event.EventMessage {
				out = append(out, evt.ID)
			}
		}
		return out
	}
	before := env.text(pvRoom, pvAlice, "before")
	env.text(pvDM, pvAlice, "pause")
	if got := env.lastNotice(pvDM); !strings.Contains(got, "Paused") || !strings.Contains(got, "data and settings are kept") {
		t.Errorf("pause reply = %q, want what pausing means", got)
	}
	paused := env.text(pvRoom, pvAlice, "while paused")
	fromBob := env.text(pvRoom, pvBob, "from bob")
	env.text(pvDM, pvAlice, "mydata")
	if got := env.lastNotice(pvDM); !strings.Contains(got, "You have paused Custodian") {
		t.Errorf("mydata while paused = %q, want it to say so", got)
	}
	env.text(pvDM, pvAlice, "resume")
	if got := env.lastNotice(pvDM); !strings.Contains(got, "Resumed") {
		t.Errorf("resume reply = %q, want Resumed", got)
	}
	after := env.text(pvRoom, pvAlice, "after")
	want := []id.EventID{before.ID, fromBob.ID, after.ID}
	if got := received(); !slices.Equal(got, want) {
		t.Errorf("bridge received %v, want %v (not %s, sent while paused)", got, want, paused.ID)
	}
	env.text(pvDM, pvAlice, "resume")
	if got := env.lastNotice(pvDM); !strings.Contains(got, "have not paused") {
		t.Errorf("second resume reply = %q, want that nothing is paused", got)
	}
	// Activity holds command names only, never arguments.
	rows, err := env.svc.rawDB.Query(env.ctx, `SELECT action FROM as_activity WHERE user_mxid=$1`, pvAlice)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var actions []string
	for rows.Next() {
		var action string
		if err = rows.Scan(&action); err != nil {
			t.Fatal(err)
		}
		actions = append(actions, action)
	}
	slices.Sort(actions)
	if !slices.Equal(actions, []string{"mydata", "pause", "resume", "resume"}) {
		t.Errorf("activity = %v, want the four commands by name", actions)
	}
}

package webhook

import (
	"context"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/bridges/webhook/webhookdb"
	"github.com/custodian-matrix/custodian/bridges/webhook/webhookid"
)

func TestListRemoveRotate(t *testing.T) {
	forEachDialect(t, nil, func(t *testing.T, env *testEnv) {
		env.mustRun(testBob, "list", "no webhooks")
		env.mustRun(testAlice, "add ci", "Created")
		ciPath, ciID := env.lastURL(testAlice)
		env.mustRun(testAlice, "add deploy", "Created")
		deployPath, _ := env.lastURL(testAlice)
		rc := newReceiver(t)
		setUpOutbound(t, env, rc)

		list := env.mustRun(testBob, "list", "Webhooks in this room").replies[0]
		for _, want := range []string{"**ci**: incoming", "**deploy**: incoming", "**relay**: outgoing", "`@alice:example.org`", "2025-03-01 12:00 UTC"} {
			if !strings.Contains(list, want) {
				t.Errorf("list %q lacks %q", list, want)
			}
		}
		for _, secret := range []string{"/hooks/", ciID + "/", "sekrit", rc.srv.URL, env.lastSigningSecret(testAlice)} {
			if strings.Contains(list, secret) {
				t.Errorf("list %q shows a secret (%q)", list, secret)
			}
		}

		// Rotating by bob: the old URL stops working, bob gets the new one and owns the hook.
		res := env.mustRun(testBob, "rotate CI", "old URL no longer works")
		newPath, newID := env.lastURL(testBob)
		if newID != ciID || newPath == ciPath {
			t.Fatalf("rotated URL %s (hook %s), want a new token for hook %s", newPath, newID, ciID)
		}
		if status, _ := env.post(ciPath, "text/plain", "old", nil); status != http.StatusNotFound {
			t.Errorf("post to the old URL = %d, want 404", status)
		}
		if status, _ := env.post(newPath, "text/plain", "new", nil); status != http.StatusOK {
			t.Errorf("post to the new URL = %d, want 200", status)
		}
		ci, _ := env.br.db.Hook.GetByName(env.ctx, testRoom, "ci")
		if ci.Actor != testBob || ci.SourceEventID != res.evt.ID || !ci.SecretSent {
			t.Errorf("rotated hook provenance = %s / %s, want bob's rotate command %s", ci.Actor, ci.SourceEventID, res.evt.ID)
		}

		// Rotating the outbound hook: deliveries are signed with the new secret.
		oldSecret := env.lastSigningSecret(testAlice)
		env.mustRun(testBob, "rotate relay", "signed with a new secret")
		newSecret := env.lastSigningSecret(testBob)
		if newSecret == oldSecret {
			t.Fatal("rotate sent the same signing secret")
		}
		if err := env.deliver(env.ctx, env.message(testAlice, "after rotation")); err != nil {
			t.Fatal(err)
		}
		verify(t, rc.next(t), newSecret)

		// Removing: the URL answers 404 at once, and the ghost leaves.
		ghost := id.NewUserID(webhookid.GhostLocalpart(ciID), "example.org")
		env.mustRun(testAlice, "remove ci", "Its URL no longer works")
		if status, _ := env.post(newPath, "text/plain", "gone", nil); status != http.StatusNotFound {
			t.Errorf("post to a removed hook = %d, want 404", status)
		}
		if m := env.host.HS.Membership(testRoom, ghost); m != event.MembershipLeave {
			t.Errorf("removed hook's ghost membership = %q, want leave", m)
		}
		env.mustRun(testAlice, "remove ci", "no webhook named")
		env.mustRun(testAlice, "delete relay", "Removed")
		if err := env.deliver(env.ctx, env.message(testAlice, "after removal")); err != nil {
			t.Fatal(err)
		}
		rc.none(t)
		if !env.host.Claimed(t, testRoom) {
			t.Error("room released while it still has a hook")
		}
		env.mustRun(testAlice, "remove deploy", "Removed")
		if status, _ := env.post(deployPath, "text/plain", "gone", nil); status != http.StatusNotFound {
			t.Errorf("post to a removed hook = %d, want 404", status)
		}
		if env.host.Claimed(t, testRoom) {
			t.Error("room still claimed after its last hook was removed")
		}
	})
}

func TestRedactingTheCommandRemovesTheHook(t *testing.T) {
	forEachDialect(t, nil, func(t *testing.T, env *testEnv) {
		add := env.mustRun(testAlice, "add ci", "Created")
		path, hookID := env.lastURL(testAlice)
		if status, _ := env.post(path, "text/plain", "works", nil); status != http.StatusOK {
			t.Fatalf("post = %d", status)
		}
		rc := newReceiver(t)
		relay, _ := setUpOutbound(t, env, rc)

		// Redacting the add command: the core purges the row, tells the bridge, then hands it
		// the redaction. The hook answers 404, its ghost leaves, and the redaction of a command
		// is not passed on as a deletion notice.
		// Bob may purge alice's command only as a moderator of the room.
		env.host.SetPowerLevels(t, testRoom, &event.PowerLevelsEventContent{Users: map[id.UserID]int{testBob: 50}})
		redaction := env.redaction(testBob, add.evt.ID)
		if purged := env.host.PurgeRedacted(t, redaction); purged["webhook_hook"] != 1 {
			t.Fatalf("purged %v, want the hook", purged)
		}
		if err := env.deliver(env.ctx, redaction); err != nil {
			t.Fatal(err)
		}
		if status, _ := env.post(path, "text/plain", "gone", nil); status != http.StatusNotFound {
			t.Errorf("post after redaction = %d, want 404", status)
		}
		ghost := id.NewUserID(webhookid.GhostLocalpart(hookID), "example.org")
		if m := env.host.HS.Membership(testRoom, ghost); m != event.MembershipLeave {
			t.Errorf("ghost membership = %q, want leave", m)
		}
		rc.none(t)
		if !env.host.Claimed(t, testRoom) {
			t.Error("room released while the outbound hook remains")
		}

		// Redacting the out command stops deliveries at once and releases the room.
		outRedaction := env.redaction(testAlice, relay.SourceEventID)
		if purged := env.host.PurgeRedacted(t, outRedaction); len(purged) == 0 {
			t.Fatal("redacting the out command purged nothing")
		}
		if err := env.deliver(env.ctx, outRedaction); err != nil {
			t.Fatal(err)
		}
		env.waitQueueGone(relay.ID)
		if err := env.deliver(env.ctx, env.message(testBob, "after")); err != nil {
			t.Fatal(err)
		}
		rc.none(t)
		if env.host.Claimed(t, testRoom) {
			t.Error("room still claimed without hooks")
		}
	})
}

func TestRedactionTheCoreDidNotPurge(t *testing.T) {
	env := newTestEnv(t, "sqlite", nil)
	add := env.mustRun(testAlice, "add ci", "Created")
	path, _ := env.lastURL(testAlice)
	rc := newReceiver(t)
	_, secret := setUpOutbound(t, env, rc)
	// Someone without the right redacted alice's command: the core left the hook alone, and so
	// does the bridge; nor is the command's deletion passed on.
	if err := env.deliver(env.ctx, env.redaction(testBob, add.evt.ID)); err != nil {
		t.Fatal(err)
	}
	if status, _ := env.post(path, "text/plain", "still here", nil); status != http.StatusOK {
		t.Errorf("post = %d, want 200", status)
	}
	rc.none(t)
	// A redaction of an ordinary message is passed on.
	msg := env.message(testBob, "oops")
	redaction := env.redaction(testBob, msg.ID)
	if err := env.deliver(env.ctx, redaction); err != nil {
		t.Fatal(err)
	}
	if got := verify(t, rc.next(t), secret); got.Redacts != msg.ID {
		t.Errorf("delivered %+v, want a deletion notice for %s", got, msg.ID)
	}
}

func TestEraseRemoteRevokes(t *testing.T) {
	forEachDialect(t, nil, func(t *testing.T, env *testEnv) {
		env.mustRun(testAlice, "add ci", "Created")
		alicePath, _ := env.lastURL(testAlice)
		env.mustRun(testBob, "add bobs", "Created")
		bobPath, _ := env.lastURL(testBob)
		rc := newReceiver(t)
		setUpOutbound(t, env, rc) // alice's outbound hook

		for range 2 { // idempotent
			if err := env.br.EraseRemote(env.ctx, testAlice); err != nil {
				t.Fatal(err)
			}
		}
		if status, _ := env.post(alicePath, "text/plain", "x", nil); status != http.StatusNotFound {
			t.Errorf("post to alice's revoked hook = %d, want 404", status)
		}
		if status, _ := env.post(bobPath, "text/plain", "x", nil); status != http.StatusOK {
			t.Errorf("post to bob's hook = %d, want 200", status)
		}
		if err := env.deliver(env.ctx, env.message(testBob, "after erasure")); err != nil {
			t.Fatal(err)
		}
		rc.none(t)
		// The revoked rows stay until the core's erase transaction, which counts them.
		revoked := 0
		for _, h := range env.hooks() {
			if h.Actor == testAlice && !h.RevokedAt.IsZero() {
				revoked++
			}
		}
		if revoked != 2 {
			t.Errorf("revoked rows = %d, want alice's 2", revoked)
		}
		if list := env.mustRun(testBob, "list", "bobs").replies[0]; strings.Contains(list, "**ci**") || strings.Contains(list, "**relay**") {
			t.Errorf("list %q still shows revoked hooks", list)
		}
		// A revoked hook's name can be reused even before the erasure finished.
		env.mustRun(testBob, "add ci", "Created")
		if !env.host.Claimed(t, testRoom) {
			t.Error("room released while bob's hooks remain")
		}

		env.host.EraseUser(t, testAlice)
		if n := countRowsNaming(t, env, "webhook_hook", testAlice); n != 0 {
			t.Errorf("webhook_hook holds %d rows naming alice after erasure", n)
		}
		if room := env.host.ManagementRoom(t, testAlice); room != "" {
			t.Errorf("alice's management room %s is still recorded after erasure", room)
		}
	})
}

func TestEraseRemoteDropsQueuedMessagesOfTheUser(t *testing.T) {
	env := newTestEnv(t, "sqlite", nil)
	rc := newReceiver(t, 500)
	env.mustRun(testBob, "out "+rc.URL()+" bobrelay", "Created")
	secret := env.lastSigningSecret(testBob)
	inFlight := env.message(testAlice, "alice in flight")
	if err := env.deliver(env.ctx, inFlight); err != nil {
		t.Fatal(err)
	}
	rc.next(t)
	env.waitForRetry(1)
	queuedAlice := env.message(testAlice, "alice queued")
	queuedBob := env.message(testBob, "bob queued")
	for _, evt := range []*event.Event{queuedAlice, queuedBob} {
		if err := env.deliver(env.ctx, evt); err != nil {
			t.Fatal(err)
		}
	}
	if err := env.br.EraseRemote(env.ctx, testAlice); err != nil {
		t.Fatal(err)
	}
	env.clock.Advance(time.Hour)
	if got := verify(t, rc.next(t), secret); got.EventID != queuedBob.ID {
		t.Fatalf("delivered %s, want %s: alice's messages, queued or in flight, are dropped", got.EventID, queuedBob.ID)
	}
	rc.none(t)
}

func TestPurgeRoom(t *testing.T) {
	forEachDialect(t, nil, func(t *testing.T, env *testEnv) {
		env.mustRun(testAlice, "add ci", "Created")
		path, _ := env.lastURL(testAlice)
		rc := newReceiver(t)
		setUpOutbound(t, env, rc)
		other := id.RoomID("!other:example.org")
		env.host.SetUpRoom(t, other, testAlice)
		c := &cmdCall{evt: &event.Event{ID: "$other-add", RoomID: other, Sender: testAlice}, roomID: other, sender: testAlice,
			args: []string{"elsewhere"}, prefix: "!", reply: func(context.Context, string) error { return nil }}
		if err := env.br.cmdAdd(env.ctx, c); err != nil {
			t.Fatal(err)
		}
		otherPath, _ := env.lastURL(testAlice)

		for range 2 { // idempotent
			if err := env.br.PurgeRoom(env.ctx, testRoom); err != nil {
				t.Fatal(err)
			}
		}
		if err := env.br.PurgeRoom(env.ctx, "!unknown:example.org"); err != nil {
			t.Errorf("PurgeRoom(unknown room) = %v", err)
		}
		if hooks := env.hooks(); len(hooks) != 0 {
			t.Errorf("hooks after purge = %d, want 0", len(hooks))
		}
		if status, _ := env.post(path, "text/plain", "x", nil); status != http.StatusNotFound {
			t.Errorf("post after purge = %d, want 404", status)
		}
		if err := env.deliver(env.ctx, env.message(testBob, "x")); err != nil {
			t.Fatal(err)
		}
		rc.none(t)
		if status, _ := env.post(otherPath, "text/plain", "x", nil); status != http.StatusOK {
			t.Errorf("post to another room's hook = %d, want 200", status)
		}
	})
}

func TestCommandsAreIdempotentOnReplay(t *testing.T) {
	forEachDialect(t, nil, func(t *testing.T, env *testEnv) {
		add := env.mustRun(testAlice, "add ci", "Created")
		env.runEvent(add.evt) // the same command again, as after a crash
		if hooks := env.hooks(); len(hooks) != 1 {
			t.Fatalf("hooks after replay = %d, want 1", len(hooks))
		}
		if bodies := env.dmBodies(testAlice); len(bodies) != 1 {
			t.Errorf("direct chat has %d messages after replay, want 1", len(bodies))
		}

		// A crash after storing the hook but before the URL was sent: the replay issues a new
		// token (only the hash survived) and sends it; the stored hash follows.
		add2 := env.message(testAlice, "!webhook add deploy")
		hook := &webhookdb.Hook{
			ID: webhookid.NewHookID(), RoomID: testRoom, Name: "deploy", Kind: webhookdb.KindInbound, Actor: testAlice,
			SourceEventID: add2.ID, CreatedAt: env.clock.Now(), UpdatedAt: env.clock.Now(), TokenHash: webhookid.HashToken(webhookid.NewToken()),
		}
		if err := env.br.insertHook(env.ctx, hook); err != nil {
			t.Fatal(err)
		}
		if res := env.runEvent(add2); res.err != nil || len(res.replies) != 1 || !strings.Contains(res.replies[0], "Created") {
			t.Fatalf("replayed add = %v, %q", res.err, res.replies)
		}
		path, hookID := env.lastURL(testAlice)
		if hookID != hook.ID {
			t.Errorf("replay sent the URL of %s, want %s", hookID, hook.ID)
		}
		if status, _ := env.post(path, "text/plain", "x", nil); status != http.StatusOK {
			t.Errorf("post to the replayed hook's URL = %d, want 200", status)
		}

		// Outbound: a replay sends the same signing secret once.
		rc := newReceiver(t)
		out := env.mustRun(testAlice, "out "+rc.URL()+" relay", "Created")
		before := len(env.dmBodies(testAlice))
		env.runEvent(out.evt)
		if after := len(env.dmBodies(testAlice)); after != before {
			t.Errorf("replayed out sent %d more messages", after-before)
		}
		if n := len(env.hooks()); n != 3 {
			t.Errorf("hooks = %d, want 3", n)
		}
	})
}

// TestNoPlaintextSecrets dumps every table and the logs after a full round of use and looks for
// any token, URL or signing secret.
func TestNoPlaintextSecrets(t *testing.T) {
	forEachDialect(t, nil, func(t *testing.T, env *testEnv) {
		env.mustRun(testAlice, "add ci", "Created")
		path, _ := env.lastURL(testAlice)
		token := path[strings.LastIndex(path, "/")+1:]
		env.post(path, "application/json", `{"text": "secret message body 1234", "username": "u"}`, nil)
		env.post(path, "application/json", `{"text": `, nil)
		rc := newReceiver(t, 500, 200)
		setUpOutbound(t, env, rc)
		signing := env.lastSigningSecret(testAlice)
		if err := env.deliver(env.ctx, env.message(testBob, "another secret body 5678")); err != nil {
			t.Fatal(err)
		}
		rc.next(t)
		env.waitForRetry(1)
		env.clock.Advance(time.Hour)
		rc.next(t)
		env.mustRun(testBob, "rotate ci", "Rotated")
		newPath, _ := env.lastURL(testBob)
		newToken := newPath[strings.LastIndex(newPath, "/")+1:]

		secrets := []string{token, newToken, signing, "sekrit-receiver-token", rc.URL(), "/hooks/"}
		dump := dumpDatabase(t, env.host.RawDB)
		for _, secret := range secrets {
			if strings.Contains(dump, secret) {
				t.Errorf("the database holds a plaintext secret (%.12s…)", secret)
			}
		}
		if !strings.Contains(dump, webhookid.HashToken(newToken)) {
			t.Error("the database does not hold the token's hash (is the dump complete?)")
		}
		logs := env.host.Logs()
		for _, secret := range append(secrets, "secret message body", "another secret body") {
			if strings.Contains(logs, secret) {
				t.Errorf("the logs hold %.12s…", secret)
			}
		}
		if !strings.Contains(logs, "Handled inbound webhook request") {
			t.Error("the logs are not captured (is the check meaningful?)")
		}
	})
}

// dumpDatabase returns every row of every table as text (binary columns also as hex).
func dumpDatabase(t *testing.T, db *dbutil.Database) string {
	t.Helper()
	ctx := context.Background()
	query := `SELECT name FROM sqlite_master WHERE type='table'`
	if db.Dialect == dbutil.Postgres {
		query = `SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()`
	}
	rows, err := db.Query(ctx, query)
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for rows.Next() {
		var name string
		if err = rows.Scan(&name); err != nil {
			t.Fatal(err)
		}
		tables = append(tables, name)
	}
	_ = rows.Close()
	var sb strings.Builder
	for _, table := range tables {
		rows, err := db.Query(ctx, `SELECT * FROM `+table)
		if err != nil {
			t.Fatal(err)
		}
		cols, _ := rows.Columns()
		for rows.Next() {
			values := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range values {
				ptrs[i] = &values[i]
			}
			if err = rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&sb, "%s:", table)
			for _, v := range values {
				switch v := v.(type) {
				case []byte:
					fmt.Fprintf(&sb, " %s %s", v, hex.EncodeToString(v))
				default:
					fmt.Fprintf(&sb, " %v", v)
				}
			}
			sb.WriteString("\n")
		}
		_ = rows.Close()
	}
	return sb.String()
}

func countRowsNaming(t *testing.T, env *testEnv, table string, user id.UserID) int {
	t.Helper()
	column := map[string]string{"webhook_hook": "actor_mxid"}[table]
	var n int
	err := env.host.RawDB.QueryRow(env.ctx, `SELECT COUNT(*) FROM `+table+` WHERE `+column+`=$1`, user).Scan(&n)
	if err != nil && err != sql.ErrNoRows {
		t.Fatal(err)
	}
	return n
}

// TestPersonalDataDeclared checks the inventory against the migrated schema the way the core's
// start-up check does: every webhook_ table with a user column is declared, its declared
// columns exist, and its user column cascades from users.
func TestPersonalDataDeclared(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newTestEnv(t, dialect, nil)
			declared := make(map[string]bool)
			for _, ut := range env.br.PersonalData() {
				declared[ut.Table] = true
				cols := tableColumns(t, env.host.RawDB, ut.Table)
				for _, col := range append(append([]string{ut.UserColumn, ut.SourceEventColumn, ut.RoomColumn, ut.TimeColumn}, ut.Export...), ut.Secret...) {
					if col != "" && !cols[col] {
						t.Errorf("%s: declared column %s does not exist", ut.Table, col)
					}
				}
				if ut.Description == "" {
					t.Errorf("%s: no description", ut.Table)
				}
				// Deleting the users row removes the table's rows: seed one and erase.
			}
			env.mustRun(testAlice, "add ci", "Created")
			env.host.EraseUser(t, testAlice)
			for table := range declared {
				if n := countRowsNaming(t, env, table, testAlice); n != 0 {
					t.Errorf("%s: %d rows remain after deleting the users row", table, n)
				}
			}
			if !declared["webhook_hook"] {
				t.Error("table webhook_hook is not declared")
			}
		})
	}
}

func tableColumns(t *testing.T, db *dbutil.Database, table string) map[string]bool {
	t.Helper()
	query := `SELECT name FROM pragma_table_info($1)`
	if db.Dialect == dbutil.Postgres {
		query = `SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1`
	}
	rows, err := db.Query(context.Background(), query, table)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	cols := make(map[string]bool)
	for rows.Next() {
		var name string
		if err = rows.Scan(&name); err != nil {
			t.Fatal(err)
		}
		cols[name] = true
	}
	return cols
}

func TestEraseRemoteReleasesRoomsLeftWithoutHooks(t *testing.T) {
	env := newTestEnv(t, "sqlite", nil)
	env.mustRun(testAlice, "add ci", "Created")
	if err := env.br.EraseRemote(env.ctx, testAlice); err != nil {
		t.Fatal(err)
	}
	if env.host.Claimed(t, testRoom) {
		t.Error("room still claimed after its only hook's owner was erased")
	}
}

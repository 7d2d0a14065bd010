//go:build e2e

package e2e_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/vault"
	"github.com/custodian-matrix/custodian/e2e"
)

// TestExport: !export in a direct chat with the bot answers with an encrypted m.file of JSON: the versioned
// export, with the webhooks the user created (and their provenance) and the bot's setup metadata,
// and no webhook token, outgoing URL or signing secret.
func TestExport(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		env := e2e.New(t, backend, e2e.WithWebhookBridge(t))
		receiver := e2e.NewReceiver(t)
		bot := env.BotUserID()
		alice := env.Register(t, "alice")
		roomID := mustCreateGroupRoom(t, env, alice, env.Register(t, "bob"))
		in := mustAddInbound(t, env, alice, roomID, "ci")
		out := mustAddOutbound(t, env, alice, roomID, "relay", receiver.URL("/export/"+e2e.RandomHex(t, 16)))
		dm := in.DMRoomID

		file := mustGetExportFile(t, env, alice, dm)
		content := file.Content.AsMessage()
		if content.Info == nil || content.Info.MimeType != "application/json" {
			t.Errorf("export file info %+v, want mimetype application/json", content.Info)
		}
		data := mustDecryptExport(t, env, alice, file)

		if found := findSecrets(string(data), map[string]string{
			"incoming token": in.Token, "outgoing URL": out.URL, "signing secret": out.SigningSecret,
		}); len(found) > 0 {
			t.Errorf("the export contains %v", found)
		}

		var export struct {
			SchemaVersion int       `json:"schema_version"`
			GeneratedAt   time.Time `json:"generated_at"`
			User          id.UserID `json:"user"`
			Modules       map[string]map[string]struct {
				SecretColumns []string         `json:"secret_columns"`
				RowCount      int              `json:"row_count"`
				Rows          []map[string]any `json:"rows"`
			} `json:"modules"`
		}
		if err := json.Unmarshal(data, &export); err != nil {
			t.Fatalf("the export is not JSON: %v\n%.2000s", err, data)
		}
		if export.SchemaVersion != 1 || export.User != alice.UserID || time.Since(export.GeneratedAt) > 10*time.Minute {
			t.Errorf("export header: schema_version %d, user %s, generated_at %v; want 1, %s, now",
				export.SchemaVersion, export.User, export.GeneratedAt, alice.UserID)
		}

		hooks := export.Modules["webhook"]["webhook_hook"]
		if hooks.RowCount != 2 || len(hooks.Rows) != 2 {
			t.Fatalf("export lists %d webhooks (row_count %d), want 2:\n%.3000s", len(hooks.Rows), hooks.RowCount, data)
		}
		byID := map[string]map[string]any{}
		for _, row := range hooks.Rows {
			hookID, _ := row["id"].(string)
			byID[hookID] = row
		}
		for _, want := range []struct {
			id, name, kind string
			cmd            id.EventID
			secrets        []string
		}{
			{in.ID, "ci", "in", in.Command, []string{"token_hash"}},
			{out.ID, "relay", "out", out.Command, []string{"outbound_url", "signing_secret"}},
		} {
			row := byID[want.id]
			if row == nil {
				t.Errorf("export has no row for webhook %s", want.name)
				continue
			}
			// Provenance: the room, the command event, when.
			if row["name"] != want.name || row["kind"] != want.kind || row["room_id"] != roomID.String() ||
				row["source_event_id"] != want.cmd.String() || row["created_at"] == nil {
				t.Errorf("export row of webhook %s = %v; want name %s, kind %s, room %s, source event %s and created_at",
					want.name, row, want.name, want.kind, roomID, want.cmd)
			}
			for _, col := range want.secrets {
				if row[col] != "[redacted]" {
					t.Errorf("export row of webhook %s: secret column %s = %v, want \"[redacted]\"", want.name, col, row[col])
				}
			}
		}

		setups := export.Modules["core"]["as_bot_setup"]
		var setup map[string]any
		for _, row := range setups.Rows {
			if row["room_id"] == roomID.String() {
				setup = row
			}
		}
		if setup == nil {
			t.Fatalf("export has no bot setup row for %s:\n%v", roomID, setups.Rows)
		}
		if setup["bot"] != bot.String() || setup["invite_event_id"] == nil || setup["invited_at"] == nil || setup["config"] == nil {
			t.Errorf("export's setup row %v lacks the bot, the invite event, the time or the configuration", setup)
		}
		// The room the bot sent the secrets in is alice's management room, kept on her users row.
		if users := export.Modules["core"]["users"]; len(users.Rows) != 1 || users.Rows[0]["management_room"] != dm.String() {
			t.Errorf("export's users rows %v, want alice's with management room %s", users.Rows, dm)
		}
	})
}

// TestForgetErasesEverything: after alice used incoming and outgoing webhooks, a full copy of the
// database is taken; then "!forget" and "!forget confirm" in her direct chat erase her: a receipt
// arrives, the bot leaves the chat, her webhook's URL answers 404, no row of any table names her
// (the whole database dumped as text) while bob's data is untouched, and her sealed outgoing URL
// from the copy can no longer be opened (crypto-shredding). With vault.shred_backups on, the
// service then rotates the master key by itself, and the whole copy (her wrapped data key
// included, and everyone else's) no longer opens with the key file: backups are shredded too.
func TestForgetErasesEverything(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		env := e2e.New(t, backend, e2e.WithWebhookBridge(t), e2e.WithConfigValue("vault.shred_backups", true))
		receiver := e2e.NewReceiver(t)
		bot := env.BotUserID()
		alice := env.Register(t, "alice")
		bob := env.Register(t, "bob")
		carol := env.Register(t, "carol")

		aliceRoom := mustCreateGroupRoom(t, env, alice, carol)
		in := mustAddInbound(t, env, alice, aliceRoom, "ci")
		aliceOut := mustAddOutbound(t, env, alice, aliceRoom, "relay", receiver.URL("/alice/"+e2e.RandomHex(t, 16)))
		mustPostText(t, in, "hello from CI")
		msg := env.SendText(t, alice, aliceRoom, "hello from alice")
		receiver.WaitFor(t, deliveryWait, deliveryOf(aliceOut.ID, msg))

		// Bob's data must survive alice's erasure.
		bobRoom := mustCreateGroupRoom(t, env, bob, carol)
		bobOut := mustAddOutbound(t, env, bob, bobRoom, "relay", receiver.URL("/bob/"+e2e.RandomHex(t, 16)))

		// A full copy of the database before the erasure, as a backup would be.
		waitInboxEmpty(t, env)
		env.StopCustodian(t)
		backup := env.CopyDatabase(t)
		env.StartCustodian(t)
		if rows := backup.Dump(t).Find(alice.UserID.String()); len(rows) == 0 {
			t.Fatalf("the copy has no row naming alice; it is not a copy of her data")
		}
		aliceSealed := sealedSecrets(t, backup.DB, aliceOut.ID)
		bobSealed := sealedSecrets(t, backup.DB, bobOut.ID)
		// The copy is a working backup: with the current master key it still opens alice's
		// secret (the documented limit of crypto-shredding: a full backup holds her wrapped data
		// key too, until the master key that wrapped it is rotated out).
		ctx := context.Background()
		copyVault := openVault(t, backup.Driver, backup.DB, env.KeyFilePath())
		if got, err := copyVault.Open(ctx, alice.UserID, "webhook", "outbound_url/"+aliceOut.ID, aliceSealed.url); err != nil || !got.Equal(aliceOut.URL) {
			t.Fatalf("opening alice's outgoing URL from the copy with the current key: %v; want it to open (control)", err)
		}

		oldKeys, err := vault.FileKeys(env.KeyFilePath()).LoadKeys()
		if err != nil {
			t.Fatal(err)
		}

		forget := env.SendText(t, alice, in.DMRoomID, "!forget")
		mustBotReply(t, env, alice, in.DMRoomID, forget, "forget confirm")
		confirm := env.SendText(t, alice, in.DMRoomID, "!forget confirm")
		receipt := env.MustSyncUntil(t, alice, time.Minute, e2e.After(confirm, func(evt *event.Event) bool {
			return e2e.IsNoticeFrom(in.DMRoomID, bot)(evt) && strings.Contains(evt.Content.AsMessage().Body, "Done: I erased everything")
		}))
		if body := receipt.Content.AsMessage().Body; !strings.Contains(body, "webhook") || !strings.Contains(body, "core") {
			t.Errorf("the receipt does not list the modules erased (core, webhook):\n%s", body)
		}
		env.MustSyncUntil(t, alice, replyWait, e2e.IsMember(in.DMRoomID, bot, event.MembershipLeave))

		if status, answer := post(t, in.URL, "application/json", []byte(`{"text":"after forget"}`)); status != http.StatusNotFound {
			t.Errorf("POST to alice's webhook after her erasure: status %d, want 404: %s", status, answer)
		}
		// Bob's outgoing webhook still works.
		bobMsg := env.SendText(t, bob, bobRoom, "hello from bob")
		receiver.WaitFor(t, deliveryWait, deliveryOf(bobOut.ID, bobMsg))

		// No row of any table names alice; bob's rows are all there.
		waitInboxEmpty(t, env)
		time.Sleep(time.Second) // let follow-ups of the erasure (ghost leaves, the bot's leave) settle
		waitInboxEmpty(t, env)
		dump := env.DumpDatabase(t)
		t.Logf("dumped %d rows of %d tables: %s", len(dump.Rows), len(dump.Tables), strings.Join(dump.Tables, ", "))
		// Her user ID, URL-escaped too, or even her localpart (her display name is "alice"): the
		// random IDs and keys in the dump are hex or base64url, where "alice" practically never
		// occurs by chance.
		if rows := dump.Find(alice.UserID.String(), "%40alice%3Alocalhost", "alice"); len(rows) > 0 {
			t.Errorf("after !forget, %d rows still name %s:\n%s", len(rows), alice.UserID, e2e.Describe(rows))
		}
		if rows := dump.Find(bob.UserID.String()); len(rows) == 0 {
			t.Errorf("after alice's erasure no row names bob: the dump is wrong or too much was erased")
		}
		if !hookExists(t, env, bobOut.ID) {
			t.Errorf("bob's outgoing webhook was erased with alice")
		}
		if n := dump.Count("as_tombstone"); n != 1 {
			t.Errorf("as_tombstone has %d rows, want 1 for alice's erasure", n)
		}

		// Crypto-shredding: the copy's sealed values of alice cannot be opened with the live
		// database and the current master key, because her data key is gone from the database.
		// This is what anyone with the current keys (the service, an admin, a restored process)
		// can do. Bob's values from the same copy still open, so the failure is alice's alone.
		// A full backup also holds her wrapped data key; with vault.shred_backups the service
		// rotates the master key right after the erasure and retires the old one (checked below).
		liveVault := openVault(t, env.DBDriver(), env.DB(t), env.KeyFilePath())
		for name, sealed := range map[string][]byte{"outbound_url/" + aliceOut.ID: aliceSealed.url, "signing_secret/" + aliceOut.ID: aliceSealed.secret} {
			if got, err := liveVault.Open(ctx, alice.UserID, "webhook", name, sealed); !errors.Is(err, vault.ErrDecrypt) {
				t.Errorf("opening alice's %s from the pre-erasure copy after her erasure: %q, %v; want vault.ErrDecrypt", name, got.Reveal(), err)
			}
		}
		if got, err := liveVault.Open(ctx, bob.UserID, "webhook", "outbound_url/"+bobOut.ID, bobSealed.url); err != nil || !got.Equal(bobOut.URL) {
			t.Errorf("opening bob's outgoing URL from the copy: %v; want it to open", err)
		}

		// Backup shredding: within seconds of the erasure, the key file holds none of the keys
		// it held before, and then nothing in the pre-erasure copy (its data key rows and its
		// sealed values) opens with the key file, alice's nor bob's.
		e2e.Eventually(t, time.Minute, func() error {
			keys, err := vault.FileKeys(env.KeyFilePath()).LoadKeys()
			if err != nil {
				return err
			}
			for _, k := range keys {
				for _, old := range oldKeys {
					if k.ID() == old.ID() {
						return fmt.Errorf("the key file still holds key %s from before the erasure", old.ID())
					}
				}
			}
			return nil
		})
		newKeys, err := vault.FileKeys(env.KeyFilePath()).LoadKeys()
		if err != nil {
			t.Fatal(err)
		}
		if len(newKeys) != 1 {
			t.Errorf("the key file holds %d keys after the shred rotation, want 1 (the new current key)", len(newKeys))
		}
		rows, err := backup.DB.Query(`SELECT DISTINCT kek_id FROM as_vault_dek`)
		if err != nil {
			t.Fatal(err)
		}
		var copiedKEKs []string
		for rows.Next() {
			var kekID string
			if err = rows.Scan(&kekID); err != nil {
				t.Fatal(err)
			}
			copiedKEKs = append(copiedKEKs, kekID)
		}
		if err = rows.Close(); err != nil {
			t.Fatal(err)
		}
		if len(copiedKEKs) == 0 {
			t.Fatal("the copy holds no data keys")
		}
		for _, kekID := range copiedKEKs {
			for _, k := range newKeys {
				if k.ID() == kekID {
					t.Errorf("the copy's data keys are wrapped by %s, which the key file still holds", kekID)
				}
			}
		}
		shreddedCopy := openVault(t, backup.Driver, backup.DB, env.KeyFilePath())
		for _, c := range []struct {
			user   id.UserID
			name   string
			sealed []byte
		}{
			{alice.UserID, "outbound_url/" + aliceOut.ID, aliceSealed.url},
			{alice.UserID, "signing_secret/" + aliceOut.ID, aliceSealed.secret},
			{bob.UserID, "outbound_url/" + bobOut.ID, bobSealed.url},
			{bob.UserID, "signing_secret/" + bobOut.ID, bobSealed.secret},
		} {
			if got, err := shreddedCopy.Open(ctx, c.user, "webhook", c.name, c.sealed); !errors.Is(err, vault.ErrKeyUnavailable) {
				t.Errorf("opening %s's %s from the pre-erasure copy with the key file after the shred rotation: %q, %v; want vault.ErrKeyUnavailable", c.user, c.name, got.Reveal(), err)
			}
		}
		// The live service and a fresh process still open bob's values.
		liveVault = openVault(t, env.DBDriver(), env.DB(t), env.KeyFilePath())
		if got, err := liveVault.Open(ctx, bob.UserID, "webhook", "outbound_url/"+bobOut.ID, bobSealed.url); err != nil || !got.Equal(bobOut.URL) {
			t.Errorf("opening bob's outgoing URL with the rotated key file: %v; want it to open", err)
		}
		bobMsg = env.SendText(t, bob, bobRoom, "hello from bob after the rotation")
		receiver.WaitFor(t, deliveryWait, deliveryOf(bobOut.ID, bobMsg))
	})
}

// sealed is an outgoing webhook's sealed URL and signing secret as stored.
type sealed struct{ url, secret []byte }

func sealedSecrets(t *testing.T, db *sql.DB, hookID string) sealed {
	t.Helper()
	var s sealed
	if err := db.QueryRow(`SELECT outbound_url, signing_secret FROM webhook_hook WHERE id=$1`, hookID).Scan(&s.url, &s.secret); err != nil {
		t.Fatalf("reading the sealed secrets of webhook %s: %v", hookID, err)
	}
	if len(s.url) == 0 || len(s.secret) == 0 {
		t.Fatalf("webhook %s has no sealed URL or signing secret", hookID)
	}
	return s
}

// openVault opens the credential vault on db (Custodian's schema, "sqlite3" or "postgres") with
// the master keys of keyFile, as a second process would, without a data key cache.
func openVault(t *testing.T, driver string, db *sql.DB, keyFile string) *vault.Vault {
	t.Helper()
	raw, err := dbutil.NewWithDB(db, driver)
	if err != nil {
		t.Fatalf("wrapping the database for the vault: %v", err)
	}
	v := vault.New(vault.ChildDB(raw, zerolog.Nop()), vault.Options{Keys: vault.FileKeys(keyFile), CacheSize: -1})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := v.Reload(ctx); err != nil {
		t.Fatalf("loading the master keys from %s: %v", keyFile, err)
	}
	return v
}

// TestDeactivationErases: with an admin token for Synapse's admin API configured, deactivating
// alice with erase: true (Synapse's admin API) erases everything Custodian holds about her within
// a minute, without anyone asking Custodian, and leaves a tombstone.
func TestDeactivationErases(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		tokenFile := filepath.Join(t.TempDir(), "synapse-admin.token")
		env := e2e.New(t, backend, e2e.WithWebhookBridge(t), e2e.WithoutStart(),
			e2e.WithConfigValue("privacy.deactivation.admin_token_file", tokenFile))
		admin := env.RegisterAdmin(t, "admin")
		if err := os.WriteFile(tokenFile, []byte(admin.AccessToken+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		env.StartCustodian(t)
		env.MustWaitForLog(t, "Account deactivations can be confirmed", 10*time.Second)

		alice := env.Register(t, "alice")
		bob := env.Register(t, "bob")
		roomID := mustCreateGroupRoom(t, env, alice, bob)
		in := mustAddInbound(t, env, alice, roomID, "ci")
		mustPostText(t, in, "hello from CI")
		if rows := env.DumpDatabase(t).Find(alice.UserID.String()); len(rows) == 0 {
			t.Fatalf("no row names alice before her deactivation")
		}

		status, body := env.HSRequest(t, http.MethodPost, "/_synapse/admin/v1/deactivate/"+alice.UserID.String(),
			admin.AccessToken, []byte(`{"erase": true}`))
		if status != http.StatusOK {
			t.Fatalf("deactivating alice: status %d: %s", status, body)
		}
		start := time.Now()
		e2e.Eventually(t, time.Minute, func() error {
			dump := env.DumpDatabase(t)
			if rows := dump.Find(alice.UserID.String()); len(rows) > 0 {
				return fmt.Errorf("%d rows still name alice:\n%s", len(rows), e2e.Describe(rows))
			}
			var n int
			if err := env.DB(t).QueryRow(`SELECT COUNT(*) FROM as_tombstone WHERE erase_trigger='deactivation'`).Scan(&n); err != nil {
				return err
			}
			if n == 0 {
				return fmt.Errorf("no tombstone of a deactivation erasure")
			}
			return nil
		})
		t.Logf("alice's data was gone %v after her deactivation", time.Since(start).Round(10*time.Millisecond))
		if line := env.MustWaitForLog(t, "Account of a leaving user is deactivated", 5*time.Second); !strings.Contains(line, `"method":"admin_api"`) {
			t.Errorf("the deactivation was not confirmed through the admin API: %s", line)
		}
		if status, answer := post(t, in.URL, "application/json", []byte(`{"text":"after deactivation"}`)); status != http.StatusNotFound {
			t.Errorf("POST to the deactivated user's webhook: status %d, want 404: %s", status, answer)
		}
		// Later leave events of the same deactivation do not bring her back into the state cache.
		waitInboxEmpty(t, env)
		if rows := env.DumpDatabase(t).Find(alice.UserID.String()); len(rows) > 0 {
			t.Errorf("after the deactivation settled, %d rows name alice again:\n%s", len(rows), e2e.Describe(rows))
		}
		if rows := env.DumpDatabase(t).Find(bob.UserID.String()); len(rows) == 0 {
			t.Errorf("no row names bob any more: too much was erased")
		}
	})
}

// TestAdminAPI: the admin API answers 401 to a missing or wrong token on every path, known or
// not; with the token it exports; custodian export and custodian forget work through it.
func TestAdminAPI(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		tokenFile := filepath.Join(t.TempDir(), "admin-api.token")
		token := e2e.RandomHex(t, 24)
		if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		listen := fmt.Sprintf("127.0.0.1:%d", e2e.FreePort(t))
		env := e2e.New(t, backend,
			e2e.WithConfigValue("admin_api.listen", listen),
			e2e.WithConfigValue("admin_api.token_file", tokenFile))
		alice := env.Register(t, "alice")
		roomID := env.MustCreateRoomWithBot(t, alice)
		e2e.Eventually(t, 30*time.Second, func() error {
			return checkBotSetup(t, env, roomID.String(), botSetupID, alice.UserID.String())
		})

		base := "http://" + listen + "/_custodian/admin/v1"
		exportPath := "/users/" + alice.UserID.String() + "/export"
		for _, tt := range []struct {
			name, method, path, auth string
		}{
			{"no token", http.MethodGet, exportPath, ""},
			{"wrong token", http.MethodGet, exportPath, "Bearer " + token + "x"},
			{"token as Basic", http.MethodGet, exportPath, "Basic " + token},
			{"empty bearer", http.MethodGet, exportPath, "Bearer "},
			{"forget without token", http.MethodPost, "/users/" + alice.UserID.String() + "/forget", ""},
			{"keys with wrong token", http.MethodGet, "/keys", "Bearer nope"},
			{"unknown path without token", http.MethodGet, "/no/such/thing", ""},
		} {
			status, body := adminRequest(t, tt.method, base+tt.path, tt.auth)
			if status != http.StatusUnauthorized {
				t.Errorf("%s: %s %s = %d, want 401: %s", tt.name, tt.method, tt.path, status, body)
			}
			if strings.Contains(string(body), alice.UserID.String()) {
				t.Errorf("%s: the 401 answer reveals data: %s", tt.name, body)
			}
		}
		if status, body := adminRequest(t, http.MethodGet, base+"/no/such/thing", "Bearer "+token); status != http.StatusNotFound {
			t.Errorf("unknown path with the token: status %d, want 404: %s", status, body)
		}
		status, body := adminRequest(t, http.MethodGet, base+exportPath, "Bearer "+token)
		if status != http.StatusOK || !strings.Contains(string(body), roomID.String()) {
			t.Errorf("export with the token: status %d, want 200 with alice's setup in %s: %.500s", status, roomID, body)
		}

		res := env.RunCLI(t, time.Minute, "export", alice.UserID.String(), "-c", env.ConfigPath())
		if res.ExitCode != 0 {
			t.Fatalf("custodian export failed:\n%s", res)
		}
		var export struct {
			SchemaVersion int                                   `json:"schema_version"`
			User          id.UserID                             `json:"user"`
			Modules       map[string]map[string]json.RawMessage `json:"modules"`
		}
		if err := json.Unmarshal([]byte(res.Stdout), &export); err != nil {
			t.Fatalf("custodian export printed something that is not JSON: %v\n%s", err, res)
		}
		if export.SchemaVersion != 1 || export.User != alice.UserID || !strings.Contains(string(export.Modules["core"]["as_bot_setup"]), roomID.String()) {
			t.Errorf("custodian export: schema_version %d, user %s, setup %s; want 1, %s and the setup in %s",
				export.SchemaVersion, export.User, export.Modules["core"]["as_bot_setup"], alice.UserID, roomID)
		}

		res = env.RunCLI(t, time.Minute, "forget", alice.UserID.String(), "-c", env.ConfigPath(), "--yes")
		if res.ExitCode != 0 || !strings.Contains(res.Stdout, "Erased "+alice.UserID.String()) {
			t.Fatalf("custodian forget failed:\n%s", res)
		}
		status, body = adminRequest(t, http.MethodGet, base+"/users/"+alice.UserID.String()+"/erasures", "Bearer "+token)
		if status != http.StatusOK || !strings.Contains(string(body), "admin") {
			t.Errorf("alice's erasures: status %d, want 200 listing an admin erasure: %s", status, body)
		}
		if strings.Contains(string(body), alice.UserID.String()) {
			t.Errorf("the tombstones name alice: %s", body)
		}
		if rows := env.DumpDatabase(t).Find(alice.UserID.String()); len(rows) > 0 {
			t.Errorf("after custodian forget, %d rows name alice:\n%s", len(rows), e2e.Describe(rows))
		}
	})
}

// adminRequest makes a request to the admin API with the given Authorization header (none if
// empty) and returns the status and body.
func adminRequest(t *testing.T, method, url, auth string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatalf("%s %s: reading the answer: %v", method, url, err)
	}
	return resp.StatusCode, data
}

package appservice

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/e2ee"
)

// cryptoKeyOf returns a fake 43-character curve25519 or ed25519 key, unique per label.
func cryptoKeyOf(label string) string {
	k := strings.ReplaceAll(label, "@", "K") + strings.Repeat("A", 43)
	return k[:43]
}

// seedCryptoUser writes what the crypto store holds about user: two devices (one deleted, which
// still maps its key to the user), tracking, an olm session with each device, a megolm session
// from each device with a decrypted message index, one forwarded by the user, a shared outbound
// session, cross-signing keys and signatures.
func (env *privacyEnv) seedCryptoUser(user id.UserID, room id.RoomID) {
	env.t.Helper()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	env.exec(`INSERT INTO crypto_tracked_user (user_id, devices_outdated) VALUES ($1, false)`, user)
	for i, deleted := range []bool{false, true} {
		dev := fmt.Sprintf("%sdev%d", user, i)
		env.exec(`INSERT INTO crypto_device (user_id, device_id, identity_key, signing_key, trust, deleted, name)
			VALUES ($1, $2, $3, $4, 0, $5, $6)`, user, fmt.Sprintf("DEV%d", i), cryptoKeyOf("idk"+dev), cryptoKeyOf("sgk"+dev), deleted, fmt.Sprintf("Phone %d", i))
		env.exec(`INSERT INTO crypto_olm_session (account_id, session_id, sender_key, session, created_at, last_decrypted, last_encrypted)
			VALUES ($1, $2, $3, $4, $5, $5, $5)`, e2ee.AccountID, cryptoKeyOf("olm"+dev), cryptoKeyOf("idk"+dev), []byte("olm-session-pickle-"+dev), now)
		env.exec(`INSERT INTO crypto_megolm_inbound_session (account_id, session_id, sender_key, signing_key, room_id, session, received_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7)`, e2ee.AccountID, cryptoKeyOf("meg"+dev), cryptoKeyOf("idk"+dev), cryptoKeyOf("sgk"+dev), room, []byte("megolm-session-pickle-"+dev), now)
		env.exec(`INSERT INTO crypto_message_index (session_id, "index", event_id, timestamp) VALUES ($1, 0, $2, 0)`, cryptoKeyOf("meg"+dev), "$evt-"+dev)
	}
	// A session someone else created, forwarded by the user.
	env.exec(`INSERT INTO crypto_megolm_inbound_session (account_id, session_id, sender_key, room_id, session, received_at, source_user)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`, e2ee.AccountID, cryptoKeyOf("fwd"+string(user)), cryptoKeyOf("idk@carol"), room, []byte("megolm-forwarded-pickle"), now, user)
	env.exec(`INSERT INTO crypto_megolm_outbound_session_shared (user_id, identity_key, session_id) VALUES ($1, $2, $3)`,
		user, cryptoKeyOf("idk"+string(user)+"dev0"), cryptoKeyOf("out"+string(room)))
	env.exec(`INSERT INTO crypto_cross_signing_keys (user_id, usage, key, first_seen_key) VALUES ($1, 'master', $2, $2)`, user, cryptoKeyOf("csk"+string(user)))
	env.exec(`INSERT INTO crypto_cross_signing_signatures (signed_user_id, signed_key, signer_user_id, signer_key, signature)
		VALUES ($1, $2, $1, $3, $4)`, user, cryptoKeyOf("sgk"+string(user)+"dev0"), cryptoKeyOf("csk"+string(user)), strings.Repeat("s", 88))
}

// seedCryptoBot writes the bot's own crypto rows, which name no user.
func (env *privacyEnv) seedCryptoBot() {
	env.t.Helper()
	env.exec(`INSERT INTO crypto_account (account_id, device_id, shared, sync_token, account) VALUES ($1, 'BOTDEV', true, '', $2)`, e2ee.AccountID, []byte("account-pickle"))
}

func TestCryptoStoreExport(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newPrivacyEnv(t, dialect, nil).start()
			env.seedUser(pvAlice, pvDM)
			env.seedCryptoBot()
			env.seedCryptoUser(pvAlice, pvDM)
			env.seedCryptoUser(pvBob, pvDM)
			export, err := env.svc.engine.Export(env.ctx, pvAlice)
			if err != nil {
				t.Fatal(err)
			}
			data, err := json.Marshal(export)
			if err != nil {
				t.Fatal(err)
			}
			for _, material := range []string{cryptoKeyOf("idk" + string(pvAlice) + "dev0"), cryptoKeyOf("sgk" + string(pvAlice) + "dev0"),
				cryptoKeyOf("csk" + string(pvAlice)), "pickle", pvBob.String()} {
				if strings.Contains(string(data), material) {
					t.Errorf("alice's export holds %q", material)
				}
			}
			var doc struct {
				Modules map[string]map[string]struct {
					RowCount int              `json:"row_count"`
					Rows     []map[string]any `json:"rows"`
				} `json:"modules"`
			}
			if err = json.Unmarshal(data, &doc); err != nil {
				t.Fatal(err)
			}
			crypto := doc.Modules[e2ee.Module]
			want := map[string]int{
				"crypto_device": 2, "crypto_tracked_user": 1, "crypto_olm_session": 2, "crypto_megolm_inbound_session": 3,
				"crypto_message_index": 2, "crypto_megolm_outbound_session_shared": 1, "crypto_cross_signing_keys": 1,
				"crypto_cross_signing_signatures": 1,
			}
			for table, n := range want {
				if got := crypto[table].RowCount; got != n {
					t.Errorf("export %s: %d rows, want %d", table, got, n)
				}
			}
			devices := crypto["crypto_device"].Rows
			if len(devices) == 2 && (devices[0]["device_id"] == nil || devices[0]["name"] == nil || len(devices[0]) != 4) {
				t.Errorf("exported device = %v, want device_id, name, trust and deleted only", devices[0])
			}
			if rows := crypto["crypto_olm_session"].Rows; len(rows) > 0 && len(rows[0]) != 0 {
				t.Errorf("exported olm session = %v, want a count only", rows[0])
			}
		})
	}
}

func TestCryptoStoreErasure(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newPrivacyEnv(t, dialect, nil).start()
			env.seedUser(pvAlice, pvDM)
			env.seedUser(pvBob, "!dm-bob:example.org")
			env.seedCryptoBot()
			env.seedCryptoUser(pvAlice, pvDM)
			env.seedCryptoUser(pvBob, pvDM)
			cryptoRows := func(user id.UserID) []string {
				dump := dumpDatabase(t, env.ctx, env.svc.rawDB)
				var out []string
				for _, marker := range []string{string(user), cryptoKeyOf("idk" + string(user) + "dev0"), cryptoKeyOf("idk" + string(user) + "dev1"),
					cryptoKeyOf("meg" + string(user) + "dev0"), cryptoKeyOf("fwd" + string(user))} {
					for _, row := range rowsMentioning(dump, marker) {
						if strings.HasPrefix(row, "crypto_") {
							out = append(out, row)
						}
					}
				}
				return out
			}
			bobBefore := len(cryptoRows(pvBob))

			receipt, err := env.svc.engine.Erase(env.ctx, pvAlice, EraseRequest{Trigger: TriggerAdmin})
			if err != nil {
				t.Fatalf("Erase = %v", err)
			}
			if rows := cryptoRows(pvAlice); len(rows) > 0 {
				t.Errorf("after erasure %d crypto rows still name alice or her keys:\n%s", len(rows), strings.Join(rows, "\n"))
			}
			if after := len(cryptoRows(pvBob)); after != bobBefore || after == 0 {
				t.Errorf("crypto rows about bob: %d before, %d after alice's erasure; want them untouched", bobBefore, after)
			}
			if n := env.count(`SELECT COUNT(*) FROM crypto_account`); n != 1 {
				t.Errorf("bot accounts after erasure = %d, want 1", n)
			}
			want := map[string]int64{
				"crypto_device": 2, "crypto_tracked_user": 1, "crypto_olm_session": 2, "crypto_megolm_inbound_session": 3,
				"crypto_message_index": 2, "crypto_megolm_outbound_session_shared": 1, "crypto_cross_signing_keys": 1,
				"crypto_cross_signing_signatures": 1,
			}
			for table, n := range want {
				if got := receipt.Erased[e2ee.Module][table]; got != n {
					t.Errorf("receipt erased %s = %d, want %d", table, got, n)
				}
			}
		})
	}
}

// TestBridgeIDReservedForCrypto checks that no bridge can take the crypto store's (or the
// core's) module name, which would hide those tables from erasure and export.
func TestBridgeIDReservedForCrypto(t *testing.T) {
	for _, reserved := range []string{e2ee.Module, CoreModule} {
		_, err := newService(testConfig("http://127.0.0.1:1"), testRegistration(), []Bridge{newRecordingBridge(reserved)}, testLogger(t), astest.TestDB(t, astest.SQLite))
		if err == nil || !strings.Contains(err.Error(), "reserved") {
			t.Errorf("newService with a bridge named %q = %v, want a reserved-ID error", reserved, err)
		}
	}
}

package appservice

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/database"
	"github.com/custodian-matrix/custodian/appservice/e2ee"
	"github.com/custodian-matrix/custodian/appservice/vault"
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

// seedCryptoBot writes the bot's own crypto rows, which name no user: its account, a secret and
// its outbound megolm session of pvDM (which seedCryptoUser shares with the user).
func (env *privacyEnv) seedCryptoBot() {
	env.t.Helper()
	env.exec(`INSERT INTO crypto_account (account_id, device_id, shared, sync_token, account) VALUES ($1, 'BOTDEV', true, '', $2)`, e2ee.AccountID, []byte("account-pickle"))
	env.exec(`INSERT INTO crypto_secrets (account_id, name, secret) VALUES ($1, 'm.cross_signing.master', $2)`, e2ee.AccountID, []byte("secret-pickle"))
	env.exec(`INSERT INTO crypto_megolm_outbound_session (account_id, room_id, session_id, session, shared, max_messages, message_count, max_age, created_at, last_used)
		VALUES ($1, $2, $3, $4, true, 100, 1, 0, $5, $5)`, e2ee.AccountID, pvDM, cryptoKeyOf("out"+string(pvDM)), []byte("outbound-pickle"), pvEpoch)
}

// cryptoPickles are the pickled (key) columns seedCryptoBot and seedCryptoUser write, as text
// and as base64 (how an export would show a bytea column).
func cryptoPickles(users ...id.UserID) []string {
	var out []string
	add := func(s string) { out = append(out, s, base64.StdEncoding.EncodeToString([]byte(s))) }
	add("account-pickle")
	add("secret-pickle")
	add("outbound-pickle")
	add("megolm-forwarded-pickle")
	for _, user := range users {
		for i := range 2 {
			dev := fmt.Sprintf("%sdev%d", user, i)
			add("olm-session-pickle-" + dev)
			add("megolm-session-pickle-" + dev)
			out = append(out, cryptoKeyOf("idk"+dev), cryptoKeyOf("sgk"+dev))
		}
		out = append(out, cryptoKeyOf("csk"+string(user)), strings.Repeat("s", 88))
	}
	return out
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
			// No key material of the rows exported (keys, pickles, signatures), raw or base64.
			for _, material := range append(cryptoPickles(pvAlice, pvBob), "pickle", pvBob.String()) {
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
				"crypto_cross_signing_signatures": 1, "crypto_megolm_outbound_session": 1,
			}
			for table, n := range want {
				if got := crypto[table].RowCount; got != n {
					t.Errorf("export %s: %d rows, want %d", table, got, n)
				}
			}
			// Every exported column is metadata, never a key column.
			keyColumns := []string{"identity_key", "signing_key", "session", "key", "pickle", "account", "secret", "signature", "sender_key", "first_seen_key"}
			for table, et := range crypto {
				for _, row := range et.Rows {
					for col := range row {
						if slices.Contains(keyColumns, col) {
							t.Errorf("export %s has the key column %s", table, col)
						}
					}
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
				"crypto_cross_signing_signatures": 1, "crypto_megolm_outbound_session": 1,
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

// TestCryptoSessionRetention checks that the retention sweep deletes inbound megolm sessions by
// received_at and outbound ones by created_at once older than encryption.session_retention,
// with their message indexes and sharing records, and keeps the newer ones. received_at and
// created_at are SQL timestamps (text with a zone offset on SQLite): rows a minute either side
// of the cutoff, and on SQLite rows whose offset makes their text sort on the wrong side of it,
// show that they compare as times.
func TestCryptoSessionRetention(t *testing.T) {
	const retention = 10 * 24 * time.Hour
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newPrivacyEnv(t, dialect, func(cfg *Config) { cfg.Encryption.SessionRetention = retention })
			cutoff := env.clock.Now().Add(-retention)
			rows := []struct {
				tag  string
				at   time.Time
				kept bool
			}{
				{tag: "old", at: cutoff.Add(-time.Minute).UTC()},
				{tag: "new", at: cutoff.Add(time.Minute).UTC(), kept: true},
			}
			if dialect == astest.SQLite {
				// go-sqlite3 writes the offset of the time's zone: as text, the first sorts after
				// the cutoff and the second before it.
				rows = append(rows,
					struct {
						tag  string
						at   time.Time
						kept bool
					}{tag: "old-east", at: cutoff.Add(-time.Minute).In(time.FixedZone("east", 5*3600))},
					struct {
						tag  string
						at   time.Time
						kept bool
					}{tag: "new-west", at: cutoff.Add(time.Minute).In(time.FixedZone("west", -5*3600)), kept: true},
				)
			}
			for _, r := range rows {
				sess := cryptoKeyOf("in" + r.tag)
				env.exec(`INSERT INTO crypto_megolm_inbound_session (account_id, session_id, sender_key, room_id, session, received_at)
					VALUES ($1, $2, $3, $4, $5, $6)`, e2ee.AccountID, sess, cryptoKeyOf("idk@alice"), pvDM, []byte("megolm-pickle"), r.at)
				env.exec(`INSERT INTO crypto_message_index (session_id, "index", event_id, timestamp) VALUES ($1, 0, $2, 0)`, sess, "$evt-"+r.tag)
				out := cryptoKeyOf("out" + r.tag)
				env.exec(`INSERT INTO crypto_megolm_outbound_session (account_id, room_id, session_id, session, shared, max_messages, message_count, max_age, created_at, last_used)
					VALUES ($1, $2, $3, $4, true, 100, 1, 0, $5, $5)`, e2ee.AccountID, "!room-"+r.tag+":example.org", out, []byte("outbound-pickle"), r.at)
				env.exec(`INSERT INTO crypto_megolm_outbound_session_shared (user_id, identity_key, session_id) VALUES ($1, $2, $3)`,
					pvAlice, cryptoKeyOf("idk@alice"), out)
			}
			if _, err := env.svc.engine.SweepRetention(env.ctx); err != nil {
				t.Fatalf("SweepRetention = %v", err)
			}
			for _, r := range rows {
				want := 0
				if r.kept {
					want = 1
				}
				for _, check := range []struct{ query, arg string }{
					{`SELECT COUNT(*) FROM crypto_megolm_inbound_session WHERE session_id=$1`, cryptoKeyOf("in" + r.tag)},
					{`SELECT COUNT(*) FROM crypto_message_index WHERE session_id=$1`, cryptoKeyOf("in" + r.tag)},
					{`SELECT COUNT(*) FROM crypto_megolm_outbound_session WHERE session_id=$1`, cryptoKeyOf("out" + r.tag)},
					{`SELECT COUNT(*) FROM crypto_megolm_outbound_session_shared WHERE session_id=$1`, cryptoKeyOf("out" + r.tag)},
				} {
					if got := env.count(check.query, check.arg); got != want {
						t.Errorf("%s row %s: %d left, want %d", r.tag, strings.Fields(check.query)[3], got, want)
					}
				}
			}
		})
	}
}

// newTestMachine returns an olm machine on a crypto store in env's database, with a fresh
// account, that never asks the homeserver for keys.
func (env *privacyEnv) newTestMachine(pickleKey []byte) *e2ee.Machine {
	env.t.Helper()
	log := zerolog.New(astest.LogWriter(env.t)).Level(zerolog.WarnLevel)
	store := crypto.NewSQLCryptoStore(env.svc.rawDB, dbutil.ZeroLogger(log), e2ee.AccountID, "BOTDEV", pickleKey)
	return env.machineOn(store)
}

// machineOn returns an olm machine on store, its account loaded (created if new).
func (env *privacyEnv) machineOn(store *crypto.SQLCryptoStore) *e2ee.Machine {
	env.t.Helper()
	log := zerolog.New(astest.LogWriter(env.t)).Level(zerolog.WarnLevel)
	m := e2ee.NewMachine(env.svc.as.BotClient(), store, env.svc.stateStore, log)
	m.Olm().DisableDecryptKeyFetching = true
	if err := m.Olm().Load(env.ctx); err != nil {
		env.t.Fatal(err)
	}
	return m
}

func randomKey(t *testing.T) []byte {
	t.Helper()
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	return key
}

// megolmSender is a device that sends megolm-encrypted messages into a room.
type megolmSender struct {
	user      id.UserID
	room      id.RoomID
	senderKey id.SenderKey
	outbound  *crypto.OutboundGroupSession
}

// newMegolmSender creates user's device with a new megolm session in room, records the device
// in the crypto store, and gives the store the session as received at receivedAt.
func (env *privacyEnv) newMegolmSender(m *e2ee.Machine, user id.UserID, room id.RoomID, receivedAt time.Time) *megolmSender {
	env.t.Helper()
	ctx := env.ctx
	acc := crypto.NewOlmAccount()
	signingKey, identityKey := acc.Keys()
	if err := m.Olm().CryptoStore.PutDevice(ctx, user, &id.Device{
		UserID: user, DeviceID: id.DeviceID("DEV" + strings.ToUpper(user.Localpart())), IdentityKey: identityKey, SigningKey: signingKey,
	}); err != nil {
		env.t.Fatal(err)
	}
	out, err := crypto.NewOutboundGroupSession(room, nil, nil)
	if err != nil {
		env.t.Fatal(err)
	}
	out.Shared = true
	in, err := crypto.NewInboundGroupSession(identityKey, signingKey, room, out.Internal.Key(), 0, 0, nil, false)
	if err != nil {
		env.t.Fatal(err)
	}
	in.ReceivedAt = receivedAt.UTC()
	if err = m.Olm().CryptoStore.PutGroupSession(ctx, in); err != nil {
		env.t.Fatal(err)
	}
	return &megolmSender{user: user, room: room, senderKey: identityKey, outbound: out}
}

// encrypt returns an encrypted room event carrying body.
func (s *megolmSender) encrypt(t *testing.T, eventID id.EventID, body string) *event.Event {
	t.Helper()
	plaintext, err := json.Marshal(map[string]any{
		"type": "m.room.message", "room_id": s.room, "content": map[string]any{"msgtype": "m.text", "body": body},
	})
	if err != nil {
		t.Fatal(err)
	}
	ciphertext, err := s.outbound.Encrypt(plaintext)
	if err != nil {
		t.Fatal(err)
	}
	return &event.Event{
		Type: event.EventEncrypted, RoomID: s.room, Sender: s.user, ID: eventID, Timestamp: pvEpoch.UnixMilli(),
		Content: event.Content{Parsed: &event.EncryptedEventContent{
			Algorithm: id.AlgorithmMegolmV1, SenderKey: s.senderKey, SessionID: s.outbound.ID(), MegolmCiphertext: ciphertext,
		}},
	}
}

// TestCryptoForwardSecrecyAtRest stores a megolm session received before the retention limit
// and one after, and checks that after the retention sweep the database (the live machine's,
// and a machine opened on it afresh, as on a copy) no longer decrypts the old session's
// message, and still decrypts the new one's.
func TestCryptoForwardSecrecyAtRest(t *testing.T) {
	const retention = 10 * 24 * time.Hour
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newPrivacyEnv(t, dialect, func(cfg *Config) { cfg.Encryption.SessionRetention = retention })
			key := randomKey(t)
			m := env.newTestMachine(key)
			// The live machine as start-up sets it: with the decryption cache, which the sweep
			// must empty.
			m.EnableCache(0)
			env.svc.crypto = m
			old := env.newMegolmSender(m, pvAlice, pvDM, env.clock.Now())
			recent := env.newMegolmSender(m, pvBob, pvRoom, env.clock.Now().Add(retention))
			oldEvt, recentEvt := old.encrypt(t, "$old", "old secret"), recent.encrypt(t, "$recent", "recent")
			for _, evt := range []*event.Event{oldEvt, recentEvt} {
				if _, err := m.Decrypt(env.ctx, evt); err != nil {
					t.Fatalf("Decrypt(%s) before the sweep = %v", evt.ID, err)
				}
			}

			env.clock.Advance(retention + time.Hour)
			if _, err := env.svc.engine.SweepRetention(env.ctx); err != nil {
				t.Fatalf("SweepRetention = %v", err)
			}
			reopened := env.newTestMachine(key)
			for name, mach := range map[string]*e2ee.Machine{"live": m, "reopened": reopened} {
				if got, err := mach.Decrypt(env.ctx, oldEvt); !errors.Is(err, e2ee.ErrNoSession) {
					t.Errorf("%s Decrypt(old) after the sweep = %v, %v; want ErrNoSession", name, got, err)
				}
				if _, err := mach.Decrypt(env.ctx, recentEvt); err != nil {
					t.Errorf("%s Decrypt(recent) after the sweep = %v", name, err)
				}
			}
			if n := env.count(`SELECT COUNT(*) FROM crypto_message_index WHERE session_id=$1`, old.outbound.ID()); n != 0 {
				t.Errorf("message indexes of the swept session = %d, want 0", n)
			}
		})
	}
}

// TestCryptoErasureEvictsOlmSessions checks that after alice's erasure the bot's machine no
// longer has an olm session with her device, though mautrix's store had it in memory, while an
// erasure of another module keeps bob's; and that the bot's outbound megolm session of a room
// it shared with alice is gone, so the next message there starts a new session, while that of
// a room without her stays.
func TestCryptoErasureEvictsOlmSessions(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			env := newPrivacyEnv(t, dialect, nil).start()
			env.seedUser(pvAlice, pvDM)
			env.seedUser(pvBob, "!dm-bob:example.org")
			m := env.newTestMachine(randomKey(t))
			m.EnableCache(0)
			env.svc.crypto = m
			ctx := env.ctx
			// A message of alice's decrypted before the erasure: her session is in the cache.
			aliceSender := env.newMegolmSender(m, pvAlice, pvDM, env.clock.Now())
			aliceEvt := aliceSender.encrypt(t, "$alice-before", "alice's words")
			if _, err := m.Decrypt(ctx, aliceEvt); err != nil {
				t.Fatalf("Decrypt(alice's message) before the erasure = %v", err)
			}
			store := m.Olm().CryptoStore
			_, botKey := m.Olm().GetAccount().Keys()
			botAccount := m.Olm().GetAccount()
			if err := botAccount.Internal.GenOneTimeKeys(2); err != nil {
				t.Fatal(err)
			}
			otks, err := botAccount.Internal.OneTimeKeys()
			if err != nil {
				t.Fatal(err)
			}
			var otkList []id.Curve25519
			for _, k := range otks {
				otkList = append(otkList, k)
			}
			deviceKeys := make(map[id.UserID]id.SenderKey)
			for i, user := range []id.UserID{pvAlice, pvBob} {
				acc := crypto.NewOlmAccount()
				signingKey, identityKey := acc.Keys()
				deviceKeys[user] = identityKey
				if err = store.PutDevice(ctx, user, &id.Device{UserID: user, DeviceID: "PHONE", IdentityKey: identityKey, SigningKey: signingKey}); err != nil {
					t.Fatal(err)
				}
				sess, err := acc.Internal.NewOutboundSession(botKey, otkList[i])
				if err != nil {
					t.Fatal(err)
				}
				if err = store.AddSession(ctx, identityKey, &crypto.OlmSession{Internal: sess}); err != nil {
					t.Fatal(err)
				}
				if !store.HasSession(ctx, identityKey) {
					t.Fatalf("no olm session with %s's device after AddSession", user)
				}
			}
			shared, err := crypto.NewOutboundGroupSession(pvDM, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			shared.Shared = true
			unshared, err := crypto.NewOutboundGroupSession(pvRoom, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			unshared.Shared = true
			for _, ogs := range []*crypto.OutboundGroupSession{shared, unshared} {
				if err = store.AddOutboundGroupSession(ctx, ogs); err != nil {
					t.Fatal(err)
				}
			}
			if err = store.MarkOutboundGroupSessionShared(ctx, pvAlice, deviceKeys[pvAlice], shared.ID()); err != nil {
				t.Fatal(err)
			}
			if err = store.MarkOutboundGroupSessionShared(ctx, pvBob, deviceKeys[pvBob], unshared.ID()); err != nil {
				t.Fatal(err)
			}

			// An erasure of another module leaves the crypto store alone.
			if _, err = env.svc.engine.Erase(ctx, pvBob, EraseRequest{Trigger: TriggerAdmin, Modules: []string{"other"}}); err != nil {
				t.Fatal(err)
			}
			if _, err = env.svc.engine.Erase(ctx, pvAlice, EraseRequest{Trigger: TriggerAdmin}); err != nil {
				t.Fatal(err)
			}
			if store.HasSession(ctx, deviceKeys[pvAlice]) {
				t.Error("the machine still has an olm session with alice's device after her erasure")
			}
			if got, err := m.Decrypt(ctx, aliceEvt); !errors.Is(err, e2ee.ErrNoSession) {
				t.Errorf("Decrypt(alice's message) after her erasure = %v, %v; want ErrNoSession (her session evicted from the cache)", got, err)
			}
			if sess, err := store.GetLatestSession(ctx, deviceKeys[pvAlice]); err != nil || sess != nil {
				t.Errorf("GetLatestSession(alice's device) after her erasure = %v, %v; want none", sess, err)
			}
			if !store.HasSession(ctx, deviceKeys[pvBob]) {
				t.Error("the machine lost its olm session with bob's device")
			}
			if ogs, err := store.GetOutboundGroupSession(ctx, pvDM); err != nil || ogs != nil {
				t.Errorf("outbound session of the room shared with alice after her erasure = %v, %v; want none", ogs, err)
			}
			if _, err = m.Olm().EncryptMegolmEvent(ctx, pvDM, event.EventMessage, map[string]any{"body": "x"}); !errors.Is(err, crypto.ErrNoGroupSession) {
				t.Errorf("EncryptMegolmEvent in the room shared with alice = %v, want ErrNoGroupSession (a new session is shared first)", err)
			}
			if ogs, err := store.GetOutboundGroupSession(ctx, pvRoom); err != nil || ogs == nil || ogs.ID() != unshared.ID() {
				t.Errorf("outbound session of a room without alice after her erasure = %v, %v; want it kept", ogs, err)
			}
		})
	}
}

// copyTables copies every row of tables from src into dst, as a database backup restored
// elsewhere would hold them.
func copyTables(t *testing.T, ctx context.Context, src, dst *dbutil.Database, tables ...string) {
	t.Helper()
	for _, table := range tables {
		rows, err := src.Query(ctx, "SELECT * FROM "+table)
		if err != nil {
			t.Fatal(err)
		}
		cols, err := rows.Columns()
		if err != nil {
			t.Fatal(err)
		}
		var copied [][]any
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err = rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			copied = append(copied, vals)
		}
		if err = rows.Close(); err != nil {
			t.Fatal(err)
		}
		placeholders := make([]string, len(cols))
		quoted := make([]string, len(cols))
		for i, col := range cols {
			placeholders[i] = fmt.Sprintf("$%d", i+1)
			quoted[i] = `"` + col + `"`
		}
		for _, vals := range copied {
			if _, err = dst.Exec(ctx, "INSERT INTO "+table+" ("+strings.Join(quoted, ", ")+") VALUES ("+strings.Join(placeholders, ", ")+")", vals...); err != nil {
				t.Fatalf("failed to copy a row of %s: %v", table, err)
			}
		}
	}
}

// cryptoBackup copies the vault's keys and the crypto store of db into a fresh database, as a
// backup would hold them.
func cryptoBackup(t *testing.T, ctx context.Context, db *dbutil.Database, dialect string) *dbutil.Database {
	t.Helper()
	raw := astest.TestDB(t, dialect)
	if err := database.New(raw).Upgrade(ctx); err != nil {
		t.Fatal(err)
	}
	if err := vault.ChildDB(raw, zerolog.Nop()).Upgrade(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e2ee.Upgrade(ctx, raw, zerolog.Nop()); err != nil {
		t.Fatal(err)
	}
	copyTables(t, ctx, db, raw, "as_vault_kek", "as_vault_crypto_key", "crypto_account", "crypto_device", "crypto_olm_session",
		"crypto_megolm_inbound_session", "crypto_megolm_outbound_session", "crypto_secrets")
	return raw
}

// TestCryptoShredRepickles takes a backup of the crypto store, erases alice with
// vault.shred_backups on, and checks that after the shred rotation the backup opens neither
// with the master keys now in the key file (the crypto key in it is wrapped by the retired one)
// nor with the live store's pickle key (every row was re-pickled under a new one), while the
// live machine and a store opened afresh still decrypt bob's messages and read the account and
// secrets.
func TestCryptoShredRepickles(t *testing.T) {
	for _, dialect := range astest.Dialects(t) {
		t.Run(dialect, func(t *testing.T) {
			keyFile := filepath.Join(t.TempDir(), "custodian.key")
			k1 := mustGenerateKey(t)
			writeKeys(t, keyFile, k1)
			env := newPrivacyEnv(t, dialect, func(cfg *Config) {
				cfg.Vault = VaultConfig{KeyFile: &keyFile, ShredBackups: true}
			})
			env.start()
			ctx := env.ctx
			log := zerolog.New(astest.LogWriter(t)).Level(zerolog.WarnLevel)
			v := env.svc.vault.(*vault.Vault)
			store, err := e2ee.OpenStore(ctx, env.svc.rawDB, v, log)
			if err != nil {
				t.Fatal(err)
			}
			store.DeviceID = "BOTDEV"
			account := crypto.NewOlmAccount()
			if err = store.PutAccount(ctx, account); err != nil {
				t.Fatal(err)
			}
			m := env.machineOn(store)
			env.svc.crypto = m
			if err = m.Olm().CryptoStore.PutSecret(ctx, id.SecretXSMaster, "cross-signing-seed"); err != nil {
				t.Fatal(err)
			}
			env.seedUser(pvAlice, pvDM)
			alice := env.newMegolmSender(m, pvAlice, pvDM, env.clock.Now())
			bob := env.newMegolmSender(m, pvBob, pvRoom, env.clock.Now())
			aliceEvt, bobEvt := alice.encrypt(t, "$alice", "alice's secret"), bob.encrypt(t, "$bob", "bob's")
			out, err := crypto.NewOutboundGroupSession(pvRoom, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			out.Shared = true
			if err = m.Olm().CryptoStore.AddOutboundGroupSession(ctx, out); err != nil {
				t.Fatal(err)
			}

			backup := cryptoBackup(t, ctx, env.svc.rawDB, dialect)
			// The backup is a real one: with the master key it was taken under, it decrypts.
			oldKeys := vault.New(vault.ChildDB(backup, log), vault.Options{Keys: vault.StaticKeys{k1}})
			if err = oldKeys.Reload(ctx); err != nil {
				t.Fatal(err)
			}
			backupStore, err := e2ee.OpenStore(ctx, backup, oldKeys, log)
			if err != nil {
				t.Fatalf("OpenStore(backup) with the old master key = %v", err)
			}
			if sess, err := backupStore.GetGroupSession(ctx, pvDM, alice.outbound.ID()); err != nil || sess == nil {
				t.Fatalf("backup GetGroupSession(alice) with the old master key = %v, %v", sess, err)
			}

			if _, err = env.svc.engine.Erase(ctx, pvAlice, EraseRequest{Trigger: TriggerAdmin}); err != nil {
				t.Fatal(err)
			}
			env.shredAfterDebounce(1)
			if !strings.Contains(env.logs.String(), "Replaced the crypto store's pickle key") {
				t.Error("the shred rotation did not replace the crypto store's pickle key")
			}

			newKeys := vault.New(vault.ChildDB(backup, log), vault.Options{Keys: vault.FileKeys(keyFile)})
			_ = newKeys.Reload(ctx) // logs that the backup's master key is missing
			if _, err = e2ee.OpenStore(ctx, backup, newKeys, log); !errors.Is(err, vault.ErrKeyUnavailable) {
				t.Errorf("OpenStore(backup) with the key file after the shred = %v, want ErrKeyUnavailable", err)
			}
			liveKey, _, err := v.CryptoKey(ctx)
			if err != nil {
				t.Fatal(err)
			}
			thief := crypto.NewSQLCryptoStore(backup, dbutil.ZeroLogger(log), e2ee.AccountID, "BOTDEV", liveKey)
			if sess, err := thief.GetGroupSession(ctx, pvDM, alice.outbound.ID()); err == nil {
				t.Errorf("backup GetGroupSession(alice) with the live pickle key = %v, nil; want an error", sess)
			}
			if acc, err := thief.GetAccount(ctx); err == nil {
				t.Errorf("backup GetAccount with the live pickle key = %v, nil; want an error", acc.IdentityKey())
			}

			// The live store works on, in the running machine and opened afresh.
			reopened, err := e2ee.OpenStore(ctx, env.svc.rawDB, v, log)
			if err != nil {
				t.Fatal(err)
			}
			for name, mach := range map[string]*e2ee.Machine{"live": m, "reopened": env.machineOn(reopened)} {
				if _, err := mach.Decrypt(ctx, bobEvt); err != nil {
					t.Errorf("%s Decrypt(bob) after the shred = %v", name, err)
				}
				if _, err := mach.Decrypt(ctx, aliceEvt); !errors.Is(err, e2ee.ErrNoSession) {
					t.Errorf("%s Decrypt(alice) after her erasure = %v, want ErrNoSession", name, err)
				}
				if secret, err := mach.Olm().CryptoStore.GetSecret(ctx, id.SecretXSMaster); err != nil || secret != "cross-signing-seed" {
					t.Errorf("%s GetSecret after the shred = %q, %v", name, secret, err)
				}
				if ogs, err := mach.Olm().CryptoStore.GetOutboundGroupSession(ctx, pvRoom); err != nil || ogs == nil || ogs.ID() != out.ID() {
					t.Errorf("%s GetOutboundGroupSession after the shred = %v, %v", name, ogs, err)
				}
			}
			if acc, err := reopened.GetAccount(ctx); err != nil || acc.IdentityKey() != account.IdentityKey() {
				t.Errorf("GetAccount on the reopened store after the shred = %v, %v; want the account", acc, err)
			}
		})
	}
}

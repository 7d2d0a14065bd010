//go:build e2e

package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/e2e"
)

// e2eeWait bounds every wait of the encrypted scenarios for one message or event.
const e2eeWait = 45 * time.Second

// e2eeKind is one of the two E2EE client implementations the scenarios run with.
type e2eeKind struct {
	name  string
	login func(t *testing.T, env *e2e.Env, user id.UserID) e2e.E2EEClient
}

// e2eeKinds are matrix-js-sdk's Rust crypto (what Element uses) and mautrix-go's crypto.
var e2eeKinds = []e2eeKind{
	{name: "js", login: func(t *testing.T, env *e2e.Env, user id.UserID) e2e.E2EEClient { return env.JSLogin(t, user) }},
	{name: "mautrix", login: func(t *testing.T, env *e2e.Env, user id.UserID) e2e.E2EEClient { return env.MXLogin(t, user) }},
}

// withEncryption turns Custodian's end-to-end encryption on (encryption.enabled, as in the
// example configuration; the harness's own configuration leaves it out).
func withEncryption() e2e.Option { return e2e.WithConfigValue("encryption.enabled", true) }

// e2eeUser is one user of the encrypted scenarios, driving one kind of E2EE client, and what
// the scenarios created for them.
type e2eeUser struct {
	kind  string
	c     e2e.E2EEClient
	plain *mautrix.Client // the same user on a device without encryption: what the homeserver holds
	// dm is the user's encrypted direct chat with the bot.
	dm id.RoomID
	// ircAccount and ircPassword are the user's account on the test IRC network.
	ircAccount, ircPassword string
	// canary is a secret the user typed in dm.
	canary string
	// hookToken is the secret token of the user's incoming webhook, which the bot sent in a
	// direct chat.
	hookToken string
	// hookRoom is the encrypted group room with the webhooks; linked the encrypted room linked
	// to channel.
	hookRoom, linked id.RoomID
	channel          string
}

// puppet is the user's IRC puppet's nick.
func (u *e2eeUser) puppet() string { return u.c.User().Localpart() + "[m]" }

// mustBotAnswer waits for the bot's reply to cmd in roomID, and fails the test unless it was
// encrypted and contains want.
func mustBotAnswer(t *testing.T, env *e2e.Env, c e2e.E2EEClient, roomID id.RoomID, cmd id.EventID, want string) *e2e.Message {
	t.Helper()
	reply := c.WaitFor(t, e2eeWait, e2e.InRoom(roomID, e2e.FromSender(env.BotUserID()), e2e.ReplyTo(cmd)))
	if !reply.Encrypted {
		t.Errorf("the bot answered %s in plaintext, in an encrypted room", cmd)
	}
	if !strings.Contains(reply.Body, want) {
		t.Fatalf("the bot answered %s with %q, want a message containing %q", cmd, reply.Body, want)
	}
	return reply
}

// mustBeCiphertextOnServer waits until plain (a device without keys) sees eventID in roomID and
// fails the test unless the homeserver holds it as m.room.encrypted.
func mustBeCiphertextOnServer(t *testing.T, env *e2e.Env, plain *mautrix.Client, roomID id.RoomID, eventID id.EventID) {
	t.Helper()
	evt := env.MustSyncUntil(t, plain, e2eeWait, func(evt *event.Event) bool { return evt.RoomID == roomID && evt.ID == eventID })
	if evt.Type != event.EventEncrypted {
		t.Errorf("the homeserver holds %s as %s, want %s", eventID, evt.Type.Type, event.EventEncrypted.Type)
	}
}

// mustCreateEncryptedGroupRoom creates an encrypted room as u with the bot (as a moderator, so
// that it may redact) and bob, who joins; it returns once the bot and bob have joined. See
// mustCreateGroupRoom for why both are needed for room commands.
func mustCreateEncryptedGroupRoom(t *testing.T, env *e2e.Env, u *e2eeUser, bob *mautrix.Client) id.RoomID {
	t.Helper()
	bot := env.BotUserID()
	roomID := u.c.CreateRoom(t, []id.UserID{bot, bob.UserID}, &event.PowerLevelsEventContent{
		Users: map[id.UserID]int{u.c.User(): 100, bot: 50},
	})
	env.MustSyncUntil(t, bob, e2eeWait, e2e.IsMember(roomID, bob.UserID, event.MembershipInvite))
	env.MustJoinRoom(t, bob, roomID)
	env.MustSyncUntil(t, u.plain, e2eeWait, e2e.IsMember(roomID, bot, event.MembershipJoin))
	env.MustSyncUntil(t, u.plain, e2eeWait, e2e.IsMember(roomID, bob.UserID, event.MembershipJoin))
	return roomID
}

// mustReadBotSecret waits for a message from the bot outside groupRoom that contains want (the
// bot sends secrets in a direct chat, which the client joins on its own: AutoJoin).
func mustReadBotSecret(t *testing.T, env *e2e.Env, u *e2eeUser, groupRoom id.RoomID, want string) *e2e.Message {
	t.Helper()
	msg := u.c.WaitFor(t, e2eeWait, func(m *e2e.Message) bool {
		return m.Sender == env.BotUserID() && m.RoomID != groupRoom && strings.Contains(m.Body, want)
	})
	if !msg.Encrypted {
		t.Errorf("the bot sent a secret in plaintext, in %s", msg.RoomID)
	}
	return msg
}

// TestE2EE runs the scenarios with both E2EE clients on both databases, in one
// environment per database (Synapse with the experimental appservice features, Custodian with
// the IRC and webhook bridges, the test IRC network):
//   - the registration custodian -g wrote carries the flags, and the bot's device is
//     cross-signed by the bot, as each client sees it;
//   - in an encrypted direct chat: the welcome without the old warning, !help, !mydata,
//     !export (downloaded, decrypted and parsed by the client), !irc login (redacted at once;
//     WHOIS shows the account), each answer encrypted;
//   - a webhook posts into an encrypted room and the client decrypts it; an outgoing webhook
//     receives the client's message decrypted;
//   - an encrypted room linked to an IRC channel relays both ways, ghost messages encrypted;
//   - after a restart of Custodian, both directions still decrypt, a command sent while it was
//     down included;
//   - a secret typed in the direct chat is nowhere at rest: not in Custodian's database files
//     (WAL and pg_wal included), not in its log, not in Synapse's database;
//   - !forget confirm: the receipt arrives, and no row of any table, crypto tables included,
//     names the user or their device's key; the next ghost message in the linked room, under a
//     new room key, still reaches the user's device.
//
// The homeserver holds only ciphertext of all of it (checked from a second device of the user
// that has no keys).
func TestE2EE(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		start := time.Now()
		ircNet := e2e.StartIRC(t)
		env := e2e.New(t, backend, e2e.WithIRCBridge(ircNet), e2e.WithWebhookBridge(t), withEncryption())
		receiver := e2e.NewReceiver(t)
		bot := env.BotUserID()
		bob := env.Register(t, "bob")
		dan := ircNet.Connect(t, "dan")

		checkRegistrationFlags(t, env)
		mustEncryptionActive(t, env)
		botDevice := mustBotDevice(t, env, bob)

		users := make([]*e2eeUser, len(e2eeKinds))
		for i, kind := range e2eeKinds {
			localpart := "alice" + kind.name
			plain := env.Register(t, localpart)
			users[i] = &e2eeUser{
				kind:        kind.name,
				plain:       plain,
				ircAccount:  "acct" + kind.name,
				ircPassword: "pw-" + e2e.RandomHex(t, 12),
				canary:      "canary-" + e2e.RandomHex(t, 12),
				channel:     "#e2ee-" + kind.name,
			}
			users[i].c = kind.login(t, env, plain.UserID)
			users[i].c.AutoJoin(t, bot)
			ircNet.RegisterAccount(t, users[i].ircAccount, users[i].ircPassword)
			mustJoinAsOp(t, dan, users[i].channel)
		}

		// The phases build on each other (the direct chat, then rooms, a restart, the search at
		// rest, the erasure): after a failed one the rest would only time out.
		phase := func(name string, fn func(t *testing.T, u *e2eeUser)) {
			t.Helper()
			if t.Failed() {
				t.Fatalf("not running %q: an earlier phase failed", name)
			}
			for _, u := range users {
				t.Run(u.kind+"/"+name, func(t *testing.T) { fn(t, u) })
			}
		}
		phase("direct chat", func(t *testing.T, u *e2eeUser) { e2eeDirectChat(t, env, u, dan, botDevice) })
		phase("webhooks", func(t *testing.T, u *e2eeUser) { e2eeWebhooks(t, env, u, bob, receiver) })
		phase("linked IRC room", func(t *testing.T, u *e2eeUser) { e2eeLinkedRoom(t, env, u, bob, dan) })
		if t.Failed() {
			t.FailNow()
		}
		// While Custodian is down, each user sends a command (Synapse holds it); after the start
		// the bot decrypts it with the keys it kept, and answers.
		env.StopCustodian(t)
		whileDown := make(map[*e2eeUser]id.EventID, len(users))
		for _, u := range users {
			whileDown[u] = u.c.SendText(t, u.dm, "!help", e2eeWait)
		}
		env.StartCustodian(t)
		mustEncryptionActive(t, env)
		phase("after a restart", func(t *testing.T, u *e2eeUser) { e2eeAfterRestart(t, env, u, dan, whileDown[u]) })
		if t.Failed() {
			t.FailNow()
		}
		t.Run("no plaintext at rest", func(t *testing.T) { e2eeNoPlaintextAtRest(t, env, users, bob) })
		phase("forget", func(t *testing.T, u *e2eeUser) { e2eeForget(t, env, u, bob, dan) })
		for _, u := range users {
			if failures := u.c.DecryptionFailures(t); len(failures) > 0 {
				t.Errorf("the %s client could not decrypt: %+v", u.kind, failures)
			}
		}
		t.Logf("the encrypted scenarios on %s took %v", backend, time.Since(start).Round(time.Millisecond))
	})
}

// mustEncryptionActive waits until Custodian's log since its last start says the homeserver
// delivers to-device events to it (the start-up probe came back), and fails the test if that
// takes longer than probeVerdictWait. Synapse does not retry a failed transaction's to-device
// messages and may still count the appservice as down right after a start, so the first probes
// can be lost: Custodian sends them again every 2 s up to its 10 s deadline, then every 30 s, and
// turns encryption on when one comes back, without a restart.
func mustEncryptionActive(t *testing.T, env *e2e.Env) {
	t.Helper()
	const active, off = "encryption is active", "did not deliver the bot's to-device probe"
	e2e.Eventually(t, probeVerdictWait, func() error {
		if !strings.Contains(env.CustodianLog(t), active) {
			return fmt.Errorf("custodian's log does not say that encryption is active yet")
		}
		return nil
	})
	if strings.Contains(env.CustodianLog(t), off) {
		t.Logf("the first to-device probes were lost; a later one came back")
	}
}

// probeVerdictWait bounds mustEncryptionActive: the probe's 10 s deadline and two of the probes
// sent every 30 s after it.
const probeVerdictWait = 75 * time.Second

// checkRegistrationFlags checks that the registration custodian -g wrote (which the harness gave
// Synapse) opts in to what encryption needs: ephemeral events with to-device messages
// (MSC2409), device lists and one-time-key counts (MSC3202), and device management (MSC4190).
func checkRegistrationFlags(t *testing.T, env *e2e.Env) {
	t.Helper()
	data, err := os.ReadFile(env.RegistrationPath())
	if err != nil {
		t.Fatal(err)
	}
	var reg map[string]any
	if err := yaml.Unmarshal(data, &reg); err != nil {
		t.Fatalf("parsing the registration: %v", err)
	}
	for _, flag := range []string{"receive_ephemeral", "org.matrix.msc3202", "io.element.msc4190"} {
		if reg[flag] != true {
			t.Errorf("custodian -g wrote %s: %v, want true", flag, reg[flag])
		}
	}
	if _, ok := reg["de.sorunome.msc2409.push_ephemeral"]; ok {
		t.Errorf("custodian -g wrote de.sorunome.msc2409.push_ephemeral too: ephemeral events would come twice")
	}
}

// mustBotDevice returns the bot's one device with keys, as the homeserver lists it to cli.
func mustBotDevice(t *testing.T, env *e2e.Env, cli *mautrix.Client) id.DeviceID {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), e2eeWait)
	defer cancel()
	resp, err := cli.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{env.BotUserID(): {}}})
	if err != nil {
		t.Fatalf("querying the bot's keys: %v", err)
	}
	devices := resp.DeviceKeys[env.BotUserID()]
	if len(devices) != 1 {
		t.Fatalf("the bot has %d devices with keys, want 1: %v", len(devices), devices)
	}
	if _, ok := resp.MasterKeys[env.BotUserID()]; !ok {
		t.Errorf("the bot has no cross-signing master key on the homeserver")
	}
	var deviceID id.DeviceID
	for d := range devices {
		deviceID = d
	}
	return deviceID
}

// e2eeDirectChat: an Element-style encrypted direct chat with the bot; the commands that only
// work there.
func e2eeDirectChat(t *testing.T, env *e2e.Env, u *e2eeUser, dan *e2e.IRCClient, botDevice id.DeviceID) {
	bot := env.BotUserID()
	c := u.c
	u.dm = c.CreateDM(t, bot)
	welcome := c.WaitFor(t, e2eeWait, e2e.InRoom(u.dm, e2e.FromSender(bot)))
	if !welcome.Encrypted {
		t.Errorf("the bot's welcome in an encrypted direct chat is in plaintext: %q", welcome.Body)
	}
	if strings.Contains(welcome.Body, "can't read encrypted") {
		t.Errorf("with encryption on, the bot still says it cannot read encrypted messages: %q", welcome.Body)
	}
	if !c.DeviceCrossSigned(t, bot, botDevice) {
		t.Errorf("the %s client does not see the bot's device %s as cross-signed by the bot", u.kind, botDevice)
	}

	help := c.SendText(t, u.dm, "!help", e2eeWait)
	mustBeCiphertextOnServer(t, env, u.plain, u.dm, help)
	reply := mustBotAnswer(t, env, c, u.dm, help, "forget")
	mustBeCiphertextOnServer(t, env, u.plain, u.dm, reply.EventID)
	if ok, verdict := reply.SenderVerdict(); !ok {
		t.Errorf("the %s client flags the bot's reply: %s", u.kind, verdict)
	}

	mydata := c.SendText(t, u.dm, "!mydata", e2eeWait)
	mustBotAnswer(t, env, c, u.dm, mydata, "Here is what Custodian holds about you")

	export := c.SendText(t, u.dm, "!export", e2eeWait)
	file := c.WaitFor(t, e2eeWait, e2e.InRoom(u.dm, e2e.FromSender(bot), func(m *e2e.Message) bool { return m.MsgType == event.MsgFile }))
	if !file.Encrypted || file.File == nil {
		t.Fatalf("the export arrived as %+v, want an encrypted message with an encrypted attachment", file)
	}
	if stored := env.DownloadMedia(t, u.plain, file.File.URL); json.Valid(stored) || bytes.Contains(stored, []byte(c.User())) {
		t.Errorf("the media repository holds the export in plaintext")
	}
	data := c.Download(t, file.File)
	var exported struct {
		User id.UserID `json:"user"`
	}
	if err := json.Unmarshal(data, &exported); err != nil || exported.User != c.User() {
		t.Fatalf("the export decrypted by the %s client is not %s's JSON (%v): %.300s", u.kind, c.User(), err, data)
	}
	if !bytes.Contains(data, []byte(c.Device())) {
		t.Errorf("the export does not list the user's device %s", c.Device())
	}
	if bytes.Contains(data, []byte(c.IdentityKey())) {
		t.Errorf("the export holds the device's identity key: key material must not be exported")
	}
	t.Logf("!export %s answered with %s", export, file.EventID)

	login := c.SendText(t, u.dm, "!irc login testnet "+u.ircAccount+" "+u.ircPassword, e2eeWait)
	mustBotAnswer(t, env, c, u.dm, login, "Logged in")
	env.MustSyncUntil(t, u.plain, e2eeWait, func(evt *event.Event) bool {
		return evt.Type == event.EventRedaction && evt.Sender == bot && evt.Redacts == login
	})
	dan.WaitWhois(t, ircWait, u.puppet(), func(w e2e.IRCWhois) bool { return w.Account == u.ircAccount })

	// A secret typed in the direct chat, for the search of what is at rest.
	c.SendText(t, u.dm, "my secret is "+u.canary, e2eeWait)
}

// e2eeWebhooks: an incoming webhook posts into an encrypted room, and the client decrypts it;
// an outgoing webhook receives what the client sent there, decrypted.
func e2eeWebhooks(t *testing.T, env *e2e.Env, u *e2eeUser, bob *mautrix.Client, receiver *e2e.Receiver) {
	c := u.c
	u.hookRoom = mustCreateEncryptedGroupRoom(t, env, u, bob)

	add := c.SendText(t, u.hookRoom, "!webhook add ci", e2eeWait)
	mustBotAnswer(t, env, c, u.hookRoom, add, "Created the incoming webhook")
	hookID, _ := hookByName(t, env, u.hookRoom, "ci")
	secret := mustReadBotSecret(t, env, u, u.hookRoom, "/hooks/"+hookID+"/")
	m := tokenPattern.FindStringSubmatch(secret.Body)
	if m == nil || m[1] != hookID {
		t.Fatalf("the bot's direct message has no URL of hook %s: %q", hookID, secret.Body)
	}
	hook := &inboundHook{Name: "ci", ID: hookID, Token: m[2], URL: env.WebhookURL() + "/hooks/" + hookID + "/" + m[2]}
	u.hookToken = hook.Token
	text := "build passed " + e2e.RandomHex(t, 4)
	posted := mustPostText(t, hook, text)
	got := c.WaitFor(t, e2eeWait, func(m *e2e.Message) bool { return m.EventID == posted })
	if !got.Encrypted || got.Body != text || got.Sender != ghostOf(hookID) {
		t.Errorf("the webhook's message reached the %s client as %+v; want %q from %s, encrypted", u.kind, got, text, ghostOf(hookID))
	}
	mustBeCiphertextOnServer(t, env, u.plain, u.hookRoom, posted)

	target := receiver.URL("/e2ee/" + u.kind + "/" + e2e.RandomHex(t, 8))
	out := c.SendText(t, u.hookRoom, "!webhook out "+target+" relay", e2eeWait)
	mustBotAnswer(t, env, c, u.hookRoom, out, "Created the outgoing webhook")
	outID, _ := hookByName(t, env, u.hookRoom, "relay")
	mustReadBotSecret(t, env, u, u.hookRoom, outID)
	said := "deploy now " + e2e.RandomHex(t, 4)
	msg := c.SendText(t, u.hookRoom, said, e2eeWait)
	body := parseDelivery(t, receiver.WaitFor(t, deliveryWait, deliveryOf(outID, msg)))
	if body.Type != event.EventMessage.Type || body.Content == nil || body.Content.Body != said {
		t.Errorf("the outgoing webhook received %+v, want the decrypted m.room.message %q", body, said)
	}
}

// e2eeLinkedRoom: an encrypted room linked to an IRC channel relays both ways.
func e2eeLinkedRoom(t *testing.T, env *e2e.Env, u *e2eeUser, bob *mautrix.Client, dan *e2e.IRCClient) {
	c := u.c
	danGhost := ircGhost(t, dan.Nick())
	u.linked = mustCreateEncryptedGroupRoom(t, env, u, bob)
	link := c.SendText(t, u.linked, "!irc link testnet "+u.channel, e2eeWait)
	mustBotAnswer(t, env, c, u.linked, link, "I asked")
	dan.WaitFor(t, ircWait, isConsentRequest(dan.Nick(), u.channel))
	dan.Privmsg(t, botNickE2E, "yes "+u.channel)
	dan.WaitFor(t, ircWait, e2e.IsIRCMessage("JOIN", botNickE2E, u.channel))
	env.MustSyncUntil(t, u.plain, ircWait, e2e.IsMember(u.linked, danGhost, event.MembershipJoin))
	mustRelayEncrypted(t, env, u, dan, "hello from an encrypted room", "hello to an encrypted room")
}

// mustRelayEncrypted sends toIRC from the client in the linked room and waits until dan sees it
// from the user's puppet, then sends toMatrix as dan and waits until the client decrypts it from
// dan's ghost; the homeserver holds the ghost's message as ciphertext.
func mustRelayEncrypted(t *testing.T, env *e2e.Env, u *e2eeUser, dan *e2e.IRCClient, toIRC, toMatrix string) {
	t.Helper()
	toIRC += " " + e2e.RandomHex(t, 4)
	toMatrix += " " + e2e.RandomHex(t, 4)
	u.c.SendText(t, u.linked, toIRC, e2eeWait)
	dan.WaitFor(t, ircWait, e2e.IsIRCMessage("PRIVMSG", u.puppet(), u.channel, toIRC))
	dan.Privmsg(t, u.channel, toMatrix)
	danGhost := ircGhost(t, dan.Nick())
	got := u.c.WaitFor(t, e2eeWait, e2e.InRoom(u.linked, e2e.FromSender(danGhost), e2e.WithBody(toMatrix)))
	if !got.Encrypted {
		t.Errorf("the ghost's message %s arrived in plaintext in an encrypted room", got.EventID)
	}
	// Ghosts' messages are encrypted by the bot's device; what the client shows about that is
	// recorded, not judged (docs/ARCHITECTURE.md describes it).
	_, verdict := got.SenderVerdict()
	t.Logf("the %s client's verdict on a ghost's message: %s", u.kind, verdict)
	mustBeCiphertextOnServer(t, env, u.plain, u.linked, got.EventID)
}

// e2eeAfterRestart: after Custodian restarted, the bot decrypts the command the client sent
// while it was down, and one sent now, and the client decrypts the answers, in the direct chat;
// the linked room relays both ways.
func e2eeAfterRestart(t *testing.T, env *e2e.Env, u *e2eeUser, dan *e2e.IRCClient, sentWhileDown id.EventID) {
	mustBotAnswer(t, env, u.c, u.dm, sentWhileDown, "forget")
	cmd := u.c.SendText(t, u.dm, "!help", e2eeWait)
	mustBotAnswer(t, env, u.c, u.dm, cmd, "forget")
	mustRelayEncrypted(t, env, u, dan, "after the restart, from matrix", "after the restart, from irc")
}

// e2eeNoPlaintextAtRest: what the users typed in their encrypted direct chats (a canary, their
// IRC passwords) and the secret the bot sent them in one (a webhook's token) are in none of the
// files Custodian keeps (the database, its WAL, PostgreSQL's pg_wal), not in Custodian's log,
// and not in Synapse's database or media store, which hold only ciphertext.
func e2eeNoPlaintextAtRest(t *testing.T, env *e2e.Env, users []*e2eeUser, bob *mautrix.Client) {
	waitInboxEmpty(t, env)
	needles := map[string]string{}
	for _, u := range users {
		needles[u.kind+" client's canary"] = u.canary
		needles[u.kind+" client's IRC password"] = u.ircPassword
		needles[u.kind+" client's webhook token, which the bot sent"] = u.hookToken
	}
	var files []string
	switch env.Backend {
	case e2e.SQLite:
		base := filepath.Join(env.Dir(), "custodian.db")
		for _, suffix := range []string{"", "-wal", "-shm"} {
			if _, err := os.Stat(base + suffix); err == nil {
				files = append(files, base+suffix)
			}
		}
	case e2e.Postgres:
		files = postgresDataFiles(t)
	}
	custodianFiles := len(files)
	synapseFiles := env.SynapseDataFiles(t)
	files = append(files, synapseFiles...)
	files = append(files, env.LogPath())

	control := []byte(bob.UserID.String())
	controlSeen := map[string]bool{}
	for i, path := range files {
		data, err := os.ReadFile(path)
		if err != nil {
			if os.IsNotExist(err) {
				continue // PostgreSQL removed a temporary file meanwhile
			}
			t.Fatal(err)
		}
		where := "custodian"
		if i >= custodianFiles && i < custodianFiles+len(synapseFiles) {
			where = "synapse"
		}
		if bytes.Contains(data, control) {
			controlSeen[where] = true
		}
		for what, needle := range needles {
			if bytes.Contains(data, []byte(needle)) {
				t.Errorf("the %s is at rest in plaintext, in %s", what, path)
			}
		}
	}
	for _, where := range []string{"custodian", "synapse"} {
		if !controlSeen[where] {
			t.Errorf("bob's user ID, stored in clear, is in none of %s's files: the search cannot fail there", where)
		}
	}
	t.Logf("searched %d files (%d of Custodian's database, %d of Synapse's, the log) for %d secrets", len(files), custodianFiles, len(synapseFiles), len(needles))
}

// e2eeForget: !forget confirm in the encrypted direct chat; the receipt arrives, decrypted; the
// puppet quits; then no row of any table names the user, their device or its identity key. The
// user, still in the linked room, decrypts dan's next relayed message there.
func e2eeForget(t *testing.T, env *e2e.Env, u *e2eeUser, bob *mautrix.Client, dan *e2e.IRCClient) {
	bot := env.BotUserID()
	c := u.c
	user := c.User()
	escaped := strings.NewReplacer("@", "%40", ":", "%3A").Replace(user.String())
	needles := []string{user.String(), escaped, user.Localpart(), string(c.Device()), string(c.IdentityKey())}

	// The control: before the erasure, the database names the user and keeps their device
	// (its ID and identity key) in the crypto tables, so the search below can fail.
	before := env.DumpDatabase(t)
	for _, needle := range []string{user.String(), string(c.IdentityKey())} {
		if len(before.Find(needle)) == 0 {
			t.Errorf("before the erasure no row holds %q: the search after it proves nothing", needle)
		}
	}

	fg := c.SendText(t, u.dm, "!forget", e2eeWait)
	mustBotAnswer(t, env, c, u.dm, fg, "forget confirm")
	confirm := c.SendText(t, u.dm, "!forget confirm", e2eeWait)
	// The receipt: the bot's next encrypted message in the room, as the homeserver holds it.
	receiptEvt := env.MustSyncUntil(t, u.plain, time.Minute, e2e.After(confirm, func(evt *event.Event) bool {
		return evt.RoomID == u.dm && evt.Sender == bot && evt.Type == event.EventEncrypted
	}))
	// Decrypted, or given up on (the mautrix client gives up after 25 s), within e2eeWait.
	var receipt *e2e.Message
	ok := false
	for deadline := time.Now().Add(e2eeWait); !ok && time.Now().Before(deadline); {
		if receipt, ok = c.TryWaitFor(t, 2*time.Second, func(m *e2e.Message) bool { return m.EventID == receiptEvt.ID }); ok {
			break
		}
		if slices.ContainsFunc(c.DecryptionFailures(t), func(f e2e.DecryptionFailure) bool { return f.EventID == receiptEvt.ID }) {
			break
		}
	}
	switch {
	case ok && !strings.Contains(receipt.Body, "Done: I erased everything"):
		t.Errorf("the bot answered !forget confirm with %q, want the erasure's receipt", receipt.Body)
	case !ok:
		// The bot shares the receipt's room key with the erased user's devices (found among
		// the room's members by their keyed hash) and scrubs what that stored afterwards.
		t.Errorf("the %s client cannot decrypt the erasure's receipt %s; its decryption failures: %+v", u.kind, receiptEvt.ID, c.DecryptionFailures(t))
	}
	env.MustSyncUntil(t, u.plain, e2eeWait, e2e.IsMember(u.dm, bot, event.MembershipLeave))

	e2e.Eventually(t, e2eeWait, func() error {
		var n int
		if err := env.DB(t).QueryRow(`SELECT COUNT(*) FROM as_inbox`).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("as_inbox holds %d events", n)
		}
		rows := env.DumpDatabase(t).Find(needles...)
		if len(rows) == 0 {
			return nil
		}
		return fmt.Errorf("after !forget, %d rows still name %s or their device:\n%s", len(rows), user, e2e.Describe(rows))
	})
	if rows := env.DumpDatabase(t).Find(bob.UserID.String()); len(rows) == 0 {
		t.Errorf("no row names bob after the erasure of %s: too much was erased, or the dump is wrong", user)
	}

	// The user stays in the linked room, which the erasure left as it was. It dropped the bot's
	// room key shared with them there and their member row: the next key the bot shares there
	// (for dan's ghost's message) must still reach their device, read from the homeserver's
	// member list.
	toMatrix := "after the erasure " + e2e.RandomHex(t, 4)
	dan.Privmsg(t, u.channel, toMatrix)
	got := c.WaitFor(t, e2eeWait, e2e.InRoom(u.linked, e2e.FromSender(ircGhost(t, dan.Nick())), e2e.WithBody(toMatrix)))
	if !got.Encrypted {
		t.Errorf("the ghost's message %s after the erasure arrived in plaintext in an encrypted room", got.EventID)
	}
}

// TestE2EEWithoutHomeserverSupport: on a Synapse without the experimental appservice features
// (to-device messages and device lists in transactions), Synapse does not hand the bot's
// to-device probe back, so Custodian starts anyway and warns, naming the flags to set; in an
// encrypted direct chat the bot warns, as before encryption existed, that it cannot read
// encrypted messages. With each client, on both databases.
func TestE2EEWithoutHomeserverSupport(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		env := e2e.New(t, backend, e2e.WithoutE2EEFeatures(), withEncryption())
		bot := env.BotUserID()
		waitEncryptionOn(t, env)
		line := env.MustWaitForLog(t, "did not deliver the bot's to-device probe", time.Minute)
		for _, want := range []string{`"level":"warn"`, "msc2409_to_device_messages_enabled", "msc3202_transaction_extensions", "org.matrix.msc3202"} {
			if !strings.Contains(line, want) {
				t.Errorf("the probe's warning lacks %q: %s", want, line)
			}
		}
		const welcome = "Hello! I'm the Custodian bot. Send `help` to see what I can do.\n\n" +
			"This room is encrypted, and I can't read encrypted messages: talk to me in an unencrypted room."
		for _, kind := range e2eeKinds {
			t.Run(kind.name, func(t *testing.T) {
				plain := env.Register(t, "alice"+kind.name)
				c := kind.login(t, env, plain.UserID)
				dm := c.CreateDM(t, bot)
				got := c.WaitFor(t, e2eeWait, e2e.InRoom(dm, e2e.FromSender(bot)))
				if got.Body != welcome {
					t.Errorf("without the homeserver's support the bot's welcome in an encrypted chat is %q; want %q", got.Body, welcome)
				}
			})
		}
	})
}

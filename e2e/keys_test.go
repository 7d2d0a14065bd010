//go:build e2e

package e2e_test

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/vault"
	"github.com/custodian-matrix/custodian/e2e"
)

// TestKeyRotationUnderTraffic: with outgoing webhooks of several users sealed in the vault, the
// admin procedure runs against the live service (custodian keys add, keys rotate, keys status,
// keys retire: the same binary and config) while messages keep flowing through the webhooks and
// a new user creates one mid-rotation (a new data key, wrapped by whichever key the service has
// loaded then). Afterwards every message was delivered exactly once, every data key is wrapped by
// the new key, the old key is retired, and every sealed URL opens with the new key alone.
//
// keys rotate waits until the service has certainly re-read the key file (its mtime plus a
// minute and 15 s), so each backend takes about 80 s; the two run in parallel.
func TestKeyRotationUnderTraffic(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		t.Parallel()
		const (
			rotateTimeout = 4 * time.Minute
			sendInterval  = 300 * time.Millisecond
		)
		env := e2e.New(t, backend, e2e.WithWebhookBridge(t))
		receiver := e2e.NewReceiver(t)
		witness := env.Register(t, "witness")

		type sender struct {
			cli    *mautrix.Client
			roomID id.RoomID
			hook   *outboundHook
			sent   []id.EventID
		}
		var senders []*sender
		addSender := func(name string) {
			cli := env.Register(t, name)
			roomID := mustCreateGroupRoom(t, env, cli, witness)
			hook := mustAddOutbound(t, env, cli, roomID, "relay", receiver.URL("/rot/"+name+"/"+e2e.RandomHex(t, 8)))
			senders = append(senders, &sender{cli: cli, roomID: roomID, hook: hook})
		}
		for _, name := range []string{"alice", "bob", "carol"} {
			addSender(name)
		}
		send := func(s *sender, i int) {
			s.sent = append(s.sent, env.SendText(t, s.cli, s.roomID, fmt.Sprintf("rotation %s %d", s.cli.UserID.Localpart(), i)))
		}
		for i, s := range senders {
			send(s, i)
		}

		keys := loadKeys(t, env.KeyFilePath())
		if len(keys) != 1 {
			t.Fatalf("the key file holds %d keys, want the 1 custodian -g generated", len(keys))
		}
		oldKey := keys[0].ID()
		res := env.RunCLI(t, time.Minute, "keys", "add", "-c", env.ConfigPath())
		if res.ExitCode != 0 {
			t.Fatalf("keys add failed:\n%s", res)
		}
		keys = loadKeys(t, env.KeyFilePath())
		if len(keys) != 2 || keys[1].ID() != oldKey {
			t.Fatalf("after keys add the key file holds %v, want a new key then %s", keyIDs(keys), oldKey)
		}
		newKey := keys[0].ID()
		if !strings.Contains(res.Stdout, newKey) {
			t.Errorf("keys add does not name the new key %s:\n%s", newKey, res)
		}

		// keys rotate runs in the background while the users keep talking.
		ctx, cancel := context.WithTimeout(context.Background(), rotateTimeout)
		defer cancel()
		type result struct {
			res *e2e.CLIResult
			err error
		}
		rotated := make(chan result, 1)
		cmd := env.CustodianCommand(ctx, "keys", "rotate", "-c", env.ConfigPath())
		go func() {
			res, err := e2e.RunCommand(cmd)
			rotated <- result{res, err}
		}()
		start := time.Now()
		deadline := start.Add(rotateTimeout)
		var rot result
		addedMidway := false
	traffic:
		for i := 0; ; i++ {
			select {
			case rot = <-rotated:
				break traffic
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("keys rotate did not finish within %v", rotateTimeout)
			}
			if !addedMidway && time.Since(start) > 10*time.Second {
				// A new user's first secret: a new data key while the rotation runs.
				addSender("dave")
				addedMidway = true
			}
			send(senders[i%len(senders)], i)
			time.Sleep(sendInterval)
		}
		if rot.err != nil {
			t.Fatalf("running keys rotate: %v", rot.err)
		}
		t.Logf("keys rotate took %v", rot.res.Duration.Round(time.Second))
		if rot.res.ExitCode != 0 || !strings.Contains(rot.res.Stdout, "under key "+newKey) {
			t.Fatalf("keys rotate failed:\n%s", rot.res)
		}
		if !addedMidway {
			t.Fatalf("keys rotate finished after %v, before a user was added during it", rot.res.Duration)
		}

		// After the rotation, and after retiring the old key, everything still flows.
		for i, s := range senders {
			send(s, 10000+i)
		}
		res = env.RunCLI(t, time.Minute, "keys", "status", "-c", env.ConfigPath())
		wantAll := fmt.Sprintf("All %d data keys are wrapped by the current key.", len(senders))
		if res.ExitCode != 0 || !strings.Contains(res.Stdout, wantAll) ||
			!regexp.MustCompile(`(?m)^`+newKey+`\s+`+fmt.Sprint(len(senders))+`\s+current, available$`).MatchString(res.Stdout) ||
			!regexp.MustCompile(`(?m)^`+oldKey+`\s+0\s+previous, available$`).MatchString(res.Stdout) {
			t.Errorf("keys status after the rotation: want %q, %s current with %d data keys and %s with 0:\n%s",
				wantAll, newKey, len(senders), oldKey, res)
		}
		res = env.RunCLI(t, time.Minute, "keys", "retire", "-c", env.ConfigPath(), oldKey)
		if res.ExitCode != 0 {
			t.Fatalf("keys retire %s failed:\n%s", oldKey, res)
		}
		if keys = loadKeys(t, env.KeyFilePath()); len(keys) != 1 || keys[0].ID() != newKey {
			t.Errorf("after keys retire the key file holds %v, want only %s", keyIDs(keys), newKey)
		}
		for i, s := range senders {
			send(s, 20000+i)
		}

		// Nothing lost, nothing doubled.
		total := 0
		for _, s := range senders {
			for _, evt := range s.sent {
				receiver.WaitFor(t, deliveryWait, deliveryOf(s.hook.ID, evt))
			}
			total += len(s.sent)
		}
		counts := map[string]int{}
		for _, d := range receiver.Deliveries() {
			counts[d.Header.Get("X-Custodian-Hook-ID")+" "+d.Header.Get("X-Custodian-Event-ID")]++
		}
		for key, n := range counts {
			if n != 1 {
				t.Errorf("delivery %s arrived %d times", key, n)
			}
		}
		t.Logf("%d messages of %d users delivered during and after the rotation", total, len(senders))

		// Every data key is wrapped by the new key, and a process knowing only the new key opens
		// every sealed URL and signing secret.
		rows, err := env.DB(t).Query(`SELECT kek_id, COUNT(*) FROM as_vault_dek GROUP BY kek_id`)
		if err != nil {
			t.Fatal(err)
		}
		byKey := map[string]int{}
		for rows.Next() {
			var kek string
			var n int
			if err := rows.Scan(&kek, &n); err != nil {
				t.Fatal(err)
			}
			byKey[kek] = n
		}
		if err := rows.Close(); err != nil {
			t.Fatal(err)
		}
		if len(byKey) != 1 || byKey[newKey] != len(senders) {
			t.Errorf("as_vault_dek by master key: %v, want all %d under %s", byKey, len(senders), newKey)
		}
		v := openVault(t, env.DBDriver(), env.DB(t), env.KeyFilePath())
		for _, s := range senders {
			sealed := sealedSecrets(t, env.DB(t), s.hook.ID)
			got, err := v.Open(context.Background(), s.cli.UserID, "webhook", "outbound_url/"+s.hook.ID, sealed.url)
			if err != nil || !got.Equal(s.hook.URL) {
				t.Errorf("opening %s's outgoing URL with the new key alone: %v", s.cli.UserID, err)
			}
			if _, err := v.Open(context.Background(), s.cli.UserID, "webhook", "signing_secret/"+s.hook.ID, sealed.secret); err != nil {
				t.Errorf("opening %s's signing secret with the new key alone: %v", s.cli.UserID, err)
			}
		}
	})
}

func loadKeys(t *testing.T, path string) []vault.Key {
	t.Helper()
	keys, err := vault.FileKeys(path).LoadKeys()
	if err != nil {
		t.Fatalf("reading the key file: %v", err)
	}
	return keys
}

func keyIDs(keys []vault.Key) []string {
	ids := make([]string, len(keys))
	for i, k := range keys {
		ids[i] = k.ID()
	}
	return ids
}

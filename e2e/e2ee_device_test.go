//go:build e2e

package e2e_test

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto/signatures"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/e2e"
)

// encryptionOn is the start-up's log line once the bot's device is set up.
type encryptionOn struct {
	DeviceID  id.DeviceID `json:"device_id"`
	NewDevice bool        `json:"new_device"`
	MSC4190   bool        `json:"msc4190"`
}

func waitEncryptionOn(t *testing.T, env *e2e.Env) encryptionOn {
	t.Helper()
	line := env.MustWaitForLog(t, `"message":"Encryption is on"`, 2*time.Minute)
	var on encryptionOn
	if err := json.Unmarshal([]byte(line), &on); err != nil || on.DeviceID == "" {
		t.Fatalf("cannot read the device from %q: %v", line, err)
	}
	return on
}

// checkBotDeviceCrossSigned asks Synapse, as another user, for the bot's keys: exactly the
// device dev, with identity keys, signed by the bot's self-signing key, itself signed by the
// bot's master key (the signatures verified, not only present).
func checkBotDeviceCrossSigned(t *testing.T, cli *mautrix.Client, bot id.UserID, dev id.DeviceID) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := cli.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{bot: {}}})
	if err != nil {
		t.Fatalf("querying the bot's keys: %v", err)
	}
	devices := resp.DeviceKeys[bot]
	keys, ok := devices[dev]
	if len(devices) != 1 || !ok || keys.Keys.GetEd25519(dev) == "" || keys.Keys.GetCurve25519(dev) == "" {
		t.Fatalf("the bot's devices on Synapse = %v, want only %s with its identity keys", devices, dev)
	}
	master, ssk := resp.MasterKeys[bot], resp.SelfSigningKeys[bot]
	masterKey, sskKey := master.FirstKey(), ssk.FirstKey()
	if masterKey == "" || sskKey == "" {
		t.Fatalf("the bot has no cross-signing keys on Synapse: master %q, self-signing %q", masterKey, sskKey)
	}
	if ok, err := signatures.VerifySignatureJSON(ssk, bot, masterKey.String(), masterKey); !ok || err != nil {
		t.Errorf("the bot's self-signing key is not signed by its master key: %v", err)
	}
	if ok, err := signatures.VerifySignatureJSON(keys, bot, sskKey.String(), sskKey); !ok || err != nil {
		t.Errorf("the bot's device %s is not signed by its self-signing key: %v", dev, err)
	}
}

// TestE2EEBotDevice: with the homeserver's experimental features and the registration custodian
// -g writes, the bot creates its device with MSC4190 at the first start, uploads its keys and
// cross-signs it; a restart keeps the same device and signature.
func TestE2EEBotDevice(t *testing.T) {
	e2e.RunBackends(t, func(t *testing.T, backend e2e.Backend) {
		env := e2e.New(t, backend, withEncryption())
		reg, err := os.ReadFile(env.RegistrationPath())
		if err != nil {
			t.Fatal(err)
		}
		for _, flag := range []string{"receive_ephemeral: true", "org.matrix.msc3202: true", "io.element.msc4190: true"} {
			if !strings.Contains(string(reg), flag) {
				t.Errorf("the registration custodian -g wrote lacks %q", flag)
			}
		}
		first := waitEncryptionOn(t, env)
		if !first.NewDevice || !first.MSC4190 {
			t.Errorf("first start = %+v, want a new device created with MSC4190", first)
		}
		env.MustWaitForLog(t, `"cross_signing":"generated"`, 10*time.Second)
		alice := env.Register(t, "alice")
		checkBotDeviceCrossSigned(t, alice, env.BotUserID(), first.DeviceID)

		env.StopCustodian(t)
		env.StartCustodian(t)
		second := waitEncryptionOn(t, env)
		if second.NewDevice || second.DeviceID != first.DeviceID {
			t.Errorf("after a restart = %+v, want the existing device %s", second, first.DeviceID)
		}
		env.MustWaitForLog(t, `"cross_signing":"already"`, 10*time.Second)
		checkBotDeviceCrossSigned(t, alice, env.BotUserID(), first.DeviceID)
	})
}

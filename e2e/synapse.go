//go:build e2e

package e2e

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

var chroot struct {
	once sync.Once
	root string
	err  error
}

// synapseRoot returns the Synapse chroot: CUSTODIAN_SYNAPSE_ROOT, or what
// scripts/testbed-synapse.sh prints (it builds or restores the chroot if needed). A missing
// chroot fails the test, in CI and out of it: the suite has nothing to run against.
func synapseRoot(t testing.TB) string {
	t.Helper()
	chroot.once.Do(func() {
		if root := os.Getenv("CUSTODIAN_SYNAPSE_ROOT"); root != "" {
			chroot.root = root
		} else {
			modRoot, err := moduleRoot()
			if err != nil {
				chroot.err = err
				return
			}
			out, err := runCommand(t, chrootTimeout, modRoot, filepath.Join(modRoot, "scripts", "testbed-synapse.sh"))
			if err != nil {
				chroot.err = fmt.Errorf("scripts/testbed-synapse.sh: %w\n%s", err, out)
				return
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			chroot.root = strings.TrimSpace(lines[len(lines)-1])
		}
		if _, err := os.Stat(filepath.Join(chroot.root, "usr", "lib", "python3", "dist-packages", "synapse")); err != nil {
			chroot.err = fmt.Errorf("%s does not hold a Synapse installation: %w", chroot.root, err)
		}
	})
	if chroot.err != nil {
		t.Fatalf("no Synapse to test against (run scripts/testbed-setup.sh as root, or set CUSTODIAN_SYNAPSE_ROOT): %v", chroot.err)
	}
	return chroot.root
}

// synapse is one Synapse homeserver running in the chroot.
type synapse struct {
	root         string // the chroot on the host
	port         int
	name         string // the work directory's name under /tmp inside the chroot
	hostDir      string // the work directory as seen from the host
	logPath      string // on the host
	sharedSecret string
	e2ee         bool // turn on the experimental features appservice encryption needs
	proc         *process
}

func (hs *synapse) url() string { return "http://127.0.0.1:" + strconv.Itoa(hs.port) }

// inChroot is the path inside the chroot of a file in the work directory.
func (hs *synapse) inChroot(file string) string { return "/tmp/" + hs.name + "/" + file }

// start writes the work directory under $ROOT/tmp (so no bind mount is needed), with the
// registration if there is one, starts Synapse and waits until it answers.
func (hs *synapse) start(t testing.TB, registration []byte) {
	t.Helper()
	hs.name = "custodian-e2e-" + randomHex(t, 8)
	hs.hostDir = filepath.Join(hs.root, "tmp", hs.name)
	if err := os.MkdirAll(hs.hostDir, 0o700); err != nil {
		t.Fatalf("creating the Synapse work directory: %v", err)
	}
	t.Cleanup(func() { removeWorkDir(t, hs.hostDir) })
	hs.logPath = filepath.Join(hs.hostDir, "homeserver.log")
	hs.sharedSecret = randomHex(t, 32)

	var appservices []string
	if registration != nil {
		if err := os.WriteFile(filepath.Join(hs.hostDir, "registration.yaml"), registration, 0o600); err != nil {
			t.Fatalf("copying the registration: %v", err)
		}
		appservices = append(appservices, hs.inChroot("registration.yaml"))
	}
	hs.writeSigningKey(t)
	hs.writeConfig(t, appservices)

	cmd := exec.Command("chroot", hs.root, "python3", "-m", "synapse.app.homeserver",
		"-c", hs.inChroot("homeserver.yaml"))
	cmd.Env = []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=/tmp/" + hs.name,
		"LANG=C.UTF-8",
		"PYTHONDONTWRITEBYTECODE=1",
	}
	proc, err := startProcess(cmd, hs.logPath)
	if err != nil {
		t.Fatalf("starting Synapse: %v", err)
	}
	hs.proc = proc
	t.Cleanup(func() {
		if !proc.kill() {
			t.Logf("Synapse (pid %d) did not exit within %v of SIGKILL", proc.cmd.Process.Pid, killTimeout)
		}
	})

	start := time.Now()
	err = waitHTTP(synapseReadyWait, proc, hs.url()+"/_matrix/client/versions")
	if err != nil {
		logTail(t, "Synapse", hs.logPath)
		t.Fatalf("Synapse did not become ready: %v", err)
	}
	t.Logf("Synapse ready at %s in %v", hs.url(), time.Since(start).Round(time.Millisecond))
}

// writeSigningKey writes a fresh ed25519 signing key in Synapse's format (what
// `openssl genpkey -algorithm ed25519` would give, without spawning anything).
func (hs *synapse) writeSigningKey(t testing.TB) {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatalf("generating a signing key: %v", err)
	}
	line := "ed25519 a_1 " + base64.RawStdEncoding.EncodeToString(key.Seed()) + "\n"
	if err := os.WriteFile(filepath.Join(hs.hostDir, "signing.key"), []byte(line), 0o600); err != nil {
		t.Fatalf("writing the signing key: %v", err)
	}
}

// writeConfig writes homeserver.yaml as TESTBED.md describes: localhost, one client listener on
// 127.0.0.1, SQLite, shared-secret registration, no federation, every rate limit raised. With
// hs.e2ee it also turns on MSC2409 (to-device messages in appservice transactions) and MSC3202
// (device-list changes and one-time-key counts in them); an appservice gets the MSC3202 fields
// only if its registration opts in (org.matrix.msc3202), and to-device messages only with
// receive_ephemeral.
func (hs *synapse) writeConfig(t testing.TB, appservices []string) {
	t.Helper()
	unlimited := map[string]any{"per_second": 10000, "burst_count": 100000}
	cfg := map[string]any{
		"server_name":    Domain,
		"public_baseurl": hs.url() + "/",
		"pid_file":       hs.inChroot("homeserver.pid"),
		"listeners": []any{map[string]any{
			"port":           hs.port,
			"bind_addresses": []string{"127.0.0.1"},
			"type":           "http",
			"tls":            false,
			"x_forwarded":    false,
			"resources":      []any{map[string]any{"names": []string{"client"}, "compress": false}},
		}},
		"database": map[string]any{
			"name": "sqlite3",
			"args": map[string]any{"database": hs.inChroot("homeserver.db")},
		},
		"media_store_path":               hs.inChroot("media_store"),
		"signing_key_path":               hs.inChroot("signing.key"),
		"report_stats":                   false,
		"enable_metrics":                 false,
		"enable_registration":            false,
		"registration_shared_secret":     hs.sharedSecret,
		"macaroon_secret_key":            randomHex(t, 32),
		"form_secret":                    randomHex(t, 32),
		"bcrypt_rounds":                  4,
		"trusted_key_servers":            []any{},
		"suppress_key_server_warning":    true,
		"federation_domain_whitelist":    []any{},
		"url_preview_enabled":            false,
		"app_service_config_files":       appservices,
		"rc_message":                     unlimited,
		"rc_registration":                unlimited,
		"rc_registration_token_validity": unlimited,
		"rc_login": map[string]any{
			"address":         unlimited,
			"account":         unlimited,
			"failed_attempts": unlimited,
		},
		"rc_admin_redaction": unlimited,
		"rc_joins": map[string]any{
			"local":  unlimited,
			"remote": unlimited,
		},
		"rc_joins_per_room":  unlimited,
		"rc_3pid_validation": unlimited,
		"rc_invites": map[string]any{
			"per_room":   unlimited,
			"per_user":   unlimited,
			"per_issuer": unlimited,
		},
		"rc_third_party_invite": unlimited,
		"rc_media_create":       unlimited,
		"rc_presence":           map[string]any{"per_user": unlimited},
		"rc_delayed_event_mgmt": unlimited,
		"rc_room_creation":      unlimited,
		"rc_reports":            unlimited,
		"rc_user_directory":     unlimited,
		"rc_key_requests":       unlimited,
	}
	if hs.e2ee {
		cfg["experimental_features"] = map[string]any{
			"msc2409_to_device_messages_enabled": true,
			"msc3202_transaction_extensions":     true,
		}
	}
	data, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatalf("encoding homeserver.yaml: %v", err)
	}
	if err := os.WriteFile(filepath.Join(hs.hostDir, "homeserver.yaml"), data, 0o600); err != nil {
		t.Fatalf("writing homeserver.yaml: %v", err)
	}
}

// waitHTTP polls url until it answers 200, proc exits, or timeout passes.
func waitHTTP(timeout time.Duration, proc *process, url string) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	client := &http.Client{Timeout: 5 * time.Second}
	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	var lastErr error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			lastErr = fmt.Errorf("GET %s: status %d", url, resp.StatusCode)
		} else {
			lastErr = err
		}
		select {
		case <-proc.done:
			return fmt.Errorf("the process exited (%v) before %s answered", proc.err, url)
		case <-ctx.Done():
			return fmt.Errorf("no 200 from %s within %v: %w", url, timeout, lastErr)
		case <-ticker.C:
		}
	}
}

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("reading random bytes: %v", err)
	}
	return hex.EncodeToString(b)
}

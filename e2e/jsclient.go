//go:build e2e

package e2e

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// Deadlines of the Node client's own steps.
const (
	// npmCITimeout bounds `npm ci` of e2e/jsclient (a few seconds with a warm npm cache).
	npmCITimeout = 5 * time.Minute
	// jsLoginTimeout bounds a login: the request, the Rust crypto's set-up and the first sync.
	jsLoginTimeout = 60 * time.Second
	// jsReplyMargin is how much longer the harness waits for a reply than the client's own
	// bound on the command, so that the client's error (which says what it waited for) arrives
	// first.
	jsReplyMargin = 15 * time.Second
	// jsRequestTimeout bounds commands that make one request (createDM, join, failures).
	jsRequestTimeout = 30 * time.Second
)

// jsMinNodeMajor is the oldest Node matrix-js-sdk 36.2.0 supports (its engines field).
const jsMinNodeMajor = 20

var jsInstall struct {
	once sync.Once
	dir  string
	skip string // why the Node client cannot run here, if it cannot
	err  error
}

// jsClientDir returns e2e/jsclient with its node_modules installed by `npm ci` from the committed
// package-lock.json. The install is skipped when node_modules holds a stamp of the same lock file's
// SHA-256, so it runs once per change of the lock. Without Node 20 or later the test is
// skipped (CI machines need not have it); a failing install fails the test.
func jsClientDir(t testing.TB) string {
	t.Helper()
	jsInstall.once.Do(func() {
		jsInstall.dir, jsInstall.skip, jsInstall.err = installJSClient(t)
	})
	if jsInstall.skip != "" {
		t.Skipf("the Node client cannot run here: %s", jsInstall.skip)
	}
	if jsInstall.err != nil {
		t.Fatalf("installing e2e/jsclient: %v", jsInstall.err)
	}
	return jsInstall.dir
}

func installJSClient(t testing.TB) (dir, skip string, err error) {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		return "", "no node on PATH", nil
	}
	if _, err := exec.LookPath("npm"); err != nil {
		return "", "no npm on PATH", nil
	}
	out, err := runCommand(t, time.Minute, "", node, "--version")
	if err != nil {
		return "", "", fmt.Errorf("node --version: %w\n%s", err, out)
	}
	version := strings.TrimPrefix(strings.TrimSpace(string(out)), "v")
	major, err := strconv.Atoi(strings.SplitN(version, ".", 2)[0])
	if err != nil {
		return "", "", fmt.Errorf("node --version printed %q", out)
	}
	if major < jsMinNodeMajor {
		return "", fmt.Sprintf("node %s is older than %d", version, jsMinNodeMajor), nil
	}

	modRoot, err := moduleRoot()
	if err != nil {
		return "", "", err
	}
	dir = filepath.Join(modRoot, "e2e", "jsclient")
	lock, err := os.ReadFile(filepath.Join(dir, "package-lock.json"))
	if err != nil {
		return "", "", err
	}
	sum := sha256.Sum256(lock)
	want := hex.EncodeToString(sum[:])
	stamp := filepath.Join(dir, "node_modules", ".custodian-lock-sha256")
	if have, err := os.ReadFile(stamp); err == nil && strings.TrimSpace(string(have)) == want {
		return dir, "", nil
	}
	start := time.Now()
	out, err = runCommand(t, npmCITimeout, dir, "npm", "ci", "--no-audit", "--no-fund", "--loglevel=error")
	if err != nil {
		return "", "", fmt.Errorf("npm ci: %w\n%s", err, out)
	}
	if err := os.WriteFile(stamp, []byte(want+"\n"), 0o644); err != nil {
		return "", "", err
	}
	t.Logf("npm ci in %s took %v", dir, time.Since(start).Round(time.Millisecond))
	return dir, "", nil
}

// JSClient is a Matrix client with end-to-end encryption: matrix-js-sdk 36.2.0 and its Rust
// crypto, in a Node process of its own running e2e/jsclient/client.js (see its header for the
// protocol). Its keys live only in that process's memory. Its methods fail the test on any
// error and must be called from the test's goroutine.
type JSClient struct {
	UserID   id.UserID
	DeviceID id.DeviceID

	identityKey id.IdentityKey
	name        string
	logPath     string
	stdin       io.WriteCloser
	proc        *process
	replies     chan jsReply // closed when stdout ends
	nextID      int
}

type jsReply struct {
	ID    int             `json:"id"`
	OK    bool            `json:"ok"`
	Error string          `json:"error"`
	raw   json.RawMessage // the whole line
}

var _ E2EEClient = (*JSClient)(nil)

// JSLogin starts a Node client and logs it in with the password [Env.Register] gave user. The
// new device uploads its keys and finishes its first sync before JSLogin returns. The process
// is stopped when the test ends; its log is printed if the test failed.
func (env *Env) JSLogin(t testing.TB, user id.UserID) *JSClient {
	t.Helper()
	password := env.Password(user)
	if password == "" {
		t.Fatalf("JSLogin: %s was not registered by the harness", user)
	}
	dir := jsClientDir(t)
	c := &JSClient{
		name:    "js client " + user.Localpart(),
		logPath: filepath.Join(env.dir, "jsclient-"+user.Localpart()+".log"),
		replies: make(chan jsReply, 16),
	}
	c.start(t, dir)
	var resp struct {
		UserID      id.UserID      `json:"user_id"`
		DeviceID    id.DeviceID    `json:"device_id"`
		IdentityKey id.IdentityKey `json:"identity_key"`
	}
	c.call(t, jsLoginTimeout, &resp, map[string]any{
		"cmd":      "login",
		"base_url": env.HomeserverURL(),
		"user":     user.Localpart(),
		"password": password,
	})
	c.UserID, c.DeviceID, c.identityKey = resp.UserID, resp.DeviceID, resp.IdentityKey
	t.Logf("%s logged in as %s, device %s", c.name, c.UserID, c.DeviceID)
	return c
}

func (c *JSClient) start(t testing.TB, dir string) {
	t.Helper()
	logFile, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatalf("%s: opening its log: %v", c.name, err)
	}
	cmd := exec.Command("node", "client.js")
	cmd.Dir = dir
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatalf("%s: %v", c.name, err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatalf("%s: %v", c.name, err)
	}
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		t.Fatalf("%s: starting node: %v", c.name, err)
	}
	c.stdin = stdin
	c.proc = &process{cmd: cmd, done: make(chan struct{})}
	// Read every reply before Wait, which closes the pipe.
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		defer close(c.replies)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
		for sc.Scan() {
			line := append(json.RawMessage(nil), sc.Bytes()...)
			var r jsReply
			if err := json.Unmarshal(line, &r); err != nil {
				r = jsReply{ID: -1, Error: fmt.Sprintf("unparsable output %q: %v", line, err)}
			}
			r.raw = line
			c.replies <- r
		}
	}()
	go func() {
		<-readDone
		c.proc.err = cmd.Wait()
		_ = logFile.Close()
		close(c.proc.done)
	}()
	t.Cleanup(func() {
		// Closing stdin makes the client stop and exit; kill it if it does not.
		_ = c.stdin.Close()
		if !c.proc.wait(stopTimeout) {
			c.proc.kill()
		}
		if t.Failed() {
			logTail(t, c.name, c.logPath)
		}
	})
}

// call sends one command and decodes its successful reply into out (which may be nil). The
// client bounds the command by timeout; the harness waits jsReplyMargin longer.
func (c *JSClient) call(t testing.TB, timeout time.Duration, out any, req map[string]any) {
	t.Helper()
	if err := c.do(timeout, out, req); err != nil {
		t.Fatalf("%s: %s: %v", c.name, req["cmd"], err)
	}
}

func (c *JSClient) do(timeout time.Duration, out any, req map[string]any) error {
	c.nextID++
	req["id"] = c.nextID
	req["timeout_ms"] = timeout.Milliseconds()
	line, err := json.Marshal(req)
	if err != nil {
		return err
	}
	if _, err := c.stdin.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("writing the request: %w", err)
	}
	timer := time.NewTimer(timeout + jsReplyMargin)
	defer timer.Stop()
	for {
		select {
		case r, ok := <-c.replies:
			if !ok {
				<-c.proc.done
				return fmt.Errorf("the client exited (%v) before replying", c.proc.err)
			}
			if r.ID != c.nextID {
				if r.ID == -1 || r.ID == 0 {
					return errors.New(r.Error)
				}
				continue // the late reply of a command that timed out here
			}
			if !r.OK {
				return errors.New(r.Error)
			}
			if out == nil {
				return nil
			}
			return json.Unmarshal(r.raw, out)
		case <-timer.C:
			return fmt.Errorf("no reply within %v", timeout+jsReplyMargin)
		}
	}
}

// CreateDM creates a direct chat with other the way Element does (preset trusted_private_chat,
// is_direct, other invited) with m.room.encryption (megolm) in the initial state.
func (c *JSClient) CreateDM(t testing.TB, other id.UserID) id.RoomID {
	t.Helper()
	var resp struct {
		RoomID id.RoomID `json:"room_id"`
	}
	c.call(t, jsRequestTimeout, &resp, map[string]any{"cmd": "createDM", "user_id": other})
	return resp.RoomID
}

// Join joins roomID (accepting an invite).
func (c *JSClient) Join(t testing.TB, roomID id.RoomID) {
	t.Helper()
	c.call(t, jsRequestTimeout, nil, map[string]any{"cmd": "join", "room_id": roomID})
}

// SendText sends body as m.text, encrypted. It first waits (up to timeout) until the client has
// joined roomID and knows it is encrypted, so the message never goes out in plaintext.
func (c *JSClient) SendText(t testing.TB, roomID id.RoomID, body string, timeout time.Duration) id.EventID {
	t.Helper()
	var resp struct {
		EventID id.EventID `json:"event_id"`
	}
	c.call(t, timeout, &resp, map[string]any{"cmd": "send", "room_id": roomID, "body": body})
	return resp.EventID
}

// Kind is "js".
func (c *JSClient) Kind() string { return "js" }

// User is the client's user ID.
func (c *JSClient) User() id.UserID { return c.UserID }

// Device is the client's device ID.
func (c *JSClient) Device() id.DeviceID { return c.DeviceID }

// IdentityKey is the device's Curve25519 identity key.
func (c *JSClient) IdentityKey() id.IdentityKey { return c.identityKey }

// CreateRoom creates an encrypted private room inviting invite, with powerLevels (if not nil) as
// the power levels' content override.
func (c *JSClient) CreateRoom(t testing.TB, invite []id.UserID, powerLevels *event.PowerLevelsEventContent) id.RoomID {
	t.Helper()
	var resp struct {
		RoomID id.RoomID `json:"room_id"`
	}
	req := map[string]any{"cmd": "createRoom", "invite": invite}
	if powerLevels != nil {
		req["power_levels"] = powerLevels
	}
	c.call(t, jsRequestTimeout, &resp, req)
	return resp.RoomID
}

// WaitForBody waits up to timeout for a message with exactly body in roomID (any room if empty),
// seen before or during the call, and returns it decrypted. On timeout the test fails with the
// client's decryption failures in the room.
func (c *JSClient) WaitForBody(t testing.TB, roomID id.RoomID, body string, timeout time.Duration) *Message {
	t.Helper()
	var msg Message
	req := map[string]any{"cmd": "waitFor", "body": body}
	if roomID != "" {
		req["room_id"] = roomID
	}
	c.call(t, timeout, &msg, req)
	return &msg
}

// WaitFor waits up to timeout for a message pred matches (see [E2EEClient]).
func (c *JSClient) WaitFor(t testing.TB, timeout time.Duration, pred func(*Message) bool) *Message {
	t.Helper()
	m, ok := c.TryWaitFor(t, timeout, pred)
	if !ok {
		t.Fatalf("%s: no matching message within %v; decryption failures: %+v", c.name, timeout, c.DecryptionFailures(t))
	}
	return m
}

// TryWaitFor is [JSClient.WaitFor] that reports a timeout. It pages through the client's
// messages in order, asking the client to wait for new ones.
func (c *JSClient) TryWaitFor(t testing.TB, timeout time.Duration, pred func(*Message) bool) (*Message, bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	since := 0
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return nil, false
		}
		var resp struct {
			Messages []*Message `json:"messages"`
		}
		// Short polls, so that a message arriving late in the wait is still seen in time.
		c.call(t, min(left, 5*time.Second), &resp, map[string]any{"cmd": "messages", "since": since})
		for _, m := range resp.Messages {
			if pred(m) {
				return m, true
			}
		}
		since += len(resp.Messages)
	}
}

// WaitForInvite waits up to timeout for an invite from inviter that no earlier call returned.
func (c *JSClient) WaitForInvite(t testing.TB, inviter id.UserID, timeout time.Duration) id.RoomID {
	t.Helper()
	var resp struct {
		RoomID id.RoomID `json:"room_id"`
	}
	c.call(t, timeout, &resp, map[string]any{"cmd": "waitForInvite", "from": inviter})
	return resp.RoomID
}

// AutoJoin makes the client join every invite from inviter on its own.
func (c *JSClient) AutoJoin(t testing.TB, inviter id.UserID) {
	t.Helper()
	c.call(t, jsRequestTimeout, nil, map[string]any{"cmd": "autoJoin", "from": inviter})
}

// Download downloads and decrypts an encrypted attachment in the Node client (WebCrypto).
func (c *JSClient) Download(t testing.TB, file *event.EncryptedFileInfo) []byte {
	t.Helper()
	var resp struct {
		Data []byte `json:"data_base64"`
	}
	c.call(t, jsRequestTimeout, &resp, map[string]any{"cmd": "download", "file": file})
	return resp.Data
}

// DeviceCrossSigned asks the Rust crypto whether user's device is signed by its owner
// (DeviceVerificationStatus.signedByOwner).
func (c *JSClient) DeviceCrossSigned(t testing.TB, user id.UserID, device id.DeviceID) bool {
	t.Helper()
	var resp struct {
		Known         bool `json:"known"`
		SignedByOwner bool `json:"signed_by_owner"`
	}
	c.call(t, jsRequestTimeout, &resp, map[string]any{"cmd": "deviceStatus", "user_id": user, "device_id": device})
	if !resp.Known {
		t.Fatalf("%s: device %s of %s is unknown", c.name, device, user)
	}
	return resp.SignedByOwner
}

// DecryptionFailures returns the events the client could not decrypt so far.
func (c *JSClient) DecryptionFailures(t testing.TB) []DecryptionFailure {
	t.Helper()
	var resp struct {
		Failures []DecryptionFailure `json:"failures"`
	}
	c.call(t, jsRequestTimeout, &resp, map[string]any{"cmd": "failures"})
	return resp.Failures
}

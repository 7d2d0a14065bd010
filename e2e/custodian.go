//go:build e2e

package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"testing"
	"time"
)

// StartCustodian starts `custodian -c config.yaml -r registration.yaml` with its output appended
// to [Env.LogPath], and waits (bounded) until GET /_matrix/mau/ready on the appservice listener
// answers 200. It fails the test if Custodian is already running, exits early or never gets
// ready.
func (env *Env) StartCustodian(t testing.TB) {
	t.Helper()
	env.needCustodian(t)
	env.mu.Lock()
	running := env.custodian != nil
	env.mu.Unlock()
	if running {
		t.Fatalf("StartCustodian: Custodian is already running")
	}
	var offset int64
	if info, err := os.Stat(env.logPath); err == nil {
		offset = info.Size()
	}
	cmd := exec.Command(env.binary, "-c", env.configPath, "-r", env.registrationPath)
	cmd.Dir = env.dir
	proc, err := startProcess(cmd, env.logPath)
	if err != nil {
		t.Fatalf("starting custodian: %v", err)
	}
	env.mu.Lock()
	env.custodian = proc
	env.logOffset = offset
	env.mu.Unlock()

	start := time.Now()
	if err := waitHTTP(custodianReady, proc, env.ASURL()+"/_matrix/mau/ready"); err != nil {
		t.Fatalf("Custodian did not become ready: %v", err)
	}
	t.Logf("Custodian ready at %s in %v", env.ASURL(), time.Since(start).Round(time.Millisecond))
}

// KillCustodian kills Custodian with SIGKILL, as a crash would, and waits (bounded) until it is
// gone. It fails the test if Custodian is not running or does not die.
func (env *Env) KillCustodian(t testing.TB) {
	t.Helper()
	proc := env.takeCustodian(t, "KillCustodian")
	if !proc.kill() {
		t.Fatalf("custodian did not exit within %v of SIGKILL", killTimeout)
	}
}

// StopCustodian asks Custodian to shut down with SIGTERM and waits up to 30 s. It fails the test
// if Custodian needs longer (it is then killed) or exits with a non-zero status.
func (env *Env) StopCustodian(t testing.TB) {
	t.Helper()
	proc := env.takeCustodian(t, "StopCustodian")
	if !proc.terminate(stopTimeout) {
		t.Fatalf("custodian did not exit within %v of SIGTERM; killed it", stopTimeout)
	}
	if proc.err != nil {
		t.Errorf("custodian exited with %v after SIGTERM, want a clean exit", proc.err)
	}
}

func (env *Env) takeCustodian(t testing.TB, caller string) *process {
	t.Helper()
	env.mu.Lock()
	defer env.mu.Unlock()
	proc := env.custodian
	if proc == nil {
		t.Fatalf("%s: Custodian is not running", caller)
	}
	if done, err := proc.exited(); done {
		t.Fatalf("%s: Custodian had already exited: %v", caller, err)
	}
	env.custodian = nil
	return proc
}

// CustodianLog returns what Custodian has logged since it was last started.
func (env *Env) CustodianLog(t testing.TB) string {
	t.Helper()
	env.mu.Lock()
	offset := env.logOffset
	env.mu.Unlock()
	f, err := os.Open(env.logPath)
	if err != nil {
		t.Fatalf("reading Custodian's log: %v", err)
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		t.Fatalf("reading Custodian's log: %v", err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		t.Fatalf("reading Custodian's log: %v", err)
	}
	return string(data)
}

// MustWaitForLog waits until Custodian's log since its last start contains substr, at most for
// timeout, and returns the first line that does.
func (env *Env) MustWaitForLog(t testing.TB, substr string, timeout time.Duration) string {
	t.Helper()
	var line string
	Eventually(t, timeout, func() error {
		for l := range bytes.Lines([]byte(env.CustodianLog(t))) {
			if bytes.Contains(l, []byte(substr)) {
				line = string(bytes.TrimSpace(l))
				return nil
			}
		}
		if env.custodianExited() {
			return fmt.Errorf("custodian exited and its log does not contain %q", substr)
		}
		return fmt.Errorf("custodian's log does not contain %q", substr)
	})
	return line
}

func (env *Env) custodianExited() bool {
	env.mu.Lock()
	defer env.mu.Unlock()
	if env.custodian == nil {
		return true
	}
	done, _ := env.custodian.exited()
	return done
}

// ASRequest makes a raw request to Custodian's appservice listener, as the homeserver would, and
// returns the status and body. token is sent as a bearer token unless it is empty.
func (env *Env) ASRequest(t testing.TB, method, path, token string, body []byte) (int, []byte) {
	t.Helper()
	return rawRequest(t, method, env.ASURL()+path, token, body)
}

// HSRequest makes a raw request to Synapse's client API, and returns the status and body. token
// is sent as a bearer token unless it is empty.
func (env *Env) HSRequest(t testing.TB, method, path, token string, body []byte) (int, []byte) {
	t.Helper()
	return rawRequest(t, method, env.HomeserverURL()+path, token, body)
}

func rawRequest(t testing.TB, method, url, token string, body []byte) (int, []byte) {
	t.Helper()
	var reader io.Reader
	if body != nil {
		reader = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, reader)
	if err != nil {
		t.Fatalf("building %s %s: %v", method, url, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	client := &http.Client{Timeout: requestTimeout}
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

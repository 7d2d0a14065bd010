//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Deadlines of the harness's own waits. Tests pass their own for what they wait on.
const (
	buildTimeout     = 10 * time.Minute
	chrootTimeout    = 15 * time.Minute
	generateTimeout  = time.Minute
	synapseReadyWait = 90 * time.Second
	custodianReady   = 90 * time.Second
	stopTimeout      = 30 * time.Second
	killTimeout      = 15 * time.Second
	pollInterval     = 50 * time.Millisecond
)

// process is a child running in its own process group, with its output appended to a log file.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error // the result of Wait; read only after done is closed
}

// startProcess starts cmd in a new session (so it and everything it forks form one process
// group that can be killed at once) with stdout and stderr appended to logPath. The child is
// killed if the test process dies.
func startProcess(cmd *exec.Cmd, logPath string) (*process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setsid: true,
		// If the test binary dies without running its cleanups (a test timeout panics, or
		// it is killed), the kernel kills the child rather than leaving it orphaned.
		Pdeathsig: syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		return nil, err
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		_ = logFile.Close()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has exited, and how.
func (p *process) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// signal sends sig to the process's whole group.
func (p *process) signal(sig syscall.Signal) {
	_ = syscall.Kill(-p.cmd.Process.Pid, sig)
}

// wait waits up to timeout for the process to exit and reports whether it did.
func (p *process) wait(timeout time.Duration) bool {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.done:
		return true
	case <-timer.C:
		return false
	}
}

// kill sends SIGKILL to the group and waits (bounded) for the exit.
func (p *process) kill() bool {
	p.signal(syscall.SIGKILL)
	return p.wait(killTimeout)
}

// terminate asks the group to exit with SIGTERM and kills it if it has not within timeout. It
// reports whether the process exited on SIGTERM alone.
func (p *process) terminate(timeout time.Duration) bool {
	if done, _ := p.exited(); done {
		return true
	}
	p.signal(syscall.SIGTERM)
	if p.wait(timeout) {
		return true
	}
	p.kill()
	return false
}

// runCommand runs a short command with a deadline and returns its combined output.
func runCommand(t testing.TB, timeout time.Duration, dir, name string, args ...string) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s did not finish within %v: %w", filepath.Base(name), timeout, err)
	}
	return out, err
}

// Listen ports are picked below Linux's ephemeral range (32768–60999 by default): a port from
// that range, free when picked, can be taken as the local port of any outgoing connection (to
// PostgreSQL, to Synapse) before the process meant to listen on it starts, seconds later, and it
// then fails with "address already in use". Below the range only another listener can take it.
const (
	listenPortLow   = 20000
	listenPortHigh  = 32000
	listenPortTries = 200
)

var (
	portsMu     sync.Mutex
	portsHanded = map[int]bool{} // ports handed out in this test process
)

// freePorts returns n distinct TCP ports of listenPortLow–listenPortHigh that were free on
// 127.0.0.1 a moment ago and were not handed out before in this process. It tries at most
// listenPortTries random ports per wanted one.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	ports := make([]int, 0, n)
	for range n {
		port, err := pickListenPort()
		if err != nil {
			t.Fatalf("finding a free port: %v", err)
		}
		portsHanded[port] = true
		ports = append(ports, port)
	}
	return ports
}

// pickListenPort returns a random port of the listen range that is free now and was not handed
// out before; portsMu is held.
func pickListenPort() (int, error) {
	var lastErr error
	for range listenPortTries {
		port := listenPortLow + rand.IntN(listenPortHigh-listenPortLow)
		if portsHanded[port] {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			lastErr = err
			continue
		}
		_ = l.Close()
		return port, nil
	}
	return 0, fmt.Errorf("no free port in %d–%d after %d tries: %v", listenPortLow, listenPortHigh, listenPortTries, lastErr)
}

// keepWorkDirs reports whether work directories of failed tests are kept (CUSTODIAN_E2E_KEEP=1).
func keepWorkDirs() bool { return envBool("CUSTODIAN_E2E_KEEP") }

// isCI reports whether we run in CI, where nothing may be skipped.
func isCI() bool { return envBool("CI") }

func envBool(name string) bool {
	v, err := strconv.ParseBool(os.Getenv(name))
	return err == nil && v
}

// workDir creates a directory that is removed when t ends, unless t failed and
// CUSTODIAN_E2E_KEEP=1.
func workDir(t testing.TB, prefix string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatalf("creating a work directory: %v", err)
	}
	t.Cleanup(func() { removeWorkDir(t, dir) })
	return dir
}

func removeWorkDir(t testing.TB, dir string) {
	if t.Failed() && keepWorkDirs() {
		t.Logf("kept work directory %s", dir)
		return
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Logf("removing %s: %v", dir, err)
	}
}

// staleAge is how old a work directory must be before [pruneStale] removes it.
const staleAge = 12 * time.Hour

var pruned sync.Once

// pruneStale removes work directories that test binaries killed before their cleanups ran left
// behind, once per test binary. Only directories older than staleAge go, so concurrent runs
// are safe.
func pruneStale(chrootDir string) {
	pruned.Do(func() {
		for _, pattern := range []string{
			filepath.Join(os.TempDir(), "custodian-e2e-*"),
			filepath.Join(chrootDir, "tmp", "custodian-e2e-*"),
		} {
			matches, _ := filepath.Glob(pattern)
			for _, dir := range matches {
				if info, err := os.Stat(dir); err == nil && info.IsDir() && time.Since(info.ModTime()) > staleAge {
					_ = os.RemoveAll(dir)
				}
			}
		}
	})
}

// logTail prints the last lines of a log file to the test log.
func logTail(t testing.TB, name, path string) {
	t.Helper()
	const maxBytes, maxLines = 64 << 10, 80
	f, err := os.Open(path)
	if err != nil {
		t.Logf("%s log %s: %v", name, path, err)
		return
	}
	defer f.Close()
	if info, err := f.Stat(); err == nil && info.Size() > maxBytes {
		_, _ = f.Seek(-maxBytes, io.SeekEnd)
	}
	data, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > maxLines {
		lines = lines[len(lines)-maxLines:]
	}
	t.Logf("last %d lines of the %s log (%s):\n%s", len(lines), name, path, strings.Join(lines, "\n"))
}

// moduleRoot finds the repository root by walking up from the working directory to the go.mod of
// our module.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(data, []byte("module github.com/custodian-matrix/custodian\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod of github.com/custodian-matrix/custodian above the working directory")
		}
		dir = parent
	}
}

var binary struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// custodianBinary builds ./cmd/custodian once per test binary (with -race if
// CUSTODIAN_E2E_RACE=1) and returns its path; [Main] deletes it at the end. CUSTODIAN_E2E_BINARY
// names a prebuilt binary to use instead.
func custodianBinary(t testing.TB) string {
	t.Helper()
	binary.once.Do(func() {
		if path := os.Getenv("CUSTODIAN_E2E_BINARY"); path != "" {
			binary.path, binary.err = filepath.Abs(path)
			return
		}
		root, err := moduleRoot()
		if err != nil {
			binary.err = err
			return
		}
		binary.dir, err = os.MkdirTemp("", "custodian-e2e-bin-")
		if err != nil {
			binary.err = err
			return
		}
		path := filepath.Join(binary.dir, "custodian")
		args := []string{"build", "-tags", "goolm", "-o", path}
		if envBool("CUSTODIAN_E2E_RACE") {
			args = append(args, "-race")
		}
		args = append(args, "./cmd/custodian")
		start := time.Now()
		out, err := runCommand(t, buildTimeout, root, "go", args...)
		if err != nil {
			binary.err = fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
			return
		}
		t.Logf("built custodian in %v", time.Since(start).Round(time.Millisecond))
		binary.path = path
	})
	if binary.err != nil {
		t.Fatalf("building custodian: %v", binary.err)
	}
	return binary.path
}

// Main runs the package's tests and then removes what the harness shares between them (the
// custodian binary). Call it from TestMain:
//
//	func TestMain(m *testing.M) { e2e.Main(m) }
func Main(m *testing.M) {
	code := m.Run()
	if binary.dir != "" {
		_ = os.RemoveAll(binary.dir)
	}
	os.Exit(code)
}

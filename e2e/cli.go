//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// CLIResult is what one run of a custodian subcommand printed, and how it exited.
type CLIResult struct {
	Args     []string
	Stdout   string
	Stderr   string
	ExitCode int
	Duration time.Duration
}

// String describes the run for failure messages.
func (r *CLIResult) String() string {
	return fmt.Sprintf("custodian %s: exit status %d after %v\n--- stdout:\n%s--- stderr:\n%s",
		strings.Join(r.Args, " "), r.ExitCode, r.Duration.Round(time.Millisecond), r.Stdout, r.Stderr)
}

// CustodianCommand returns the command `custodian <args>`, the binary the environment runs,
// in the environment's work directory, bound to ctx. Unlike [Env.RunCLI] it does not use t, so
// a test may run it in another goroutine; the caller starts and waits for it.
func (env *Env) CustodianCommand(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, env.binary, args...)
	cmd.Dir = env.dir
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// RunCLI runs `custodian <args>` (a subcommand such as "keys status -c <config>": pass
// [Env.ConfigPath] yourself) in the environment's work directory, waits at most timeout, and
// returns its output and exit status. It fails the test only if the command cannot be started or
// does not finish in time; a non-zero exit status is for the test to judge.
func (env *Env) RunCLI(t testing.TB, timeout time.Duration, args ...string) *CLIResult {
	t.Helper()
	env.needCustodian(t)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	res, err := RunCommand(env.CustodianCommand(ctx, args...))
	if ctx.Err() != nil {
		t.Fatalf("custodian %s did not finish within %v:\n%s", strings.Join(args, " "), timeout, res)
	}
	if err != nil {
		t.Fatalf("running custodian %s: %v", strings.Join(args, " "), err)
	}
	return res
}

// RunCommand runs a command CustodianCommand built and collects its output. The error is nil
// when the command ran, whatever its exit status (see CLIResult.ExitCode); it does not use a
// testing.T, so it may run in any goroutine.
func RunCommand(cmd *exec.Cmd) (*CLIResult, error) {
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	res := &CLIResult{Args: cmd.Args[1:], Duration: time.Since(start)}
	res.Stdout, res.Stderr = stdout.String(), stderr.String()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr):
		res.ExitCode = exitErr.ExitCode()
		err = nil
	default:
		res.ExitCode = -1
	}
	return res, err
}

// FreePort returns a TCP port that was free on 127.0.0.1 a moment ago, for listeners a test
// configures (the webhook bridge, the admin API).
func FreePort(t testing.TB) int {
	t.Helper()
	return freePorts(t, 1)[0]
}

package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// adminCommand is the plumbing every admin API subcommand (export, forget, portals, portal)
// shares: its flag set with -c, the admin API client built from that configuration, failure
// messages prefixed with the command's name, and the typed confirmation.
type adminCommand struct {
	flags      *flag.FlagSet
	configPath *string
	stderr     io.Writer
	client     *adminClient
}

// newAdminCommand returns subcommand name ("custodian forget") with its -c flag; its usage
// prints usage and then the flags' defaults to stderr. Define further flags on cmd.flags.
func newAdminCommand(name, usage string, stderr io.Writer) *adminCommand {
	flags := flag.NewFlagSet(name, flag.ContinueOnError)
	flags.SetOutput(stderr)
	cmd := &adminCommand{
		flags:      flags,
		configPath: flags.String("c", "config.yaml", "the configuration file (for the admin API's address and token)"),
		stderr:     stderr,
	}
	flags.Usage = func() {
		fmt.Fprint(stderr, usage)
		flags.PrintDefaults()
	}
	return cmd
}

// failf prints "<name>: <message>" to stderr and returns code, for "return cmd.failf(...)".
func (cmd *adminCommand) failf(code int, format string, args ...any) int {
	fmt.Fprintf(cmd.stderr, "%s: %s\n", cmd.flags.Name(), fmt.Sprintf(format, args...))
	return code
}

// connect builds the admin API client from -c's configuration. On failure it has printed why
// and returns exitConfig and false.
func (cmd *adminCommand) connect() (int, bool) {
	client, err := newAdminClient(*cmd.configPath)
	if err != nil {
		return cmd.failf(exitConfig, "%v", err), false
	}
	cmd.client = client
	return exitOK, true
}

// call sends one request through the client connect built and returns the body of a 200
// answer. On failure it has printed why and returns exitRuntime and false.
func (cmd *adminCommand) call(method, path string, body []byte) ([]byte, int, bool) {
	data, err := cmd.client.do(method, path, body)
	if err != nil {
		return nil, cmd.failf(exitRuntime, "%v", err), false
	}
	return data, exitOK, true
}

// confirm prints prompt to stderr and reads one line from stdin. It reports whether the line
// is want; if not, it has printed that nothing was done ("nothing was " + undone).
func (cmd *adminCommand) confirm(prompt, want, undone string) bool {
	fmt.Fprint(cmd.stderr, prompt)
	line, _ := bufio.NewReader(stdin).ReadString('\n')
	if strings.TrimSpace(line) == want {
		return true
	}
	fmt.Fprintf(cmd.stderr, "\n%s: not confirmed; nothing was %s\n", cmd.flags.Name(), undone)
	return false
}

// parsePositional parses flags and positional arguments in any order. On failure it has
// printed why and returns the exit code.
func parsePositional(flags *flag.FlagSet, args []string) ([]string, int, bool) {
	var positional []string
	for {
		if err := flags.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, exitOK, false
			}
			return nil, exitConfig, false
		}
		if flags.NArg() == 0 {
			return positional, exitOK, true
		}
		positional = append(positional, flags.Arg(0))
		args = flags.Args()[1:]
	}
}

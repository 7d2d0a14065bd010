package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice"
)

// stdin is where "custodian forget" reads its confirmation; tests replace it.
var stdin io.Reader = os.Stdin

// runExport is "custodian export @user:server [-c config.yaml] [-o file]": it asks the running
// service's admin API for everything held about the user and writes the JSON to standard output
// or, with -o, to a file (mode 0600).
func runExport(args []string, stdout, stderr io.Writer) int {
	cmd := newAdminCommand("custodian export", "Usage: custodian export @user:server [-c config.yaml] [-o file]\n\n"+
		"Asks the running Custodian (through its admin API) for everything it holds about the user, as JSON.\n\n", stderr)
	outPath := cmd.flags.String("o", "", "write the export to this file (mode 0600) instead of standard output")
	user, code, ok := parseUserArgs(cmd.flags, args, stderr)
	if !ok {
		return code
	}
	if code, ok = cmd.connect(); !ok {
		return code
	}
	data, code, ok := cmd.call(http.MethodGet, "/users/"+url.PathEscape(user.String())+"/export", nil)
	if !ok {
		return code
	}
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, data, "", "  "); err != nil {
		return cmd.failf(exitRuntime, "the admin API answered with something that is not JSON")
	}
	pretty.WriteByte('\n')
	if *outPath == "" {
		_, _ = stdout.Write(pretty.Bytes())
		return exitOK
	}
	if err := writeFile0600(*outPath, pretty.Bytes()); err != nil {
		return cmd.failf(exitRuntime, "%v", err)
	}
	fmt.Fprintf(stderr, "Wrote the export of %s to %s (mode 0600). It holds personal data: handle it accordingly.\n", user, *outPath)
	return exitOK
}

// runForget is "custodian forget @user:server [-c config.yaml] [--yes]": after confirmation (the
// admin types the user ID again, unless --yes), it asks the running service's admin API to erase
// everything held about the user, and prints the receipt.
func runForget(args []string, stdout, stderr io.Writer) int {
	cmd := newAdminCommand("custodian forget", "Usage: custodian forget @user:server [-c config.yaml] [--yes]\n\n"+
		"Asks the running Custodian (through its admin API) to erase everything it holds about the user,\n"+
		"after undoing what bridges did for them on other networks.\n\n", stderr)
	yes := cmd.flags.Bool("yes", false, "do not ask for confirmation")
	user, code, ok := parseUserArgs(cmd.flags, args, stderr)
	if !ok {
		return code
	}
	if code, ok = cmd.connect(); !ok {
		return code
	}
	if !*yes {
		prompt := "This erases everything Custodian holds about " + user.String() + ", after undoing what bridges did for them\n" +
			"on other networks. It cannot be undone. Type the user ID to confirm: "
		if !cmd.confirm(prompt, user.String(), "erased") {
			return exitConfig
		}
	}
	data, code, ok := cmd.call(http.MethodPost, "/users/"+url.PathEscape(user.String())+"/forget", []byte("{}"))
	if !ok {
		return code
	}
	var receipt appservice.EraseReceipt
	if err := json.Unmarshal(data, &receipt); err != nil {
		return cmd.failf(exitRuntime, "the admin API answered with something that is not a receipt")
	}
	printReceipt(stdout, user, &receipt)
	return exitOK
}

// printReceipt prints an erasure receipt for an admin.
func printReceipt(w io.Writer, user id.UserID, r *appservice.EraseReceipt) {
	fmt.Fprintf(w, "Erased %s: job %s, %s, %d rows.\n", user, r.JobID, r.State, r.Total())
	totals := r.ModuleTotals()
	for _, module := range slices.Sorted(maps.Keys(totals)) {
		fmt.Fprintf(w, "  %s: %d rows\n", module, totals[module])
	}
	for _, module := range slices.Sorted(maps.Keys(r.Kept)) {
		var n int64
		for _, c := range r.Kept[module] {
			n += c
		}
		fmt.Fprintf(w, "  %s: %d rows kept for a declared reason until they expire\n", module, n)
	}
	if len(r.RemoteFailures) > 0 {
		fmt.Fprintf(w, "Remote erasure failed for: %s (see Custodian's log); the local data was erased regardless.\n",
			strings.Join(r.RemoteFailures, ", "))
	}
	fmt.Fprintf(w, "The tombstone is filed under %s.\n", r.UserHash)
}

// parseUserArgs parses flags and exactly one user ID, in any order. On failure it has printed
// why and returns the exit code.
func parseUserArgs(flags *flag.FlagSet, args []string, stderr io.Writer) (id.UserID, int, bool) {
	positional, code, ok := parsePositional(flags, args)
	if !ok {
		return "", code, false
	}
	if len(positional) != 1 {
		fmt.Fprintf(stderr, "%s: want exactly one user ID, got %d arguments\n", flags.Name(), len(positional))
		flags.Usage()
		return "", exitConfig, false
	}
	user := id.UserID(positional[0])
	if _, _, err := user.ParseAndValidateRelaxed(); err != nil {
		fmt.Fprintf(stderr, "%s: %q is not a Matrix user ID (@user:server)\n", flags.Name(), positional[0])
		return "", exitConfig, false
	}
	return user, exitOK, true
}

// adminClient talks to the running service's admin API.
type adminClient struct {
	base      string
	token     string
	tokenFile string
	http      *http.Client
}

// newAdminClient reads the admin API's address and token from the configuration.
func newAdminClient(configPath string) (*adminClient, error) {
	cfg, err := appservice.LoadConfigForGenerate(configPath, bridges)
	if err != nil {
		problems := appservice.Problems(err)
		if len(problems) == 1 {
			return nil, fmt.Errorf("%s: %w", configPath, problems[0])
		}
		return nil, fmt.Errorf("%s has %d problems; run custodian -c %s to see them", configPath, len(problems), configPath)
	}
	if cfg.AdminAPI.Listen == nil || *cfg.AdminAPI.Listen == "" {
		return nil, fmt.Errorf("the admin API is off (admin_api.listen is null in %s); set admin_api.listen and "+
			"admin_api.token_file, restart Custodian, and try again", configPath)
	}
	host, port, err := net.SplitHostPort(*cfg.AdminAPI.Listen)
	if err != nil {
		return nil, fmt.Errorf("admin_api.listen in %s is not host:port", configPath)
	}
	// A listener on every interface is reached through loopback.
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	tokenFile := *cfg.AdminAPI.TokenFile
	if !filepath.IsAbs(tokenFile) {
		// Relative paths in the config are relative to where Custodian runs; try that first.
		if _, err := os.Stat(tokenFile); err != nil {
			tokenFile = filepath.Join(filepath.Dir(configPath), tokenFile)
		}
	}
	data, err := os.ReadFile(tokenFile)
	if err != nil {
		return nil, fmt.Errorf("failed to read admin_api.token_file: %w", err)
	}
	return &adminClient{
		base:      "http://" + net.JoinHostPort(host, port) + appservice.AdminAPIPrefix,
		token:     strings.TrimSpace(string(data)),
		tokenFile: tokenFile,
		http:      &http.Client{Timeout: 10 * time.Minute},
	}, nil
}

// do sends one request and returns the body of a 200 answer; any other answer is an error
// saying what went wrong.
func (c *adminClient) do(method, path string, body []byte) ([]byte, error) {
	req, err := http.NewRequest(method, c.base+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the admin API at %s (is Custodian running with this configuration?): %w", c.base, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return nil, fmt.Errorf("failed to read the admin API's answer: %w", err)
	}
	switch resp.StatusCode {
	case http.StatusOK:
		return data, nil
	case http.StatusUnauthorized, http.StatusForbidden:
		return nil, fmt.Errorf("the admin API refused the token from %s", c.tokenFile)
	}
	var merr struct {
		ErrCode string `json:"errcode"`
		Error   string `json:"error"`
	}
	if json.Unmarshal(data, &merr) == nil && merr.ErrCode != "" {
		return nil, fmt.Errorf("the admin API answered %d %s: %s", resp.StatusCode, merr.ErrCode, merr.Error)
	}
	return nil, fmt.Errorf("the admin API answered %d", resp.StatusCode)
}

// writeFile0600 writes data to path with mode 0600, through a temporary file renamed into place.
func writeFile0600(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("failed to create %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err = tmp.Chmod(0o600); err == nil {
		if _, err = tmp.Write(data); err == nil {
			err = tmp.Sync()
		}
	}
	if closeErr := tmp.Close(); err == nil {
		err = closeErr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("failed to write %s: %w", path, err)
	}
	return nil
}

package main

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	mxas "maunium.net/go/mautrix/appservice"

	"github.com/custodian-matrix/custodian/appservice"
)

func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestFlags(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{name: "example", args: []string{"-e"}, wantCode: exitOK, wantStdout: "bridges:"},
		{name: "version", args: []string{"-v"}, wantCode: exitOK, wantStdout: "custodian dev"},
		{name: "help", args: []string{"-h"}, wantCode: exitOK, wantStderr: "Usage: custodian"},
		{name: "unknown flag", args: []string{"-x"}, wantCode: exitConfig, wantStderr: "flag provided but not defined: -x"},
		{name: "stray argument", args: []string{"run"}, wantCode: exitConfig, wantStderr: `unexpected argument "run"`},
		{name: "missing config", args: []string{"-c", "/nonexistent/c.yaml"}, wantCode: exitConfig,
			wantStderr: "/nonexistent/c.yaml does not exist; write the example with:\n    custodian -e > /nonexistent/c.yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, tt.args...)
			if code != tt.wantCode {
				t.Errorf("run(%q) = %d, want %d (stderr %q)", tt.args, code, tt.wantCode, stderr)
			}
			if !strings.Contains(stdout, tt.wantStdout) {
				t.Errorf("stdout = %q, want it to contain %q", stdout, tt.wantStdout)
			}
			if !strings.Contains(stderr, tt.wantStderr) {
				t.Errorf("stderr = %q, want it to contain %q", stderr, tt.wantStderr)
			}
		})
	}
}

// TestGenerateThenRun walks the admin's path: -e, -g, then a start that fails only at runtime.
func TestGenerateThenRun(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "config.yaml")
	regPath := filepath.Join(dir, "registration.yaml")
	_, example, _ := runCLI(t, "-e")
	// The database cannot be opened, so a start gets as far as the runtime and fails there.
	example = strings.Replace(example, "uri: file:custodian.db?_txlock=immediate", "uri: file:"+filepath.Join(dir, "missing", "c.db"), 1)
	example = strings.Replace(example, "listen: 127.0.0.1:9330", "listen: null", 1)
	example = strings.Replace(example, "key_file: custodian.key", "key_file: "+filepath.Join(dir, "custodian.key"), 1)
	if err := os.WriteFile(cfgPath, []byte(example), 0o644); err != nil {
		t.Fatal(err)
	}

	code, _, stderr := runCLI(t, "-c", cfgPath, "-r", regPath)
	if code != exitConfig || !strings.Contains(stderr, `appservice.as_token: not generated yet; run "custodian -g -c `+cfgPath+` -r registration.yaml"`) {
		t.Fatalf("run before -g = %d, %q; want the placeholder tokens refused", code, stderr)
	}

	code, stdout, stderr := runCLI(t, "-g", "-c", cfgPath, "-r", regPath)
	if code != exitOK {
		t.Fatalf("-g = %d, stderr %q", code, stderr)
	}
	for _, want := range []string{"app_service_config_files", regPath, "Restart the homeserver", "custodian -c " + cfgPath + " -r " + regPath} {
		if !strings.Contains(stdout, want) {
			t.Errorf("-g output lacks %q:\n%s", want, stdout)
		}
	}
	for _, path := range []string{cfgPath, regPath} {
		if info, err := os.Stat(path); err != nil || info.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, %v; want 0600", path, info.Mode().Perm(), err)
		}
	}
	cfg, err := appservice.LoadConfig(cfgPath, bridges)
	if err != nil {
		t.Fatalf("LoadConfig after -g = %v", err)
	}
	reg, err := mxas.LoadRegistration(regPath)
	if err != nil {
		t.Fatal(err)
	}
	if err = appservice.CheckRegistration(cfg, bridges, reg); err != nil {
		t.Fatalf("CheckRegistration after -g = %v", err)
	}

	code, _, stderr = runCLI(t, "-c", cfgPath, "-r", regPath)
	if code != exitRuntime {
		t.Errorf("run with an unopenable database = %d, want %d (stderr %q)", code, exitRuntime, stderr)
	}

	// A registration for another address is refused, with the fix.
	reg.URL = "http://10.9.9.9:1"
	if err = appservice.WriteRegistration(regPath, reg); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = runCLI(t, "-c", cfgPath, "-r", regPath)
	wantStderr := []string{
		"do not agree",
		`url is "http://10.9.9.9:1", but appservice.address is "http://127.0.0.1:29330"`,
		"custodian -g -c " + cfgPath + " -r " + regPath,
	}
	for _, want := range wantStderr {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	if code != exitConfig {
		t.Errorf("run with a mismatching registration = %d, want %d", code, exitConfig)
	}

	code, _, stderr = runCLI(t, "-c", cfgPath, "-r", filepath.Join(dir, "none.yaml"))
	if code != exitConfig || !strings.Contains(stderr, "generate it with:\n    custodian -g") {
		t.Errorf("run without a registration = %d, %q", code, stderr)
	}
}

// TestExampleConnectsNowherePublic: the configuration custodian -e prints, once -g has filled in
// the tokens, enables no bridge that connects to a network (the IRC section is there, commented
// out); uncommented, the IRC section enables the bridge and validates.
func TestExampleConnectsNowherePublic(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "config.yaml")
	regPath := filepath.Join(dir, "registration.yaml")
	_, example, _ := runCLI(t, "-e")
	if strings.Contains(example, "\n    irc:") || !strings.Contains(example, "\n    # irc:\n") {
		t.Errorf("-e prints the irc section uncommented, or not at all:\n%s", example)
	}
	if err := os.WriteFile(cfgPath, []byte(example), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := runCLI(t, "-g", "-c", cfgPath, "-r", regPath); code != exitOK {
		t.Fatalf("-g = %d, stderr %q", code, stderr)
	}
	cfg, err := appservice.LoadConfig(cfgPath, bridges)
	if err != nil {
		t.Fatalf("LoadConfig(example after -g) = %v", err)
	}
	var enabled []string
	for _, br := range cfg.EnabledBridges(bridges) {
		enabled = append(enabled, br.ID())
	}
	if want := []string{"webhook"}; !reflect.DeepEqual(enabled, want) {
		t.Errorf("the example enables bridges %v, want %v (nothing that connects to a network)", enabled, want)
	}

	// Turning IRC on is removing "# " in front of its section's lines.
	generated, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(generated), "\n")
	inIRC := false
	for i, line := range lines {
		switch {
		case line == "    # irc:":
			inIRC = true
		case inIRC && !strings.HasPrefix(line, "    #"):
			inIRC = false
		}
		if inIRC {
			lines[i] = strings.Replace(line, "    # ", "    ", 1)
		}
	}
	if err = os.WriteFile(cfgPath, []byte(strings.Join(lines, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err = appservice.LoadConfig(cfgPath, bridges)
	if err != nil {
		t.Fatalf("LoadConfig(example with irc uncommented) = %v", err)
	}
	if got := len(cfg.EnabledBridges(bridges)); got != 2 {
		t.Errorf("with the irc section uncommented %d bridges are enabled, want 2", got)
	}
}

func TestCheckedInExamples(t *testing.T) {
	data, err := os.ReadFile("../../config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if string(data) != appservice.ExampleConfig(bridges) {
		t.Error("config.yaml differs from the example; regenerate it with: go run ./cmd/custodian -e > config.yaml")
	}
	cfg, err := appservice.LoadConfigForGenerate("../../config.yaml", bridges)
	if err != nil {
		t.Fatalf("config.yaml does not load: %v", err)
	}

	reg, err := mxas.LoadRegistration("../../registration.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if reg.AppToken != appservice.TokenPlaceholder || reg.ServerToken != appservice.TokenPlaceholder {
		t.Error("registration.yaml holds tokens other than placeholders")
	}
	want := appservice.GenerateRegistration(cfg, bridges)
	want.AppToken, want.ServerToken = appservice.TokenPlaceholder, appservice.TokenPlaceholder
	if !reflect.DeepEqual(reg, want) {
		t.Errorf("registration.yaml = %+v, want what -g generates for config.yaml: %+v", reg, want)
	}
}

// TestREADMEMatchesTheCommandLine: the README's command-line section names every subcommand
// run accepts, and no document says vault.shred_backups is off by default while the example
// turns it on.
func TestREADMEMatchesTheCommandLine(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, sub := range []string{"keys", "export", "forget", "portals", "portal"} {
		// The subcommand exists: its help exits 0 or 1, never as an unknown flag or argument.
		if _, _, stderr := runCLI(t, sub, "-h"); strings.Contains(stderr, "unexpected argument") {
			t.Errorf("custodian %s is not a subcommand: %s", sub, stderr)
		}
		if !strings.Contains(string(readme), "- `custodian "+sub+" ") {
			t.Errorf("README.md lists no subcommand `custodian %s` among the flags and subcommands", sub)
		}
	}
	shredOn := strings.Contains(appservice.ExampleConfig(bridges), "\n    shred_backups: true\n")
	for _, doc := range []string{"../../README.md", "../../docs/ARCHITECTURE.md"} {
		data, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		text := strings.Join(strings.Fields(string(data)), " ")
		for i := strings.Index(text, "shred_backups"); i >= 0; {
			window := text[i:min(len(text), i+120)]
			if shredOn && strings.Contains(window, "off by default") {
				t.Errorf("%s says vault.shred_backups is off by default, but the example turns it on: %q", doc, window)
			}
			next := strings.Index(text[i+1:], "shred_backups")
			if next < 0 {
				break
			}
			i += 1 + next
		}
	}
}

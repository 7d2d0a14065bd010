package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/rs/zerolog"

	"github.com/custodian-matrix/custodian/appservice"
	"github.com/custodian-matrix/custodian/appservice/vault"
)

const keysUsage = `Usage: custodian keys <command> [flags]

Master keys of the credential vault. A key file (vault.key_file) holds one or more keys, one per
line: the first is the current key, which wraps new data keys; the others are previous keys, kept
until every data key has been re-wrapped. Run these commands as the user Custodian runs as.

  generate [-o custodian.key]         write a new key file with one new key (mode 0600; it never
                                      overwrites a file)
  add [-c config.yaml]                put a new current key in front of vault.key_file's keys
  rotate [-c config.yaml] [-batch N]  re-wrap every data key under the current key, while the
                                      service runs; safe to interrupt and run again
  status [-c config.yaml]             which key wraps how many data keys, and whether each key is
                                      available (exit status 2 if data keys need a missing key)
  retire [-c config.yaml] <key ID>    remove a previous key that no data key needs any more

Rotating the master key, with Custodian running:
  1. custodian keys add -c config.yaml      the service picks the new key up within a minute
  2. custodian keys rotate -c config.yaml   re-wraps every data key under the new key
  3. custodian keys status -c config.yaml   the old key now wraps 0 data keys
  4. custodian keys retire -c config.yaml <old key ID>
     then destroy other copies of the old key (see the message)
`

// settleMargin is added to the service's key reload interval when waiting for it to have
// re-read a changed key file.
const settleMargin = 15 * time.Second

// runKeys is "custodian keys …": master key management for the credential vault.
func runKeys(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, keysUsage)
		return exitConfig
	}
	switch args[0] {
	case "generate":
		return keysGenerate(args[1:], stdout, stderr)
	case "add":
		return keysAdd(args[1:], stdout, stderr)
	case "rotate":
		return keysRotate(args[1:], stdout, stderr)
	case "status":
		return keysStatus(args[1:], stdout, stderr)
	case "retire":
		return keysRetire(args[1:], stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, keysUsage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "custodian keys: unknown command %q\n\n%s", args[0], keysUsage)
		return exitConfig
	}
}

// keysFlags parses a keys subcommand's flags; ok is false when the caller should return code.
func keysFlags(name string, args []string, stderr io.Writer, define func(*flag.FlagSet), positional int) (flags *flag.FlagSet, code int, ok bool) {
	flags = flag.NewFlagSet("custodian keys "+name, flag.ContinueOnError)
	flags.SetOutput(stderr)
	flags.Usage = func() { fmt.Fprint(stderr, keysUsage) }
	define(flags)
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, exitOK, false
		}
		return nil, exitConfig, false
	}
	if flags.NArg() != positional {
		if positional == 0 {
			fmt.Fprintf(stderr, "custodian keys %s: unexpected argument %q\n", name, flags.Arg(0))
		} else {
			fmt.Fprintf(stderr, "custodian keys %s: expected %d argument(s)\n", name, positional)
		}
		return nil, exitConfig, false
	}
	return flags, 0, true
}

// keysGenerate is "custodian keys generate [-o path]".
func keysGenerate(args []string, stdout, stderr io.Writer) int {
	var out *string
	_, code, ok := keysFlags("generate", args, stderr, func(f *flag.FlagSet) {
		out = f.String("o", "custodian.key", "the key file to write")
	}, 0)
	if !ok {
		return code
	}
	k, err := vault.GenerateKey()
	if err == nil {
		err = vault.WriteNewKeyFile(*out, k)
	}
	if errors.Is(err, vault.ErrKeyFileExists) {
		fmt.Fprintf(stderr, "custodian keys generate: %s already exists; refusing to overwrite it, since it may hold the key stored credentials need.\n"+
			"To replace the current key, use: custodian keys add\n", *out)
		return exitConfig
	} else if err != nil {
		fmt.Fprintf(stderr, "custodian keys generate: %v\n", err)
		return exitConfig
	}
	fmt.Fprintf(stdout, "Wrote a new master key to %s (mode 0600), key ID %s.\n"+
		"Back it up now, apart from database backups: without it, stored credentials cannot be opened.\n"+
		"To use it, set vault.key_file: %s in the configuration.\n", *out, k.ID(), *out)
	return exitOK
}

// ensureKeyFile creates the key file that vault.key_file names, with one new key, if it does not
// exist yet; custodian -g calls it. It returns a paragraph for -g's next steps, empty when it
// created nothing (no key_file, or the file exists).
func ensureKeyFile(cfg *appservice.Config) (string, error) {
	if cfg.Vault.KeyFile == nil {
		return "", nil
	}
	path := *cfg.Vault.KeyFile
	if _, err := os.Stat(path); err == nil {
		return "", nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("failed to check vault.key_file: %w", err)
	}
	k, err := vault.GenerateKey()
	if err != nil {
		return "", err
	}
	if err = vault.WriteNewKeyFile(path, k); errors.Is(err, vault.ErrKeyFileExists) {
		return "", nil
	} else if err != nil {
		return "", err
	}
	return fmt.Sprintf(`
Also wrote a new master key for the credential vault to %s (vault.key_file; mode 0600,
key ID %s). Back it up now, apart from database backups: without it, the credentials users
store cannot be opened. If this Custodian already stored credentials under another key, put
that key file back instead.
`, path, k.ID()), nil
}

// loadKeysConfig reads the configuration for a keys subcommand. Placeholder tokens are fine:
// the keys commands do not talk to the homeserver.
func loadKeysConfig(name, path string, stderr io.Writer) (*appservice.Config, bool) {
	cfg, err := appservice.LoadConfigForGenerate(path, bridges)
	if err != nil {
		printConfigProblems(stderr, path, err)
		return nil, false
	}
	if cfg.Vault.KeySource() == nil {
		fmt.Fprintf(stderr, "custodian keys %s: the vault is off in %s (vault.key_file and vault.key_env are null)\n", name, path)
		return nil, false
	}
	return cfg, true
}

// keyFileOnly reports whether the vault reads a key file, and explains the restart procedure for
// an environment variable otherwise.
func keyFileOnly(name string, cfg *appservice.Config, stderr io.Writer) bool {
	if cfg.Vault.KeyFile != nil {
		return true
	}
	fmt.Fprintf(stderr, "custodian keys %s: the master keys come from the environment variable %s, which this command cannot change.\n"+
		"Edit the variable's value instead (keys separated by \";\", the current key first; custodian keys generate -o <file>\n"+
		"makes a new one) and restart Custodian: it reads the variable only at start-up.\n", name, *cfg.Vault.KeyEnv)
	return false
}

// keysAdd is "custodian keys add [-c config.yaml]".
func keysAdd(args []string, stdout, stderr io.Writer) int {
	var configPath *string
	_, code, ok := keysFlags("add", args, stderr, func(f *flag.FlagSet) {
		configPath = f.String("c", "config.yaml", "the configuration file")
	}, 0)
	if !ok {
		return code
	}
	cfg, ok := loadKeysConfig("add", *configPath, stderr)
	if !ok {
		return exitConfig
	}
	if !keyFileOnly("add", cfg, stderr) {
		return exitConfig
	}
	path := *cfg.Vault.KeyFile
	keys, err := vault.FileKeys(path).LoadKeys()
	if err != nil {
		fmt.Fprintf(stderr, "custodian keys add: %v\n", err)
		return exitConfig
	}
	k, err := vault.GenerateKey()
	if err == nil {
		err = vault.ReplaceKeyFile(path, slices.Concat([]vault.Key{k}, keys)...)
	}
	if err != nil {
		fmt.Fprintf(stderr, "custodian keys add: %v\n", err)
		return exitConfig
	}
	fmt.Fprintf(stdout, "Added key %s to %s as the current key; kept %s as previous.\n"+
		"A running Custodian re-reads the file within a minute (at once when it meets a data key wrapped by the new key).\n"+
		"Back the key file up again now. Next, re-wrap every data key under the new key:\n"+
		"    custodian keys rotate -c %s\n", k.ID(), path, keyIDs(keys), *configPath)
	return exitOK
}

func keyIDs(keys []vault.Key) string {
	ids := make([]string, len(keys))
	for i, k := range keys {
		ids[i] = k.ID()
	}
	return strings.Join(ids, ", ")
}

// openKeysVault opens the database and the vault for a keys subcommand and loads the keys.
// loadErr is the key source's error, if any; the vault works without keys for status.
func openKeysVault(ctx context.Context, name string, cfg *appservice.Config, stderr io.Writer) (v *vault.Vault, closeDB func() error, loadErr error, ok bool) {
	// The commands report what matters on stdout and stderr; the vault's own log lines would
	// repeat it.
	v, closeDB, err := appservice.OpenVault(ctx, cfg, zerolog.Nop())
	if err != nil {
		fmt.Fprintf(stderr, "custodian keys %s: %v\n", name, err)
		return nil, nil, nil, false
	}
	return v, closeDB, v.Reload(ctx), true
}

// signalContext is cancelled by SIGINT or SIGTERM, so that a long command stops between
// batches.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// keyFileSettle returns when a service running on the key file has certainly re-read it: its
// modification time plus the service's reload interval and a margin. Zero without a key file.
func keyFileSettle(cfg *appservice.Config) time.Time {
	if cfg.Vault.KeyFile == nil {
		return time.Time{}
	}
	info, err := os.Stat(*cfg.Vault.KeyFile)
	if err != nil {
		return time.Time{}
	}
	return info.ModTime().Add(vault.DefaultReloadInterval + settleMargin)
}

// keysRotate is "custodian keys rotate [-c config.yaml] [-batch N]".
func keysRotate(args []string, stdout, stderr io.Writer) int {
	var configPath *string
	var batch *int
	_, code, ok := keysFlags("rotate", args, stderr, func(f *flag.FlagSet) {
		configPath = f.String("c", "config.yaml", "the configuration file")
		batch = f.Int("batch", vault.DefaultRotateBatchSize, "data keys re-wrapped per transaction")
	}, 0)
	if !ok {
		return code
	}
	cfg, ok := loadKeysConfig("rotate", *configPath, stderr)
	if !ok {
		return exitConfig
	}
	ctx, cancel := signalContext()
	defer cancel()
	v, closeDB, loadErr, ok := openKeysVault(ctx, "rotate", cfg, stderr)
	if !ok {
		return exitRuntime
	}
	defer closeDB()
	if loadErr != nil {
		fmt.Fprintf(stderr, "custodian keys rotate: %v\n", loadErr)
		return exitRuntime
	}
	settle := keyFileSettle(cfg)
	if time.Until(settle) > 0 {
		fmt.Fprintf(stdout, "The key file changed recently. A running Custodian re-reads it every minute, and may wrap new data keys\n"+
			"with the previous key until it has; rotation keeps checking for those until %s.\n", settle.Format(time.TimeOnly))
	} else if cfg.Vault.KeyEnv != nil {
		fmt.Fprintf(stdout, "The keys come from %s: make sure Custodian was restarted with the same value, or it cannot open\n"+
			"data keys re-wrapped under the new key.\n", *cfg.Vault.KeyEnv)
	}
	lastReport := time.Now()
	res, err := v.Rotate(ctx, vault.RotateOptions{BatchSize: *batch, SettleUntil: settle, Progress: func(r vault.RotateResult) {
		if time.Since(lastReport) >= 5*time.Second {
			lastReport = time.Now()
			fmt.Fprintf(stdout, "… %d data keys re-wrapped so far\n", r.Rewrapped)
		}
	}})
	if errors.Is(err, context.Canceled) {
		fmt.Fprintf(stderr, "custodian keys rotate: interrupted after re-wrapping %d data keys under key %s. Nothing is lost;\n"+
			"run custodian keys rotate again to finish.\n", res.Rewrapped, res.KeyID)
		return exitRuntime
	} else if err != nil {
		fmt.Fprintf(stderr, "custodian keys rotate: %v (after re-wrapping %d data keys; run it again to finish)\n", err, res.Rewrapped)
		return exitRuntime
	}
	fmt.Fprintf(stdout, "Re-wrapped %d data keys under key %s (%d passes).\n", res.Rewrapped, res.KeyID, res.Passes)
	if res.InboxKeys > 0 {
		fmt.Fprintf(stdout, "Re-wrapped %d inbox keys (they seal events waiting in the inbox) too.\n", res.InboxKeys)
	}
	if res.CryptoKeys > 0 {
		fmt.Fprintln(stdout, "Re-wrapped the crypto key (it encrypts the end-to-end encryption keys) too.")
	}
	code = exitOK
	for _, kekID := range sortedKeys(res.Unavailable) {
		fmt.Fprintf(stdout, "%d data keys are wrapped by key %s, which is missing or wrong, and were left as they are.\n"+
			"Put that key back in %s and run this again; if it is lost, those users must link again.\n",
			res.Unavailable[kekID], kekID, v.KeySource())
		code = exitRuntime
	}
	if statusCode := printKeyStatus(ctx, v, stdout, stderr); code == exitOK {
		code = statusCode
	}
	return code
}

func sortedKeys(m map[string]int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// keysStatus is "custodian keys status [-c config.yaml]".
func keysStatus(args []string, stdout, stderr io.Writer) int {
	var configPath *string
	_, code, ok := keysFlags("status", args, stderr, func(f *flag.FlagSet) {
		configPath = f.String("c", "config.yaml", "the configuration file")
	}, 0)
	if !ok {
		return code
	}
	cfg, ok := loadKeysConfig("status", *configPath, stderr)
	if !ok {
		return exitConfig
	}
	ctx, cancel := signalContext()
	defer cancel()
	v, closeDB, loadErr, ok := openKeysVault(ctx, "status", cfg, stderr)
	if !ok {
		return exitRuntime
	}
	defer closeDB()
	if loadErr != nil {
		fmt.Fprintf(stderr, "custodian keys status: %v\n", loadErr)
	}
	code = printKeyStatus(ctx, v, stdout, stderr)
	if loadErr != nil {
		code = exitRuntime
	}
	return code
}

// printKeyStatus prints which master key wraps how many data keys and whether each is
// available. It returns exitRuntime if some data keys need a key that is missing or wrong.
func printKeyStatus(ctx context.Context, v *vault.Vault, stdout, stderr io.Writer) int {
	statuses, err := v.Status(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "custodian keys status: %v\n", err)
		return exitRuntime
	}
	code := exitOK
	var total, previous, inbox, previousInbox, previousCrypto int
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "KEY ID\tDATA KEYS\tSTATE\n")
	for _, st := range statuses {
		var state string
		switch {
		case st.Wrong:
			state = "WRONG: not the key recorded under this ID"
		case !st.Loaded:
			state = "MISSING from " + v.KeySource().String()
		case st.Current:
			state = "current, available"
		default:
			state = "previous, available"
		}
		if st.Wraps() > 0 && !st.Available() {
			code = exitRuntime
		}
		if !st.Current {
			previous += st.DataKeys
			previousInbox += st.InboxKeys
			previousCrypto += st.CryptoKeys
		}
		total += st.DataKeys
		inbox += st.InboxKeys
		fmt.Fprintf(tw, "%s\t%d\t%s\n", st.ID, st.DataKeys, state)
	}
	_ = tw.Flush()
	switch {
	case len(statuses) == 0:
		fmt.Fprintln(stdout, "No master key loaded and no data key stored yet.")
	case previous > 0 || previousInbox > 0 || previousCrypto > 0:
		fmt.Fprintf(stdout, "%d of %d data keys and %d of %d inbox keys are not wrapped by the current key: run custodian keys rotate.\n", previous, total, previousInbox, inbox)
		if previousCrypto > 0 {
			fmt.Fprintln(stdout, "Nor is the crypto key, which encrypts the end-to-end encryption keys.")
		}
	default:
		fmt.Fprintf(stdout, "All %d data keys are wrapped by the current key.\n", total)
		if inbox > 0 {
			fmt.Fprintf(stdout, "The inbox keys (%d), which seal events waiting in the inbox, are wrapped by it too.\n", inbox)
		}
	}
	if code != exitOK {
		fmt.Fprintln(stdout, "Some data keys need a key that is missing or wrong: put the right key file back (from your backup);\n"+
			"if the key is lost, the affected users must link again.")
	}
	return code
}

// keysRetire is "custodian keys retire [-c config.yaml] <key ID>".
func keysRetire(args []string, stdout, stderr io.Writer) int {
	var configPath *string
	flags, code, ok := keysFlags("retire", args, stderr, func(f *flag.FlagSet) {
		configPath = f.String("c", "config.yaml", "the configuration file")
	}, 1)
	if !ok {
		return code
	}
	kekID := flags.Arg(0)
	cfg, ok := loadKeysConfig("retire", *configPath, stderr)
	if !ok {
		return exitConfig
	}
	if !keyFileOnly("retire", cfg, stderr) {
		return exitConfig
	}
	path := *cfg.Vault.KeyFile
	keys, err := vault.FileKeys(path).LoadKeys()
	if err != nil {
		fmt.Fprintf(stderr, "custodian keys retire: %v\n", err)
		return exitConfig
	}
	idx := slices.IndexFunc(keys, func(k vault.Key) bool { return k.ID() == kekID })
	switch {
	case idx < 0:
		fmt.Fprintf(stderr, "custodian keys retire: key %s is not in %s (it holds %s)\n", kekID, path, keyIDs(keys))
		return exitConfig
	case idx == 0:
		fmt.Fprintf(stderr, "custodian keys retire: key %s is the current key. Add a new one (custodian keys add) and rotate first.\n", kekID)
		return exitConfig
	}
	if settle := keyFileSettle(cfg); time.Until(settle) > 0 {
		fmt.Fprintf(stderr, "custodian keys retire: %s changed less than a minute ago, and a running Custodian may not have re-read it yet\n"+
			"(it might still wrap new data keys with %s). Run custodian keys rotate, then retire after %s.\n", path, kekID, settle.Format(time.TimeOnly))
		return exitRuntime
	}
	ctx, cancel := signalContext()
	defer cancel()
	v, closeDB, loadErr, ok := openKeysVault(ctx, "retire", cfg, stderr)
	if !ok {
		return exitRuntime
	}
	defer closeDB()
	if loadErr != nil {
		fmt.Fprintf(stderr, "custodian keys retire: %v\n", loadErr)
		return exitRuntime
	}
	if err = v.RetireKey(ctx, kekID); errors.Is(err, vault.ErrKeyInUse) {
		fmt.Fprintf(stderr, "custodian keys retire: key %s is still needed (%v). Run custodian keys rotate first.\n", kekID, err)
		return exitRuntime
	} else if err != nil {
		fmt.Fprintf(stderr, "custodian keys retire: %v\n", err)
		return exitRuntime
	}
	if err = vault.ReplaceKeyFile(path, slices.Delete(keys, idx, idx+1)...); err != nil {
		fmt.Fprintf(stderr, "custodian keys retire: %v\n", err)
		return exitRuntime
	}
	fmt.Fprintf(stdout, "Removed key %s from %s; no data key needs it any more.\n"+
		"Database backups made while it was in use can only be opened with it. Destroy every other copy of it\n"+
		"(older backups of the key file) to make those backups unreadable, including the credentials of users\n"+
		"erased since (crypto-shredding); keep a copy only if you must be able to restore such a backup.\n", kekID, path)
	return exitOK
}

// Command custodian runs Custodian, a Matrix application service that hosts bridges and bots on
// a core that owns everything to do with people's data.
//
// Usage:
//
//	custodian -e > config.yaml                         # write the example configuration
//	custodian -g -c config.yaml -r registration.yaml   # generate the registration and tokens
//	custodian -c config.yaml -r registration.yaml      # run
//
// Exit codes: 0 on success or a clean shutdown (SIGINT, SIGTERM), 1 for problems with the
// command line, the configuration or the registration, 2 when the service fails at runtime.
//
// This is the only place that lists the bridges compiled into the binary, and the place that
// registers the SQL drivers.
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
	"path/filepath"
	"runtime/debug"
	"syscall"

	_ "github.com/lib/pq"
	_ "go.mau.fi/util/dbutil/litestream"
	mxas "maunium.net/go/mautrix/appservice"

	"github.com/custodian-matrix/custodian/appservice"
	"github.com/custodian-matrix/custodian/bridges/irc"
	"github.com/custodian-matrix/custodian/bridges/webhook"
)

// bridges lists every bridge and bot compiled into the binary, in the order they start. A bridge
// runs only if its ID is a key under bridges: in the configuration. Add new bridges here and
// nowhere else.
var bridges = []appservice.Bridge{webhook.New(), irc.New()}

// version is the release version, set at build time with -ldflags "-X main.version=v1.2.3".
var version = "dev"

// Exit codes.
const (
	exitOK      = 0
	exitConfig  = 1
	exitRuntime = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is main without the process: it parses args, does what they ask and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	// Subcommands for admins: key management (keys.go), privacy operations (privacy.go) and
	// the IRC bridge's portals (portals.go).
	if len(args) > 0 {
		switch args[0] {
		case "keys":
			return runKeys(args[1:], stdout, stderr)
		case "export":
			return runExport(args[1:], stdout, stderr)
		case "forget":
			return runForget(args[1:], stdout, stderr)
		case "portals":
			return runPortals(args[1:], stdout, stderr)
		case "portal":
			return runPortal(args[1:], stdout, stderr)
		}
	}
	flags := flag.NewFlagSet("custodian", flag.ContinueOnError)
	flags.SetOutput(stderr)
	configPath := flags.String("c", "config.yaml", "the configuration file")
	registrationPath := flags.String("r", "registration.yaml", "the registration file")
	generate := flags.Bool("g", false, "generate the registration, write its tokens into the configuration, and exit")
	example := flags.Bool("e", false, "print the example configuration and exit")
	showVersion := flags.Bool("v", false, "print the version and exit")
	flags.Usage = func() {
		fmt.Fprintf(stderr, "Usage: custodian [-c config.yaml] [-r registration.yaml] [-g | -e | -v]\n"+
			"       custodian keys generate|rotate|status [-c config.yaml]\n"+
			"       custodian export|forget [-c config.yaml] @user:server\n"+
			"       custodian portals list [-c config.yaml]\n"+
			"       custodian portal unlink|reset [-c config.yaml] <!room:server | #alias:server>\n\n")
		flags.PrintDefaults()
	}
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitConfig
	}
	if flags.NArg() > 0 {
		fmt.Fprintf(stderr, "custodian: unexpected argument %q\n", flags.Arg(0))
		flags.Usage()
		return exitConfig
	}

	switch {
	case *showVersion:
		fmt.Fprintln(stdout, versionString())
		return exitOK
	case *example:
		fmt.Fprint(stdout, appservice.ExampleConfig(bridges))
		return exitOK
	case *generate:
		return generateRegistration(*configPath, *registrationPath, stdout, stderr)
	default:
		return runService(*configPath, *registrationPath, stderr)
	}
}

// generateRegistration is custodian -g.
func generateRegistration(configPath, registrationPath string, stdout, stderr io.Writer) int {
	cfg, err := appservice.LoadConfigForGenerate(configPath, bridges)
	if err != nil {
		printConfigProblems(stderr, configPath, err)
		return exitConfig
	}
	// The vault's key file first: it is never overwritten, so running -g again is harmless.
	keyNote, err := ensureKeyFile(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "custodian: %v\n", err)
		return exitConfig
	}
	reg := appservice.GenerateRegistration(cfg, bridges)
	// The registration first: if updating the config fails after it, the next start says the two
	// differ and how to fix it, and running -g again does.
	if err = appservice.WriteRegistration(registrationPath, reg); err != nil {
		fmt.Fprintf(stderr, "custodian: %v\n", err)
		return exitConfig
	}
	if err = appservice.UpdateConfigTokens(configPath, reg.AppToken, reg.ServerToken); err != nil {
		fmt.Fprintf(stderr, "custodian: wrote %s, but %v\n", registrationPath, err)
		return exitConfig
	}
	absReg, err := filepath.Abs(registrationPath)
	if err != nil {
		absReg = registrationPath
	}
	fmt.Fprintf(stdout, `Wrote the registration to %s and its tokens to %s (both mode 0600).

Next:
  1. Give the registration to the homeserver. For Synapse, add it to homeserver.yaml:
         app_service_config_files:
           - %s
  2. Restart the homeserver so that it reads the registration.
  3. Start Custodian:
         custodian -c %s -r %s

Both files hold the tokens: keep them private and out of version control.
`, registrationPath, configPath, absReg, configPath, registrationPath)
	fmt.Fprint(stdout, keyNote)
	return exitOK
}

// runService is a normal run: load and check everything, then serve until SIGINT or SIGTERM.
func runService(configPath, registrationPath string, stderr io.Writer) int {
	cfg, err := appservice.LoadConfig(configPath, bridges)
	if err != nil {
		printConfigProblems(stderr, configPath, err)
		return exitConfig
	}
	reg, err := mxas.LoadRegistration(registrationPath)
	if errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintf(stderr, "custodian: %s does not exist; generate it with:\n    custodian -g -c %s -r %s\n",
			registrationPath, configPath, registrationPath)
		return exitConfig
	} else if err != nil {
		fmt.Fprintf(stderr, "custodian: failed to read registration %s: %v\n", registrationPath, err)
		return exitConfig
	}
	if err = appservice.CheckRegistration(cfg, bridges, reg); err != nil {
		fmt.Fprintf(stderr, "custodian: %s and %s do not agree:\n", registrationPath, configPath)
		mismatch := false
		for _, problem := range appservice.Problems(err) {
			var mm *appservice.RegistrationMismatchError
			if errors.As(problem, &mm) {
				mismatch = true
				for _, diff := range mm.Differences {
					fmt.Fprintf(stderr, "  - %s: %s\n", registrationPath, diff)
				}
				continue
			}
			fmt.Fprintf(stderr, "  - %v\n", problem)
		}
		if mismatch {
			fmt.Fprintf(stderr, "To fix it, generate the registration again:\n    custodian -g -c %s -r %s\n"+
				"then give the new registration to the homeserver (Synapse: app_service_config_files) and restart the homeserver.\n",
				configPath, registrationPath)
		}
		return exitConfig
	}
	log, err := appservice.NewLogger(cfg.Logging, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "custodian: %v\n", err)
		return exitConfig
	}
	log.Info().Str("version", version).Msg("Starting Custodian")

	svc, err := appservice.New(cfg, reg, cfg.EnabledBridges(bridges), log)
	if err != nil {
		log.Error().Err(err).Msg("Failed to prepare the service")
		return exitRuntime
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		// After the first signal, restore the default handling: a second one kills at once.
		<-ctx.Done()
		stop()
	}()
	if err = svc.Run(ctx); err != nil {
		log.Error().Err(err).Msg("Custodian stopped with an error")
		return exitRuntime
	}
	log.Info().Msg("Custodian stopped")
	return exitOK
}

// printConfigProblems prints every problem in a configuration error, one per line.
func printConfigProblems(w io.Writer, configPath string, err error) {
	if errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintf(w, "custodian: %s does not exist; write the example with:\n    custodian -e > %s\nthen edit it and generate the registration with custodian -g\n",
			configPath, configPath)
		return
	}
	problems := appservice.Problems(err)
	if len(problems) == 1 {
		fmt.Fprintf(w, "custodian: %s: %v\n", configPath, problems[0])
		return
	}
	fmt.Fprintf(w, "custodian: %s has %d problems:\n", configPath, len(problems))
	for _, problem := range problems {
		fmt.Fprintf(w, "  - %v\n", problem)
	}
}

// versionString is the -v output: the version and, when the binary was built from a checkout,
// its commit.
func versionString() string {
	s := "custodian " + version
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return s
	}
	var revision, modified string
	for _, setting := range info.Settings {
		switch setting.Key {
		case "vcs.revision":
			revision = setting.Value
		case "vcs.modified":
			if setting.Value == "true" {
				modified = "+dirty"
			}
		}
	}
	if len(revision) > 12 {
		revision = revision[:12]
	}
	if revision != "" {
		s += " (" + revision + modified + ")"
	}
	return s + " " + info.GoVersion
}

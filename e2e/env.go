//go:build e2e

package e2e

import (
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	_ "github.com/mattn/go-sqlite3" // the "sqlite3" driver, for Env.DB
	"gopkg.in/yaml.v3"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"
)

// Backend is a database backend Custodian can run on.
type Backend string

// The backends every end-to-end test runs on.
const (
	// SQLite is the embedded default: a file in the test's work directory, opened with
	// database.type sqlite3-fk-wal.
	SQLite Backend = "sqlite"
	// Postgres is a fresh database created on the server POSTGRES_TEST_URI names and dropped
	// when the test ends.
	Postgres Backend = "postgres"
)

// Backends lists every backend, in the order [RunBackends] runs them.
var Backends = []Backend{SQLite, Postgres}

// RunBackends runs fn as a subtest of t once per backend in [Backends], named after the backend.
// Subtests run one after another.
func RunBackends(t *testing.T, fn func(t *testing.T, backend Backend)) {
	t.Helper()
	for _, backend := range Backends {
		t.Run(string(backend), func(t *testing.T) { fn(t, backend) })
	}
}

// Domain is the test homeserver's server_name.
const Domain = "localhost"

// AppServiceID is the registration ID the harness gives Custodian (appservice.id).
const AppServiceID = "custodian"

// BotLocalpart is the Custodian bot's localpart (appservice.bot_username).
const BotLocalpart = "custodian"

// Option changes how [New] sets up an environment.
type Option func(*options)

type options struct {
	patches     []func(cfg map[string]any)
	noCustodian bool
	noStart     bool
	noE2EE      bool
	webhookBase string // set by WithWebhookBridge
}

// WithConfig lets a test change Custodian's config.yaml before the registration is generated.
// fn gets the config as nested maps (the harness's defaults) and may change anything; the result
// is written as YAML. Options apply in order.
func WithConfig(fn func(cfg map[string]any)) Option {
	return func(o *options) { o.patches = append(o.patches, fn) }
}

// WithConfigValue sets one key of Custodian's config.yaml, named by its dotted path such as
// "bot.invite_policy.allowed_users", creating the maps on the way. See [WithConfig].
func WithConfigValue(path string, value any) Option {
	return WithConfig(func(cfg map[string]any) { SetPath(cfg, path, value) })
}

// WithoutCustodian makes [New] start only Synapse, with no appservice registered: for testing the
// harness itself. [Env.StartCustodian], [Env.DB] and the token accessors then fail the test.
func WithoutCustodian() Option {
	return func(o *options) { o.noCustodian = true }
}

// WithoutStart makes [New] prepare everything (config, registration, database, Synapse) but not
// start Custodian; the test calls [Env.StartCustodian] when it is ready.
func WithoutStart() Option {
	return func(o *options) { o.noStart = true }
}

// WithoutE2EEFeatures starts Synapse without the experimental features end-to-end encryption
// for appservices needs (see [synapse.writeConfig]): for testing how Custodian copes with a
// homeserver that does not push to-device messages and device lists to it.
func WithoutE2EEFeatures() Option {
	return func(o *options) { o.noE2EE = true }
}

// SetPath sets the value at a dotted path such as "appservice.max_body_bytes" in nested
// map[string]any values, creating missing maps and replacing non-map values on the way.
func SetPath(cfg map[string]any, path string, value any) {
	keys := strings.Split(path, ".")
	m := cfg
	for _, key := range keys[:len(keys)-1] {
		next, ok := m[key].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[key] = next
		}
		m = next
	}
	m[keys[len(keys)-1]] = value
}

// Env is one test's environment: a Synapse, Custodian's files and database, and (once started) a
// Custodian process. Create it with [New]. Its methods take the calling test's t and must be
// called from that test's goroutine unless they say otherwise.
type Env struct {
	// Backend is the database backend Custodian runs on.
	Backend Backend

	opts    options
	dir     string
	synapse *synapse

	binary           string
	configPath       string
	registrationPath string
	logPath          string
	keyFilePath      string
	asPort           int
	metricsPort      int
	asToken          string
	hsToken          string
	dbDriver         string
	dbDSN            string

	mu        sync.Mutex
	custodian *process
	logOffset int64
	db        *sql.DB
	clients   map[*mautrix.Client]*clientState
	passwords map[id.UserID]string
}

// New sets up an environment for t on the given backend and, unless [WithoutStart] or
// [WithoutCustodian] is given, starts Custodian and waits until it is ready. It fails the test if
// anything required is missing, except that outside CI a missing POSTGRES_TEST_URI skips a
// [Postgres] test. Everything is torn down when t ends.
func New(t testing.TB, backend Backend, opts ...Option) *Env {
	t.Helper()
	env := &Env{
		Backend:   backend,
		clients:   map[*mautrix.Client]*clientState{},
		passwords: map[id.UserID]string{},
	}
	for _, opt := range opts {
		opt(&env.opts)
	}
	root := synapseRoot(t)
	pruneStale(root)
	env.dir = workDir(t, "custodian-e2e-")

	ports := freePorts(t, 3)
	hs := &synapse{root: root, port: ports[0], e2ee: !env.opts.noE2EE}
	env.asPort, env.metricsPort = ports[1], ports[2]

	var registration []byte
	if !env.opts.noCustodian {
		switch backend {
		case SQLite:
			path := filepath.Join(env.dir, "custodian.db")
			env.dbDriver = "sqlite3"
			env.dbDSN = "file:" + path + "?_busy_timeout=10000"
			env.prepare(t, "sqlite3-fk-wal", "file:"+path+"?_txlock=immediate", hs.url())
		case Postgres:
			uri := createPostgresDatabase(t)
			env.dbDriver = "postgres"
			env.dbDSN = uri
			env.prepare(t, "postgres", uri, hs.url())
		default:
			t.Fatalf("e2e.New: unknown backend %q", backend)
		}
		var err error
		registration, err = os.ReadFile(env.registrationPath)
		if err != nil {
			t.Fatalf("reading the generated registration: %v", err)
		}
	}

	hs.start(t, registration)
	env.synapse = hs
	t.Cleanup(func() { env.teardown(t) })

	if !env.opts.noCustodian && !env.opts.noStart {
		env.StartCustodian(t)
	}
	return env
}

// prepare writes config.yaml, runs custodian -g and reads the generated tokens back.
func (env *Env) prepare(t testing.TB, dbType, dbURI, hsURL string) {
	t.Helper()
	env.binary = custodianBinary(t)
	env.configPath = filepath.Join(env.dir, "config.yaml")
	env.registrationPath = filepath.Join(env.dir, "registration.yaml")
	env.logPath = filepath.Join(env.dir, "custodian.log")

	cfg := map[string]any{
		"homeserver": map[string]any{
			"address": hsURL,
			"domain":  Domain,
		},
		"appservice": map[string]any{
			"id":              AppServiceID,
			"address":         env.ASURL(),
			"hostname":        "127.0.0.1",
			"port":            env.asPort,
			"as_token":        "generate",
			"hs_token":        "generate",
			"bot_username":    BotLocalpart,
			"bot_displayname": "Custodian",
		},
		"database": map[string]any{
			"type": dbType,
			"uri":  dbURI,
		},
		"metrics": map[string]any{
			"listen": "127.0.0.1:" + strconv.Itoa(env.metricsPort),
		},
		"logging": map[string]any{
			"level":  "debug",
			"format": "json",
		},
		// An absolute path, so that the keys subcommands find the key file from anywhere;
		// custodian -g creates it.
		"vault": map[string]any{
			"key_file": filepath.Join(env.dir, "custodian.key"),
		},
		"bridges": map[string]any{},
		// Encryption is on by default in Custodian; here it is off unless a test turns it on
		// (encryption.enabled), so the tests of other features keep reading the bot's rooms
		// with the harness's plain clients. The encrypted scenarios (e2ee_*_test.go) turn it on
		// and use real E2EE clients.
		"encryption": map[string]any{"enabled": false},
	}
	for _, patch := range env.opts.patches {
		patch(cfg)
	}
	if vaultCfg, ok := cfg["vault"].(map[string]any); ok {
		if path, ok := vaultCfg["key_file"].(string); ok {
			env.keyFilePath = path
			if !filepath.IsAbs(path) {
				env.keyFilePath = filepath.Join(env.dir, path)
			}
		}
	}
	data, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatalf("encoding config.yaml: %v", err)
	}
	if err := os.WriteFile(env.configPath, data, 0o600); err != nil {
		t.Fatalf("writing config.yaml: %v", err)
	}

	out, err := runCommand(t, generateTimeout, env.dir, env.binary,
		"-g", "-c", env.configPath, "-r", env.registrationPath)
	if err != nil {
		t.Fatalf("custodian -g failed: %v\n%s", err, out)
	}
	env.readTokens(t)
}

// readTokens reads the tokens custodian -g wrote back into config.yaml and checks that the
// registration carries the same ones.
func (env *Env) readTokens(t testing.TB) {
	t.Helper()
	var cfg struct {
		AppService struct {
			ID      string `yaml:"id"`
			ASToken string `yaml:"as_token"`
			HSToken string `yaml:"hs_token"`
		} `yaml:"appservice"`
	}
	readYAML(t, env.configPath, &cfg)
	var reg struct {
		ID              string `yaml:"id"`
		URL             string `yaml:"url"`
		ASToken         string `yaml:"as_token"`
		HSToken         string `yaml:"hs_token"`
		SenderLocalpart string `yaml:"sender_localpart"`
	}
	readYAML(t, env.registrationPath, &reg)

	switch {
	case cfg.AppService.ASToken == "" || cfg.AppService.ASToken == "generate",
		cfg.AppService.HSToken == "" || cfg.AppService.HSToken == "generate":
		t.Fatalf("custodian -g did not write generated tokens back into %s", env.configPath)
	case reg.ASToken != cfg.AppService.ASToken || reg.HSToken != cfg.AppService.HSToken:
		t.Fatalf("custodian -g wrote different tokens into config.yaml and registration.yaml")
	case reg.ID != AppServiceID:
		t.Fatalf("generated registration has id %q, want %q", reg.ID, AppServiceID)
	case reg.SenderLocalpart != BotLocalpart:
		t.Fatalf("generated registration has sender_localpart %q, want %q", reg.SenderLocalpart, BotLocalpart)
	case reg.URL != env.ASURL():
		t.Fatalf("generated registration has url %q, want %q", reg.URL, env.ASURL())
	}
	env.asToken = cfg.AppService.ASToken
	env.hsToken = cfg.AppService.HSToken
}

// teardown stops Custodian, reports its log on failure and closes the DB handle. Synapse, the
// database and the work directories have their own cleanups, registered earlier, so they run
// after this one.
func (env *Env) teardown(t testing.TB) {
	env.mu.Lock()
	proc := env.custodian
	env.custodian = nil
	db := env.db
	env.db = nil
	env.mu.Unlock()

	if proc != nil {
		proc.terminate(stopTimeout)
	}
	if db != nil {
		_ = db.Close()
	}
	if env.logPath != "" {
		if data, err := os.ReadFile(env.logPath); err == nil && strings.Contains(string(data), "WARNING: DATA RACE") {
			t.Errorf("the race detector reported a data race in custodian; see %s", env.logPath)
		}
	}
	if t.Failed() {
		if env.synapse != nil {
			logTail(t, "Synapse", env.synapse.logPath)
		}
		if env.logPath != "" {
			logTail(t, "Custodian", env.logPath)
		}
	}
}

// HomeserverURL is the base URL of the test's Synapse, such as http://127.0.0.1:34567.
func (env *Env) HomeserverURL() string { return env.synapse.url() }

// ASURL is the base URL of Custodian's appservice listener, such as http://127.0.0.1:34568. It is
// the registration's url.
func (env *Env) ASURL() string { return "http://127.0.0.1:" + strconv.Itoa(env.asPort) }

// MetricsURL is the URL of Custodian's Prometheus endpoint.
func (env *Env) MetricsURL() string {
	return "http://127.0.0.1:" + strconv.Itoa(env.metricsPort) + "/metrics"
}

// BotUserID is the Custodian bot's user ID, @custodian:localhost.
func (env *Env) BotUserID() id.UserID { return id.NewUserID(BotLocalpart, Domain) }

// ASToken is the appservice's as_token, as custodian -g generated it: Custodian's credential
// towards the homeserver.
func (env *Env) ASToken(t testing.TB) string {
	t.Helper()
	env.needCustodian(t)
	return env.asToken
}

// HSToken is the appservice's hs_token, as custodian -g generated it: the homeserver's credential
// towards Custodian.
func (env *Env) HSToken(t testing.TB) string {
	t.Helper()
	env.needCustodian(t)
	return env.hsToken
}

// ConfigPath is the path of Custodian's config.yaml (after custodian -g filled in the tokens).
func (env *Env) ConfigPath() string { return env.configPath }

// RegistrationPath is the path of the registration custodian -g generated.
func (env *Env) RegistrationPath() string { return env.registrationPath }

// KeyFilePath is the path of the vault's master key file (vault.key_file), which custodian -g
// created; "" if a [WithConfig] patch turned the key file off.
func (env *Env) KeyFilePath() string { return env.keyFilePath }

// LogPath is the path of Custodian's log file; every start of Custodian appends to it.
func (env *Env) LogPath() string { return env.logPath }

// Dir is the environment's work directory on the host, which holds Custodian's files.
func (env *Env) Dir() string { return env.dir }

// DB returns a handle on Custodian's database for assertions: driver "sqlite3" on the SQLite
// file, or "postgres" on the test's PostgreSQL database. Queries may use $1 placeholders on both.
// The handle is shared by the test and closed when it ends.
func (env *Env) DB(t testing.TB) *sql.DB {
	t.Helper()
	env.needCustodian(t)
	env.mu.Lock()
	defer env.mu.Unlock()
	if env.db == nil {
		db, err := sql.Open(env.dbDriver, env.dbDSN)
		if err != nil {
			t.Fatalf("opening Custodian's database: %v", err)
		}
		db.SetMaxOpenConns(2)
		env.db = db
	}
	return env.db
}

func (env *Env) needCustodian(t testing.TB) {
	t.Helper()
	if env.opts.noCustodian {
		t.Fatalf("this environment was created WithoutCustodian")
	}
}

func readYAML(t testing.TB, path string, into any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading %s: %v", path, err)
	}
	if err := yaml.Unmarshal(data, into); err != nil {
		t.Fatalf("parsing %s: %v", path, err)
	}
}

// String describes the environment for log messages.
func (env *Env) String() string {
	return fmt.Sprintf("e2e.Env{backend: %s, homeserver: %s, appservice: %s}", env.Backend, env.HomeserverURL(), env.ASURL())
}

// DBDriver is the database/sql driver name of [Env.DB]: "sqlite3" or "postgres".
func (env *Env) DBDriver() string { return env.dbDriver }

// SynapseDataFiles returns the files in which the test's Synapse keeps what it stores: its
// SQLite database with the -wal and -shm files next to it, and every file of its media store.
// Files that do not exist (yet) are left out.
func (env *Env) SynapseDataFiles(t testing.TB) []string {
	t.Helper()
	dir := env.synapse.hostDir
	var files []string
	for _, suffix := range []string{"", "-wal", "-shm", "-journal"} {
		path := filepath.Join(dir, "homeserver.db"+suffix)
		if _, err := os.Stat(path); err == nil {
			files = append(files, path)
		}
	}
	err := filepath.WalkDir(filepath.Join(dir, "media_store"), func(path string, d os.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if d.Type().IsRegular() {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("listing Synapse's media store: %v", err)
	}
	return files
}

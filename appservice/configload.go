package appservice

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
	"maunium.net/go/mautrix/id"
)

// DefaultConfig returns a new Config holding every key's default: the values of the embedded
// example configuration, with [TokenPlaceholder] tokens and no bridges. It is what a key left
// out of config.yaml keeps. Each call returns a fresh Config the caller may modify.
func DefaultConfig() *Config {
	cfg := &Config{}
	dec := yaml.NewDecoder(strings.NewReader(exampleConfig))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil {
		// The example is embedded and covered by tests: a failure is a broken build.
		panic(fmt.Errorf("embedded example-config.yaml does not decode: %w", err))
	}
	return cfg
}

// LoadConfig reads the configuration file at path for a run of the service. It decodes the file
// strictly over [DefaultConfig] (an unknown key is an error), decodes the section of each
// compiled-in bridge present under bridges: into that bridge's target (see
// [Config.DecodeBridges]), and validates everything, including each [ConfigValidator].
//
// bridges lists every bridge compiled into the binary, enabled or not; a key under bridges: that
// names none of them is an error. Tokens still equal to [TokenPlaceholder] (or empty) are
// refused with a message saying how to generate them.
//
// On any problem LoadConfig returns a nil Config and an error joining (errors.Join) every
// problem found, each message starting with its key path ("appservice.port: must be set") and,
// where the problem is at a place in the file, ending with its line. A file that cannot be read
// or is not YAML gives one error wrapping the cause (errors.Is(err, fs.ErrNotExist) works).
func LoadConfig(path string, bridges []Bridge) (*Config, error) {
	return loadConfigFile(path, bridges, true)
}

// LoadConfigForGenerate reads the configuration file at path for custodian -g: like
// [LoadConfig], but it accepts placeholder tokens, since generating the registration is what
// replaces them.
func LoadConfigForGenerate(path string, bridges []Bridge) (*Config, error) {
	return loadConfigFile(path, bridges, false)
}

func loadConfigFile(path string, bridges []Bridge, checkTokens bool) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("failed to read config: %w", err)
	}
	return parseConfig(data, path, bridges, checkTokens)
}

// parseConfig is LoadConfig on the file's contents; configPath only appears in messages.
func parseConfig(data []byte, configPath string, bridges []Bridge, checkTokens bool) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("config is not valid YAML: %w", err)
	}
	idx := make(lineIndex)
	if len(root.Content) > 0 {
		idx.walk(root.Content[0], root.Content[0], "")
	}

	cfg := DefaultConfig()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var problems []error
	var failed []string
	err := dec.Decode(cfg)
	var typeErr *yaml.TypeError
	switch {
	case err == nil, errors.Is(err, io.EOF):
		// An empty file keeps every default (and fails on the placeholder tokens).
	case errors.As(err, &typeErr):
		// yaml.v3 goes on decoding after a type error, so the rest still gets checked. What
		// failed to decode kept its default; checking that default would only add a confusing
		// second message, so validation skips the failed paths.
		var decodeProblems []*ConfigError
		decodeProblems, failed = idx.translate(typeErr, "")
		for _, e := range decodeProblems {
			problems = append(problems, e)
		}
	default:
		return nil, fmt.Errorf("config is not valid YAML: %w", err)
	}
	if err == nil {
		var extra yaml.Node
		if dec.Decode(&extra) == nil {
			problems = append(problems, &ConfigError{Path: "config", Line: extra.Line, Message: "holds more than one YAML document; keep one"})
		}
	}
	if cfg.Bridges == nil {
		// bridges: null clears the default's empty map.
		cfg.Bridges = map[string]yaml.Node{}
	}

	for _, e := range cfg.validate(checkTokens, configPath) {
		if !underAny(e.Path, failed) {
			problems = append(problems, e)
		}
	}
	problems = append(problems, namespaceProblems(cfg, bridges)...)
	if err := cfg.DecodeBridges(bridges); err != nil {
		problems = append(problems, flattenErrors(err)...)
	}
	if len(problems) > 0 {
		return nil, errors.Join(problems...)
	}
	return cfg, nil
}

// underAny reports whether path is one of paths or below one of them. The empty path is the
// whole file.
func underAny(path string, paths []string) bool {
	for _, p := range paths {
		if p == "" || path == p || strings.HasPrefix(path, p+".") || strings.HasPrefix(path, p+"[") {
			return true
		}
	}
	return false
}

// ConfigError is one problem found in the configuration. [LoadConfig] and
// [Config.DecodeBridges] join them with errors.Join; [Problems] splits them again.
type ConfigError struct {
	// Path is the key path of the problem, such as "appservice.port" or
	// "bridges.irc.networks[0].port"; "config" means the file as a whole.
	Path string
	// Line is the problem's line in the configuration file, or 0 when it has no single place
	// (a missing key, a relation between keys).
	Line int
	// Message says what is wrong and, where it helps, how to fix it. It never holds a secret.
	Message string
}

// Error returns "path: message", followed by " (line N)" when the line is known.
func (e *ConfigError) Error() string {
	return e.Path + ": " + e.Message + lineSuffix(e.Line)
}

// EnabledBridges returns, in the order of all, the bridges whose ID is a key under bridges: in
// the configuration. Only they run and only their namespaces go into the registration. all is
// every bridge compiled into the binary.
func (cfg *Config) EnabledBridges(all []Bridge) []Bridge {
	var enabled []Bridge
	for _, br := range all {
		if _, ok := cfg.Bridges[br.ID()]; ok {
			enabled = append(enabled, br)
		}
	}
	return enabled
}

// DecodeBridges decodes the section of each bridge in bridges that is present under bridges:
// into the target its Config method returns, strictly (an unknown key is an error), then calls
// ValidateConfig on each [ConfigValidator] whose section decoded cleanly. A key under bridges:
// that names no bridge in bridges is an error. The core decodes over whatever the target holds,
// so a bridge sets its defaults in the target before returning it.
//
// [LoadConfig] calls DecodeBridges; call it yourself only on a Config built another way, and only
// once, since decoding again merges lists and maps into what is there. The returned error joins
// every problem, each prefixed with its key path (bridges.<id>.…).
func (cfg *Config) DecodeBridges(bridges []Bridge) error {
	known := make(map[string]Bridge, len(bridges))
	var ids []string
	for _, br := range bridges {
		known[br.ID()] = br
		ids = append(ids, br.ID())
	}
	var problems []error
	keys := make([]string, 0, len(cfg.Bridges))
	for key := range cfg.Bridges {
		keys = append(keys, key)
	}
	slices.Sort(keys)
	for _, key := range keys {
		if _, ok := known[key]; ok {
			continue
		}
		node := cfg.Bridges[key]
		available := "this build includes none"
		if len(ids) > 0 {
			available = "this build includes " + strings.Join(ids, ", ")
		}
		problems = append(problems, &ConfigError{Path: "bridges." + key, Line: node.Line, Message: "unknown bridge; " + available})
	}
	for _, br := range bridges {
		node, ok := cfg.Bridges[br.ID()]
		if !ok {
			continue
		}
		decodeProblems := decodeBridgeSection(br, &node)
		problems = append(problems, decodeProblems...)
		if len(decodeProblems) > 0 {
			continue
		}
		if v, ok := br.(ConfigValidator); ok {
			if err := v.ValidateConfig(); err != nil {
				for _, e := range flattenErrors(err) {
					problems = append(problems, bridgeProblem(br.ID(), &node, e))
				}
			}
		}
	}
	return errors.Join(problems...)
}

// decodeBridgeSection decodes node strictly into br's config target. yaml.v3 can only decode
// strictly from a stream, so the node is encoded again and decoded from that; the line index
// maps the new text's lines back to the file's.
func decodeBridgeSection(br Bridge, node *yaml.Node) []error {
	path := "bridges." + br.ID()
	problem := func(msg string) []error {
		return []error{&ConfigError{Path: path, Line: node.Line, Message: msg}}
	}
	if node.Kind == yaml.AliasNode && node.Alias != nil {
		node = node.Alias
	}
	_, target := br.Config()
	empty := node.Kind == 0 || (node.Kind == yaml.ScalarNode && node.Tag == "!!null") ||
		(node.Kind == yaml.MappingNode && len(node.Content) == 0)
	if empty {
		return nil
	}
	if target == nil {
		return problem(fmt.Sprintf("this bridge has no settings; write %q", br.ID()+": {}"))
	}
	if rv := reflect.ValueOf(target); rv.Kind() != reflect.Pointer || rv.IsNil() {
		return problem(fmt.Sprintf("the bridge's Config returns a %T target, not a non-nil pointer (a bug in the bridge)", target))
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(4)
	if err := enc.Encode(node); err != nil {
		return problem(fmt.Sprintf("failed to read section: %v", err))
	}
	if err := enc.Close(); err != nil {
		return problem(fmt.Sprintf("failed to read section: %v", err))
	}
	var copied yaml.Node
	if err := yaml.Unmarshal(buf.Bytes(), &copied); err != nil || len(copied.Content) == 0 {
		return problem("failed to read section (anchors and aliases must stay inside it)")
	}
	idx := make(lineIndex)
	idx.walk(copied.Content[0], node, path)
	dec := yaml.NewDecoder(&buf)
	dec.KnownFields(true)
	err := dec.Decode(target)
	var typeErr *yaml.TypeError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &typeErr):
		decodeProblems, _ := idx.translate(typeErr, path)
		out := make([]error, len(decodeProblems))
		for i, e := range decodeProblems {
			out[i] = e
		}
		return out
	default:
		return problem(err.Error())
	}
}

// bridgeProblem turns one problem a bridge's ValidateConfig returned into a [ConfigError] under
// bridges.<id>: a *ConfigError's Path, relative to the section, gets the prefix, and its line is
// looked up in the section (node) when the bridge gave none and the key is there; any other error
// is a problem of the section as a whole.
func bridgeProblem(bridgeID string, node *yaml.Node, err error) error {
	path := "bridges." + bridgeID
	var ce *ConfigError
	if !errors.As(err, &ce) {
		return &ConfigError{Path: path, Message: err.Error()}
	}
	out := &ConfigError{Path: path, Line: ce.Line, Message: ce.Message}
	if ce.Path != "" {
		out.Path = path + "." + ce.Path
		if out.Line == 0 {
			out.Line = keyLine(node, ce.Path)
		}
	}
	return out
}

// keyLine returns the line of the key or list item at path ("networks[0].port") under node, or
// 0 if it is not there (a missing key has no single place).
func keyLine(node *yaml.Node, path string) int {
	line := 0
	for _, part := range strings.Split(path, ".") {
		key, rest, _ := strings.Cut(part, "[")
		if node.Kind == yaml.AliasNode && node.Alias != nil {
			node = node.Alias
		}
		if node.Kind != yaml.MappingNode {
			return 0
		}
		found := false
		for i := 0; i+1 < len(node.Content); i += 2 {
			if node.Content[i].Value == key {
				line, node, found = node.Content[i].Line, node.Content[i+1], true
				break
			}
		}
		if !found {
			return 0
		}
		for rest != "" {
			index, after, ok := strings.Cut(rest, "]")
			n, err := strconv.Atoi(index)
			if !ok || err != nil || node.Kind != yaml.SequenceNode || n < 0 || n >= len(node.Content) {
				return 0
			}
			node = node.Content[n]
			line = node.Line
			rest = strings.TrimPrefix(after, "[")
		}
	}
	return line
}

// flattenErrors undoes errors.Join (also nested), so each problem can be reported on its own.
func flattenErrors(err error) []error {
	if err == nil {
		return nil
	}
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range joined.Unwrap() {
			out = append(out, flattenErrors(e)...)
		}
		return out
	}
	return []error{err}
}

// Problems returns the individual problems in an error returned by [LoadConfig],
// [LoadConfigForGenerate], [Config.DecodeBridges] or [CheckRegistration], for printing one per
// line. It returns nil for nil and a one-element slice for an error that joins nothing.
func Problems(err error) []error {
	return flattenErrors(err)
}

func lineSuffix(line int) string {
	if line <= 0 {
		return ""
	}
	return fmt.Sprintf(" (line %d)", line)
}

// lineIndex maps a line of the YAML text being decoded to the key paths that start on it and to
// the line in the configuration file the text came from.
type lineIndex map[int]*lineEntry

type lineEntry struct {
	// paths are the keys and list items that start on the line, outermost first.
	paths []string
	// collections are the mappings and lists that start on the line, outermost first.
	collections []string
	fileLine    int
}

func (idx lineIndex) entry(line, fileLine int) *lineEntry {
	e := idx[line]
	if e == nil {
		e = &lineEntry{fileLine: fileLine}
		idx[line] = e
	}
	return e
}

func (idx lineIndex) add(line int, path string, fileLine int) {
	e := idx.entry(line, fileLine)
	if !slices.Contains(e.paths, path) {
		e.paths = append(e.paths, path)
	}
}

func (idx lineIndex) addCollection(line int, path string, fileLine int) {
	e := idx.entry(line, fileLine)
	if !slices.Contains(e.collections, path) {
		e.collections = append(e.collections, path)
	}
}

// walk indexes the node tree dec (the text being decoded) against orig (the same tree as parsed
// from the file, which differs from dec only in line numbers).
func (idx lineIndex) walk(dec, orig *yaml.Node, path string) {
	if dec == nil || orig == nil || dec.Kind != orig.Kind {
		return
	}
	switch dec.Kind {
	case yaml.DocumentNode:
		if len(dec.Content) > 0 && len(orig.Content) > 0 {
			idx.walk(dec.Content[0], orig.Content[0], path)
		}
	case yaml.MappingNode:
		idx.addCollection(dec.Line, path, orig.Line)
		for i := 0; i+1 < len(dec.Content) && i+1 < len(orig.Content); i += 2 {
			key := joinKeyPath(path, dec.Content[i].Value)
			idx.add(dec.Content[i].Line, key, orig.Content[i].Line)
			idx.walk(dec.Content[i+1], orig.Content[i+1], key)
		}
	case yaml.SequenceNode:
		idx.addCollection(dec.Line, path, orig.Line)
		for i := 0; i < len(dec.Content) && i < len(orig.Content); i++ {
			item := fmt.Sprintf("%s[%d]", path, i)
			idx.add(dec.Content[i].Line, item, orig.Content[i].Line)
			idx.walk(dec.Content[i], orig.Content[i], item)
		}
	case yaml.ScalarNode:
		if path != "" {
			idx.add(dec.Line, path, orig.Line)
		}
	}
}

func joinKeyPath(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

var (
	yamlLineMsg     = regexp.MustCompile(`^line ([0-9]+): (.*)$`)
	yamlUnknownMsg  = regexp.MustCompile(`^field (\S+) not found in type \S+$`)
	yamlUnmarshMsg  = regexp.MustCompile("^cannot unmarshal !!([a-z]+)(?: `(.*)`)? into (\\S+)$")
	yamlDupKeyMsg   = regexp.MustCompile(`^mapping key "(.*)" already defined at line ([0-9]+)$`)
	yamlDupFieldMsg = regexp.MustCompile(`^field (\S+) already set in type \S+$`)
)

// translate turns yaml.v3's "line N: …" type errors into problems with key paths and the lines
// of the configuration file. fallback is the path used when a line is not in the index. It also
// returns the paths that failed to decode, for validation to skip: a duplicate key makes yaml.v3
// skip its whole mapping, so there it is the mapping's path.
func (idx lineIndex) translate(typeErr *yaml.TypeError, fallback string) (problems []*ConfigError, failed []string) {
	for _, raw := range typeErr.Errors {
		m := yamlLineMsg.FindStringSubmatch(raw)
		if m == nil {
			problems = append(problems, &ConfigError{Path: pathOr(fallback), Message: raw})
			failed = append(failed, fallback)
			continue
		}
		line, _ := strconv.Atoi(m[1])
		msg := m[2]
		entry := idx[line]
		path, fileLine := fallback, 0
		if entry != nil {
			path, fileLine = entry.mostSpecific(), entry.fileLine
		}
		failedPath := path
		switch {
		case yamlUnknownMsg.MatchString(msg):
			field := yamlUnknownMsg.FindStringSubmatch(msg)[1]
			path = joinKeyPath(fallback, field)
			if entry != nil {
				path = entry.ending(field)
			}
			failedPath = path
			msg = "unknown key"
		case yamlDupFieldMsg.MatchString(msg):
			msg = "set twice (through a merge key)"
		case yamlDupKeyMsg.MatchString(msg):
			dm := yamlDupKeyMsg.FindStringSubmatch(msg)
			if entry != nil {
				path = entry.ending(dm[1])
			}
			failedPath = parentPath(path)
			first, _ := strconv.Atoi(dm[2])
			if e := idx[first]; e != nil {
				first = e.fileLine
			}
			msg = fmt.Sprintf("key given twice, at lines %d and %d", first, fileLine)
			fileLine = 0
		case yamlUnmarshMsg.MatchString(msg):
			um := yamlUnmarshMsg.FindStringSubmatch(msg)
			if (um[1] == "map" || um[1] == "seq") && entry != nil && len(entry.collections) > 0 {
				// The error is about a whole mapping or list: name the key it is the value of.
				path = entry.collections[0]
				failedPath = path
			}
			msg = describeTypeError(um[1], um[2], um[3])
		}
		problems = append(problems, &ConfigError{Path: pathOr(path), Line: fileLine, Message: msg})
		failed = append(failed, failedPath)
	}
	return problems, failed
}

// parentPath returns the path of the mapping or list holding path.
func parentPath(path string) string {
	if i := strings.LastIndexAny(path, ".["); i >= 0 {
		return path[:i]
	}
	return ""
}

func pathOr(path string) string {
	if path == "" {
		return "config"
	}
	return path
}

// mostSpecific returns the deepest path starting on the line: in block style a line holds one
// key, or a list item and the first key of its mapping.
func (e *lineEntry) mostSpecific() string {
	best := ""
	for _, p := range e.paths {
		if len(p) > len(best) {
			best = p
		}
	}
	return best
}

// ending returns the path on the line whose last key is key, or the most specific one.
func (e *lineEntry) ending(key string) string {
	for _, p := range e.paths {
		if p == key || strings.HasSuffix(p, "."+key) {
			return p
		}
	}
	return e.mostSpecific()
}

// describeTypeError rewrites yaml.v3's "cannot unmarshal !!tag `value` into type" for people.
func describeTypeError(tag, value, goType string) string {
	var want string
	switch {
	case goType == "time.Duration":
		want = "a duration with a unit, such as 24h, 90m or 30s"
	case goType == "uint16":
		want = "a whole number from 0 to 65535"
	case strings.HasPrefix(goType, "uint"):
		want = "a whole number, 0 or more"
	case strings.HasPrefix(goType, "int"):
		want = "a whole number"
	case strings.HasPrefix(goType, "float"):
		want = "a number"
	case goType == "bool":
		want = "true or false"
	case goType == "string" || goType == "*string" || goType == "vault.Secret":
		want = "a string"
	case strings.HasPrefix(goType, "[]"):
		want = "a list"
	case strings.HasPrefix(goType, "map["), strings.Contains(goType, "."):
		want = "a mapping of keys to values"
	default:
		want = "a " + goType
	}
	var got string
	switch tag {
	case "map":
		got = "a mapping"
	case "seq":
		got = "a list"
	case "str":
		got = fmt.Sprintf("the string %q", value)
	case "null":
		got = "null"
	default:
		got = value
	}
	return fmt.Sprintf("expected %s, got %s", want, got)
}

// configIDPattern is what a compiled-in bridge ID must look like: it is a config key, a table
// prefix and a log field.
var configIDPattern = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

// validate checks the core configuration's values. checkTokens refuses placeholder tokens;
// configPath appears in the message saying how to generate them.
func (cfg *Config) validate(checkTokens bool, configPath string) []*ConfigError {
	var p []*ConfigError
	add := func(path, format string, args ...any) {
		p = append(p, &ConfigError{Path: path, Message: fmt.Sprintf(format, args...)})
	}

	checkHTTPURL := func(path, value string) {
		if value == "" {
			add(path, "must be set")
			return
		}
		u, err := url.Parse(value)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			add(path, "must be an http:// or https:// URL, such as http://127.0.0.1:8008")
		}
	}

	checkHTTPURL("homeserver.address", cfg.Homeserver.Address)
	switch {
	case cfg.Homeserver.Domain == "":
		add("homeserver.domain", "must be set to the homeserver's server name")
	case !id.ValidateServerName(cfg.Homeserver.Domain):
		add("homeserver.domain", "%q is not a server name (such as example.org or localhost:8448)", cfg.Homeserver.Domain)
	}

	as := &cfg.AppService
	switch {
	case as.ID == "":
		add("appservice.id", "must be set")
	case strings.ContainsFunc(as.ID, isSpaceOrControl):
		add("appservice.id", "must not contain whitespace")
	}
	checkHTTPURL("appservice.address", as.Address)
	if as.Hostname == "" {
		add("appservice.hostname", "must be set (127.0.0.1 for local only, 0.0.0.0 for every interface)")
	}
	if as.Port == 0 {
		add("appservice.port", "must be set")
	}
	if checkTokens {
		for _, tok := range []struct{ path, value string }{
			{"appservice.as_token", as.ASToken.Reveal()},
			{"appservice.hs_token", as.HSToken.Reveal()},
		} {
			if tok.value == "" || tok.value == TokenPlaceholder {
				add(tok.path, "not generated yet; run %q", "custodian -g -c "+configPath+" -r registration.yaml")
			}
		}
		if !as.ASToken.IsZero() && as.ASToken.Reveal() != TokenPlaceholder && as.HSToken.Equal(as.ASToken.Reveal()) {
			add("appservice.hs_token", "must differ from appservice.as_token")
		}
	}
	if err := id.ValidateUserLocalpart(as.BotUsername); err != nil {
		if as.BotUsername == "" {
			add("appservice.bot_username", "must be set")
		} else {
			add("appservice.bot_username", "%q is not a valid localpart: use only a-z, 0-9 and . _ = - / +", as.BotUsername)
		}
	}
	if as.BotAvatar != "" {
		if _, err := id.ParseContentURI(as.BotAvatar); err != nil || !strings.HasPrefix(as.BotAvatar, "mxc://") {
			add("appservice.bot_avatar", "must be an mxc:// URI or null")
		}
	}
	if as.MaxBodyBytes <= 0 {
		add("appservice.max_body_bytes", "must be positive (10485760 is 10 MiB)")
	}
	if as.MaxBacklog <= 0 {
		add("appservice.max_backlog", "must be positive")
	}
	if as.Workers <= 0 {
		add("appservice.workers", "must be positive")
	}

	db := &cfg.Database
	switch db.Type {
	case DatabaseSQLite, DatabaseSQLiteFullSync:
		if db.URI == "" {
			add("database.uri", "must be set, such as file:custodian.db?_txlock=immediate")
		} else if strings.Contains(db.URI, ":memory:") && !strings.Contains(db.URI, "cache=shared") {
			add("database.uri", "an in-memory SQLite database needs cache=shared, or each connection sees its own empty database")
		}
	case DatabasePostgres:
		if db.URI == "" {
			add("database.uri", "must be set, such as postgres://user:password@host/database?sslmode=disable")
		} else if strings.Contains(db.URI, "://") {
			// Never echo the URI: it may hold the password.
			if u, err := url.Parse(db.URI); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
				add("database.uri", "must be a postgres:// URL or a key=value connection string")
			}
		}
	case "":
		add("database.type", "must be set: %s, %s or %s", DatabaseSQLite, DatabaseSQLiteFullSync, DatabasePostgres)
	default:
		add("database.type", "unknown type %q: use %s, %s or %s", db.Type, DatabaseSQLite, DatabaseSQLiteFullSync, DatabasePostgres)
	}
	if db.MaxOpenConns < 1 {
		add("database.max_open_conns", "must be at least 1")
	}
	if db.MaxIdleConns < 0 || (db.MaxOpenConns >= 1 && db.MaxIdleConns > db.MaxOpenConns) {
		add("database.max_idle_conns", "must be between 0 and max_open_conns (%d)", db.MaxOpenConns)
	}
	if db.ProcessedTTL < MinProcessedTTL {
		add("database.processed_ttl", "must be at least %s", MinProcessedTTL)
	}

	bot := &cfg.Bot
	switch {
	case bot.CommandPrefix == "":
		add("bot.command_prefix", "must be set, such as \"!\"")
	case strings.ContainsFunc(bot.CommandPrefix, isSpaceOrControl):
		add("bot.command_prefix", "must not contain whitespace")
	}
	for i, user := range bot.InvitePolicy.AllowedUsers {
		if _, _, err := id.UserID(user).ParseAndValidateRelaxed(); err != nil || !strings.HasPrefix(user, "@") {
			add(fmt.Sprintf("bot.invite_policy.allowed_users[%d]", i), "%q is not a user ID (such as @alice:example.org)", user)
		}
	}
	for i, server := range bot.InvitePolicy.AllowedServers {
		if !id.ValidateServerName(server) {
			add(fmt.Sprintf("bot.invite_policy.allowed_servers[%d]", i), "%q is not a server name (such as example.org)", server)
		}
	}
	commands := make([]string, 0, len(bot.CommandPowerLevels))
	for command := range bot.CommandPowerLevels {
		commands = append(commands, command)
	}
	slices.Sort(commands)
	for _, command := range commands {
		if strings.TrimSpace(command) == "" {
			add("bot.command_power_levels", "has an empty command name")
		} else if strings.HasPrefix(command, bot.CommandPrefix) && bot.CommandPrefix != "" {
			add("bot.command_power_levels", "command %q: leave out the prefix %q", command, bot.CommandPrefix)
		}
	}

	if listen := cfg.Metrics.Listen; listen != nil {
		if *listen == "" {
			add("metrics.listen", "must be host:port; use null to turn metrics off")
		} else if _, port, err := net.SplitHostPort(*listen); err != nil || port == "" {
			add("metrics.listen", "%q must be host:port, such as 127.0.0.1:9330", *listen)
		} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			add("metrics.listen", "%q has an invalid port", *listen)
		}
	}

	switch cfg.Logging.Level {
	case "debug", "info", "warn", "error":
	case "trace":
		add("logging.level", "trace is not allowed: at trace level dependencies log query arguments and request bodies; use debug")
	default:
		add("logging.level", "unknown level %q: use debug, info, warn or error", cfg.Logging.Level)
	}
	switch cfg.Logging.Format {
	case LogFormatPretty, LogFormatJSON:
	default:
		add("logging.format", "unknown format %q: use %s or %s", cfg.Logging.Format, LogFormatPretty, LogFormatJSON)
	}
	p = append(p, cfg.Vault.validate()...)
	p = append(p, cfg.Privacy.validate()...)
	p = append(p, cfg.AdminAPI.validate()...)
	p = append(p, cfg.Encryption.validate()...)
	return p
}

func isSpaceOrControl(r rune) bool {
	return r <= ' ' || r == 0x7f || r == 0x85 || r == 0xa0 || r == 0x2028 || r == 0x2029
}

// namespaceProblems checks the compiled-in bridges' IDs and the enabled bridges' namespaces: valid
// prefixes, no overlap between bridges, and the bot outside every bridge's user namespace. Both
// config loading and [CheckRegistration] use it.
func namespaceProblems(cfg *Config, all []Bridge) []error {
	var p []error
	seen := make(map[string]bool, len(all))
	for _, br := range all {
		brID := br.ID()
		if !configIDPattern.MatchString(brID) {
			p = append(p, fmt.Errorf("bridges: compiled-in bridge ID %q is not lowercase snake_case (a bug in the bridge)", brID))
		}
		if seen[brID] {
			p = append(p, fmt.Errorf("bridges: two compiled-in bridges have the ID %q (a bug in cmd/custodian)", brID))
		}
		seen[brID] = true
	}
	enabled := cfg.EnabledBridges(all)
	for _, br := range enabled {
		ns := br.Namespaces()
		if ns.UserPrefix != "" && !id.ValidLocalpartRegex.MatchString(ns.UserPrefix) {
			p = append(p, fmt.Errorf("bridges.%s: user namespace prefix %q is not a valid localpart (a bug in the bridge)", br.ID(), ns.UserPrefix))
		}
		if strings.ContainsAny(ns.AliasPrefix, ":#") || strings.ContainsFunc(ns.AliasPrefix, isSpaceOrControl) {
			p = append(p, fmt.Errorf("bridges.%s: alias namespace prefix %q is not a valid alias localpart (a bug in the bridge)", br.ID(), ns.AliasPrefix))
		}
		if ns.UserPrefix != "" && cfg.AppService.BotUsername != "" && strings.HasPrefix(cfg.AppService.BotUsername, ns.UserPrefix) {
			p = append(p, fmt.Errorf("appservice.bot_username: the bot @%s:%s falls inside bridge %s's user namespace (@%s…); choose another bot_username",
				cfg.AppService.BotUsername, cfg.Homeserver.Domain, br.ID(), ns.UserPrefix))
		}
	}
	for i, a := range enabled {
		for _, b := range enabled[i+1:] {
			na, nb := a.Namespaces(), b.Namespaces()
			if prefixesOverlap(na.UserPrefix, nb.UserPrefix) {
				p = append(p, fmt.Errorf("bridges.%s: user namespace @%s… overlaps bridge %s's @%s…; two bridges cannot both be enabled with these namespaces",
					b.ID(), nb.UserPrefix, a.ID(), na.UserPrefix))
			}
			if prefixesOverlap(na.AliasPrefix, nb.AliasPrefix) {
				p = append(p, fmt.Errorf("bridges.%s: alias namespace #%s… overlaps bridge %s's #%s…; two bridges cannot both be enabled with these namespaces",
					b.ID(), nb.AliasPrefix, a.ID(), na.AliasPrefix))
			}
		}
	}
	return p
}

// prefixesOverlap reports whether some localpart starts with both prefixes. Empty means no
// namespace, which overlaps nothing.
func prefixesOverlap(a, b string) bool {
	if a == "" || b == "" {
		return false
	}
	return strings.HasPrefix(a, b) || strings.HasPrefix(b, a)
}

// bridgesSection is the last line of the core example; [ExampleConfig] replaces it with the
// bridges' examples.
const bridgesSection = "bridges: {}\n"

// ExampleConfig returns the commented example configuration: the core's, with each bridge's
// example nested under bridges.<id> (a bridge without an example gets "<id>: {}"); the section
// of an [OptInBridge] is commented out, so that the bridge is off until the admin turns it on.
// custodian -e
// prints it. All of its tokens are [TokenPlaceholder]; after custodian -g replaces them it loads
// cleanly, given the bridges' examples do.
func ExampleConfig(bridges []Bridge) string {
	if len(bridges) == 0 {
		return exampleConfig
	}
	core := strings.TrimSuffix(exampleConfig, bridgesSection)
	if core == exampleConfig {
		panic("embedded example-config.yaml does not end with " + strings.TrimSpace(bridgesSection))
	}
	var sb strings.Builder
	sb.WriteString(core)
	sb.WriteString("bridges:\n")
	for i, br := range bridges {
		example, _ := br.Config()
		example = strings.Trim(example, "\n")
		if i > 0 {
			sb.WriteString("\n")
		}
		if optIn, ok := br.(OptInBridge); ok && optIn.OptIn() {
			writeOptInExample(&sb, br.ID(), example)
			continue
		}
		fmt.Fprintf(&sb, "    # The %s bridge. Remove this section to turn it off.\n", br.ID())
		if strings.TrimSpace(example) == "" {
			fmt.Fprintf(&sb, "    %s: {}\n", br.ID())
			continue
		}
		fmt.Fprintf(&sb, "    %s:\n", br.ID())
		for _, line := range strings.Split(example, "\n") {
			line = strings.TrimRight(line, " \t\r")
			if line != "" {
				sb.WriteString("        ")
				sb.WriteString(line)
			}
			sb.WriteString("\n")
		}
	}
	return sb.String()
}

// writeOptInExample writes the example section of the opt-in bridge brID, commented out: every
// line of what would be its section, prefixed with "# " after the section's indentation, so
// that removing that "# " from each line turns the bridge on.
func writeOptInExample(sb *strings.Builder, brID, example string) {
	fmt.Fprintf(sb, "    # The %s bridge is off. To turn it on, remove the \"# \" in front of each line of\n", brID)
	sb.WriteString("    # this section, then edit it: as it stands it would connect to the network in it.\n")
	if strings.TrimSpace(example) == "" {
		fmt.Fprintf(sb, "    # %s: {}\n", brID)
		return
	}
	fmt.Fprintf(sb, "    # %s:\n", brID)
	for _, line := range strings.Split(example, "\n") {
		line = strings.TrimRight(line, " \t\r")
		if line == "" {
			sb.WriteString("    #\n")
			continue
		}
		sb.WriteString("    #     ")
		sb.WriteString(line)
		sb.WriteString("\n")
	}
}

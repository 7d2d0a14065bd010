package appservice

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"go.mau.fi/util/dbutil"
)

// dbConnectTimeout bounds the first connection to the database at startup.
const dbConnectTimeout = 30 * time.Second

// openDatabase opens the database cfg describes, sizes its pool, checks that it answers, and
// returns it with its logger set. It does not run migrations. The SQL drivers must have been
// registered by the binary (cmd/custodian imports github.com/lib/pq and
// go.mau.fi/util/dbutil/litestream); tests import them in their own files.
//
// Neither its log lines nor its errors contain the URI's password.
func openDatabase(cfg *DatabaseConfig, log zerolog.Logger) (*dbutil.Database, error) {
	uri := cfg.URI
	if isSQLite(cfg.Type) {
		uri = withSQLiteParams(uri)
	}
	safeURI := redactURI(cfg.URI)
	dbCfg := dbutil.Config{PoolConfig: dbutil.PoolConfig{
		Type:         cfg.Type,
		URI:          uri,
		MaxOpenConns: cfg.MaxOpenConns,
		MaxIdleConns: cfg.MaxIdleConns,
	}}
	db, err := dbutil.NewFromConfig("custodian", dbCfg, dbutil.ZeroLogger(log.With().Str("db_section", "main").Logger()))
	if err != nil {
		hint := ""
		if strings.Contains(err.Error(), "unknown driver") {
			hint = " (the binary does not register this driver: import it in cmd/custodian)"
		}
		return nil, redactError(fmt.Errorf("failed to open %s database %s: %w%s", cfg.Type, safeURI, err, hint), cfg.URI)
	}
	ctx, cancel := context.WithTimeout(context.Background(), dbConnectTimeout)
	defer cancel()
	if err = db.RawDB.PingContext(ctx); err != nil {
		_ = db.Close()
		return nil, redactError(fmt.Errorf("failed to connect to %s database %s: %w", cfg.Type, safeURI, err), cfg.URI)
	}
	log.Info().
		Str("db_type", cfg.Type).
		Str("db_uri", safeURI).
		Int("max_open_conns", cfg.MaxOpenConns).
		Int("max_idle_conns", cfg.MaxIdleConns).
		Msg("Opened database")
	return db, nil
}

func isSQLite(dbType string) bool {
	return dbType == DatabaseSQLite || dbType == DatabaseSQLiteFullSync
}

// sqliteParams are the go-sqlite3 DSN parameters the service adds to a SQLite URI that does not
// set them itself, in this order.
//
//   - _txlock=immediate: a deferred transaction that reads and then writes cannot wait for the
//     write lock in WAL mode: it fails at once with SQLITE_BUSY when another connection wrote in
//     between. Taking the lock at BEGIN makes writers queue on busy_timeout instead.
//   - _secure_delete=on (PRAGMA secure_delete on every connection): SQLite overwrites deleted
//     content with zeros, so an erased user's rows do not linger in free pages of the database
//     file. Erasure checkpoints the WAL afterwards, which carries the zeroed pages into the file
//     and truncates the WAL (see checkpointAfterErasure).
var sqliteParams = []struct{ key, value string }{
	{"_txlock", "immediate"},
	{"_secure_delete", "on"},
}

// withSQLiteParams adds each of [sqliteParams] that the URI does not set already. go-sqlite3
// reads the parameters after "?" from plain paths as well as from file: URIs.
func withSQLiteParams(uri string) string {
	for _, p := range sqliteParams {
		if strings.Contains(uri, p.key+"=") {
			continue
		}
		sep := "?"
		if strings.Contains(uri, "?") {
			sep = "&"
		}
		uri += sep + p.key + "=" + p.value
	}
	return uri
}

var (
	// userinfoPassword finds the password of a URL-style URI even when net/url cannot parse it.
	userinfoPassword = regexp.MustCompile(`://[^/@]*?:([^/@]*)@`)
	// keywordPassword finds password=… in a key=value connection string, quoted or not.
	keywordPassword = regexp.MustCompile(`(?i)\bpassword\s*=\s*('(?:[^'\\]|\\.)*'|[^\s]*)`)
)

// redactURI returns uri with any password replaced, safe to log: URL-style URIs
// (postgres://user:secret@host/db) go through (*url.URL).Redacted, which writes "xxxxx";
// key=value connection strings get password=xxxxx. Other URIs (SQLite paths) come back as they
// are.
func redactURI(uri string) string {
	if strings.Contains(uri, "://") {
		if u, err := url.Parse(uri); err == nil {
			uri = u.Redacted()
		} else {
			uri = replaceSubmatch(userinfoPassword, uri, "xxxxx")
		}
	}
	return replaceSubmatch(keywordPassword, uri, "xxxxx")
}

// replaceSubmatch replaces the first capture group of every match of re in s with repl.
func replaceSubmatch(re *regexp.Regexp, s, repl string) string {
	var sb strings.Builder
	last := 0
	for _, m := range re.FindAllStringSubmatchIndex(s, -1) {
		if m[2] < 0 {
			continue
		}
		sb.WriteString(s[last:m[2]])
		sb.WriteString(repl)
		last = m[3]
	}
	sb.WriteString(s[last:])
	return sb.String()
}

// uriPasswords returns the passwords in uri, in every spelling an error message might use
// (as written and URL-decoded).
func uriPasswords(uri string) []string {
	var out []string
	addPassword := func(pw string) {
		pw = strings.Trim(pw, "'")
		if pw == "" {
			return
		}
		out = append(out, pw)
		if dec, err := url.PathUnescape(pw); err == nil && dec != pw {
			out = append(out, dec)
		}
	}
	if u, err := url.Parse(uri); err == nil && u.User != nil {
		if pw, ok := u.User.Password(); ok {
			addPassword(pw)
		}
	}
	for _, m := range userinfoPassword.FindAllStringSubmatch(uri, -1) {
		addPassword(m[1])
	}
	for _, m := range keywordPassword.FindAllStringSubmatch(uri, -1) {
		addPassword(m[1])
	}
	return out
}

// redactedError hides a URI's password from an error message (drivers and net/url quote the
// URI they failed on) while keeping the cause for errors.Is and errors.As.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// redactError returns err with every spelling of uri's password removed from its message.
func redactError(err error, uri string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	changed := false
	for _, pw := range uriPasswords(uri) {
		if strings.Contains(msg, pw) {
			msg = strings.ReplaceAll(msg, pw, "xxxxx")
			changed = true
		}
	}
	if !changed {
		return err
	}
	return &redactedError{msg: msg, err: errors.Unwrap(err)}
}

package appservice

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
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
		if err := makeSQLitePrivate(cfg.URI, log); err != nil {
			return nil, err
		}
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

// sqlitePath returns the file a SQLite URI names, or "" for an in-memory database.
func sqlitePath(uri string) string {
	path := strings.TrimPrefix(uri, "file:")
	if i := strings.IndexByte(path, '?'); i >= 0 {
		if strings.Contains(path[i:], "mode=memory") {
			return ""
		}
		path = path[:i]
	}
	if strings.HasPrefix(path, "//") {
		// file://host/path: only the local host is allowed, and the path follows it.
		if j := strings.IndexByte(path[2:], '/'); j >= 0 {
			path = path[2+j:]
		} else {
			return ""
		}
	}
	if path == "" || path == ":memory:" {
		return ""
	}
	if dec, err := url.PathUnescape(path); err == nil {
		path = dec
	}
	return path
}

// makeSQLitePrivate makes the SQLite database file readable and writable by its owner only, like
// the config, registration and key files: it holds everyone's bridge data. It creates the file
// with mode 0600 before SQLite opens it (SQLite gives the -wal and -shm files the database
// file's mode), and tightens the database, -wal and -shm files an earlier version left readable
// by others, logging each. The directory's own mode is left to the admin.
func makeSQLitePrivate(uri string, log zerolog.Logger) error {
	path := sqlitePath(uri)
	if path == "" {
		return nil
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("failed to create database file %s: %w", path, err)
	}
	_ = f.Close()
	for _, name := range []string{path, path + "-wal", path + "-shm"} {
		info, err := os.Stat(name)
		if errors.Is(err, os.ErrNotExist) {
			continue
		} else if err != nil {
			return fmt.Errorf("failed to check the mode of %s: %w", name, err)
		}
		mode := info.Mode().Perm()
		if mode&0o077 == 0 {
			continue
		}
		if err = os.Chmod(name, mode&0o700); err != nil {
			return fmt.Errorf("failed to make %s private: %w", name, err)
		}
		log.Warn().Str("file", name).Str("old_mode", fmt.Sprintf("%04o", mode)).Str("new_mode", fmt.Sprintf("%04o", mode&0o700)).
			Msg("Database file was readable by other users; made it private")
	}
	return nil
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

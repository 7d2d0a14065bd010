package appservice

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/rs/zerolog"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"
	"go.mau.fi/util/exzerolog"

	"github.com/custodian-matrix/custodian/appservice/vault"
)

// NewLogger returns the service's logger, writing to w (custodian uses os.Stderr) in the format
// and from the level cfg gives: [LogFormatJSON] writes one JSON object per line;
// [LogFormatPretty] writes zerolog's console format, coloured only when w is a terminal.
//
// Whatever the format, fields that dependencies write with request bodies or query arguments
// (req_body, query_args) are replaced with [vault.Redacted] before anything is written:
// mautrix's client logs the body of every request it makes, which for a message is the message.
//
// NewLogger also sets process-wide zerolog defaults through exzerolog.SetupDefaults: a log call
// made with a context that carries no logger goes to this logger, tagged default_context_log,
// and the global logger is tagged global_log, so stray log calls show up. Call it once, at
// startup, before anything logs.
//
// It returns an error, and a disabled logger, if cfg holds a level or format that config
// validation would refuse.
func NewLogger(cfg LoggingConfig, w io.Writer) (zerolog.Logger, error) {
	var level zerolog.Level
	switch cfg.Level {
	case "debug":
		level = zerolog.DebugLevel
	case "info":
		level = zerolog.InfoLevel
	case "warn":
		level = zerolog.WarnLevel
	case "error":
		level = zerolog.ErrorLevel
	default:
		return zerolog.Nop(), fmt.Errorf("unknown log level %q: use debug, info, warn or error", cfg.Level)
	}
	var out io.Writer = redactingWriter{w: w}
	switch cfg.Format {
	case LogFormatJSON:
	case LogFormatPretty:
		out = redactingWriter{w: zerolog.ConsoleWriter{
			Out:        w,
			NoColor:    !isTerminal(w),
			TimeFormat: time.StampMilli,
		}}
	default:
		return zerolog.Nop(), fmt.Errorf("unknown log format %q: use %s or %s", cfg.Format, LogFormatPretty, LogFormatJSON)
	}
	log := zerolog.New(out).Level(level).With().Timestamp().Logger()
	exzerolog.SetupDefaults(&log)
	return log, nil
}

// isTerminal reports whether w is a character device, such as a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	info, err := f.Stat()
	return err == nil && info.Mode()&os.ModeCharDevice != 0
}

// redactedLogFields are top-level log fields that dependencies fill with request bodies or query
// arguments, which can hold message bodies and secrets: mautrix's HTTP client writes req_body
// with every request it logs (at debug, and at error when the request fails), and dbutil writes
// query_args for slow queries at trace level.
var redactedLogFields = []string{"req_body", "query_args"}

// redactingWriter replaces the values of [redactedLogFields] in each zerolog event (one JSON
// object per Write) before passing it on.
type redactingWriter struct {
	w io.Writer
}

func (rw redactingWriter) Write(p []byte) (int, error) {
	out := p
	for _, key := range redactedLogFields {
		if !bytes.Contains(out, []byte(`"`+key+`"`)) || !gjson.GetBytes(out, key).Exists() {
			continue
		}
		redacted, err := sjson.SetBytes(out, key, vault.Redacted)
		if err != nil {
			// Not JSON we can edit: drop the event rather than risk writing the field.
			return len(p), nil
		}
		out = redacted
	}
	if _, err := rw.w.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}

package appservice

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	deflog "github.com/rs/zerolog/log"
)

// keepZerologGlobals restores what NewLogger changes process-wide when the test ends, so later
// tests do not log into this test's buffer.
func keepZerologGlobals(t *testing.T) {
	ctxLog, global, timeFormat := zerolog.DefaultContextLogger, deflog.Logger, zerolog.TimeFieldFormat
	callerFunc := zerolog.CallerMarshalFunc
	t.Cleanup(func() {
		zerolog.DefaultContextLogger, deflog.Logger, zerolog.TimeFieldFormat = ctxLog, global, timeFormat
		zerolog.CallerMarshalFunc = callerFunc
	})
}

func TestNewLogger(t *testing.T) {
	keepZerologGlobals(t)
	tests := []struct {
		name    string
		cfg     LoggingConfig
		wantErr bool
		check   func(t *testing.T, out string)
	}{
		{
			name: "json at info drops debug",
			cfg:  LoggingConfig{Level: "info", Format: LogFormatJSON},
			check: func(t *testing.T, out string) {
				lines := strings.Split(strings.TrimSpace(out), "\n")
				if len(lines) != 1 {
					t.Fatalf("got %d lines, want 1: %q", len(lines), out)
				}
				var evt map[string]any
				if err := json.Unmarshal([]byte(lines[0]), &evt); err != nil {
					t.Fatalf("line is not JSON: %v", err)
				}
				if evt["level"] != "info" || evt["message"] != "Started" || evt["room_id"] != "!r:x" || evt["time"] == nil {
					t.Errorf("event = %v", evt)
				}
			},
		},
		{
			name: "pretty at debug",
			cfg:  LoggingConfig{Level: "debug", Format: LogFormatPretty},
			check: func(t *testing.T, out string) {
				if !strings.Contains(out, "Debugging") || !strings.Contains(out, "Started") || strings.HasPrefix(out, "{") {
					t.Errorf("output = %q, want two human-readable lines", out)
				}
				if strings.Contains(out, "\x1b[") {
					t.Errorf("output = %q has colours, but is not a terminal", out)
				}
			},
		},
		{name: "trace refused", cfg: LoggingConfig{Level: "trace", Format: LogFormatJSON}, wantErr: true},
		{name: "unknown format", cfg: LoggingConfig{Level: "info", Format: "xml"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			log, err := NewLogger(tt.cfg, &buf)
			if (err != nil) != tt.wantErr {
				t.Fatalf("NewLogger(%+v) error = %v, wantErr %v", tt.cfg, err, tt.wantErr)
			}
			if err != nil {
				return
			}
			log.Debug().Msg("Debugging")
			log.Info().Str("room_id", "!r:x").Msg("Started")
			tt.check(t, buf.String())
		})
	}
}

func TestNewLoggerSetsDefaultContextLogger(t *testing.T) {
	keepZerologGlobals(t)
	var buf bytes.Buffer
	if _, err := NewLogger(LoggingConfig{Level: "info", Format: LogFormatJSON}, &buf); err != nil {
		t.Fatal(err)
	}
	zerolog.Ctx(context.Background()).Info().Msg("No context logger")
	if !strings.Contains(buf.String(), `"default_context_log":true`) {
		t.Errorf("log without a ctx logger = %q, want it tagged default_context_log", buf.String())
	}
}

func TestNewLoggerRedactsBodies(t *testing.T) {
	keepZerologGlobals(t)
	for _, format := range []string{LogFormatJSON, LogFormatPretty} {
		t.Run(format, func(t *testing.T) {
			var buf bytes.Buffer
			log, err := NewLogger(LoggingConfig{Level: "debug", Format: format}, &buf)
			if err != nil {
				t.Fatal(err)
			}
			// What mautrix's client and dbutil write.
			log.Debug().RawJSON("req_body", []byte(`{"msgtype":"m.text","body":"top secret message"}`)).Str("method", "PUT").Msg("Request completed")
			log.Error().Str("req_body", "top secret message").Msg("Request failed")
			log.Debug().Interface("query_args", []any{"top secret message"}).Msg("Query")
			out := buf.String()
			if strings.Contains(out, "top secret") {
				t.Errorf("log leaks a body: %q", out)
			}
			if strings.Count(out, "[redacted]") != 3 || !strings.Contains(out, "PUT") {
				t.Errorf("log = %q, want three redacted fields and the rest kept", out)
			}
		})
	}
}

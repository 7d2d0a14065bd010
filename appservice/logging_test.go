package appservice

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	deflog "github.com/rs/zerolog/log"
	mxas "maunium.net/go/mautrix/appservice"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/custodian-matrix/custodian/appservice/astest"
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

// TestClientRequestBodiesNeverReachTheLog runs the service with its production logger at
// debug and encryption on, and sends a message into an unencrypted room through the bot's
// client and a ghost's: mautrix logs each request with its body (req_body), through the
// logger of the request's context, yet neither body, nor the one-time keys the crypto
// machine's client uploaded, reaches the log.
func TestClientRequestBodiesNeverReachTheLog(t *testing.T) {
	keepZerologGlobals(t)
	const body = "a message body only the homeserver may see"
	env := startCryptoService(t, cryptoSetup{vault: true, before: echoToDevice, logger: func(t *testing.T, w io.Writer) zerolog.Logger {
		log, err := NewLogger(LoggingConfig{Level: "debug", Format: LogFormatJSON}, w)
		if err != nil {
			t.Fatal(err)
		}
		return log
	}})
	if env.svc.crypto == nil {
		t.Fatalf("svc.crypto is nil; the log says:\n%s", env.logs.String())
	}
	env.logs.waitFor(t, "The homeserver delivers to-device events to the appservice")
	room := id.RoomID("!plain:example.org")
	ghost, err := env.br.host.Intent("irc_alice")
	if err != nil {
		t.Fatal(err)
	}
	senders := []struct {
		name   string
		intent *mxas.IntentAPI
	}{
		{"bot", env.svc.intent(env.svc.as.BotMXID())},
		{"ghost", ghost},
	}
	for _, s := range senders {
		env.hs.SetMembership(room, s.intent.UserID, event.MembershipJoin)
		if _, err := s.intent.SendText(env.ctx, room, body+" from the "+s.name); err != nil {
			t.Fatalf("%s: SendText() = %v", s.name, err)
		}
	}
	sent := env.hs.Messages(room)
	if len(sent) != len(senders) || !strings.Contains(string(env.hs.RequestsTo(astest.PatternSend)[0].Body), body) {
		t.Fatalf("the homeserver got %d plaintext messages, want %d: the test sends nothing mautrix could log", len(sent), len(senders))
	}
	logs := env.logs.String()
	if strings.Contains(logs, body) {
		t.Errorf("the log holds a message body:\n%s", logs)
	}
	// mautrix did log the sends, at debug, with the body's field replaced.
	logged := 0
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, "/send/m.room.message/") && strings.Contains(line, `"req_body":"[redacted]"`) {
			logged++
		}
	}
	if logged != len(senders) {
		t.Errorf("%d sends logged with req_body redacted, want %d:\n%s", logged, len(senders), logs)
	}
	uploads := env.hs.RequestsTo(astest.PatternKeysUpload)
	if len(uploads) == 0 {
		t.Fatal("the crypto machine's client uploaded no keys")
	}
	for _, r := range uploads {
		var upload struct {
			OneTimeKeys map[string]struct {
				Key string `json:"key"`
			} `json:"one_time_keys"`
		}
		if err := json.Unmarshal(r.Body, &upload); err != nil {
			t.Fatal(err)
		}
		for keyID, otk := range upload.OneTimeKeys {
			if otk.Key == "" || strings.Contains(logs, otk.Key) {
				t.Errorf("one-time key %s is empty or in the log", keyID)
			}
		}
	}
}

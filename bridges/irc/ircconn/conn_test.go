package ircconn

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/ergochat/irc-go/ircmsg"
	"github.com/ergochat/irc-go/ircutils"

	"github.com/custodian-matrix/custodian/appservice/astest"
	"github.com/custodian-matrix/custodian/appservice/clock"
	"github.com/custodian-matrix/custodian/appservice/vault"
	"github.com/custodian-matrix/custodian/bridges/irc/ircid"
	"github.com/custodian-matrix/custodian/bridges/irc/ircline"
)

const testPassword = "hunter2-s3cret-Pa55"

func TestFallbackNick(t *testing.T) {
	tests := []struct {
		nick    string
		attempt int
		nickLen int
		want    string
	}{
		{"alice", 0, 30, "alice"},
		{"alice", 1, 30, "alice_"},
		{"alice", 2, 30, "alice1"},
		{"alice", 11, 30, "alice10"},
		{"alice", 1, 5, "alic_"},
		{"alice", 11, 5, "ali10"},
		{"alice", 0, 3, "alice"},
		{"a", 11, 1, "a10"},
		{"zoë", 1, 3, "zo_"},
		{"zoë", 2, 4, "zo1"},
		{"ëa", 1, 2, "ë_"},
		{"ëa", 1, 1, "ë_"},
		{"a\xff\xfe", 2, 2, "a1"},
	}
	for _, tt := range tests {
		if got := FallbackNick(tt.nick, tt.attempt, tt.nickLen); got != tt.want {
			t.Errorf("FallbackNick(%q, %d, %d) = %q, want %q", tt.nick, tt.attempt, tt.nickLen, got, tt.want)
		}
	}
}

func TestUnescapeISupport(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"Libera.Chat", "Libera.Chat"},
		{`Test\x20Net`, "Test Net"},
		{`a\x3Db\x5c`, `a=b\`},
		{`bad\x2`, `bad\x2`},
		{`bad\xZZ`, `bad\xZZ`},
		{`\`, `\`},
	}
	for _, tt := range tests {
		if got := unescapeISupport(tt.in); got != tt.want {
			t.Errorf("unescapeISupport(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// saslScript plays a server offering sasl that answers the credentials with result lines.
func saslScript(t *testing.T, results ...string) func(p *peer) error {
	return func(p *peer) error {
		return steps(
			func() error { return p.handshake("alice") },
			func() error { return p.send(":srv CAP * LS :sasl=PLAIN,EXTERNAL server-time") },
			func() error { _, err := p.expect("CAP", "REQ", "server-time sasl"); return err },
			func() error { return p.send(":srv CAP * ACK :server-time sasl") },
			func() error { _, err := p.expect("AUTHENTICATE", "PLAIN"); return err },
			func() error { return p.send("AUTHENTICATE +") },
			func() error {
				msg, err := p.expect("AUTHENTICATE")
				if err != nil {
					return err
				}
				raw, err := base64.StdEncoding.DecodeString(msg.Params[0])
				if want := "\x00acct\x00" + testPassword; err != nil || string(raw) != want {
					t.Errorf("SASL response = %q (%v), want %q", raw, err, want)
				}
				return p.send(results...)
			},
		)
	}
}

func TestDialRegistration(t *testing.T) {
	tests := []struct {
		name    string
		config  func(cfg *Config)
		script  func(t *testing.T) func(p *peer) error
		wantErr error
		check   func(t *testing.T, c *Conn, err error)
	}{{
		name: "server without CAP",
		script: func(*testing.T) func(p *peer) error {
			return func(p *peer) error {
				return steps(
					func() error { return p.handshake("alice") },
					func() error {
						return p.send(":srv 421 alice CAP :Unknown command", ":srv 001 alice :Welcome",
							":srv 005 alice NICKLEN=16 :are supported",
							":srv 900 alice alice!a@h acct2 :You are now logged in (server password)",
							":srv 422 alice :MOTD File is missing")
					},
				)
			}
		},
		check: func(t *testing.T, c *Conn, err error) {
			if got := c.Nick(); got != "alice" {
				t.Errorf("Nick() = %q, want alice", got)
			}
			if got := c.CaseMapping(); got != ircid.RFC1459 {
				t.Errorf("CaseMapping() = %v, want rfc1459", got)
			}
			if v, ok := c.ISupport("nicklen"); v != "16" || !ok {
				t.Errorf("ISupport(nicklen) = %q, %v, want 16, true", v, ok)
			}
			if got := c.Caps(); len(got) != 0 {
				t.Errorf("Caps() = %q, want none", got)
			}
			if got := c.Account(); got != "acct2" {
				t.Errorf("Account() = %q, want acct2", got)
			}
		},
	}, {
		name: "multi-line CAP LS, server-assigned nick, ISUPPORT",
		script: func(*testing.T) func(p *peer) error {
			return func(p *peer) error {
				return steps(
					func() error { return p.handshake("alice") },
					func() error {
						return p.send(":srv CAP * LS * :multi-prefix sasl=PLAIN,EXTERNAL",
							":srv CAP * LS * :server-time draft/foo=bar",
							":srv CAP * LS :message-tags echo-message batch")
					},
					func() error {
						_, err := p.expect("CAP", "REQ", "server-time message-tags multi-prefix batch")
						return err
					},
					func() error { return p.send(":srv CAP * ACK :server-time message-tags multi-prefix batch") },
					func() error { _, err := p.expect("CAP", "END"); return err },
					func() error {
						return p.welcome("ALICE", "CHANTYPES=# PREFIX=(ov)@+ CASEMAPPING=strict-rfc1459 FOO",
							`NETWORK=Test\x20Net -FOO BAR=baz`)
					},
				)
			}
		},
		check: func(t *testing.T, c *Conn, err error) {
			if got := c.Nick(); got != "ALICE" {
				t.Errorf("Nick() = %q, want ALICE", got)
			}
			for _, name := range []string{"server-time", "message-tags", "multi-prefix", "batch"} {
				if !c.HasCap(name) {
					t.Errorf("HasCap(%q) = false, want true", name)
				}
			}
			if c.HasCap("echo-message") || c.HasCap("sasl") {
				t.Errorf("Caps() = %q, want no echo-message or sasl", c.Caps())
			}
			if got := c.CaseMapping(); got != ircid.RFC1459Strict {
				t.Errorf("CaseMapping() = %v, want rfc1459-strict", got)
			}
			if got := c.Network(); got != "Test Net" {
				t.Errorf("Network() = %q, want %q", got, "Test Net")
			}
			if v, ok := c.ISupport("FOO"); ok {
				t.Errorf("ISupport(FOO) = %q, true after -FOO, want absent", v)
			}
			if v, ok := c.ISupport("BAR"); v != "baz" || !ok {
				t.Errorf("ISupport(BAR) = %q, %v, want baz, true", v, ok)
			}
		},
	}, {
		name:   "SASL success",
		config: func(cfg *Config) { cfg.SASL = &SASL{Account: "acct", Password: vault.NewSecret(testPassword)} },
		script: func(t *testing.T) func(p *peer) error {
			inner := saslScript(t, ":srv 900 alice alice!a@h acct :You are now logged in as acct",
				":srv 903 alice :SASL authentication successful")
			return func(p *peer) error {
				return steps(
					func() error { return inner(p) },
					func() error { _, err := p.expect("CAP", "END"); return err },
					func() error { return p.welcome("alice") },
				)
			}
		},
		check: func(t *testing.T, c *Conn, err error) {
			if got := c.Account(); got != "acct" {
				t.Errorf("Account() = %q, want acct", got)
			}
			if !c.HasCap("sasl") {
				t.Errorf("HasCap(sasl) = false, want true")
			}
		},
	}, {
		name:   "SASL failure",
		config: func(cfg *Config) { cfg.SASL = &SASL{Account: "acct", Password: vault.NewSecret(testPassword)} },
		script: func(t *testing.T) func(p *peer) error {
			inner := saslScript(t, ":srv 904 alice :SASL authentication failed")
			return func(p *peer) error {
				return steps(func() error { return inner(p) }, p.expectEOF)
			}
		},
		wantErr: ErrSASLFailed,
		check: func(t *testing.T, c *Conn, err error) {
			var se *SASLError
			if !errors.As(err, &se) || se.Numeric != "904" {
				t.Errorf("Dial() = %v, want *SASLError 904", err)
			}
		},
	}, {
		name: "SASL long password is chunked",
		config: func(cfg *Config) {
			cfg.SASL = &SASL{Account: "acct", Password: vault.NewSecret(strings.Repeat("p", 600))}
		},
		script: func(t *testing.T) func(p *peer) error {
			return func(p *peer) error {
				return steps(
					func() error { return p.handshake("alice") },
					func() error { return p.send(":srv CAP * LS :sasl") },
					func() error { _, err := p.expect("CAP", "REQ", "sasl"); return err },
					func() error { return p.send(":srv CAP * ACK :sasl") },
					func() error { _, err := p.expect("AUTHENTICATE", "PLAIN"); return err },
					func() error { return p.send("AUTHENTICATE +") },
					func() error {
						buf := ircutils.NewSASLBuffer(4096)
						for {
							msg, err := p.expect("AUTHENTICATE")
							if err != nil {
								return err
							}
							done, raw, err := buf.Add(msg.Params[0])
							if err != nil {
								return err
							}
							if done {
								if want := "\x00acct\x00" + strings.Repeat("p", 600); string(raw) != want {
									t.Errorf("reassembled SASL response has %d bytes, want %d", len(raw), len(want))
								}
								return nil
							}
						}
					},
					func() error { return p.send(":srv 903 alice :SASL authentication successful") },
					func() error { _, err := p.expect("CAP", "END"); return err },
					func() error { return p.welcome("alice") },
				)
			}
		},
	}, {
		name:   "SASL not offered",
		config: func(cfg *Config) { cfg.SASL = &SASL{Account: "acct", Password: vault.NewSecret(testPassword)} },
		script: func(*testing.T) func(p *peer) error {
			return func(p *peer) error {
				return steps(
					func() error { return p.handshake("alice") },
					func() error { return p.send(":srv CAP * LS :server-time") },
					p.expectEOF,
				)
			}
		},
		wantErr: ErrSASLUnavailable,
	}, {
		name:   "SASL without PLAIN",
		config: func(cfg *Config) { cfg.SASL = &SASL{Account: "acct", Password: vault.NewSecret(testPassword)} },
		script: func(*testing.T) func(p *peer) error {
			return func(p *peer) error {
				return steps(
					func() error { return p.handshake("alice") },
					func() error { return p.send(":srv CAP * LS :sasl=EXTERNAL,SCRAM-SHA-256") },
					p.expectEOF,
				)
			}
		},
		wantErr: ErrSASLUnavailable,
	}, {
		name:   "SASL refused with NAK",
		config: func(cfg *Config) { cfg.SASL = &SASL{Account: "acct", Password: vault.NewSecret(testPassword)} },
		script: func(*testing.T) func(p *peer) error {
			return func(p *peer) error {
				return steps(
					func() error { return p.handshake("alice") },
					func() error { return p.send(":srv CAP * LS :sasl") },
					func() error { _, err := p.expect("CAP", "REQ", "sasl"); return err },
					func() error { return p.send(":srv CAP * NAK :sasl") },
					p.expectEOF,
				)
			}
		},
		wantErr: ErrSASLUnavailable,
	}, {
		name:   "SASL configured, server without CAP",
		config: func(cfg *Config) { cfg.SASL = &SASL{Account: "acct", Password: vault.NewSecret(testPassword)} },
		script: func(*testing.T) func(p *peer) error {
			return func(p *peer) error {
				return steps(
					func() error { return p.handshake("alice") },
					func() error { return p.send(":srv 001 alice :Welcome") },
					p.expectEOF,
				)
			}
		},
		wantErr: ErrSASLUnavailable,
	}, {
		name: "nick collisions",
		script: func(*testing.T) func(p *peer) error {
			return func(p *peer) error {
				return steps(
					func() error { return p.handshake("alice") },
					func() error { return p.send(":srv CAP * LS :", ":srv 433 * alice :Nickname is already in use") },
					func() error { _, err := p.expect("CAP", "END"); return err },
					func() error { _, err := p.expect("NICK", "alice_"); return err },
					func() error { return p.send(":srv 436 * alice_ :Nickname collision") },
					func() error { _, err := p.expect("NICK", "alice1"); return err },
					func() error { return p.send(":srv 432 * alice1 :Erroneous nickname") },
					func() error { _, err := p.expect("NICK", "alice2"); return err },
					func() error { return p.welcome("alice2") },
				)
			}
		},
		check: func(t *testing.T, c *Conn, err error) {
			if got := c.Nick(); got != "alice2" {
				t.Errorf("Nick() = %q, want alice2", got)
			}
		},
	}, {
		name:   "nicks exhausted",
		config: func(cfg *Config) { cfg.MaxNickAttempts = 2 },
		script: func(*testing.T) func(p *peer) error {
			return func(p *peer) error {
				return steps(
					func() error { return p.handshake("alice") },
					func() error { return p.send(":srv 433 * alice :Nickname is already in use") },
					func() error { _, err := p.expect("NICK", "alice_"); return err },
					func() error { return p.send(":srv 433 * alice_ :Nickname is already in use") },
					p.expectEOF,
				)
			}
		},
		wantErr: ErrNickUnavailable,
	}, {
		name:   "server password and PING during registration",
		config: func(cfg *Config) { cfg.Password = vault.NewSecret(testPassword) },
		script: func(*testing.T) func(p *peer) error {
			return func(p *peer) error {
				return steps(
					func() error { _, err := p.expect("PASS", testPassword); return err },
					func() error { return p.handshake("alice") },
					func() error { return p.send("PING :cookie123") },
					func() error { _, err := p.expect("PONG", "cookie123"); return err },
					func() error { return p.welcome("alice") },
				)
			}
		},
	}, {
		name: "ERROR during registration",
		script: func(*testing.T) func(p *peer) error {
			return func(p *peer) error {
				return steps(
					func() error { return p.handshake("alice") },
					func() error { return p.send("ERROR :Closing Link: 127.0.0.1 (K-Lined: go away)") },
					p.expectEOF,
				)
			}
		},
		wantErr: ErrServerError,
		check: func(t *testing.T, c *Conn, err error) {
			var se *ServerError
			if !errors.As(err, &se) || !strings.Contains(se.Reason, "K-Lined") {
				t.Errorf("Dial() = %#v, want *ServerError with the reason", err)
			}
			if strings.Contains(err.Error(), "K-Lined") {
				t.Errorf("Dial() error text %q contains the server's text", err)
			}
		},
	}, {
		name: "server hangs up during registration",
		script: func(*testing.T) func(p *peer) error {
			return func(p *peer) error { return p.handshake("alice") }
		},
		wantErr: io.EOF,
	}, {
		name: "hostile lines during registration",
		script: func(*testing.T) func(p *peer) error {
			return func(p *peer) error {
				return steps(
					func() error { return p.handshake("alice") },
					func() error {
						// Dropped: NUL, bare CR, overlong (once), no command.
						return p.send(":srv NOTICE * :nul\x00byte", ":srv 001 alice :bare\rcr",
							strings.Repeat("x", 20000), ":srv", ":srv 001 alice :Welcome", ":srv 422 alice :No MOTD")
					},
				)
			}
		},
		check: func(t *testing.T, c *Conn, err error) {
			if got := c.Dropped(); got != 4 {
				t.Errorf("Dropped() = %d, want 4", got)
			}
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newFakeServer(t)
			logs := &syncBuffer{}
			cfg := testConfig(srv.addr(), logs)
			if tt.config != nil {
				tt.config(&cfg)
			}
			wait := serve(t, srv, tt.script(t))
			c, err := Dial(context.Background(), cfg)
			if c != nil {
				defer waitDone(t, c)
				defer c.Close()
			}
			if tt.wantErr == nil && err != nil {
				t.Fatalf("Dial() = %v, want success", err)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("Dial() = %v, want %v", err, tt.wantErr)
			}
			if err := wait(); err != nil {
				t.Errorf("server: %v", err)
			}
			if tt.check != nil {
				tt.check(t, c, err)
			}
			if err != nil && strings.Contains(err.Error(), testPassword) {
				t.Errorf("Dial() error text %q contains the password", err)
			}
			if strings.Contains(logs.String(), testPassword) ||
				strings.Contains(logs.String(), base64.StdEncoding.EncodeToString([]byte("\x00acct\x00"+testPassword))) {
				t.Errorf("log contains the password:\n%s", logs)
			}
		})
	}
}

func TestDialTimeouts(t *testing.T) {
	t.Run("registration timeout, maybe while connecting", func(t *testing.T) {
		srv := newFakeServer(t)
		clock := clock.NewFake(time.Unix(1e9, 0))
		cfg := testConfig(srv.addr(), &syncBuffer{})
		cfg.Clock, cfg.RegisterTimeout = clock, 30*time.Second
		// The clock may run out before the client even connects, so no server script: the
		// listener accepts whatever comes and the cleanup closes it.
		errc := make(chan error, 1)
		go func() {
			_, err := Dial(context.Background(), cfg)
			errc <- err
		}()
		if clock.BlockUntil(astest.Within(t, waitLimit), 1) != nil {
			t.Fatal("Dial started no timer")
		}
		clock.Advance(30 * time.Second)
		if err := receive(t, errc); !errors.Is(err, ErrRegistrationTimeout) {
			t.Errorf("Dial() = %v, want %v", err, ErrRegistrationTimeout)
		}
	})
	t.Run("registration timeout after the handshake", func(t *testing.T) {
		srv := newFakeServer(t)
		clock := clock.NewFake(time.Unix(1e9, 0))
		cfg := testConfig(srv.addr(), &syncBuffer{})
		cfg.Clock, cfg.RegisterTimeout = clock, 30*time.Second
		ready := make(chan struct{})
		wait := serve(t, srv, func(p *peer) error {
			err := p.handshake("alice")
			close(ready)
			return steps(func() error { return err }, p.expectEOF)
		})
		errc := make(chan error, 1)
		go func() {
			_, err := Dial(context.Background(), cfg)
			errc <- err
		}()
		receive(t, ready)
		if clock.BlockUntil(astest.Within(t, waitLimit), 1) != nil {
			t.Fatal("Dial started no timer")
		}
		clock.Advance(30 * time.Second)
		if err := receive(t, errc); !errors.Is(err, ErrRegistrationTimeout) {
			t.Errorf("Dial() = %v, want %v", err, ErrRegistrationTimeout)
		}
		if err := wait(); err != nil {
			t.Errorf("server: %v", err)
		}
	})
	t.Run("context canceled", func(t *testing.T) {
		srv := newFakeServer(t)
		ctx, cancel := context.WithCancel(context.Background())
		wait := serve(t, srv, func(p *peer) error {
			err := p.handshake("alice")
			cancel()
			return steps(func() error { return err }, p.expectEOF)
		})
		_, err := Dial(ctx, testConfig(srv.addr(), &syncBuffer{}))
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Dial() = %v, want %v", err, context.Canceled)
		}
		if err := wait(); err != nil {
			t.Errorf("server: %v", err)
		}
	})
	t.Run("no end of MOTD", func(t *testing.T) {
		srv := newFakeServer(t)
		clock := clock.NewFake(time.Unix(1e9, 0))
		cfg := testConfig(srv.addr(), &syncBuffer{})
		cfg.Clock, cfg.MOTDTimeout, cfg.RegisterTimeout = clock, 5*time.Second, 30*time.Second
		rec := make(recorder, 16)
		cfg.Handler = rec.handle
		wait := serve(t, srv, func(p *peer) error {
			return steps(
				func() error { return p.handshake("alice") },
				func() error {
					return p.send(":srv 001 alice :Welcome", ":srv 005 alice NETWORK=Slow :are supported", ":srv 375 alice :motd")
				},
				func() error { _, err := p.expect("PRIVMSG", "#c", "after"); return err },
			)
		})
		errc := make(chan error, 1)
		conns := make(chan *Conn, 1)
		go func() {
			c, err := Dial(context.Background(), cfg)
			errc <- err
			conns <- c
		}()
		if clock.BlockUntil(astest.Within(t, waitLimit), 2) != nil {
			t.Fatal("Dial started no MOTD timer after 001")
		}
		clock.Advance(5 * time.Second)
		if err := receive(t, errc); err != nil {
			t.Fatalf("Dial() = %v, want success", err)
		}
		c := <-conns
		defer waitDone(t, c)
		defer c.Close()
		if got := c.Network(); got != "Slow" {
			t.Errorf("Network() = %q, want Slow", got)
		}
		for _, want := range []string{"001", "005", "375"} {
			if got := rec.next(t, want); got == nil {
				return
			}
		}
		// The read deadline that ended the wait must not linger: the connection still works.
		if err := c.Send(context.Background(), nil, "PRIVMSG", "#c", "after"); err != nil {
			t.Fatalf("Send() = %v", err)
		}
		if err := wait(); err != nil {
			t.Errorf("server: %v", err)
		}
	})
}

func receive[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitLimit):
		t.Fatal("timed out")
		var zero T
		return zero
	}
}

func TestConnPingPong(t *testing.T) {
	srv := newFakeServer(t)
	c, p := dialRegistered(t, srv, testConfig(srv.addr(), &syncBuffer{}))
	if err := p.send("PING :abc def"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.expect("PONG", "abc def"); err != nil {
		t.Fatal(err)
	}
	_ = c
}

func TestConnKeepalive(t *testing.T) {
	srv := newFakeServer(t)
	clock := clock.NewFake(time.Unix(1e9, 0))
	cfg := testConfig(srv.addr(), &syncBuffer{})
	cfg.Clock, cfg.PingInterval, cfg.PingTimeout = clock, 2*time.Minute, time.Minute
	rec := make(recorder, 64)
	cfg.Handler = rec.handle
	var closes atomic.Int32
	closed := make(chan error, 1)
	cfg.OnClose = func(c *Conn, err error) {
		closes.Add(1)
		closed <- err
	}
	c, p := dialRegistered(t, srv, cfg)

	clock.Advance(2 * time.Minute)
	if _, err := p.expect("PING"); err != nil {
		t.Fatal(err)
	}
	if err := p.send(":srv PONG srv :ircconn"); err != nil {
		t.Fatal(err)
	}
	rec.next(t, "PONG")
	// Answered: a minute later nothing happens; a minute after that, the next PING.
	clock.Advance(time.Minute)
	clock.Advance(time.Minute)
	if _, err := p.expect("PING"); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Minute)
	if err := receive(t, closed); !errors.Is(err, ErrPingTimeout) {
		t.Errorf("OnClose err = %v, want %v", err, ErrPingTimeout)
	}
	waitDone(t, c)
	if err := c.Err(); !errors.Is(err, ErrPingTimeout) {
		t.Errorf("Err() = %v, want %v", err, ErrPingTimeout)
	}
	if n := closes.Load(); n != 1 {
		t.Errorf("OnClose called %d times, want 1", n)
	}
	if err := p.expectEOF(); err != nil {
		t.Error(err)
	}
}

func TestConnFloodControl(t *testing.T) {
	srv := newFakeServer(t)
	clock := clock.NewFake(time.Unix(1e9, 0))
	cfg := testConfig(srv.addr(), &syncBuffer{})
	cfg.Clock, cfg.LineRate, cfg.LineBurst = clock, time.Second, 2
	c, p := dialRegistered(t, srv, cfg)
	ctx := context.Background()
	for i := range 4 {
		if err := c.Send(ctx, nil, "PRIVMSG", "#c", string(rune('a'+i))); err != nil {
			t.Fatalf("Send() = %v", err)
		}
	}
	// The burst goes out at once.
	for _, want := range []string{"a", "b"} {
		if _, err := p.expect("PRIVMSG", "#c", want); err != nil {
			t.Fatal(err)
		}
	}
	// The third line waits for a token; a PONG does not.
	if clock.BlockUntil(astest.Within(t, waitLimit), 2) != nil {
		t.Fatal("writer is not waiting for a token")
	}
	if err := p.send("PING :x"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.expect("PONG", "x"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"c", "d"} {
		if clock.BlockUntil(astest.Within(t, waitLimit), 2) != nil {
			t.Fatal("writer is not waiting for a token")
		}
		clock.Advance(time.Second)
		if _, err := p.expect("PRIVMSG", "#c", want); err != nil {
			t.Fatal(err)
		}
	}
}

func TestConnSendBlocksWhenQueueFull(t *testing.T) {
	srv := newFakeServer(t)
	clock := clock.NewFake(time.Unix(1e9, 0))
	cfg := testConfig(srv.addr(), &syncBuffer{})
	cfg.Clock, cfg.LineRate, cfg.LineBurst = clock, time.Hour, 1
	c, p := dialRegistered(t, srv, cfg)
	ctx := context.Background()
	// One line is written, one waits for a token, QueueLen wait in the queue.
	for range QueueLen + 2 {
		if err := c.Send(ctx, nil, "PRIVMSG", "#c", "x"); err != nil {
			t.Fatalf("Send() = %v", err)
		}
		if clock.BlockUntil(astest.Within(t, waitLimit), 1) != nil {
			t.Fatal("no ticker")
		}
	}
	if _, err := p.expect("PRIVMSG"); err != nil {
		t.Fatal(err)
	}
	if clock.BlockUntil(astest.Within(t, waitLimit), 2) != nil {
		t.Fatal("writer is not waiting for a token")
	}
	short, cancel := context.WithCancel(ctx)
	cancel()
	if err := c.Send(short, nil, "PRIVMSG", "#c", "x"); !errors.Is(err, context.Canceled) {
		t.Errorf("Send() with a full queue = %v, want %v", err, context.Canceled)
	}
	c.Close()
	if err := c.Send(ctx, nil, "PRIVMSG", "#c", "x"); !errors.Is(err, ErrClosed) {
		t.Errorf("Send() after Close = %v, want %v", err, ErrClosed)
	}
}

func TestConnSendRejectsUnsafe(t *testing.T) {
	srv := newFakeServer(t)
	c, p := dialRegistered(t, srv, testConfig(srv.addr(), &syncBuffer{}))
	tests := []struct {
		name    string
		command string
		params  []string
	}{
		{"CRLF in text", "PRIVMSG", []string{"#c", "hi\r\nQUIT :bye"}},
		{"NUL in text", "PRIVMSG", []string{"#c", "a\x00b"}},
		{"space in middle param", "PRIVMSG", []string{"#c d", "x"}},
		{"lower-case command", "privmsg", []string{"#c", "x"}},
		{"overlong", "PRIVMSG", []string{"#c", strings.Repeat("x", 600)}},
	}
	for _, tt := range tests {
		if err := c.Send(context.Background(), nil, tt.command, tt.params...); err == nil {
			t.Errorf("%s: Send() = nil, want an error", tt.name)
		}
	}
	if err := c.Send(context.Background(), map[string]string{"+draft/reply": "abc"}, "PRIVMSG", "#c", "ok"); err != nil {
		t.Fatalf("Send() = %v", err)
	}
	msg, err := p.expect("PRIVMSG", "#c", "ok")
	if err != nil {
		t.Fatal(err)
	}
	if _, v := msg.GetTag("+draft/reply"); v != "abc" {
		t.Errorf("tag +draft/reply = %q, want abc", v)
	}
}

func TestConnQuit(t *testing.T) {
	t.Run("server closes", func(t *testing.T) {
		srv := newFakeServer(t)
		cfg := testConfig(srv.addr(), &syncBuffer{})
		closed := make(chan error, 1)
		cfg.OnClose = func(c *Conn, err error) { closed <- err }
		c, p := dialRegistered(t, srv, cfg)
		quit := make(chan error, 1)
		go func() { quit <- c.Quit(context.Background(), "bye\r\nPRIVMSG #c :injected") }()
		if _, err := p.expect("QUIT", "bye PRIVMSG #c :injected"); err != nil {
			t.Fatal(err)
		}
		if err := p.send("ERROR :Closing Link: alice (Quit: bye)"); err != nil {
			t.Fatal(err)
		}
		p.conn.Close()
		if err := receive(t, quit); err != nil {
			t.Errorf("Quit() = %v, want nil", err)
		}
		if err := receive(t, closed); !errors.Is(err, ErrClosed) {
			t.Errorf("OnClose err = %v, want %v", err, ErrClosed)
		}
		if err := c.Send(context.Background(), nil, "PRIVMSG", "#c", "x"); !errors.Is(err, ErrClosed) {
			t.Errorf("Send() after Quit = %v, want %v", err, ErrClosed)
		}
		if err := c.Quit(context.Background(), ""); !errors.Is(err, ErrClosed) {
			t.Errorf("second Quit() = %v, want %v", err, ErrClosed)
		}
	})
	t.Run("context ends first", func(t *testing.T) {
		srv := newFakeServer(t)
		c, p := dialRegistered(t, srv, testConfig(srv.addr(), &syncBuffer{}))
		ctx, cancel := context.WithCancel(context.Background())
		quit := make(chan error, 1)
		go func() { quit <- c.Quit(ctx, "") }()
		if _, err := p.expect("QUIT"); err != nil {
			t.Fatal(err)
		}
		cancel()
		if err := receive(t, quit); !errors.Is(err, context.Canceled) {
			t.Errorf("Quit() = %v, want %v", err, context.Canceled)
		}
		waitDone(t, c)
		if err := c.Err(); !errors.Is(err, ErrClosed) {
			t.Errorf("Err() = %v, want %v", err, ErrClosed)
		}
		if err := p.expectEOF(); err != nil {
			t.Error(err)
		}
	})
}

func TestConnEnds(t *testing.T) {
	tests := []struct {
		name    string
		end     func(c *Conn, p *peer) error
		wantErr error
	}{
		{"server hangs up", func(c *Conn, p *peer) error { return p.conn.Close() }, io.EOF},
		{"server ERROR", func(c *Conn, p *peer) error { return p.send("ERROR :Closing Link: (Killed)") }, ErrServerError},
		{"Close", func(c *Conn, p *peer) error { c.Close(); return c.Close() }, ErrClosed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newFakeServer(t)
			cfg := testConfig(srv.addr(), &syncBuffer{})
			var closes atomic.Int32
			closed := make(chan error, 2)
			cfg.OnClose = func(c *Conn, err error) {
				closes.Add(1)
				closed <- err
			}
			rec := make(recorder, 64)
			cfg.Handler = rec.handle
			c, p := dialRegistered(t, srv, cfg)
			if err := c.Err(); err != nil {
				t.Errorf("Err() before the end = %v, want nil", err)
			}
			if err := tt.end(c, p); err != nil {
				t.Fatal(err)
			}
			if err := receive(t, closed); !errors.Is(err, tt.wantErr) {
				t.Errorf("OnClose err = %v, want %v", err, tt.wantErr)
			}
			waitDone(t, c)
			if err := c.Err(); !errors.Is(err, tt.wantErr) {
				t.Errorf("Err() = %v, want %v", err, tt.wantErr)
			}
			if n := closes.Load(); n != 1 {
				t.Errorf("OnClose called %d times, want 1", n)
			}
			if err := c.Send(context.Background(), nil, "PRIVMSG", "#c", "x"); !errors.Is(err, ErrClosed) {
				t.Errorf("Send() after the end = %v, want %v", err, ErrClosed)
			}
		})
	}
}

func TestConnState(t *testing.T) {
	srv := newFakeServer(t)
	cfg := testConfig(srv.addr(), &syncBuffer{})
	rec := make(recorder, 64)
	cfg.Handler = rec.handle
	c, p := dialRegistered(t, srv, cfg)
	// The registration burst reaches the handler first, MOTD text excepted.
	for _, want := range []string{"001", "005", "375", "376"} {
		if msg := <-rec; msg.Command != want {
			t.Fatalf("handler got %s, want %s", msg.Command, want)
		}
	}
	steps := []struct {
		name  string
		lines []string
		wait  string
		check func() bool
	}{
		{"our nick change", []string{":ALICE!a@h NICK :alice2"}, "NICK", func() bool { return c.Nick() == "alice2" }},
		{"someone else's nick change", []string{":bob!b@h NICK :carol"}, "NICK", func() bool { return c.Nick() == "alice2" }},
		{"ISUPPORT update", []string{":srv 005 alice2 CASEMAPPING=rfc1459 NETWORK=New :are supported"}, "005",
			func() bool { return c.CaseMapping() == ircid.RFC1459 && c.Network() == "New" }},
		{"unknown casemapping", []string{":srv 005 alice2 CASEMAPPING=rfc8265 :are supported"}, "005",
			func() bool { return c.CaseMapping() == ircid.ASCII }},
		{"logged in", []string{":srv 900 alice2 alice2!a@h acct :You are now logged in"}, "900",
			func() bool { return c.Account() == "acct" }},
		{"logged out", []string{":srv 901 alice2 alice2!a@h :You are now logged out"}, "901",
			func() bool { return c.Account() == "" }},
		{"CAP DEL", []string{":srv CAP alice2 DEL :server-time"}, "CAP", func() bool { return !c.HasCap("server-time") }},
	}
	for _, st := range steps {
		if err := p.send(st.lines...); err != nil {
			t.Fatal(err)
		}
		rec.next(t, st.wait)
		if !st.check() {
			t.Errorf("%s: state not updated", st.name)
		}
	}
	// CAP NEW: wanted capabilities are requested.
	if err := p.send(":srv CAP alice2 NEW :batch echo-message chghost"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.expect("CAP", "REQ", "batch chghost"); err != nil {
		t.Fatal(err)
	}
	if err := p.send(":srv CAP alice2 ACK :chghost batch"); err != nil {
		t.Fatal(err)
	}
	rec.next(t, "CAP")
	rec.next(t, "CAP")
	if !c.HasCap("chghost") || !c.HasCap("batch") || c.HasCap("echo-message") {
		t.Errorf("Caps() = %q, want chghost and batch, not echo-message", c.Caps())
	}
}

func TestConnHostileLines(t *testing.T) {
	srv := newFakeServer(t)
	logs := &syncBuffer{}
	cfg := testConfig(srv.addr(), logs)
	rec := make(recorder, 64)
	panicked := false
	cfg.Handler = func(c *Conn, msg *ircmsg.Message) {
		if msg.Command == "NOTICE" && !panicked {
			panicked = true
			var ids []int
			_ = ids[len(msg.Params)] // index out of range: a handler bug
		}
		rec.handle(c, msg)
	}
	c, p := dialRegistered(t, srv, cfg)
	before := c.Dropped()
	hostile := []string{
		// Over the reader's cap: the tail must not surface as a line of its own.
		strings.Repeat("a", 9000) + " :evil PRIVMSG #c :spoof",
		"PRIVMSG #c :" + strings.Repeat("b", 20000),
		"@tag=" + strings.Repeat("t", 8200) + " PRIVMSG #c :tags too long",
		"PRIVMSG #c :nul\x00here",
		"PRIVMSG #c :bare\rcr",
		"@=;;=\x01;a=b PRIVMSG #c :garbage tags", // invalid tag names are skipped (message-tags spec)
		"@a=\xff PRIVMSG #c :bad tag value",
		"@tag-only",
		":only-a-source",
		"PRIV\xffMSG #c :bad command",
		"",
		":srv NOTICE alice :panics",
		":bob!b@h PRIVMSG #c :ok-text",
	}
	if err := p.send(hostile...); err != nil {
		t.Fatal(err)
	}
	msg := rec.next(t, "PRIVMSG")
	if got, tags := ircline.Param(msg, 1), msg.AllTags(); got != "garbage tags" || len(tags) != 1 || tags["a"] != "b" {
		t.Errorf("first PRIVMSG = %q with tags %q, want %q with a=b only", got, tags, "garbage tags")
	}
	msg = rec.next(t, "PRIVMSG")
	if got := ircline.Param(msg, 1); got != "ok-text" {
		t.Errorf("second PRIVMSG = %q, want ok-text", got)
	}
	if got := c.Dropped() - before; got != 9 {
		t.Errorf("Dropped() grew by %d, want 9", got)
	}
	if !strings.Contains(logs.String(), "IRC message handler panicked") {
		t.Errorf("log has no handler panic")
	}
	for _, secret := range []string{"spoof", "panics", "nul", "garbage", "ok-text"} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("log contains line text %q", secret)
		}
	}
	// Still alive.
	if err := c.Send(context.Background(), nil, "PRIVMSG", "#c", "alive"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.expect("PRIVMSG", "#c", "alive"); err != nil {
		t.Fatal(err)
	}
}

func TestDialInvalidConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no address", Config{Nick: "alice"}},
		{"no nick", Config{Addr: "127.0.0.1:1"}},
		{"nick with space", Config{Addr: "127.0.0.1:1", Nick: "a b"}},
		{"username with space", Config{Addr: "127.0.0.1:1", Nick: "alice", Username: "a b"}},
		{"SASL without account", Config{Addr: "127.0.0.1:1", Nick: "alice", SASL: &SASL{}}},
		{"server password with CRLF", Config{Addr: "127.0.0.1:1", Nick: "alice", Password: vault.NewSecret("a\r\nQUIT")}},
	}
	for _, tt := range tests {
		c, err := Dial(context.Background(), tt.cfg)
		if err == nil {
			c.Close()
		}
		if !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: Dial() = %v, want %v", tt.name, err, ErrInvalidConfig)
		}
	}
}

func TestDialTLS(t *testing.T) {
	serverTLS, clientTLS := testTLS(t)
	t.Run("trusted", func(t *testing.T) {
		srv := newFakeServer(t)
		srv.tls = serverTLS
		cfg := testConfig(srv.addr(), &syncBuffer{})
		cfg.TLS = clientTLS
		c, p := dialRegistered(t, srv, cfg)
		if err := c.Send(context.Background(), nil, "JOIN", "#c"); err != nil {
			t.Fatal(err)
		}
		if _, err := p.expect("JOIN", "#c"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("untrusted", func(t *testing.T) {
		srv := newFakeServer(t)
		srv.tls = serverTLS
		wait := serve(t, srv, func(p *peer) error { _ = p.expectEOF(); return nil })
		cfg := testConfig(srv.addr(), &syncBuffer{})
		cfg.TLS = &tls.Config{}
		if c, err := Dial(context.Background(), cfg); err == nil {
			c.Close()
			t.Fatal("Dial() with an untrusted certificate = nil, want an error")
		}
		if err := wait(); err != nil {
			t.Error(err)
		}
	})
}

func FuzzFallbackNick(f *testing.F) {
	f.Add("alice", 3, 5)
	f.Add("ëa", 1, 1)
	f.Fuzz(func(t *testing.T, nick string, attempt, nickLen int) {
		if nick == "" {
			return
		}
		got := FallbackNick(nick, attempt%1000, nickLen%100)
		if attempt%1000 <= 0 && got != nick {
			t.Errorf("FallbackNick(%q, %d, %d) = %q, want the nick itself", nick, attempt, nickLen, got)
		}
		if utf8.ValidString(nick) && !utf8.ValidString(got) {
			t.Errorf("FallbackNick(%q, %d, %d) = %q, not valid UTF-8", nick, attempt, nickLen, got)
		}
	})
}

func TestTruncateUTF8(t *testing.T) {
	tests := []struct {
		in   string
		n    int
		want string
	}{
		{"hello", 10, "hello"},
		{"hello", 3, "hel"},
		{"héllo", 2, "h"},
		{"ëa", 1, ""},
		{"ëa", 0, ""},
		{"ëa", -1, ""},
		{"a€b", 3, "a"},
		{"a€b", 4, "a€"},
	}
	for _, tt := range tests {
		if got := truncateUTF8(tt.in, tt.n); got != tt.want {
			t.Errorf("truncateUTF8(%q, %d) = %q, want %q", tt.in, tt.n, got, tt.want)
		}
	}
}

package irctest_test

import (
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custodian-matrix/custodian/bridges/irc/irctest"
)

// wait bounds the waits of these tests.
const wait = 10 * time.Second

func mustJoin(t *testing.T, c *irctest.Client, channel string) {
	t.Helper()
	if err := c.Join(channel); err != nil {
		t.Fatalf("%s: JOIN %s: %v", c.Nick(), channel, err)
	}
}

func TestChannelMessage(t *testing.T) {
	at := time.Date(2025, 3, 1, 12, 0, 0, 123e6, time.UTC)
	srv := irctest.NewServer(t, irctest.WithClock(func() time.Time { return at }))
	alice := srv.Client(t, "alice")
	bob := srv.Client(t, "bob", irctest.WithClientCaps()) // no tags for bob
	carol := srv.Client(t, "carol")
	for _, c := range []*irctest.Client{alice, bob, carol} {
		mustJoin(t, c, "#Chat")
	}
	if got, want := strings.Join(srv.Members("#chat"), ","), "alice,bob,carol"; got != want {
		t.Fatalf("Members(#chat) = %s, want %s", got, want)
	}
	if err := alice.Privmsg("#chat", "hello there"); err != nil {
		t.Fatal(err)
	}
	seen := srv.WaitFor(t, irctest.Match("ALICE", "privmsg", "#chat"))
	if seen.Param(1) != "hello there" || seen.Conn == 0 {
		t.Errorf("server saw %q (conn %d), want alice's PRIVMSG", seen.Raw, seen.Conn)
	}

	got := carol.MustWaitFor(t, irctest.Match("alice", "PRIVMSG", "#Chat", "hello there"))
	if _, tm := got.Msg.GetTag("time"); tm != "2025-03-01T12:00:00.123Z" {
		t.Errorf("carol's time tag = %q, want 2025-03-01T12:00:00.123Z", tm)
	}
	if ok, id := got.Msg.GetTag("msgid"); !ok || id == "" {
		t.Errorf("carol's line %q has no msgid", got.Raw)
	}
	if strings.Contains(got.Raw, "account=") {
		t.Errorf("carol's line %q has an account tag, but alice is not logged in", got.Raw)
	}
	plain := bob.MustWaitFor(t, irctest.Match("alice", "PRIVMSG", "#chat"))
	if strings.HasPrefix(plain.Raw, "@") {
		t.Errorf("bob negotiated no tags but got %q", plain.Raw)
	}
	if lines := alice.Lines(irctest.Match("alice", "PRIVMSG")); len(lines) != 0 {
		t.Errorf("alice got her own message back without echo-message: %q", lines)
	}
}

func TestPrivateMessages(t *testing.T) {
	srv := irctest.NewServer(t)
	alice := srv.Client(t, "alice")
	bob := srv.Client(t, "bob")
	tests := []struct {
		name    string
		line    string
		from    *irctest.Client
		to      *irctest.Client
		wantCmd string
	}{
		{name: "privmsg", line: "PRIVMSG Bob :psst", from: alice, to: bob, wantCmd: "PRIVMSG"},
		{name: "notice", line: "NOTICE alice :fyi", from: bob, to: alice, wantCmd: "NOTICE"},
		{name: "unknown nick", line: "PRIVMSG nobody :hello?", from: alice, to: alice, wantCmd: "401"},
		{name: "not in channel", line: "PRIVMSG #elsewhere :hi", from: alice, to: alice, wantCmd: "401"},
		{name: "no text", line: "PRIVMSG bob", from: alice, to: alice, wantCmd: "412"},
		{name: "unknown command", line: "FROB x", from: alice, to: alice, wantCmd: "421"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.from.Send(tt.line); err != nil {
				t.Fatal(err)
			}
			tt.to.MustWaitFor(t, irctest.Match("", tt.wantCmd))
		})
	}
}

func TestSASL(t *testing.T) {
	srv := irctest.NewServer(t)
	srv.AddAccount("Alice", "correct horse")
	tests := []struct {
		name, nick, account, password string
		wantErr                       bool
	}{
		{name: "ok", nick: "alice", account: "alice", password: "correct horse"},
		{name: "wrong password", nick: "mallory", account: "alice", password: "battery staple", wantErr: true},
		{name: "unknown account", nick: "eve", account: "eve", password: "x", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := srv.Dial(tt.nick, irctest.WithSASL(tt.account, tt.password))
			if tt.wantErr {
				if err == nil || !strings.Contains(err.Error(), "904") {
					t.Fatalf("Dial(%s) = %v, want a 904 error", tt.nick, err)
				}
				if got := srv.Account(tt.nick); got != "" {
					t.Errorf("Account(%s) = %q after a failed login, want empty", tt.nick, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("Dial(%s) = %v", tt.nick, err)
			}
			defer c.Close()
			if got := srv.Account(tt.nick); got != "Alice" {
				t.Errorf("Account(%s) = %q, want Alice", tt.nick, got)
			}
			whois := srv.Client(t, "whoiser")
			if err := whois.Send("WHOIS " + tt.nick); err != nil {
				t.Fatal(err)
			}
			whois.MustWaitFor(t, irctest.Match("", "330", "whoiser", tt.nick, "Alice"))
			whois.MustWaitFor(t, irctest.Match("", "318"))
		})
	}
	for _, l := range srv.Lines(irctest.Match("", "AUTHENTICATE")) {
		if strings.Contains(l.Raw, "Y29ycmVjdCBob3Jz") || strings.Contains(l.Raw, "staple") {
			t.Errorf("the history holds a SASL payload: %q", l.Raw)
		}
	}
}

func TestNicks(t *testing.T) {
	srv := irctest.NewServer(t)
	alice := srv.Client(t, "alice")
	bob := srv.Client(t, "bob")
	mustJoin(t, alice, "#chat")
	mustJoin(t, bob, "#chat")
	if _, err := srv.Dial("ALICE"); err == nil || !strings.Contains(err.Error(), "433") {
		t.Fatalf("Dial(ALICE) = %v, want a 433 error", err)
	}
	if err := alice.Send("NICK alice2"); err != nil {
		t.Fatal(err)
	}
	bob.MustWaitFor(t, irctest.Match("alice", "NICK", "alice2"))
	alice.MustWaitFor(t, irctest.Match("alice", "NICK", "alice2"))
	if got, want := strings.Join(srv.Nicks(), ","), "alice2,bob"; got != want {
		t.Errorf("Nicks() = %s, want %s", got, want)
	}
	if err := bob.Send("NICK alice2"); err != nil {
		t.Fatal(err)
	}
	bob.MustWaitFor(t, irctest.Match("", "433", "bob", "alice2"))
	if err := bob.Send("NICK 9lives"); err != nil {
		t.Fatal(err)
	}
	bob.MustWaitFor(t, irctest.Match("", "432", "bob", "9lives"))
}

func TestChannelLifecycle(t *testing.T) {
	srv := irctest.NewServer(t)
	alice := srv.Client(t, "alice")
	bob := srv.Client(t, "bob")
	mustJoin(t, alice, "#chat")
	if err := alice.Send("TOPIC #chat :the topic"); err != nil {
		t.Fatal(err)
	}
	alice.MustWaitFor(t, irctest.Match("alice", "TOPIC", "#chat", "the topic"))
	mustJoin(t, bob, "#chat")
	bob.MustWaitFor(t, irctest.Match("", "332", "bob", "#chat", "the topic"))
	bob.MustWaitFor(t, irctest.Match("", "353", "bob", "=", "#chat", "@alice bob"))
	alice.MustWaitFor(t, irctest.Match("bob", "JOIN", "#chat"))

	if err := srv.Kick("#chat", "bob", "out"); err != nil {
		t.Fatal(err)
	}
	bob.MustWaitFor(t, irctest.Match("", "KICK", "#chat", "bob", "out"))
	alice.MustWaitFor(t, irctest.Match("", "KICK", "#chat", "bob", "out"))
	mustJoin(t, bob, "#chat")
	if err := bob.Send("PART #chat :bye"); err != nil {
		t.Fatal(err)
	}
	alice.MustWaitFor(t, irctest.Match("bob", "PART", "#chat", "bye"))
	mustJoin(t, bob, "#chat")
	if err := bob.Quit("gone"); err != nil {
		t.Fatal(err)
	}
	alice.MustWaitFor(t, irctest.Match("bob", "QUIT", "Quit: gone"))
	srv.WaitUntil(t, "bob is gone", func() bool { return srv.ConnCount() == 1 })
	if got := strings.Join(srv.Members("#chat"), ","); got != "alice" {
		t.Errorf("Members(#chat) = %s after bob quit, want alice", got)
	}
}

func TestLineLimits(t *testing.T) {
	srv := irctest.NewServer(t)
	alice := srv.Client(t, "alice")
	bob := srv.Client(t, "bob")
	mustJoin(t, alice, "#c")
	mustJoin(t, bob, "#c")
	// Fits as sent (≤ 512 with CRLF), but not as relayed with alice's prefix.
	text := strings.Repeat("a", 510-len("PRIVMSG #c :"))
	if err := alice.Privmsg("#c", text); err != nil {
		t.Fatal(err)
	}
	got := bob.MustWaitFor(t, irctest.Match("alice", "PRIVMSG", "#c"))
	body := got.Raw
	if i := strings.IndexByte(body, ' '); strings.HasPrefix(body, "@") && i >= 0 {
		body = body[i+1:]
	}
	if len(body)+2 != 512 || len(got.Param(1)) >= len(text) {
		t.Errorf("relayed body is %d bytes with CRLF (text %d), want cut to 512", len(body)+2, len(got.Param(1)))
	}
	if n := srv.Truncations(); n != 1 {
		t.Errorf("Truncations() = %d, want 1", n)
	}
	// Too long as sent: 417 and dropped.
	if err := alice.Privmsg("#c", strings.Repeat("b", 600)); err != nil {
		t.Fatal(err)
	}
	alice.MustWaitFor(t, irctest.Match("", "417"))
	if l := srv.WaitFor(t, func(l irctest.Line) bool { return l.TooLong }); l.Nick != "alice" {
		t.Errorf("overlong line from %q, want alice", l.Nick)
	}
	// Longer than the read buffer.
	if err := alice.Send("PRIVMSG #c :" + strings.Repeat("c", 10000)); err != nil {
		t.Fatal(err)
	}
	alice.MustWaitFor(t, irctest.Match("", "417"))
	if err := alice.Privmsg("#c", "still here"); err != nil {
		t.Fatal(err)
	}
	bob.MustWaitFor(t, irctest.Match("alice", "PRIVMSG", "#c", "still here"))
}

func TestRestartDownUp(t *testing.T) {
	srv := irctest.NewServer(t)
	alice := srv.Client(t, "alice")
	mustJoin(t, alice, "#chat")
	srv.Restart()
	if _, err := alice.WaitFor(func(irctest.Line) bool { return false }, wait); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("alice's connection after Restart: %v, want closed", err)
	}
	if n := srv.ConnCount(); n != 0 {
		t.Errorf("ConnCount() = %d after Restart, want 0", n)
	}
	if m := srv.Members("#chat"); m != nil {
		t.Errorf("Members(#chat) = %v after Restart, want none", m)
	}
	again := srv.Client(t, "alice")
	mustJoin(t, again, "#chat")

	srv.Down()
	if conn, err := net.DialTimeout("tcp", srv.Addr(), time.Second); err == nil {
		conn.Close()
		t.Fatal("connected while the server is down")
	}
	srv.Up()
	srv.Client(t, "alice")
	if got := srv.Registered(); got != 1 {
		t.Errorf("Registered() = %d, want 1", got)
	}
}

// TestManyClients connects 1,000 clients in 20 channels at once, has each speak once, and
// checks the server stops every goroutine at the end.
func TestManyClients(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 connections")
	}
	const n, channels = 1000, 20
	before := runtime.NumGoroutine()
	srv := irctest.NewServer(t, irctest.WithHistory(0))
	lines := make(chan irctest.Line, n)
	stop := srv.Observe(func(l irctest.Line) {
		if l.Command() == "PRIVMSG" {
			lines <- l
		}
	})
	defer stop()
	clients := make([]*irctest.Client, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := srv.Dial(fmt.Sprintf("user%d", i))
			if err == nil {
				clients[i] = c
				err = c.Join(fmt.Sprintf("#c%d", i%channels))
			}
			if err == nil {
				err = c.Privmsg(fmt.Sprintf("#c%d", i%channels), "hi")
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	timeout := time.After(wait)
	for range n {
		select {
		case <-lines:
		case <-timeout:
			t.Fatal("not every client's PRIVMSG arrived")
		}
	}
	if got := srv.Registered(); got != n {
		t.Errorf("Registered() = %d, want %d", got, n)
	}
	for _, c := range clients {
		c.Close()
	}
	srv.Restart()
	deadline := time.Now().Add(wait)
	for runtime.NumGoroutine() > before+2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines left after closing every client, %d before", runtime.NumGoroutine(), before)
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond)
	}
}

// TestRegistrationHold: a held client gets 001 only once its hold is released, while another
// client registers at once; a client that disconnects while held leaves nothing behind.
func TestRegistrationHold(t *testing.T) {
	release := make(chan struct{})
	srv := irctest.NewServer(t, irctest.WithRegistrationHold(func(nick string) <-chan struct{} {
		if nick == "slow" || nick == "gone" {
			return release
		}
		return nil
	}))
	done := make(chan *irctest.Client, 1)
	go func() { done <- srv.Client(t, "slow") }()
	gone, err := net.Dial("tcp", srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if _, err = fmt.Fprintf(gone, "NICK gone\r\nUSER gone 0 * :gone\r\n"); err != nil {
		t.Fatal(err)
	}
	fast := srv.Client(t, "fast")
	srv.WaitUntil(t, "three connections", func() bool { return srv.ConnCount() == 3 })
	if got := srv.Nicks(); len(got) != 1 || got[0] != "fast" {
		t.Fatalf("registered nicks with slow held = %v, want [fast]", got)
	}
	_ = gone.Close()
	srv.WaitUntil(t, "the held connection closed", func() bool { return srv.ConnCount() == 2 })
	close(release)
	var slow *irctest.Client
	select {
	case slow = <-done:
	case <-time.After(wait):
		t.Fatal("slow did not register after its hold was released")
	}
	if got := strings.Join(srv.Nicks(), ","); got != "fast,slow" {
		t.Errorf("registered nicks after release = %s, want fast,slow", got)
	}
	mustJoin(t, slow, "#c")
	mustJoin(t, fast, "#c")
}

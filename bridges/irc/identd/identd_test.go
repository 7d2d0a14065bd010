package identd

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func TestParseRequest(t *testing.T) {
	tests := []struct {
		line          string
		local, remote uint16
		wantErr       bool
	}{
		{line: "6191, 23", local: 6191, remote: 23},
		{line: "6191 , 23\r", local: 6191, remote: 23},
		{line: " \t1,65535 ", local: 1, remote: 65535},
		{line: "0, 23", wantErr: true},
		{line: "65536, 23", wantErr: true},
		{line: "6191", wantErr: true},
		{line: "6191, 23, 4", wantErr: true},
		{line: "+6191, 23", wantErr: true},
		{line: "0x10, 23", wantErr: true},
		{line: "000006191, 23", wantErr: true},
		{line: ", ", wantErr: true},
		{line: "", wantErr: true},
	}
	for _, tt := range tests {
		local, remote, err := ParseRequest(tt.line)
		if (err != nil) != tt.wantErr || local != tt.local || remote != tt.remote {
			t.Errorf("ParseRequest(%q) = %d, %d, %v; want %d, %d, error %v", tt.line, local, remote, err, tt.local, tt.remote, tt.wantErr)
		}
	}
}

func FuzzParseRequest(f *testing.F) {
	for _, seed := range []string{"6191, 23", "1,1\r", " 65535 , 65535 ", ",", "99999,1", "\x00,\xff"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, line string) {
		local, remote, err := ParseRequest(line)
		if err != nil {
			if local != 0 || remote != 0 {
				t.Errorf("ParseRequest(%q) returned ports with an error", line)
			}
			return
		}
		if local == 0 || remote == 0 {
			t.Errorf("ParseRequest(%q) = %d, %d: port 0 accepted", line, local, remote)
		}
		// What parsed parses the same in canonical form.
		l2, r2, err := ParseRequest(fmt.Sprintf("%d , %d", local, remote))
		if err != nil || l2 != local || r2 != remote {
			t.Errorf("canonical form of %q does not round-trip", line)
		}
	})
}

// ircServer is a listener standing for an IRC server, to which the tests open connections
// like the bridge's.
func ircServer(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return ln
}

func startServer(t *testing.T, reg *Registry) *Server {
	t.Helper()
	s := NewServer(reg, zerolog.Nop())
	// Queries about unknown connections answer NO-USER after the grace: short, so the tables of
	// such queries run fast (TestQueryWaitsForTheConnectionToBeRegistered sets its own).
	s.grace = 50 * time.Millisecond
	if err := s.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Close(ctx); err != nil && !strings.Contains(err.Error(), "closed") {
			t.Errorf("Close = %v", err)
		}
	})
	return s
}

// query sends one raw query line to the ident server and returns its answer.
func query(t *testing.T, s *Server, line string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", s.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(line)); err != nil {
		t.Fatal(err)
	}
	answer, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "closed: " + err.Error()
	}
	return answer
}

func TestServerAnswers(t *testing.T) {
	reg := NewRegistry()
	s := startServer(t, reg)
	irc := ircServer(t)
	ircPort := irc.Addr().(*net.TCPAddr).Port

	alice, err := net.Dial("tcp", irc.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	bob, err := net.Dial("tcp", irc.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer bob.Close()
	removeAlice := reg.Add(alice.LocalAddr(), alice.RemoteAddr(), "m1a2b3c4d5")
	reg.Add(bob.LocalAddr(), bob.RemoteAddr(), "mbbbbbbbbb")
	alicePort := alice.LocalAddr().(*net.TCPAddr).Port
	bobPort := bob.LocalAddr().(*net.TCPAddr).Port

	tests := []struct {
		name, line, want string
	}{
		{"alice's connection", fmt.Sprintf("%d , %d\r\n", alicePort, ircPort), fmt.Sprintf("%d , %d : USERID : UNIX : m1a2b3c4d5\r\n", alicePort, ircPort)},
		{"bob's connection", fmt.Sprintf("%d,%d\n", bobPort, ircPort), fmt.Sprintf("%d , %d : USERID : UNIX : mbbbbbbbbb\r\n", bobPort, ircPort)},
		{"wrong server port", fmt.Sprintf("%d , %d\r\n", alicePort, ircPort+1), fmt.Sprintf("%d , %d : ERROR : NO-USER\r\n", alicePort, ircPort+1)},
		{"unknown local port", fmt.Sprintf("%d , %d\r\n", 1, ircPort), fmt.Sprintf("1 , %d : ERROR : NO-USER\r\n", ircPort)},
		{"garbage", "hello\r\n", "0 , 0 : ERROR : INVALID-PORT\r\n"},
		{"overlong line", strings.Repeat("1", MaxLineLength+10) + "\r\n", "closed: EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := query(t, s, tt.line); got != tt.want {
				t.Errorf("answer = %q, want %q", got, tt.want)
			}
		})
	}
	removeAlice()
	if got, want := query(t, s, fmt.Sprintf("%d , %d\r\n", alicePort, ircPort)), fmt.Sprintf("%d , %d : ERROR : NO-USER\r\n", alicePort, ircPort); got != want {
		t.Errorf("after the connection closed: answer = %q, want %q", got, want)
	}
	if reg.Len() != 1 {
		t.Errorf("registry holds %d connections, want 1", reg.Len())
	}
}

// TestAnswerOnlyToTheConnectionsHost checks that a host other than the one at the other end
// of a connection learns nothing about it.
func TestAnswerOnlyToTheConnectionsHost(t *testing.T) {
	reg := NewRegistry()
	s := NewServer(reg, zerolog.Nop())
	local := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
	server := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 6697}
	reg.Add(local, server, "mxyz")
	if got, want := s.Answer("40000, 6697", &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 5555}), "40000 , 6697 : USERID : UNIX : mxyz\r\n"; got != want {
		t.Errorf("from the server: %q, want %q", got, want)
	}
	if got, want := s.Answer("40000, 6697", &net.TCPAddr{IP: net.IPv4(198, 51, 100, 7), Port: 5555}), "40000 , 6697 : ERROR : NO-USER\r\n"; got != want {
		t.Errorf("from another host: %q, want %q", got, want)
	}
	// An IPv4-mapped IPv6 source is the same host.
	if got, want := s.Answer("40000, 6697", &net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.1"), Port: 5555}), "40000 , 6697 : USERID : UNIX : mxyz\r\n"; got != want {
		t.Errorf("from the server, IPv4-mapped: %q, want %q", got, want)
	}
}

// TestCloseEndsIdleQueries checks that a querier that sends nothing does not hold the server:
// Close ends its query at once, well within Timeout.
func TestCloseEndsIdleQueries(t *testing.T) {
	reg := NewRegistry()
	s := NewServer(reg, zerolog.Nop())
	if err := s.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("12")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.Close(ctx); ctx.Err() != nil {
		t.Fatalf("Close waited for an idle query: %v", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 64)); err == nil {
		t.Errorf("the idle query got %d bytes of answer, want its connection closed", n)
	}
}

// TestQueryWaitsForTheConnectionToBeRegistered: an IRC server may ask about a connection the
// moment it accepted it, before the bridge's dialer returned and registered it. The query waits
// (up to RegisterGrace) and gets the user name, not NO-USER; one about a connection never
// registered gets NO-USER after the grace.
func TestQueryWaitsForTheConnectionToBeRegistered(t *testing.T) {
	reg := NewRegistry()
	s := startServer(t, reg)
	s.grace = 2 * time.Second
	irc := ircServer(t)
	ircPort := irc.Addr().(*net.TCPAddr).Port
	conn, err := net.Dial("tcp", irc.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	port := conn.LocalAddr().(*net.TCPAddr).Port

	answered := make(chan string, 1)
	go func() { answered <- query(t, s, fmt.Sprintf("%d , %d\r\n", port, ircPort)) }()
	// Register once the query is being served (the server holds its connection).
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.mu.Lock()
		serving := len(s.conns)
		s.mu.Unlock()
		if serving > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the query was not taken within 5s")
		}
		runtime.Gosched()
	}
	reg.Add(conn.LocalAddr(), conn.RemoteAddr(), "mlate00000")
	if got, want := <-answered, fmt.Sprintf("%d , %d : USERID : UNIX : mlate00000\r\n", port, ircPort); got != want {
		t.Errorf("answer = %q, want %q", got, want)
	}

	s.grace = 50 * time.Millisecond
	if got, want := query(t, s, fmt.Sprintf("%d , %d\r\n", 1, ircPort)), fmt.Sprintf("1 , %d : ERROR : NO-USER\r\n", ircPort); got != want {
		t.Errorf("never registered: answer = %q, want %q", got, want)
	}
}

package ircconn

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ergochat/irc-go/ircmsg"
	"github.com/rs/zerolog"
)

// waitLimit bounds every wait in these tests; nothing should come near it.
const waitLimit = 5 * time.Second

// fakeServer is an in-process IRC server on 127.0.0.1 whose replies each test scripts.
type fakeServer struct {
	ln    net.Listener
	conns chan net.Conn
	tls   *tls.Config // if set, accept wraps connections in TLS
}

func newFakeServer(t testing.TB) *fakeServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("net.Listen() = %v", err)
	}
	s := &fakeServer{ln: ln, conns: make(chan net.Conn, 16)}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				close(s.conns)
				return
			}
			s.conns <- conn
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		for conn := range s.conns { // connections no script accepted
			conn.Close()
		}
	})
	return s
}

func (s *fakeServer) addr() string { return s.ln.Addr().String() }

// accept returns the next connection as a peer.
func (s *fakeServer) accept() (*peer, error) {
	select {
	case conn, ok := <-s.conns:
		if !ok {
			return nil, errors.New("listener closed")
		}
		if s.tls != nil {
			conn = tls.Server(conn, s.tls)
		}
		return &peer{conn: conn, rd: bufio.NewReader(conn)}, nil
	case <-time.After(waitLimit):
		return nil, errors.New("no connection")
	}
}

// peer is the server's end of one connection.
type peer struct {
	conn net.Conn
	rd   *bufio.Reader
}

func (p *peer) send(lines ...string) error {
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l)
		b.WriteString("\r\n")
	}
	p.conn.SetWriteDeadline(time.Now().Add(waitLimit))
	_, err := p.conn.Write([]byte(b.String()))
	return err
}

func (p *peer) read() (*ircmsg.Message, error) {
	p.conn.SetReadDeadline(time.Now().Add(waitLimit))
	line, err := p.rd.ReadString('\n')
	if err != nil {
		return nil, err
	}
	msg, err := ircmsg.ParseLine(line)
	if err != nil {
		return nil, fmt.Errorf("client sent unparsable line %q: %w", line, err)
	}
	return &msg, nil
}

// expect reads the next line and checks its command and, if given, its parameters.
func (p *peer) expect(command string, params ...string) (*ircmsg.Message, error) {
	msg, err := p.read()
	if err != nil {
		return nil, fmt.Errorf("waiting for %s: %w", command, err)
	}
	if msg.Command != command {
		return msg, fmt.Errorf("client sent %s %q, want %s", msg.Command, msg.Params, command)
	}
	for i, want := range params {
		if i >= len(msg.Params) || msg.Params[i] != want {
			return msg, fmt.Errorf("client sent %s %q, want params %q", msg.Command, msg.Params, params)
		}
	}
	return msg, nil
}

// expectEOF reads until the client closes the connection.
func (p *peer) expectEOF() error {
	for {
		if _, err := p.read(); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return errors.New("client did not close the connection")
			}
			return nil
		}
	}
}

// steps runs script steps in order and stops at the first error.
func steps(fns ...func() error) error {
	for _, fn := range fns {
		if err := fn(); err != nil {
			return err
		}
	}
	return nil
}

// handshake is the client's opening: CAP LS 302, NICK, USER.
func (p *peer) handshake(nick string) error {
	return steps(
		func() error { _, err := p.expect("CAP", "LS", "302"); return err },
		func() error { _, err := p.expect("NICK", nick); return err },
		func() error { _, err := p.expect("USER"); return err },
	)
}

// welcome sends the registration burst after CAP END.
func (p *peer) welcome(nick string, isupport ...string) error {
	lines := []string{":srv 001 " + nick + " :Welcome to the Test Network " + nick}
	for _, tokens := range isupport {
		lines = append(lines, ":srv 005 "+nick+" "+tokens+" :are supported by this server")
	}
	lines = append(lines, ":srv 375 "+nick+" :- srv Message of the day -", ":srv 372 "+nick+" :- hello", ":srv 376 "+nick+" :End of /MOTD command.")
	return p.send(lines...)
}

// register plays a plain server that offers server-time only.
func (p *peer) register(nick string) error {
	return steps(
		func() error { return p.handshake(nick) },
		func() error { return p.send(":srv CAP * LS :server-time") },
		func() error { _, err := p.expect("CAP", "REQ", "server-time"); return err },
		func() error { return p.send(":srv CAP * ACK :server-time") },
		func() error { _, err := p.expect("CAP", "END"); return err },
		func() error { return p.welcome(nick, "CASEMAPPING=ascii NETWORK=Test\\x20Net CHANTYPES=#") },
	)
}

// syncBuffer collects log output from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testConfig returns a config for srv whose debug log goes to logs.
func testConfig(addr string, logs *syncBuffer) Config {
	log := zerolog.New(logs).Level(zerolog.DebugLevel)
	return Config{Addr: addr, Nick: "alice", Log: &log, RegisterTimeout: waitLimit}
}

// serve runs script against the next connection on a goroutine; the returned function waits
// for it and reports its error.
func serve(t testing.TB, srv *fakeServer, script func(p *peer) error) func() error {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		p, err := srv.accept()
		if err != nil {
			errc <- err
			return
		}
		defer func() { p.conn.Close() }()
		errc <- script(p)
	}()
	return func() error {
		select {
		case err := <-errc:
			return err
		case <-time.After(waitLimit):
			return errors.New("server script did not finish")
		}
	}
}

// dialRegistered dials srv with cfg, lets the default script register it, and returns the
// connection and the server's peer. The connection is closed at the end of the test.
func dialRegistered(t *testing.T, srv *fakeServer, cfg Config) (*Conn, *peer) {
	t.Helper()
	peers := make(chan *peer, 1)
	wait := serve(t, srv, func(p *peer) error {
		if err := p.register(cfg.Nick); err != nil {
			return err
		}
		// Keep the connection open for the test: hand it over instead of returning.
		peers <- &peer{conn: p.conn, rd: p.rd}
		p.conn = nopCloseConn{p.conn}
		return nil
	})
	c, err := Dial(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Dial() = %v", err)
	}
	if err := wait(); err != nil {
		t.Fatalf("server: %v", err)
	}
	p := <-peers
	t.Cleanup(func() {
		c.Close()
		p.conn.Close()
		waitDone(t, c)
	})
	return c, p
}

// nopCloseConn keeps serve from closing a connection the test still uses.
type nopCloseConn struct{ net.Conn }

func (nopCloseConn) Close() error { return nil }

func waitDone(t testing.TB, c *Conn) {
	t.Helper()
	select {
	case <-c.Done():
	case <-time.After(waitLimit):
		t.Fatal("connection did not end")
	}
}

// recorder is a Handler that passes messages to a channel.
type recorder chan *ircmsg.Message

func (r recorder) handle(_ *Conn, msg *ircmsg.Message) { r <- msg }

// next returns the next message with command, skipping others.
func (r recorder) next(t *testing.T, command string) *ircmsg.Message {
	t.Helper()
	timeout := time.After(waitLimit)
	for {
		select {
		case msg := <-r:
			if msg.Command == command {
				return msg
			}
		case <-timeout:
			t.Fatalf("handler got no %s", command)
			return nil
		}
	}
}

// testTLS returns a server TLS config for 127.0.0.1 with a fresh self-signed certificate, and
// a client config that trusts it.
func testTLS(t testing.TB) (server, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "ircconn test"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	return server, &tls.Config{RootCAs: pool}
}

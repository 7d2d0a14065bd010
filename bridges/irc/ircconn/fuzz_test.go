package ircconn

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/ergochat/irc-go/ircmsg"

	"github.com/custodian-matrix/custodian/appservice/vault"
	"github.com/custodian-matrix/custodian/bridges/irc/ircline"
)

// FuzzConn feeds arbitrary bytes to a connection as the server's side of the stream, through
// registration and the read loop, and checks that nothing panics and that both Dial and the
// connection end once the server closes.
func FuzzConn(f *testing.F) {
	for _, seed := range []string{
		"",
		":s 001 n :hi\r\n:s 376 n :end\r\nPING :x\r\n",
		":s CAP * LS * :sasl=PLAIN\r\n:s CAP * LS :server-time batch\r\n:s CAP * ACK :sasl batch\r\nAUTHENTICATE +\r\n:s 900 n n!u@h acct :in\r\n:s 903 n :ok\r\n:s 001 n :hi\r\n:s 005 n CASEMAPPING=ascii NETWORK=a\\x20b -X :ok\r\n:s 422 n :no\r\n",
		":s 433 * n :in use\r\n:s 433 * n_ :in use\r\n:s 001 n1 :hi\r\n",
		":s 904 n :fail\r\n",
		"ERROR :bye\r\n",
		":s CAP * NAK :sasl\r\n:s CAP n NEW :chghost\r\n:s CAP n DEL :batch\r\n",
		"@a=\xff PRIVMSG #c :x\r\n\x00\r\n\r\r\n:n!u@h NICK :m\r\n",
		"@=;;= PING\r\n:only\r\n\n\n\r\nPONG\r\n",
		string(make([]byte, 10000)) + "\r\n:s 001 n :hi\r\n",
	} {
		f.Add([]byte(seed), uint8(0))
		f.Add([]byte(seed), uint8(3))
	}
	f.Fuzz(func(t *testing.T, data []byte, mode uint8) {
		client, server := net.Pipe()
		defer server.Close()
		// The server reads whatever the client writes, and writes the input then hangs up.
		go func() { _, _ = io.Copy(io.Discard, server) }()
		go func() {
			if mode&1 != 0 {
				_, _ = server.Write([]byte(":s 001 n :hi\r\n"))
			}
			_, _ = server.Write(data)
			server.Close()
		}()
		cfg := Config{
			Addr:            "fuzz:6667",
			Nick:            "n",
			RegisterTimeout: 10 * time.Second,
			MOTDTimeout:     10 * time.Second,
			Dialer: func(context.Context, string, string) (net.Conn, error) {
				return client, nil
			},
			Handler: func(c *Conn, msg *ircmsg.Message) {
				_ = ircline.Param(msg, 1)
				_, _ = c.ISupport("NETWORK")
				_ = c.CaseMapping().Fold(c.Nick())
				_ = c.HasCap("batch")
				if msg.Command == "PRIVMSG" {
					_ = c.Send(context.Background(), nil, "NOTICE", "n", "reply")
				}
			},
		}
		if mode&2 != 0 {
			cfg.SASL = &SASL{Account: "acct", Password: vault.NewSecret("pw")}
		}
		done := make(chan *Conn, 1)
		go func() {
			c, _ := Dial(context.Background(), cfg)
			done <- c
		}()
		var c *Conn
		select {
		case c = <-done:
		case <-time.After(waitLimit):
			t.Fatal("Dial did not return")
		}
		if c == nil {
			return
		}
		select {
		case <-c.Done():
		case <-time.After(waitLimit):
			t.Fatal("connection did not end after the server hung up")
		}
		if c.Err() == nil {
			t.Error("Err() = nil after the end")
		}
	})
}

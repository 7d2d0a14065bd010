package ircconn

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/ergochat/irc-go/ircmsg"
	"github.com/ergochat/irc-go/ircreader"
)

// benchBurst is a realistic registration burst: tags, three ISUPPORT lines, a short MOTD.
func benchBurst(nick string) []byte {
	var b strings.Builder
	tag := "@time=2026-01-02T03:04:05.678Z "
	fmt.Fprintf(&b, "%s:irc.example.org 001 %s :Welcome to the Example Internet Relay Chat Network %s\r\n", tag, nick, nick)
	fmt.Fprintf(&b, "%s:irc.example.org 002 %s :Your host is irc.example.org, running version solanum-1.0\r\n", tag, nick)
	for _, tokens := range []string{
		"ACCOUNTEXTBAN=a WHOX KNOCK MONITOR=100 ETRACE FNC SAFELIST ELIST=CMNTU CALLERID=g CHANTYPES=#",
		"EXCEPTS INVEX CHANMODES=eIbq,k,flj,CFLMPQRSTcgimnprstuz CHANLIMIT=#:250 PREFIX=(ov)@+ MAXLIST=bqeI:100",
		"MODES=4 NETWORK=Example STATUSMSG=@+ CASEMAPPING=rfc1459 NICKLEN=16 MAXNICKLEN=16 CHANNELLEN=50 TOPICLEN=390",
	} {
		fmt.Fprintf(&b, "%s:irc.example.org 005 %s %s :are supported by this server\r\n", tag, nick, tokens)
	}
	fmt.Fprintf(&b, "%s:irc.example.org 375 %s :- irc.example.org Message of the Day -\r\n", tag, nick)
	for range 20 {
		fmt.Fprintf(&b, "%s:irc.example.org 372 %s :- %s\r\n", tag, nick, strings.Repeat("Welcome! ", 8))
	}
	fmt.Fprintf(&b, "%s:irc.example.org 376 %s :End of /MOTD command.\r\n", tag, nick)
	fmt.Fprintf(&b, ":%s MODE %s :+Ziw\r\n", nick, nick)
	return []byte(b.String())
}

// benchRegister plays the server's side of registration on conn, then returns, leaving conn
// open with no goroutine or buffer of its own.
func benchRegister(conn net.Conn) error {
	var rd ircreader.Reader
	rd.Initialize(conn, 512, 4096)
	nick := ""
	for {
		line, err := rd.ReadLine()
		if err != nil {
			return err
		}
		msg, err := ircmsg.ParseLine(string(line))
		if err != nil {
			return err
		}
		var reply string
		switch {
		case msg.Command == "NICK":
			nick = msg.Params[0]
		case msg.Command == "CAP" && msg.Params[0] == "LS":
			reply = ":irc.example.org CAP * LS :account-notify away-notify chghost extended-join multi-prefix sasl server-time message-tags batch\r\n"
		case msg.Command == "CAP" && msg.Params[0] == "REQ":
			reply = ":irc.example.org CAP * ACK :" + msg.Params[1] + "\r\n"
		case msg.Command == "CAP" && msg.Params[0] == "END":
			_, err := conn.Write(benchBurst(nick))
			return err
		}
		if reply != "" {
			if _, err := conn.Write([]byte(reply)); err != nil {
				return err
			}
		}
	}
}

func heapAndStack() uint64 {
	var ms runtime.MemStats
	for range 2 {
		runtime.GC()
	}
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse + ms.StackInuse
}

// BenchmarkIdleConnMemory opens 1,000 registered connections to an in-process server and
// reports the memory each costs while idle (heap and stacks, after GC; the server's side is a
// bare connection without goroutines). The budget is 40 KB per connection. The tls case
// includes both ends' crypto/tls state, so it overstates the client's share.
func BenchmarkIdleConnMemory(b *testing.B) {
	b.Run("plain", func(b *testing.B) { benchIdleConnMemory(b, false) })
	b.Run("tls", func(b *testing.B) { benchIdleConnMemory(b, true) })
}

func benchIdleConnMemory(b *testing.B, useTLS bool) {
	const n = 1000
	var serverTLS, clientTLS *tls.Config
	if useTLS {
		serverTLS, clientTLS = testTLS(b)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	var (
		mu          sync.Mutex
		serverConns []net.Conn
	)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			if serverTLS != nil {
				conn = tls.Server(conn, serverTLS)
			}
			mu.Lock()
			serverConns = append(serverConns, conn)
			mu.Unlock()
			go func() {
				if err := benchRegister(conn); err != nil {
					conn.Close()
				}
			}()
		}
	}()
	closeServer := func() {
		mu.Lock()
		defer mu.Unlock()
		for _, conn := range serverConns {
			conn.Close()
		}
		serverConns = nil
	}
	ctx := context.Background()
	for range b.N {
		conns := make([]*Conn, n)
		before := heapAndStack()
		var wg sync.WaitGroup
		errs := make(chan error, n)
		sem := make(chan struct{}, 32)
		for i := range n {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				c, err := Dial(ctx, Config{
					Addr:    ln.Addr().String(),
					TLS:     clientTLS,
					Nick:    fmt.Sprintf("puppet%d", i),
					Handler: func(*Conn, *ircmsg.Message) {},
				})
				if err != nil {
					errs <- err
					return
				}
				conns[i] = c
			}()
		}
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			b.Fatalf("Dial() = %v", err)
		}
		after := heapAndStack()
		b.ReportMetric(float64(int64(after)-int64(before))/n, "B/conn")
		for _, c := range conns {
			c.Close()
		}
		for _, c := range conns {
			<-c.Done()
		}
		closeServer()
	}
}

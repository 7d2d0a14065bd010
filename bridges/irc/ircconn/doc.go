// Package ircconn is one IRC client connection: it dials, registers (CAP LS 302 negotiation,
// SASL PLAIN, nick collisions, the ISUPPORT burst), then runs exactly two goroutines, a reader
// and a writer, until the connection ends. It knows nothing about Matrix; the IRC bridge runs
// one [Conn] per puppet and reconnects with package backoff.
//
// Typical use:
//
//	c, err := ircconn.Dial(ctx, ircconn.Config{
//		Addr:    "irc.example.org:6697",
//		TLS:     &tls.Config{},
//		Nick:    "alice",
//		SASL:    &ircconn.SASL{Account: "alice", Password: pw},
//		Handler: br.handleIRC, // called serially on the reader goroutine
//		Log:     &log,
//	})
//	if err != nil { … errors.Is(err, ircconn.ErrSASLFailed) … }
//	_ = c.Send(ctx, nil, "JOIN", "#chan")
//	<-c.Done() // c.Err() says why
//
// # Design
//
// Registration runs on the caller's goroutine inside [Dial], bounded by its ctx and by
// [Config.RegisterTimeout]. Afterwards the reader goroutine parses every line with
// ircline.Parse (dropping and counting what fails, never panicking), answers PING at once,
// tracks the connection's own state ([Conn.Nick], [Conn.Account], capabilities, ISUPPORT) and
// calls [Config.Handler]. The writer goroutine owns all writes: it sends PONG, the keepalive
// PING and QUIT ahead of everything else, and paces [Conn.Send] with a token bucket
// ([Config.LineRate], [Config.LineBurst]); it also detects a silent server
// ([Config.PingInterval], [Config.PingTimeout]).
//
// Time comes from a [clock.Clock] ([Config.Clock]; tests use a [clock.Fake]), so tests
// drive registration timeouts, keepalives and flood control without sleeping. Socket
// deadlines, which the kernel enforces, are the only use of the wall clock.
//
// # Memory
//
// A connected, idle Conn holds two parked goroutines, a line buffer that starts at 512 bytes
// and never exceeds ircline.MaxInboundLen (plus CRLF), a send queue of [QueueLen] lines and its
// state; BenchmarkIdleConnMemory measures it (the bridge's budget is 40 KB per puppet at 1,000
// puppets). TLS adds crypto/tls's own record buffers.
//
// # Privacy
//
// Nothing here logs or returns line contents, message text or the SASL password: logs and
// errors carry commands, numerics, counts and durations only. The server's ERROR text is kept
// in [ServerError.Reason] for showing to the user, not in its Error string.
package ircconn

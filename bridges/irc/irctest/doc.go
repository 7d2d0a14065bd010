// Package irctest is an in-process IRC server for tests and benchmarks of the IRC bridge and
// its connection package: [NewServer] listens on 127.0.0.1, speaks enough of the client
// protocol to drive a bridge, and lets the test watch and steer it.
//
// It is not a real ircd and must never face the network. It has one server, no services but a
// NickServ that knows IDENTIFY, no channel or user modes beyond operator status (a channel's
// creator gets it), keys and bans, no flood control, no ping timeouts and no persistence; a
// channel exists while someone is in it. What it does speak:
//
//   - registration: PASS ("account:password" logs in to an account of [Server.AddAccount],
//     anything else is ignored), NICK, USER, CAP LS 302 / LIST / REQ / END (the offered
//     capabilities are configurable, see [WithCaps]), SASL PLAIN through AUTHENTICATE against
//     the accounts of [Server.AddAccount] and, if "sasl" offers EXTERNAL, SASL EXTERNAL against
//     the TLS client certificate fingerprints of [Server.AddCertFP] ([WithTLS]) (900/903, 904
//     on failure, 906 on abort, 908 for other mechanisms), then 001–005 (005 with
//     CASEMAPPING=rfc1459 and NETWORK=TestNet) and a one-line MOTD ending in 376; an ident
//     query to the client's ident server if [WithIdentd] is given; [WithRegistrationHold]
//     delays 001 per client, as slow real servers do;
//   - a NickServ that knows "IDENTIFY [account] password" only (a NOTICE answers, and 900
//     on success);
//   - nicks: 432 for invalid ones, 433 for ones in use (compared under rfc1459 folding, and
//     held from NICK on, registered or not), NICK changes broadcast to everyone sharing a
//     channel;
//   - channels: JOIN (with the JOIN broadcast, 332/333 and NAMES 353/366), PART, KICK by a
//     channel operator or by the test ([Server.Kick]), TOPIC (332 on join, broadcast on
//     change), NAMES, and +n: only members may speak in a channel (404);
//   - channel modes set by a channel operator or by the test ([Server.Mode]), relayed as MODE
//     to the channel: +k/-k (a JOIN without the key gets 475), +b/-b (nick!user@host globs; a
//     matching JOIN gets 474; MODE #chan b lists them) and +o/-o;
//   - PRIVMSG and NOTICE to channels (to the other members) and to nicks (401 if unknown),
//     tagged per recipient with time= (server-time), msgid= and client-only tags
//     (message-tags) and account= (account-tag); echo-message if offered and requested;
//   - WHOIS (311, 319, 312, 330 with the account, 318), PING/PONG, QUIT (broadcast to channel
//     peers, ERROR to the client, then close), WHO enough not to confuse clients,
//     421 for anything else.
//
// Lines from clients longer than 512 bytes without tags get 417 and are ignored; lines the
// server relays are cut to 512 bytes as a real server does, and [Server.Truncations] counts
// how often that happened, so a test can prove a client's own splitting fits.
//
// The test side: [Server.WaitFor] and [Server.Lines] see every line any client sent (kept in a
// bounded history, see [WithHistory]), with the sender's nick; [Server.Client] is a raw client
// with its own [Client.WaitFor]; [Server.Restart], [Server.Down] and [Server.Up] drop every
// connection and stop or resume listening on the same port; [Server.Kill] disconnects a
// client as a server operator's KILL would; [Server.SendRaw] writes arbitrary
// bytes to a client, for hostile-server tests. Every wait has a deadline.
//
// The server is safe for concurrent use and for thousands of clients: each connection has one
// reader goroutine and, only while it has something to send, one writer goroutine; what waits
// to be written is bounded ([WithSendQ]; a client that does not read is disconnected, as real
// servers do) and so is each line read. At the test's end every connection is closed and every
// goroutine has returned before the cleanup returns.
package irctest

// Package irc will be the IRC bridge: portal rooms for IRC channels, ghosts for IRC users,
// and a puppet connection per Matrix user, with SASL-linked accounts and the privacy
// operations of the core (issue 4). This session laid its foundations, in pure packages the
// bridge builds on:
//
//   - ircid: ghost localparts irc_<network>_<nick> and portal aliases #irc_<network>_<channel>,
//     folded by the network's CASEMAPPING and escaped reversibly;
//   - ircconv: Matrix HTML/plain ↔ IRC formatting codes, and splitting messages into lines
//     that fit 512 bytes as the server relays them (replies, edits, emotes, media);
//   - ircline: parsing hostile server lines without panicking, and building outbound lines that
//     can never carry CR, LF or NUL;
//   - backoff: jittered exponential reconnect delays and a token-bucket connection-rate limit,
//     on an injectable clock.
//
// # IRC library
//
// We use github.com/ergochat/irc-go (v0.7.0, August 2026; MIT), by the developers of the Ergo
// IRCv3 server, and of it only the protocol packages: ircmsg (line parsing and serialisation
// with IRCv3 message tags and their escapes, UTF-8-safe truncation, validation of CR/LF/NUL
// on output), ircreader (a line reader with a hard cap on buffered bytes) and ircutils (SASL
// response chunking and reassembly). The connection itself (registration, CAP negotiation,
// SASL PLAIN, PING, reconnects, flood control) will be our own small ircconn package.
//
// Why irc-go: it is maintained (tagged releases in 2026, security fixes for hostile servers,
// e.g. batch limits in v0.7.0), it tracks IRCv3 closely (its authors write the specs and the
// reference server), its parser is strict and fuzzed, and it has no dependencies. The other
// candidates on the module proxy: gopkg.in/irc.v4 has had no release since v4.0.0 (2022) and
// no SASL; github.com/lrstanley/girc (v1.1.2, 2026) is maintained and has SASL and most caps,
// but it is a framework: four goroutines per client plus goroutines per handler, built-in
// state tracking, and fixed flood control, none of which we can shape.
//
// Why not irc-go's own client, ircevent: it supports everything we need (sasl, server-time,
// message-tags, echo-message, batch, labeled-response), but every connection runs four
// goroutines (reader, line pump, writer, pinger) where we can make do with two, its
// reconnect loop waits a fixed ReconnectFreq on the wall clock with no hook for a shared
// rate limit or jitter, its timers use the time package directly (so tests would sleep), and it
// has no per-connection line-rate limit (only a ten-line write queue). Issue 4 needs jittered
// backoff per connection, a global connection-rate limit so a network restart with thousands
// of puppets does not stampede, per-network flood control, and ≤ 40 KB per connected puppet at
// 1,000 puppets; owning the loop (a few hundred lines on top of ircmsg and ircreader) is how we
// get all four, and the protocol details stay in the library. If ircconn turns out costlier
// than expected, ircevent is the fallback: Connect without Loop, reconnects driven by package
// backoff.
package irc

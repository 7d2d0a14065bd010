// Package irc is Custodian's IRC bridge: portal rooms for IRC channels (joined through their
// alias #irc_<network>_<channel>, or linked with !irc link), ghosts @irc_<network>_<nick> for IRC
// users, and a puppet connection per Matrix user who talks, which can log in to a services
// account with credentials sealed in the core's vault (!irc login: SASL PLAIN, the server
// password or NickServ IDENTIFY) or with a client certificate whose key is sealed the same way
// (!irc cert: SASL EXTERNAL over TLS), and which tells the network a per-user ident (answered
// by the built-in ident server) and a templated real name. Links ask a channel operator on IRC
// first, channel keys are sealed like passwords, and what IRC operators do to puppets (kick,
// kill, ban) shows in Matrix. Forget-me and
// deactivation make a user's puppets QUIT before their data is erased; redacting a command
// undoes what it configured; no message text is stored or logged. README.md in this directory
// is the user's and admin's guide; docs/ARCHITECTURE.md ("The IRC bridge") the design.
//
// The bridge (bridge.go: lifecycle and privacy hooks; session.go: keeping one connection alive;
// network.go, puppet.go, portal.go; handlematrix.go and handleirc.go by direction; commands.go;
// media.go, the media links for IRC users; consent.go, operators' consent to links and unlinks
// from IRC; keys.go, channel keys; kick.go, kicks, kills and bans) stands on packages that need
// no fakes to test:
//
//   - ircconn: one IRC client connection: CAP, SASL PLAIN or EXTERNAL, PASS, NickServ
//     IDENTIFY, nick fallbacks, flood control, keepalive, two goroutines;
//   - identd: a bounded RFC 1413 ident server answering for the bridge's connections;
//   - ircdb: the tables irc_* and their queries;
//   - ircid: ghost localparts irc_<network>_<nick> and portal aliases #irc_<network>_<channel>,
//     folded by the network's CASEMAPPING and escaped reversibly;
//   - ircconv: Matrix HTML/plain ↔ IRC formatting codes, and splitting messages into lines
//     that fit 512 bytes as the server relays them (replies, edits, emotes, media);
//   - ircline: parsing hostile server lines without panicking, and building outbound lines that
//     can never carry CR, LF or NUL;
//   - backoff: jittered exponential reconnect delays and a token-bucket connection-rate limit,
//     on an injectable clock;
//   - irctest: an in-process IRC server for the tests and benchmarks.
//
// # IRC library
//
// We use github.com/ergochat/irc-go (v0.7.0, August 2026; MIT), by the developers of the Ergo
// IRCv3 server, and of it only the protocol packages: ircmsg (line parsing and serialisation
// with IRCv3 message tags and their escapes, UTF-8-safe truncation, validation of CR/LF/NUL
// on output), ircreader (a line reader with a hard cap on buffered bytes) and ircutils (SASL
// response chunking and reassembly). The connection itself (registration, CAP negotiation,
// SASL PLAIN, PING, flood control) is our own small ircconn package; reconnects are the
// bridge's (session.go).
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
// get all four (BENCHMARKS.md: about 20 KB per idle puppet), and the protocol details stay in
// the library.
package irc

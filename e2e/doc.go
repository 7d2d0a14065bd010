//go:build e2e

// Package e2e runs Custodian end to end against a real Synapse and, for the PostgreSQL backend, a
// real PostgreSQL server, all on 127.0.0.1.
//
// Every file of the package carries the e2e build tag, so only
//
//	go test -tags goolm,e2e -count=1 ./e2e/...
//
// builds it; make test runs it after the unit tests. A test gets its own environment:
//
//	env := e2e.New(t, e2e.SQLite)
//	alice := env.Register(t, "alice")
//	roomID := env.MustCreateRoomWithBot(t, alice)
//	ping := env.SendText(t, alice, roomID, "!ping")
//	env.MustSyncUntil(t, alice, 30*time.Second, e2e.IsReplyTo(roomID, env.BotUserID(), ping))
//
// [New] builds the custodian binary (once per test binary), writes its config.yaml, generates the
// registration with Custodian's own -g code path, starts a fresh Synapse from the Debian chroot
// that scripts/testbed-synapse.sh caches (or the one CUSTODIAN_SYNAPSE_ROOT names) with that
// registration, and starts Custodian. Everything is torn down by t.Cleanup; when a test fails,
// the tails of Synapse's and Custodian's logs are printed.
//
// For the IRC bridge, [StartIRC] starts a real IRC network (InspIRCd with Atheme services for
// SASL, from Debian's packages, through scripts/testbed-irc.sh) on 127.0.0.1, and
// [WithIRCBridge] points Custodian's IRC bridge at it:
//
//	ircNet := e2e.StartIRC(t)
//	env := e2e.New(t, e2e.SQLite, e2e.WithIRCBridge(ircNet))
//	bob := ircNet.Connect(t, "bob")
//	bob.Join(t, "#persist")
//
// The network can be stopped and started again on the same ports ([IRCNet.Restart]); its
// channel #persist survives that and replays its recent lines to whoever joins.
//
// For encrypted rooms, a test drives real end-to-end encryption clients through one interface,
// [E2EEClient]: [Env.JSLogin] starts matrix-js-sdk with its Rust crypto (what Element uses) in a
// Node process, and [Env.MXLogin] logs in with mautrix-go's crypto. Both decrypt what they
// receive, and the scenarios run with each:
//
//	c := env.MXLogin(t, env.Register(t, "alice").UserID)
//	dm := c.CreateDM(t, env.BotUserID())
//	cmd := c.SendText(t, dm, "!help", 30*time.Second)
//	reply := c.WaitFor(t, 30*time.Second, e2e.InRoom(dm, e2e.ReplyTo(cmd)))
//
// The environment variables it reads:
//
//   - CUSTODIAN_SYNAPSE_ROOT: the Synapse chroot; without it the harness runs
//     scripts/testbed-synapse.sh (as root) to find or build one.
//   - POSTGRES_TEST_URI: a PostgreSQL server on which the harness may create and drop databases;
//     without it the PostgreSQL variants are skipped, except under CI=true, where they fail.
//   - POSTGRES_TEST_DATADIR: that server's data directory, which TestNoPlaintextAtRest reads
//     byte by byte (pg_wal included); scripts/with-postgres.sh exports both. Without it that
//     test's PostgreSQL variant is skipped, except under CI=true, where it fails.
//   - CUSTODIAN_E2E_RACE=1: build custodian with the race detector; a reported race fails the
//     test.
//   - CUSTODIAN_E2E_BINARY: a prebuilt custodian binary to test instead of building one.
//   - CUSTODIAN_E2E_KEEP=1: keep the work directories of failed tests for inspection.
//
// Nothing required is ever skipped under CI=true: a missing Synapse chroot or database fails the
// test instead.
package e2e

// Package appservice is Custodian's core: one Matrix application service that hosts several
// bridges and bots and owns everything to do with people's data.
//
// The core receives the homeserver's transactions and stores them durably before acknowledging
// them (ingest.go), hands their events to bridges and bots in per-room order (dispatch.go),
// hosts the Custodian bot and its command framework (bot.go, commands.go), and hosts the
// personal-data engine (package privacy: inventory, erasure, export, redaction purge,
// retention, the admin API's handler) through privacy.go, whose aliases give bridges the
// engine's types ([UserTable], [Provenance], …). Bridges implement [Bridge] and see the core
// only through [Host].
//
// A typical main:
//
//	cfg, err := appservice.LoadConfig("config.yaml", bridges)
//	reg, err := mxas.LoadRegistration("registration.yaml")
//	err = appservice.CheckRegistration(cfg, bridges, reg)
//	svc, err := appservice.New(cfg, reg, bridges, log)
//	err = svc.Run(ctx)
package appservice

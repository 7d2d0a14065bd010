# Custodian's entry points. `make test` is the whole suite and exactly what CI runs (.ci/run).
#
#   make build   build bin/custodian
#   make test    lint, then unit tests (SQLite and PostgreSQL) and the end-to-end suite (Synapse)
#   make lint    gofmt, go vet, staticcheck
#   make demo    a throwaway Synapse + Custodian on SQLite, until Ctrl-C
#   make bench   benchmarks of appservice/... on SQLite and a durable PostgreSQL, and of the IRC bridge
#
# test, demo and bench need root on a Debian 12 machine: scripts/testbed-setup.sh installs
# PostgreSQL, debootstrap and zstd if missing and builds (or restores) the Synapse chroot.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build

GO ?= go
# Build tags of every build and test: goolm selects mautrix's pure-Go olm, so no system libolm
# (and no cgo for it) is needed.
TAGS := goolm
# staticcheck 2026.2.2, the first release line built for Go 1.26.
STATICCHECK_VERSION := v0.8.2
STATICCHECK := $(CURDIR)/bin/tools/staticcheck-$(STATICCHECK_VERSION)
# Extra flags for the unit tests; the race detector is on because ingest and dispatch are
# concurrent.
UNIT_TESTFLAGS ?= -race
E2E_TESTFLAGS ?= -count=1 -timeout 50m
# Build the binary the end-to-end tests run with the race detector too; a reported race fails.
E2E_RACE ?= 1

.PHONY: build test lint demo bench testbed test-unit test-e2e

build:
	$(GO) build -tags $(TAGS) -o bin/custodian ./cmd/custodian

lint: $(STATICCHECK)
	@unformatted=$$(gofmt -l $$(find . -name '*.go' -not -path './.git/*' -not -path './bin/*')); \
	if [ -n "$$unformatted" ]; then echo "gofmt -l: these files need gofmt:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet -tags $(TAGS),e2e,demo ./...
	$(STATICCHECK) -tags $(TAGS),e2e,demo ./...

$(STATICCHECK):
	mkdir -p $(CURDIR)/bin/tools/tmp
	GOBIN=$(CURDIR)/bin/tools/tmp $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	mv $(CURDIR)/bin/tools/tmp/staticcheck $@

# The whole suite. -k: run the end-to-end tests even if a unit test failed, and fail at the end.
test: lint
	root=$$(scripts/testbed-setup.sh); \
	CUSTODIAN_SYNAPSE_ROOT=$$root scripts/with-postgres.sh $(MAKE) --no-print-directory -k test-unit test-e2e

# These two expect POSTGRES_TEST_URI (and, for the end-to-end tests, CUSTODIAN_SYNAPSE_ROOT or
# root) in the environment; `make test` provides both.
test-unit:
	$(GO) test -tags $(TAGS) $(UNIT_TESTFLAGS) ./...

# The demo (build tag demo) runs here too, for one second, so the Quick start's first command is
# tested with the rest.
test-e2e:
	CUSTODIAN_E2E_RACE=$(E2E_RACE) CUSTODIAN_DEMO_DURATION=1s $(GO) test -tags $(TAGS),e2e,demo $(E2E_TESTFLAGS) ./e2e/...

testbed:
	scripts/testbed-setup.sh >/dev/null

# The demo runs as a test binary of its own (build tags e2e and demo) so the harness that starts
# Synapse and Custodian for the tests is the one that starts them here; it runs until Ctrl-C.
demo:
	root=$$(scripts/testbed-setup.sh); \
	$(GO) test -c -tags $(TAGS),e2e,demo -o bin/e2e-demo.test ./e2e; \
	cd e2e && CUSTODIAN_SYNAPSE_ROOT=$$root ../bin/e2e-demo.test -test.run '^TestDemo$$' -test.timeout 0

bench:
	scripts/testbed-setup.sh --no-synapse; \
	PG_DURABLE=1 scripts/with-postgres.sh $(GO) test -tags $(TAGS) -run '^$$' -bench . -benchmem ./appservice/...
	$(GO) test -tags $(TAGS) -run '^$$' -bench . -benchtime 1x ./bridges/irc/ ./bridges/irc/ircconn/

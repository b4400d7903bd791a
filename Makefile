# meshca build and test entry points. `make test` is what CI runs.
GO        ?= go
BIN       := bin/meshca
AGENT_BIN := bin/meshca-agent
PKGS      := ./...
SOAKFUZZ  ?= 2m

.PHONY: all build run run-ha deps-etcd test deps vet fmt-check tidy-check unit bench-smoke fuzz-smoke bench fuzz soak soak-tests clean

all: build

## build: bin/meshca, and bin/meshca-agent (the node agent alone, without the server's dependencies)
build:
	$(GO) build -o $(BIN) ./cmd/meshca
	$(GO) build -o $(AGENT_BIN) ./cmd/meshca-agent

## run: build and start the server on the embedded default (./meshca-data, admin API on 127.0.0.1:8000)
run: build
	./$(BIN) server

## run-ha: three etcd members and two meshca replicas on loopback, state in ./meshca-ha (README: High availability)
run-ha: build deps-etcd
	./scripts/run-ha.sh

## deps-etcd: install Debian's etcd daemon (etcd-server) when etcd is missing; run-ha needs it, make test does not
deps-etcd:
	@command -v etcd >/dev/null 2>&1 || { \
		echo "installing etcd-server"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server; }

## deps: install the tools the tests call (openssl; chromium for the status page test) when missing
deps:
	@command -v openssl >/dev/null 2>&1 || { \
		echo "installing openssl"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq openssl; }
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing chromium"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; }

## test: everything CI runs (format, go.mod tidiness, vet, unit/integration/e2e tests, short benchmark and fuzz runs)
test: deps fmt-check tidy-check vet unit bench-smoke fuzz-smoke

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

# go.mod and go.sum must already be what `go mod tidy` would write.
tidy-check:
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum are not tidy: run 'go mod tidy' and commit the result"; exit 1; }

vet:
	$(GO) vet $(PKGS)

# The race detector is on for every test run in CI.
unit:
	$(GO) test -race -count=1 -timeout 15m $(PKGS)

# Each Go benchmark 20 times: proof that they still run, no timing
# asserted. The harness's sections run at their tiny quick sizes in the unit
# tests (TestQuick in internal/bench, under -race, checks each section's
# report), so they are not run a second time here.
bench-smoke: build
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 20x -timeout 5m $(PKGS)

# package:target pairs; make fuzz runs each for $(SOAKFUZZ).
FUZZ_TARGETS := ./internal/config:FuzzParse ./mesh:FuzzParse ./internal/identity:FuzzID ./internal/identity:FuzzDNSNames \
	./ca:FuzzIssueCSR ./ca:FuzzParseImport ./sds:FuzzSecrets ./internal/bootstrap:FuzzEnvoyBootstrap

# The smoke run gives each target a number of executions (about 5 s each
# on an idle 2-core machine), not a duration: with a duration, Go 1.26's
# fuzzing coordinator can report "context deadline exceeded" at the end of
# -fuzztime with no failing input (golang/go#75804, fixed in Go 1.27). It
# does not minimize new inputs (-fuzzminimizetime 0): a worker busy
# minimizing runs no inputs. `make fuzz` minimizes as usual.
SMOKE_FUZZ_TARGETS := ./internal/config:FuzzParse:4000 ./mesh:FuzzParse:300 ./internal/identity:FuzzID:150000 \
	./internal/identity:FuzzDNSNames:150000 ./ca:FuzzIssueCSR:20000 ./ca:FuzzParseImport:20000 ./sds:FuzzSecrets:20000 \
	./internal/bootstrap:FuzzEnvoyBootstrap:3000

fuzz-smoke:
	@for t in $(SMOKE_FUZZ_TARGETS); do pkg=$${t%%:*}; rest=$${t#*:}; \
		$(GO) test -run '^$$' -fuzz "^$${rest%%:*}$$" -fuzztime "$${rest#*:}x" -fuzzminimizetime 0 "$$pkg" || exit 1; done

## bench: the Go benchmarks, then the harness (about 13 minutes), which writes BENCHMARKS.md
bench: build
	$(GO) test -count=1 -run '^$$' -bench . -benchmem -timeout 30m $(PKGS)
	$(GO) run ./cmd/meshca-bench -meshca $(BIN) -out BENCHMARKS.md

## fuzz: longer fuzzing of every fuzz target
fuzz:
	@for t in $(FUZZ_TARGETS); do $(GO) test -run '^$$' -fuzz "^$${t#*:}$$" -fuzztime $(SOAKFUZZ) "$${t%%:*}" || exit 1; done

## soak: the long reliability runs, longer fuzzing, full benchmarks
soak: soak-tests fuzz bench

## soak-tests: the long variants of the reliability tests alone (20 kill -9, 10 TTLs of rotation...), with their figures
soak-tests:
	MESHCA_SOAK=1 $(GO) test -count=1 -v -timeout 60m -run 'CrashConsistency|GracefulStop|RotationSoak|Hostile|Abuse|Fault|Skew|ManyNodesFailOver' ./cmd/meshca ./internal/app ./ca
	MESHCA_SOAK=1 $(GO) test -count=1 -v -timeout 10m -run 'AgentRevocationLatency' ./internal/agent

clean:
	rm -rf bin

# announcer — the two commands: `make run` (whole system on loopback) and `make test` (every test).
SHELL   := /bin/bash
MODULES := pkg services/ingress services/fanout services/sender services/archiver clients/cli e2e
# deployments/ is its own module outside go.work: its tests parse compose files and Dockerfiles
# with heavy libraries that must not leak into the services' module graph.
ISOLATED := deployments
SERVICES := ingress fanout sender archiver
STACK   := bash scripts/stack/stack.sh
# Integration tests fail (not skip) when the stack is missing.
TESTENV := eval "$$($(STACK) env)" && export ANNOUNCER_REQUIRE_STACK=1

.PHONY: all build test unit lint fmt vet staticcheck tidycheck run bench bench-compare faults fuzz stack-up stack-down stack-status tidy clean

all: build

build:
	@mkdir -p bin
	@for s in $(SERVICES); do echo "build $$s"; (cd services/$$s && go build -trimpath -o ../../bin/announcer-$$s .) || exit 1; done
	@echo "build announcer (the operator CLI)"; cd clients/cli && go build -trimpath -o ../../bin/announcer .

## test: brings the stack up, lints, then runs every module's tests (unit + integration) with the race detector.
test: stack-up lint
	@$(TESTENV) && for m in $(MODULES); do \
		echo "== go test $$m"; (cd $$m && go test -race -count=1 -timeout 15m ./...) || exit 1; \
	done && for m in $(ISOLATED); do \
		echo "== go test $$m"; (cd $$m && GOWORK=off go test -race -count=1 -timeout 10m ./...) || exit 1; \
	done

## unit: tests that need no stack (integration tests skip).
unit:
	@for m in $(MODULES); do (cd $$m && go test -race -count=1 ./...) || exit 1; done
	@for m in $(ISOLATED); do (cd $$m && GOWORK=off go test -race -count=1 ./...) || exit 1; done

lint: fmt vet staticcheck tidycheck

fmt:
	@out=$$(gofmt -l $(MODULES) $(ISOLATED) tools 2>&1); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	@for m in $(MODULES); do (cd $$m && go vet ./...) || exit 1; done
	@for m in $(ISOLATED); do (cd $$m && GOWORK=off go vet ./...) || exit 1; done

## tidycheck: each module's go.mod and go.sum as `go mod tidy` leaves them on their own (GOWORK=off),
## so a module builds and tidies outside the workspace; `make tidy` fixes them.
tidycheck:
	@for m in $(MODULES) $(ISOLATED); do (cd $$m && GOWORK=off go mod tidy -diff) || { echo "$$m: go.mod/go.sum not tidy (run make tidy)"; exit 1; }; done

bin/staticcheck: tools/go.mod
	@mkdir -p bin && cd tools && GOWORK=off go build -o ../bin/staticcheck honnef.co/go/tools/cmd/staticcheck

staticcheck: bin/staticcheck
	@for m in $(MODULES); do (cd $$m && $(CURDIR)/bin/staticcheck ./...) || exit 1; done
	@for m in $(ISOLATED); do (cd $$m && GOWORK=off $(CURDIR)/bin/staticcheck ./...) || exit 1; done

## run: the whole system on loopback; Ctrl-C stops the services (the stack stays up: make stack-down).
run:
	@bash scripts/run.sh

## bench: figures for each stage and for the whole pipeline, each against a baseline measured in the
## same run; every figure also goes to bench/latest.json and bench/run-<UTC time>.json (git-ignored).
BENCH_RUN := bench/run-$(shell date -u +%Y%m%dT%H%M%SZ).json
bench: stack-up
	@set -o pipefail; mkdir -p bench && rm -f $(BENCH_RUN) && export ANNOUNCER_BENCH_OUT=$(CURDIR)/$(BENCH_RUN) && $(TESTENV) && \
	(cd pkg && go run ./benchreport/cmd/bench-report gauge start) && \
	(cd pkg && go test -run '^$$' -bench . -benchmem ./stanza/ ./announcement/ | go run ./benchreport/cmd/bench-report gotest) && \
	(cd services/ingress && go run ./cmd/ingress-bench) && \
	(cd services/fanout && ANNOUNCER_BENCH=1 go test -count=1 -timeout 30m -run '^TestBenchGiantChannel$$' -v .) && \
	(cd services/sender && go run ./cmd/sender-bench) && \
	(cd services/sender && go test -run '^$$' -bench PacedSend -benchtime 20x ./internal/delivery/ | (cd ../../pkg && go run ./benchreport/cmd/bench-report gotest)) && \
	(cd services/archiver && go test -run '^$$' -bench StorageWrite -benchtime 1000x . | (cd ../../pkg && go run ./benchreport/cmd/bench-report gotest)) && \
	(cd e2e && ANNOUNCER_BENCH=1 go test -count=1 -timeout 40m -run '^(TestDeliveryThroughput|TestBenchPipeline)$$' -v .) && \
	(cd pkg && go run ./benchreport/cmd/bench-report gauge end) && \
	cp $(BENCH_RUN) bench/latest.json && echo "figures: bench/latest.json ($(BENCH_RUN))" && \
	if [ "$$(ls bench/run-*.json | wc -l)" -ge 2 ]; then $(MAKE) --no-print-directory bench-compare; fi

## bench-compare: the two newest runs side by side (or OLD=... NEW=... run files).
bench-compare:
	@cd pkg && go run ./benchreport/cmd/bench-report compare $(if $(OLD),$(abspath $(OLD)) $(abspath $(NEW)),$(CURDIR)/bench)

## faults: every process killed (-9) and every dependency of the stack really restarted during a delivery,
## plus a frozen connection, at two scales; prints the table and writes faults/latest.json (git-ignored).
## About 4 minutes; it restarts the stack's own Kafka, MariaDB, Redis and ejabberd.
FAULTS_RUN := faults/run-$(shell date -u +%Y%m%dT%H%M%SZ).json
faults: stack-up
	@mkdir -p faults && $(TESTENV) && \
	(cd e2e && ANNOUNCER_FAULTS=1 ANNOUNCER_FAULTS_OUT=$(CURDIR)/$(FAULTS_RUN) go test -count=1 -timeout 20m -run '^TestFaults$$' -v .) && \
	cp $(FAULTS_RUN) faults/latest.json && echo "fault table: faults/latest.json ($(FAULTS_RUN))"

## fuzz: a short run of every fuzz target (each FUZZTIME).
FUZZTIME ?= 10s
fuzz:
	@for m in $(MODULES); do (cd $$m && for pkg in $$(go list ./...); do \
		for f in $$(go test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
			echo "fuzz $$pkg $$f"; go test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
		done; done) || exit 1; done

stack-up:
	@$(STACK) up

stack-down:
	@$(STACK) down

stack-status:
	@$(STACK) status

tidy:
	@for m in $(MODULES) $(ISOLATED); do (cd $$m && GOWORK=off go mod tidy) || exit 1; done

clean:
	rm -rf bin

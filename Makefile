# Ferry: the two commands a reader needs are `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo

.PHONY: help setup build demo test lint chart fmt bench chaos clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

setup: ## Install and start what Ferry needs (PostgreSQL, Redis, fake-gcs-server, docker-registry, skopeo, umoci; helm and kubernetes-validate)
	@bash scripts/setup.sh

build: ## Build every binary
	$(CARGO) build --workspace --bins

demo: setup build ## Migrate a sample registry end to end and print a summary (REGISTRY_DIR=/abs/dir for your own)
	@bash scripts/demo.sh

lint: ## rustfmt check, clippy with warnings denied, unused dependencies (cargo-machete), cargo deny
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@bash scripts/setup.sh --lint-tools >/dev/null
	@bash scripts/check-deps.sh

test: setup lint ## Set up, lint, check the Helm chart, and run every test against real PostgreSQL, Redis and registry data
	@bash scripts/drop-test-databases.sh
	$(CARGO) build --workspace --bins
	@bash scripts/check-chart.sh
	STORAGE_EMULATOR_HOST=$${FERRY_GCS_EMULATOR:-127.0.0.1:4443} $(CARGO) test --workspace --no-fail-fast -- --test-threads=2

chaos: setup ## The randomized fault suite: SCHEDULES seeded schedules (default 20) of WINDOW s of faults each (FERRY_CHAOS_SEED to replay one)
	@bash scripts/drop-test-databases.sh
	$(CARGO) build --workspace --bins
	FERRY_CHAOS_SCHEDULES=$${SCHEDULES:-20} FERRY_CHAOS_WINDOW_SECS=$${WINDOW:-30} \
	  $(CARGO) test -p ferry-tests --test chaos -- --nocapture

chart: build ## Check the Helm chart: helm lint, kubernetes-validate, FERRY_* names against the binaries
	@bash scripts/setup.sh --chart-tools >/dev/null
	@bash scripts/check-chart.sh

bench: setup ## Benchmarks (release build) beside their references; writes and prints the table in docs/benchmarks.md
	$(CARGO) build --release --workspace --bins
	STORAGE_EMULATOR_HOST=$${FERRY_GCS_EMULATOR:-127.0.0.1:4443} $(CARGO) bench -p ferry-tests --bench figures

fmt: ## Format the code
	$(CARGO) fmt --all

clean: ## Remove build output
	$(CARGO) clean

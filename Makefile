# CDR service. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.8
TOOLS := .tools
UV := $(TOOLS)/bin/uv
PYTEST_ARGS ?=
# The development environment has the embedded engine (the `embedded` extra) that the tests and
# `make run` use; `uv run` would otherwise sync it away. The image leaves it out (Dockerfile).
UV_RUN := $(UV) run --frozen --extra embedded
# uv sync builds the compiled validator (rust/cdr-validate) with maturin, which runs cargo:
# rustup installs it in ~/.cargo/bin, which a non-login shell may not have on its PATH.
export PATH := $(PATH):$(HOME)/.cargo/bin

.PHONY: help setup rust browser test image-env run lint bench kafka-start kafka-stop clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(UV):
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

rust: ## check for the Rust toolchain (cargo 1.88+) that builds rust/cdr-validate
	@command -v cargo >/dev/null || { echo "the ingest's compiled validator (rust/cdr-validate) is built from source" \
	  "and needs a Rust toolchain, 1.88 or newer: install it with rustup (https://rustup.rs) and run make again" >&2; \
	  exit 1; }

setup: $(UV) rust ## create .venv with the locked dependencies and the embedded engine (builds rust/cdr-validate)
	$(UV) sync --frozen --extra embedded

# The console's browser tests drive Debian's Chromium through its driver: installed here,
# as uv and the Kafka jars are, so `make test` passes on a fresh machine by itself.
browser: ## install Debian's chromium and chromium-driver when missing (the console's browser tests)
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  sudo_=""; [ "$$(id -u)" = 0 ] || sudo_="sudo"; \
	  if ! command -v apt-get >/dev/null || { [ -n "$$sudo_" ] && ! command -v sudo >/dev/null; }; then \
	    echo "the console's browser tests need chromium and chromedriver on PATH; install them" \
	      "(Debian: apt-get install chromium chromium-driver) and run make test again" >&2; exit 1; \
	  fi; \
	  echo "installing chromium and chromium-driver (apt-get$${sudo_:+ with sudo})"; \
	  $$sudo_ apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo_ apt-get install -y -qq chromium chromium-driver >/dev/null \
	    || { echo "could not install chromium and chromium-driver with apt-get; install them and run make test again" >&2; exit 1; }; \
	fi

test: setup browser ## run the whole test suite (starts its own Kafka unless CDR_KAFKA_BOOTSTRAP_SERVERS is set)
	$(UV_RUN) pytest $(PYTEST_ARGS)

image-env: $(UV) rust ## build the image's Python environment as the Dockerfile does (no chdb) and run cdr from it
	UV=$(UV) .ci/image-env.sh

run: setup ## local Kafka + ingest + API + PBX simulator; prints a curl line (Ctrl-C stops all)
	PATH="$(CURDIR)/.venv/bin:$$PATH" bash deploy/local/run.sh

lint: setup ## ruff, mypy and the dead-code finder
	$(UV_RUN) ruff check services tests bench
	$(UV_RUN) ruff format --check services tests bench
	$(UV_RUN) mypy
	$(UV_RUN) vulture
	cargo fmt --check --manifest-path rust/cdr-validate/Cargo.toml
	cargo clippy --quiet --release --manifest-path rust/cdr-validate/Cargo.toml -- -D warnings

bench: setup ## benchmarks (not part of test): ingest, freshness and API, each beside its baseline
	$(UV_RUN) python bench/run.py

kafka-start: ## start the local Kafka broker (prints CDR_KAFKA_BOOTSTRAP_SERVERS=...)
	deploy/local/kafka.sh start

kafka-stop: ## stop the local Kafka broker
	deploy/local/kafka.sh stop

clean: ## remove the virtual environments, caches and local data
	rm -rf .venv $(TOOLS) .cache data .pytest_cache .mypy_cache .ruff_cache rust/cdr-validate/target

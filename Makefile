# Everything runs inside .venv, built from the hashed lock file: a fresh clone
# with python3, pip and make is enough.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: help venv lint test demo bench lock clean

help:
	@echo "make demo   sweep a local stand-in platform and show what happened"
	@echo "make test   lint, type-check and run the tests"
	@echo "make bench  run the performance benchmark"
	@echo "make lock   re-pin requirements/*.lock from pyproject.toml"

$(VENV)/.installed: requirements/dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r requirements/dev.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(BIN)/ruff check sweeper tests $(wildcard bench)
	$(BIN)/ruff format --check sweeper tests $(wildcard bench)
	$(BIN)/mypy --strict sweeper

test: lint
	$(BIN)/pytest --cov=sweeper --cov-branch --cov-report=term --cov-fail-under=95

demo: venv
	$(BIN)/sweeper demo

bench: venv
	$(PY) bench/run.py

# Needs uv (pip install uv); the lock files are installed with plain pip.
lock:
	uv pip compile pyproject.toml --generate-hashes --python-version 3.11 -o requirements/runtime.lock
	uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 -o requirements/dev.lock

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .coverage

# Two commands on a fresh clone: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.DEFAULT_GOAL := help
.PHONY: help run demo test lint typecheck unit bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when the project metadata or the C kernels change (the install compiles
# service/_kernels.c: a C compiler is needed).
$(VENV)/.installed: pyproject.toml service/_kernels.c | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml service/_kernels.c | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@ $(VENV)/.installed

run: $(VENV)/.installed  ## serve the API on 127.0.0.1:8000 (trains the demo model first if none is active)
	$(BIN)/fraudscore serve --demo-model

demo: $(VENV)/.installed  ## train the demo model if none is active, then score a demo file
	$(BIN)/fraudscore demo

lint: $(VENV)/.installed-dev  ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-dev  ## mypy (strict on service/ and training/)
	$(BIN)/mypy

unit: $(VENV)/.installed-dev  ## pytest
	$(BIN)/pytest

test: lint typecheck unit  ## everything CI runs: lint, types, tests

bench: $(VENV)/.installed-dev  ## quick versions of every benchmark
	@for b in benchmarks/[a-z]*.py; do echo "== $$b"; $(BIN)/python $$b --quick || exit 1; done

clean:  ## remove the virtualenv, caches, the built kernels and local state (registry included)
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache .hypothesis service/_kernels*.so

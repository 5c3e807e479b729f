# evsite: every target bootstraps .venv on first use (and again when pyproject.toml changes).
#   make demo [DURATION=30]   simulated site + controller, live status (or final status after N s)
#   make test                 the whole suite (installs what it needs first)
#   make lint                 ruff, mypy --strict, import contracts, core purity
#   make bench                benchmarks, one JSON object a line

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DURATION ?=
PYTEST_ARGS ?=

.PHONY: all venv outside demo test lint bench clean

all: lint test

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

venv: $(STAMP)

# Outside parts the suite needs (Debian packages, node packages for test servers).
outside:
	@bash tests/outside-deps.sh

demo: venv
	$(BIN)/python -m hil demo $(if $(DURATION),--duration $(DURATION))

test: venv outside
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check controller drivers hil tests
	$(BIN)/ruff format --check controller drivers hil tests
	$(BIN)/mypy controller drivers hil
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_architecture.py

bench: venv
	$(BIN)/python tests/bench/run.py

clean:
	rm -rf .demo .mypy_cache .ruff_cache .pytest_cache .hypothesis

# Every target builds its own virtualenv in .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck unit bench benchmark soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## make test: ruff, mypy --strict, then the test suite
test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

unit: $(STAMP)
	$(BIN)/pytest

## make bench: the tidepool sizing benchmark on the embedded SQLite default
bench: $(STAMP)
	$(BIN)/tidepool bench

## make benchmark: pool overhead beside reference pools (not part of make test)
benchmark: $(STAMP)
	$(BIN)/python benchmarks/checkout.py

## make soak: a mixed workload with random faults against a private PostgreSQL
## (SOAK_SECONDS, default 120; SOAK_SEED; SOAK_JSON=report.json)
soak: $(STAMP)
	$(BIN)/python tests/faults/soak.py

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache

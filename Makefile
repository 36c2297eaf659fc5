# Every target builds its own virtualenv in .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

COMPILED := build/compiled
SOURCES := $(shell find src/tidepool -name '*.py')

.PHONY: test lint typecheck unit unit-compiled compiled docs bench benchmark soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## make test: ruff, mypy --strict, the documentation (warnings as errors, doctests), the tests,
## then the core and pool tests again against the mypyc-compiled core
test: lint typecheck docs unit unit-compiled

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

unit: $(STAMP)
	$(BIN)/pytest

## make compiled: the I/O-free core compiled with mypyc, in build/compiled (what a
## TIDEPOOL_COMPILE=1 wheel ships); PYTHONPATH=build/compiled imports it
compiled: $(COMPILED)/.built

$(COMPILED)/.built: $(STAMP) hatch_build.py $(SOURCES)
	$(BIN)/python hatch_build.py $(COMPILED)
	touch $@

unit-compiled: $(COMPILED)/.built
	TIDEPOOL_EXPECT_COMPILED=1 PYTHONPATH=$(COMPILED) $(BIN)/pytest -q tests/core tests/pool tests/test_compiled.py

## make docs: the Sphinx site in docs/_build/html, warnings as errors, then its doctests
docs: $(STAMP)
	$(BIN)/sphinx-build -q -W --keep-going -b html docs docs/_build/html
	$(BIN)/sphinx-build -q -W --keep-going -b doctest docs docs/_build/doctest

## make bench: the tidepool sizing benchmark on the embedded SQLite default
bench: $(STAMP)
	$(BIN)/tidepool bench

## make benchmark: every contender and scenario beside the peers (not part of make test;
## BENCH_ARGS="--json results.json --reps 5")
## (tidepool's core compiled, as its wheels ship it; BENCH_CORE=pure measures the .py files)
benchmark: $(COMPILED)/.built
	PYTHONPATH=$(if $(filter pure,$(BENCH_CORE)),,$(COMPILED)) $(BIN)/python benchmarks/run.py $(BENCH_ARGS)

## make soak: a mixed workload with random faults against a private PostgreSQL
## (SOAK_SECONDS, default 120; SOAK_SEED; SOAK_JSON=report.json)
soak: $(STAMP)
	$(BIN)/python tests/faults/soak.py

clean:
	rm -rf $(VENV) build dist docs/_build .pytest_cache .mypy_cache .ruff_cache

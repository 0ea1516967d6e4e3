# wa-inbox: `make run` serves, `make test` proves. Only Python 3.11+ and make are assumed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install run test lint format schema migrate clean bench bench-fanout bench-rls

$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "wa-inbox needs Python 3.11 or later")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet ".[dev]"
	@touch $(INSTALLED)

install: $(INSTALLED)

## Install, migrate (alembic upgrade head) and serve GraphQL on http://$HOST:$PORT/graphql.
run: install
	$(BIN)/python -m gql serve

## Apply migrations only.
migrate: install
	$(BIN)/python -m gql migrate

## Install, lint and run the whole suite (benchmarks excluded).
test: install lint
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## Regenerate schema.graphql from the code (a test fails when they differ).
schema: install
	$(BIN)/python -m gql export-schema > schema.graphql

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

## Benchmark suite (issue 7): reads, ingest and growth at small and large, side by side with
## their floors; prints a table, writes bench-results/suite.json and docs/bench-suite.png.
bench: install
	$(BIN)/python -m bench.suite --sizes small large --repeat 200

## Live-update fan-out benchmark (1,000 and 5,000 websocket subscribers); not part of `make test`.
bench-fanout: install
	$(BIN)/python -m bench.fanout --subscribers 1000 5000 --messages 30

## Row-level security cost on the hot reads (same data, with and without RLS, side by side).
bench-rls: install
	$(BIN)/python -m bench.rls --size small --repeat 300

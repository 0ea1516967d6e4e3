# wa-inbox: `make run` serves, `make test` proves. Only Python 3.11+ and make are assumed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# What serving needs (`make run`), and everything the suite and the benchmarks need on top.
SERVING := $(VENV)/.installed-serving
DEVELOPMENT := $(VENV)/.installed-development
DATA_DIR ?= $(or $(WA_INBOX_DATA_DIR),.pgdata)
# make token: the token's role, business and user (your login name unless USER= is given).
ROLE ?= agent
BUSINESS_ID ?= 1

# The GraphQL-over-HTTP audit (tests/test_graphql_http_audit.py) runs graphql-http's npm
# package with Node.js; `make test` installs it when npm is there, and the test skips without it.
AUDIT_DIR := tests/graphql_http_audit
AUDIT_PACKAGES := $(AUDIT_DIR)/node_modules/.installed-from-lock
NPM := $(shell command -v npm 2>/dev/null)
# Apollo Client's persisted-queries link, run against a live server by
# tests/test_persisted_documents.py; installed the same way, again when its lock file changes.
APOLLO_CLIENT_DIR := tests/apollo_client
APOLLO_CLIENT_PACKAGES := $(APOLLO_CLIENT_DIR)/node_modules/.installed-from-lock

.PHONY: install install-dev audit-packages apollo-client-packages run token reset test lint format schema migrate clean bench bench-fanout bench-rls

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "wa-inbox needs Python 3.11 or later")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(SERVING): pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet .
	@touch $(SERVING)

$(DEVELOPMENT): pyproject.toml | $(VENV)/bin/python
	$(BIN)/python -m pip install --quiet ".[dev]"
	@touch $(SERVING) $(DEVELOPMENT)

install: $(SERVING)

install-dev: $(DEVELOPMENT)

$(AUDIT_PACKAGES): $(AUDIT_DIR)/package.json $(AUDIT_DIR)/package-lock.json
	cd $(AUDIT_DIR) && npm ci --no-audit --no-fund
	@touch $(AUDIT_PACKAGES)

## Install the npm packages of the GraphQL-over-HTTP audit (needs Node.js 20+ and npm).
ifeq ($(NPM),)
audit-packages:
	@echo "npm is not installed: the GraphQL-over-HTTP audit will skip (install Node.js 20+ to run it)"
else
audit-packages: $(AUDIT_PACKAGES)
endif

$(APOLLO_CLIENT_PACKAGES): $(APOLLO_CLIENT_DIR)/package.json $(APOLLO_CLIENT_DIR)/package-lock.json
	cd $(APOLLO_CLIENT_DIR) && npm ci --no-audit --no-fund
	@touch $(APOLLO_CLIENT_PACKAGES)

## Install Apollo Client for the persisted-documents test (needs Node.js 20+ and npm).
ifeq ($(NPM),)
apollo-client-packages:
	@echo "npm is not installed: the Apollo Client test of persisted documents will skip (install Node.js 20+ to run it)"
else
apollo-client-packages: $(APOLLO_CLIENT_PACKAGES)
endif

## Install what serving needs, migrate (alembic upgrade head) and serve GraphQL on http://$HOST:$PORT/graphql.
## WORKERS=auto make run (or WORKERS=2) serves with one process per core, each with its own pool.
run: install
	$(BIN)/python -m gql serve

## Print a bearer token signed with the secret the server uses (ROLE=agent|service|admin, BUSINESS_ID=, USER=).
token: install
	@$(BIN)/python -m gql token --role "$(ROLE)" --business-id "$(BUSINESS_ID)" --user "$(or $(USER),developer)"

## Start over: delete the embedded database and its development secret (asks; FORCE=1 does not).
reset:
	@if [ ! -e "$(DATA_DIR)" ]; then echo "nothing to reset: $(DATA_DIR) does not exist"; exit 0; fi; \
	if [ "$(FORCE)" != "1" ]; then \
		printf 'Delete %s (the embedded database, its log and the development secret)? [y/N] ' "$(DATA_DIR)"; \
		read answer; case "$$answer" in [yY]|[yY][eE][sS]) ;; *) echo "kept $(DATA_DIR)"; exit 1;; esac; \
	fi; \
	for pid_file in "$(DATA_DIR)/postgres/postmaster.pid" "$(DATA_DIR)/postmaster.pid"; do \
		if [ -f "$$pid_file" ] && kill -0 "$$(head -n 1 "$$pid_file")" 2>/dev/null; then \
			echo "the embedded PostgreSQL in $(DATA_DIR) is running: stop the server first"; exit 1; \
		fi; \
	done; \
	rm -rf "$(DATA_DIR)" && echo "deleted $(DATA_DIR): the next make run starts from an empty database"

## Apply migrations only.
migrate: install
	$(BIN)/python -m gql migrate

## Install, lint and run the whole suite (benchmarks excluded).
test: install-dev lint audit-packages apollo-client-packages
	$(BIN)/python -m pytest

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## Regenerate schema.graphql from the code (a test fails when they differ).
schema: install
	$(BIN)/python -m gql export-schema > schema.graphql

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(AUDIT_DIR)/node_modules $(APOLLO_CLIENT_DIR)/node_modules

## Benchmark suite (issue 7): reads, ingest and growth at small and large, side by side with
## their floors; prints a table, writes bench-results/suite.json and docs/bench-suite.png.
bench: install-dev
	$(BIN)/python -m bench.suite --sizes small large --repeat 200

## Live-update fan-out benchmark (1,000 and 5,000 websocket subscribers); not part of `make test`.
bench-fanout: install-dev
	$(BIN)/python -m bench.fanout --subscribers 1000 5000 --messages 30

## Row-level security cost on the hot reads (same data, with and without RLS, side by side).
bench-rls: install-dev
	$(BIN)/python -m bench.rls --size small --repeat 300

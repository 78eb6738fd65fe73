# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint typecheck bench cluster soak clean

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

run: $(VENV)/.installed
	HOST=$(HOST) PORT=$(PORT) $(PY) -m project.run

# Two (CLUSTER=N) daphne processes on PORT, PORT+1, … against the local PostgreSQL and Redis.
CLUSTER ?= 2
cluster: $(VENV)/.installed
	HOST=$(HOST) PORT=$(or $(CLUSTER_PORT),8001) $(PY) -m project.run --processes $(CLUSTER)

# The JavaScript clients the node-marked tests drive (from the committed lockfile).
tests/e2e/node/js/node_modules/.installed: tests/e2e/node/js/package.json tests/e2e/node/js/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		cd tests/e2e/node/js && npm ci --no-audit --no-fund && touch node_modules/.installed; \
	else echo "npm not found: the node-marked tests will skip"; fi

test: $(VENV)/.installed tests/e2e/node/js/node_modules/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy copilotedge project

bench: $(VENV)/.installed
	$(PY) -m bench

# Ten minutes of load with hang-ups and upstream faults; not in CI.
soak: $(VENV)/.installed
	$(PY) -m bench.soak

clean:
	rm -rf $(VENV) staticfiles .pytest_cache .mypy_cache .ruff_cache .import_linter_cache bench/.cache

# The two commands of the README: `make demo` and `make test`. Each sets up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-long bench mutation lint typecheck pytest clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/roomkit serve examples.chat:ChatRoom --host 127.0.0.1 --port 8080 --demo-page

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check roomkit _roomkit_pytestplugin.py tests examples benchmarks
	$(BIN)/ruff format --check roomkit _roomkit_pytestplugin.py tests examples benchmarks
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy --strict roomkit _roomkit_pytestplugin.py

# The PostgreSQL tests fail rather than skip when no server can be had (tests/pg.py:
# ROOMKIT_TEST_POSTGRES, or the machine's binaries); run pytest by hand to let them skip.
pytest: $(STAMP)
	ROOMKIT_REQUIRE_POSTGRES=1 $(BIN)/pytest -q

# The long variants of the tests with real processes (many kills of workers): minutes.
test-long: $(STAMP)
	$(BIN)/pytest -q -m long

# The benchmark suite against the peers; QUICK=1 runs it in about three minutes.
# benchmarks/js holds the JavaScript ones, pinned by its package-lock.json: workerd (a
# peer) and Node's ws (the second load generator); `npm ci` installs them (Node 20).
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

JS_STAMP := benchmarks/js/node_modules/.installed
$(JS_STAMP): benchmarks/js/package-lock.json
	cd benchmarks/js && npm ci --ignore-scripts --no-audit --no-fund
	touch $(JS_STAMP)

bench: $(BENCH_STAMP) $(JS_STAMP)
	$(BIN)/python -m benchmarks $(if $(QUICK),--quick,)

# Mutation testing of roomkit/_core against its unit tests (about 20 minutes here);
# `.venv/bin/mutmut results` lists the mutants that lived.
MUTATION_STAMP := $(VENV)/.mutation-installed
$(MUTATION_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,mutation]'
	touch $(MUTATION_STAMP)

mutation: $(MUTATION_STAMP)
	$(BIN)/mutmut run --max-children 2
	$(BIN)/mutmut export-cicd-stats 2>/dev/null || true

clean:
	rm -rf $(VENV) build *.egg-info mutants

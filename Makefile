# privacy-gateway: a menu. `make demo` and `make test` work on a fresh machine with only Python 3.11+ and make.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=
PROTOS := $(wildcard proto/privacy_gateway/v1/*.proto)

.PHONY: help install browser postgres netns lock demo serve test test-fast bench bench-big proto lint typecheck clean

help:        ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

LOCK   := requirements/dev.lock

# Everything is installed from the lock file (exact versions, hashes checked), never resolved afresh,
# so the same commit installs the same packages next month. `make lock` refreshes the lock.
$(STAMP): pyproject.toml $(LOCK)
	@echo ">> creating virtual environment in $(VENV) and installing from $(LOCK) (first run: about a minute)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --progress-bar off --require-hashes --no-deps -r $(LOCK)
	@$(PY) -m pip install --quiet --progress-bar off --no-deps --no-build-isolation -e .
	@touch $(STAMP)
	@echo ">> installed"

install: $(STAMP) browser postgres netns  ## create .venv and install the project with its dev tools, from the lock file

# The console's browser tests drive Debian's Chromium (Playwright's own browser download is not used).
browser:  ## the system Chromium for the console's browser tests (apt-get as root when it is missing)
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo ">> installing Debian's chromium with apt-get (the console's browser tests)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; } || \
	    echo ">> chromium could not be installed: the console's browser tests will be skipped"; \
	  else echo ">> no chromium and not root: the console's browser tests will be skipped (apt-get install chromium)"; fi; }

# The storage tests run every store against PostgreSQL too: they start a throwaway cluster with Debian's
# server programs (initdb, pg_ctl; as the postgres user when run as root) and skip when there are none.
postgres:  ## Debian's PostgreSQL server programs for the storage tests (apt-get as root when they are missing)
	@command -v pg_ctl >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo ">> installing Debian's postgresql with apt-get (the PostgreSQL storage tests)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null 2>&1 || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null; } || \
	    echo ">> postgresql could not be installed: the PostgreSQL storage tests will be skipped"; \
	  else echo ">> no PostgreSQL server and not root: the PostgreSQL storage tests will be skipped (apt-get install postgresql)"; fi; }

# The multi-host test puts gateways, the sandbox and clients in network namespaces (`ip netns`, as root).
netns:  ## iproute2 for the multi-host test (apt-get as root when `ip` is missing)
	@command -v ip >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo ">> installing iproute2 with apt-get (the multi-host test's network namespaces)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iproute2 >/dev/null 2>&1 || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iproute2 >/dev/null; } || \
	    echo ">> iproute2 could not be installed: the multi-host test will be skipped"; \
	  else echo ">> no ip command and not root: the multi-host test will be skipped (apt-get install iproute2)"; fi; }

lock: $(STAMP)  ## re-resolve requirements/dev.lock from pyproject.toml (then `make install` and commit both)
	@$(VENV)/bin/uv pip compile pyproject.toml requirements/build.in --extra dev --generate-hashes \
		--python-version 3.11 --universal --quiet -o $(LOCK)

demo: $(STAMP)  ## generate example data, start sandbox + gateway (mTLS), run an example enterprise session, stop
	@$(PY) -m gateway demo

serve: $(STAMP)  ## run sandbox + gateway in the foreground with the example policies (Ctrl-C stops)
	@$(PY) -m gateway serve --dev

test: $(STAMP) browser postgres netns  ## what CI runs: lint, types, then every test (statistical and slow ones included)
	@$(PY) -m ruff check gateway sandbox pgw_client examples tests
	@$(PY) -m mypy
	@$(PY) -m pytest -q

test-fast: $(STAMP)  ## the inner loop: skip slow and statistical tests
	@$(PY) -m pytest -q -m "not slow and not statistical"

bench: $(STAMP)  ## run the benchmarks: BENCHMARKS.md (ARGS=--quick for a smoke run; ARGS="--sizes 1000000"), then BENCHMARKS-accuracy.md against OpenDP and SmartNoise (PEER_ARGS=--quick)
	@$(PY) -m examples.bench $(ARGS)
	@$(PY) -m examples.bench.peers $(PEER_ARGS)

bench-big: $(STAMP)  ## out-of-memory benchmark (sandbox on-disk store vs plain DuckDB): PEOPLE=100000000 MEMORY=256MiB
	@$(PY) -m examples.bench.bigdata --people $(or $(PEOPLE),100000000) --memory-limit $(or $(MEMORY),256MiB) $(ARGS)

proto: $(STAMP)  ## regenerate gen/python from proto/ (committed; a test checks it is fresh)
	@$(PY) -m gateway.cli.protogen

lint: $(STAMP)  ## ruff
	@$(PY) -m ruff check gateway sandbox pgw_client examples tests

typecheck: $(STAMP)  ## mypy --strict on gateway/, sandbox/ and pgw_client/
	@$(PY) -m mypy

clean:  ## remove the venv, caches, demo state and generated example data
	rm -rf $(VENV) .demo .state examples/data .pytest_cache .mypy_cache .ruff_cache *.egg-info

# gpdata: two commands for a newcomer, `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export GPDATA_HOME ?= $(CURDIR)/var
# development keys (make demo, gpdata dev-key) live outside GPDATA_HOME
export GPDATA_SECRETS_DIR ?= $(CURDIR)/.secrets

.PHONY: install demo airflow test lint scan bench clean lock browser-deps mutate

# Installs what is missing: the venv, the pinned requirements, then this package (editable). pip compiles the
# packages' bytecode on one core; compileall does it on every core (install 3.3 min -> about 2.5 on two cores).
$(STAMP): requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "gpdata needs $(PYTHON) (Python 3.11) on PATH" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile -r requirements.txt
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib >/dev/null
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m gpdata.ops.demo

airflow: $(STAMP)
	$(BIN)/python -m gpdata.ops.demo --airflow-standalone

test: $(STAMP) browser-deps
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest

# Headless Chromium for the browser test of the GP data page (Debian packages; needs root or sudo). If it cannot
# be installed, make test stops here rather than skipping the test.
browser-deps:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver; } \
	  || { echo "could not install chromium and chromium-driver (Debian packages) for the browser test" >&2; exit 1; }

# ruff, and import-linter: imports follow the flow (ops -> pipeline -> share -> store -> quality -> privacy ->
# ingest -> core) and only the CLI's synth command reaches the synthetic generator (contracts in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

# Leak scan of everything the demo wrote (store, all table versions, manifests, extracts, register, Airflow output).
scan: $(STAMP)
	GPDATA_MASTER_KEY_FILE=$${GPDATA_MASTER_KEY_FILE:-$(GPDATA_SECRETS_DIR)/dev-master.key} $(BIN)/gpdata scan

# Mutation testing of the privacy guards (cosmic-ray; never part of make test): results in mutation/results.json
# and mutation/summary.md; fails on a survivor not reviewed into mutation/equivalent.txt. MODULES=... for some.
mutate: $(STAMP)
	$(BIN)/python mutation/run.py $(MODULES)

bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf var

# Re-resolve the pinned environment from pyproject's direct dependencies (needs the package registry).
lock:
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/pip install --quiet -e '.[analysis]' pytest pytest-timeout pytest-xdist ruff import-linter hypothesis selenium setuptools 'moto[server]' cosmic-ray coverage
	{ sed -n '1,2p' requirements.txt; .lockenv/bin/pip freeze --exclude-editable | grep -v '^-e'; \
	  echo "setuptools==$$(.lockenv/bin/python -c 'import setuptools; print(setuptools.__version__)')"; } > requirements.new
	mv requirements.new requirements.txt && rm -rf .lockenv

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

# Installs what is missing: the venv, uv (pinned in requirements.txt) with pip, then the pinned requirements and
# this package (editable) with uv, which installs them several times faster than pip and shows its progress.
# No bytecode is compiled up front (compileall of the whole venv takes about 45 s on two cores): Python compiles
# each module the first time it is imported and keeps the .pyc. The venv's activate script is given this
# checkout's GPDATA_HOME and AIRFLOW_HOME, so `gpdata` and `airflow` work against the demo once it is sourced.
UV_PIN = $(shell grep -m1 '^uv==' requirements.txt)
# Python keeps the bytecode of what it imports, even where the environment says not to (these machines set
# PYTHONDONTWRITEBYTECODE): otherwise every new process (each test subprocess, Airflow task and bench worker)
# compiled Great Expectations, Airflow and the rest again, about 9 s of CPU for Great Expectations alone.
unexport PYTHONDONTWRITEBYTECODE
# `make bench` compiles the venv and this checkout before it measures (only what changed since; a file that does
# not compile, such as a package's Python 2 test data, is no error), as the production image's install does.
COMPILE = $(BIN)/python -m compileall -q -j0 $(VENV)/lib include plugins dags bench tests >/dev/null 2>&1 || true
ACTIVATE_MARK := \# gpdata: the homes of this checkout, written by make install
$(STAMP): requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "gpdata needs $(PYTHON) (Python 3.11) on PATH" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "[gpdata install] $(UV_PIN) with pip, then $$(grep -c '==' requirements.txt) pinned packages with uv"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check '$(UV_PIN)'
	$(BIN)/uv pip install --python $(BIN)/python -r requirements.txt
	$(BIN)/uv pip install --python $(BIN)/python --quiet --no-deps --no-build-isolation -e .
	@sed -i '/^$(ACTIVATE_MARK)$$/,$$d' $(BIN)/activate
	@{ echo '$(ACTIVATE_MARK)'; echo 'export GPDATA_HOME="$(GPDATA_HOME)"'; \
	  echo 'export AIRFLOW_HOME="$(GPDATA_HOME)/airflow"'; } >> $(BIN)/activate
	@touch $@

install: $(STAMP)

# SIZE: patients per practice (3 practices); `make demo SIZE=10000` for the larger demo (about 7 min more).
SIZE ?= 2000
demo: $(STAMP)
	@$(BIN)/python -m gpdata.ops.demo --patients $(SIZE)

airflow: $(STAMP)
	$(BIN)/python -m gpdata.ops.demo --airflow-standalone

# .env for docker compose: a generated value for every secret it needs (never printed) and the two key files it
# names, outside the checkout (gpdata secrets init; ARGS=--force replaces .env, never a key file).
.PHONY: secrets
secrets: $(STAMP)
	$(BIN)/gpdata secrets init $(ARGS)

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
	@$(COMPILE)
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf var

# Re-resolve the pinned environment from pyproject's direct dependencies (needs the package registry).
lock:
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/pip install --quiet -e '.[analysis]' uv pytest pytest-timeout pytest-xdist ruff import-linter hypothesis selenium setuptools 'moto[server]' cosmic-ray coverage
	{ sed -n '1,2p' requirements.txt; .lockenv/bin/pip freeze --exclude-editable | grep -v '^-e'; \
	  echo "setuptools==$$(.lockenv/bin/python -c 'import setuptools; print(setuptools.__version__)')"; } > requirements.new
	mv requirements.new requirements.txt && rm -rf .lockenv

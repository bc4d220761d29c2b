# Two commands do it all on a fresh Debian machine: `make run` serves, `make test` proves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MODEL_PATH ?= model/fraud-model.joblib
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := nginx
INSTALLED := $(VENV)/.installed
PERF_APT_PACKAGES := wrk
PERF_INSTALLED := $(VENV)/.perf-installed

.PHONY: help install system-packages run model model-full test clean perf perf-baseline perf-install

help:
	@echo "make run    install what is missing, train the default model if there is none, serve through nginx"
	@echo "make test   run the test suite (unit + integration with real nginx and gunicorn)"
	@echo "make model  (re)train the default model; CSV=path/to/creditcard.csv trains on real data"
	@echo "make install  system packages (nginx) and the virtual environment in .venv/"
	@echo "make perf   load and micro-benchmarks against the real stack, checked against perf/baseline.json (~3 min)"
	@echo "make perf-baseline  the same, then record this run's ratios as the new baseline"

install: system-packages $(INSTALLED)

# nginx from Debian's packages, installed only when missing.
system-packages:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(INSTALLED): pyproject.toml service/_walker.c
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Trained only when missing: `make model` retrains on purpose.
$(MODEL_PATH): | $(INSTALLED)
	$(PY) -m model.train --output $(MODEL_PATH)

model: | $(INSTALLED)
	$(PY) -m model.train --output $(MODEL_PATH) $(if $(CSV),--csv $(CSV))

model-full: | $(INSTALLED)
	$(PY) -m model.train --output $(MODEL_PATH) --rows 284807

# A fresh random key, never a default one.
.env:
	@umask 077; { echo "# Created by make run; see .env.example for every setting."; \
	  echo "API_KEY=$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(32))')"; } > .env
	@echo "created $(CURDIR)/.env with a new random API_KEY"

run: install .env $(MODEL_PATH)
	$(PY) -m service.stack

test: install
	$(PY) -m pytest -n auto -q

# The load generator (wrk, from Debian's packages) and the perf extra (matplotlib draws the chart).
perf-install: install
	@$(MAKE) --no-print-directory system-packages APT_PACKAGES="$(PERF_APT_PACKAGES)"
	@$(MAKE) --no-print-directory $(PERF_INSTALLED)

$(PERF_INSTALLED): $(INSTALLED) pyproject.toml
	$(PY) -m pip install -q -e '.[dev,perf]'
	touch $@

perf: perf-install $(MODEL_PATH)
	$(PY) -m perf $(PERF_ARGS)

perf-baseline: perf-install $(MODEL_PATH)
	$(PY) -m perf --write-baseline $(PERF_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info service/*.so .pytest_cache .hypothesis

# Two commands do it all on a fresh Debian machine: `make run` serves, `make test` proves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MODEL_PATH ?= model/fraud-model.joblib
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := nginx redis-server
# redis-server: the local feature store `make run` starts with FEATURE_STORE_START (and the tests).
# chromium renders /docs in a test; wrk drives load in the hostile-input tests and make chaos; git for
# the perf-compare tests (a container build has no git); Java runs the local Spark of the bulk-scoring test.
# make run MONITORING=1 (and the tests of deploy/prometheus/): Prometheus (and promtool), mtail over
# nginx's access log, and the exporter of nginx's stub_status. Defined before TEST_APT_PACKAGES, which
# expands it at once (:=).
MONITORING_APT_PACKAGES := prometheus mtail prometheus-nginx-exporter
TEST_APT_PACKAGES := chromium wrk git openjdk-17-jre-headless $(MONITORING_APT_PACKAGES)
# make container-test: the container engine, and debootstrap for the stand-in base images.
CONTAINER_APT_PACKAGES := podman buildah runc debootstrap
# Host-specific podman settings (runtime, cgroups, ulimits): the project's file, never /etc.
CONTAINER_ENV := CONTAINERS_CONF=$(CURDIR)/deploy/podman/containers.conf
# Every environment installs from a lock file with hashes (make lock writes them): requirements/dev.txt
# (the dev, data, evaluate, perf and containers extras) by default; the container's production stage
# requirements/production.txt (no extras): `make venv LOCK=production`; requirements/spark.txt is
# dev's and pyspark's (a few hundred MB, only for make test).
LOCK ?= dev
INSTALLED := $(VENV)/.installed
SPARK_INSTALLED := $(VENV)/.spark-installed
# make run's prediction log, unless PREDICTION_LOG_DIR (environment or .env) names another place.
LOCAL_PREDICTION_LOG := $(CURDIR)/.run/prediction-log
# The label table's place for local runs, unless LABELS_DIR (environment or .env) names another.
LOCAL_LABELS := $(CURDIR)/.run/labels

.PHONY: labels outcomes training-set lock test-sanitized compact verify-log score evaluate promote container-test features lint help install system-packages test-system-packages apt-packages venv slim-venv run reload model model-full convert test fuzz chaos clean perf perf-baseline perf-compare perf-stages perf-install

help:
	@echo "make run    install what is missing, train the default model if there is none, serve through nginx"
	@echo "            MONITORING=1: Prometheus (deploy/prometheus rules), mtail and the nginx exporter beside it"
	@echo "make test   run the test suite (unit + integration with real nginx and gunicorn)"
	@echo "make compact  the prediction log's spool into Parquet now; make verify-log  re-score the log, bit for bit"
	@echo "make labels IN=file  append chargebacks/cases/reviews (CSV or Parquet) to the label table (LABELS_DIR; REJECTS=file)"
	@echo "make outcomes  each model's real recall, precision and cost by week, labels joined to the log (FROM= TO= AS_OF= OUT=)"
	@echo "make reload roll out the model now at MODEL_PATH to the running service, with zero downtime"
	@echo "make features IN=file  load transactions' features into the feature store (by-id scoring)"
	@echo "make model  (re)train the default model; CSV=path/to/creditcard.csv trains on real data"
	@echo "            FROM_LOG=training-set.parquet (or the log's directory with FROM= TO= AS_OF=): on what production scored"
	@echo "make training-set FROM= TO= AS_OF= [OUT=]  the logged features of the rows scored FROM..TO, labelled as known at AS_OF"
	@echo "make convert  write MODEL_PATH's serving artifact ahead (OUTPUT_DIR=dir for a read-only mount; MODEL_SHA256=digest)"
	@echo "make install  system packages (nginx) and the virtual environment in .venv/, from the hashed lock requirements/dev.txt"
	@echo "make lock   resolve the lock files requirements/*.txt again after a change to pyproject.toml (UPGRADE=1: newest allowed)"
	@echo "make fuzz   thousands of generated requests through nginx: no 5xx, still healthy (FUZZ_EXAMPLES=5000)"
	@echo "make chaos  faults under load (kill -9, SIGTERM, recycling, slow body): a table of failures and recovery"
	@echo "make score IN=transactions.csv OUT=scores.parquet  score a CSV or Parquet file on every core (SCORE_ARGS=--explain)"
	@echo "make container-test  build the images (all stages), run the pair and the Kubernetes pod with podman, test through them"
	@echo "make perf   load and micro-benchmarks against the real stack, checked against perf/baseline.json (~10 min, perf/README.md)"
	@echo "make perf-baseline  the same, then record this run's ratios as the new baseline"
	@echo "make perf-compare  A/B: this checkout against BASE=<git rev> (default: where it left main), ROUNDS=3"
	@echo "make perf-stages   A/B, in-process: the stage timings' CPU per single score against BASE, ROUNDS=3"
	@echo "make evaluate  champion and challenger side by side, an HTML report (CHAMPION= CHALLENGER= CSV=, or FROM_LOG= FROM= TO= AS_OF=)"
	@echo "make promote   the challenger becomes the champion, zero downtime (RETIRE=1: no challenger after)"

install: system-packages $(INSTALLED)

# The virtual environment alone (no Debian packages): what the container's build stage needs.
venv: $(INSTALLED)

# The production image's environment, after `make venv LOCK=production`: what serving never imports goes,
# pip and setuptools (nothing is installed into it after) and the packages' own test suites.
slim-venv: $(INSTALLED)
	$(PY) -m pip uninstall -y -q pip setuptools
	find $(VENV)/lib -depth -type d -path '*/site-packages/*' \( -name tests -o -path '*/joblib/test' \) -exec rm -rf {} +

# Debian's packages, installed only when missing: nginx to serve; more for the tests.
system-packages:
	@$(MAKE) --no-print-directory apt-packages PACKAGES="$(APT_PACKAGES)"

test-system-packages:
	@$(MAKE) --no-print-directory apt-packages PACKAGES="$(APT_PACKAGES) $(TEST_APT_PACKAGES)"

apt-packages:
	@missing=""; for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# The lock's packages, each checked against its hash, then the project alone (its C extensions built
# by the setuptools the lock pins, not one fetched for the build).
$(INSTALLED): pyproject.toml setup.py requirements/$(LOCK).txt $(wildcard service/*/*.c)
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes -r requirements/$(LOCK).txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# Resolves the lock files again from PyPI after a change to pyproject.toml's requirements
# (tests/test_lock.py fails while they disagree). Pins that still fit are kept; UPGRADE=1 takes the
# newest releases the bounds allow. The spark lock is the superset; the others are constrained by it,
# so a package has one version in all three.
DEV_EXTRAS := dev data evaluate perf containers
BUILD_REQUIRES := $(PY) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")'
COMPILE := $(VENV)/bin/uv pip compile -q --generate-hashes --python-version 3.11 --custom-compile-command 'make lock' $(if $(UPGRADE),--upgrade) pyproject.toml -
lock: | $(INSTALLED)
	$(BUILD_REQUIRES) | $(COMPILE) --all-extras --output-file requirements/spark.txt
	$(BUILD_REQUIRES) | $(COMPILE) $(addprefix --extra ,$(DEV_EXTRAS)) --constraint requirements/spark.txt --output-file requirements/dev.txt
	$(BUILD_REQUIRES) | $(COMPILE) --constraint requirements/spark.txt --output-file requirements/production.txt

# Trained only when missing: `make model` retrains on purpose.
$(MODEL_PATH): | $(INSTALLED)
	$(PY) -m model.train --output $(MODEL_PATH)

# REVIEW_COST (per alert) and MAX_ALERT_RATE (0-1) set how the decision threshold is chosen;
# OOD_TARGET_RATE (0-1) the share of ordinary rows the out-of-distribution flag may mark.
# FROM_LOG: a `make training-set` table, or the prediction log's directory with FROM, TO and AS_OF.
WINDOW_ARGS = $(if $(FROM),--from $(FROM)) $(if $(TO),--to $(TO)) $(if $(AS_OF),--as-of $(AS_OF)) --default-labels-dir $(LOCAL_LABELS)
LOG_ARGS = $(if $(FROM_LOG),--from-log $(FROM_LOG) $(WINDOW_ARGS))
TRAIN_ARGS = $(if $(CSV),--csv $(CSV)) $(LOG_ARGS) $(if $(REVIEW_COST),--review-cost $(REVIEW_COST)) $(if $(MAX_ALERT_RATE),--max-alert-rate $(MAX_ALERT_RATE)) $(if $(OOD_TARGET_RATE),--ood-target-rate $(OOD_TARGET_RATE))

model: | $(INSTALLED)
	$(PY) -m model.train --output $(MODEL_PATH) $(TRAIN_ARGS)

model-full: | $(INSTALLED)
	$(PY) -m model.train --output $(MODEL_PATH) --rows 284807

# An estimator from elsewhere (no manifest): write its serving artifact ahead, so that a model
# directory mounted read-only is memory-mapped at start instead of converted at every start.
convert: | $(INSTALLED)
	$(PY) -m service.engine.convert $(MODEL_PATH) $(if $(OUTPUT_DIR),--output-dir $(OUTPUT_DIR)) $(if $(MODEL_SHA256),--sha256 $(MODEL_SHA256))

# A fresh random key, never a default one.
.env:
	@umask 077; { echo "# Created by make run; see .env.example for every setting."; \
	  echo "API_KEY=$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(32))')"; } > .env
	@echo "created $(CURDIR)/.env with a new random API_KEY"

run: install .env $(MODEL_PATH)
	$(if $(MONITORING),@$(MAKE) --no-print-directory apt-packages PACKAGES="$(MONITORING_APT_PACKAGES)")
	@mkdir -p .run
	GUNICORN_PIDFILE=$(CURDIR)/.run/gunicorn.pid $(PY) -m stack --default-prediction-log $(LOCAL_PREDICTION_LOG) $(if $(MONITORING),--monitoring)

# The prediction log (docs/prediction-log.md): one compactor pass (what the running compactor does
# every second), and the check that re-scoring the logged features gives the logged probabilities
# (FROM=YYYY-MM-DD TO=YYYY-MM-DD; MODELS="a.joblib b.joblib" for versions no longer served).
compact: install
	$(PY) -m service.predlog.compactor --once --default-dir $(LOCAL_PREDICTION_LOG)

verify-log: install
	$(PY) -m service.offline.verify_log --default-dir $(LOCAL_PREDICTION_LOG) $(if $(FROM),--from $(FROM)) \
	  $(if $(TO),--to $(TO)) $(foreach m,$(MODELS),--model $(m))

# The label table (docs/outcomes.md): IN=file.csv|.parquet with transaction_id, label, known_at
# (source, amount optional) appended as one new file; refused rows to REJECTS (default IN.rejects.csv).
labels: install
	@test -n "$(IN)" || { echo "usage: make labels IN=labels.csv [REJECTS=file]"; exit 2; }
	$(PY) -m service.offline.labels $(IN) --default-dir $(LOCAL_LABELS) --default-log-dir $(LOCAL_PREDICTION_LOG) \
	  $(if $(REJECTS),--rejects $(REJECTS))

# How each model really did (docs/outcomes.md): FROM= TO= the scoring dates, AS_OF= the label cut-off
# (default now), REVIEW_COST= per alert (the trainer's default), OUT= the directory (.run/outcomes).
outcomes: install
	$(PY) -m service.offline.outcomes --default-log-dir $(LOCAL_PREDICTION_LOG) --default-labels-dir $(LOCAL_LABELS) \
	  $(if $(FROM),--from $(FROM)) $(if $(TO),--to $(TO)) $(if $(AS_OF),--as-of $(AS_OF)) \
	  $(if $(REVIEW_COST),--review-cost $(REVIEW_COST)) --out $(or $(OUT),$(CURDIR)/.run/outcomes)

# The next model's training table from the log (docs/training-set.md): the rows scored FROM..TO
# (dates), labelled as known at AS_OF (default now); OUT= the Parquet file (default under .run/training-sets/).
training-set: | $(INSTALLED)
	$(PY) -m service.offline.training_set --default-dir $(LOCAL_PREDICTION_LOG) $(WINDOW_ARGS) $(if $(OUT),--output $(OUT))

# Load transactions' features into the feature store (FEATURE_STORE_URL): IN=file.csv|.parquet
# with a transaction_id column and the 30 features; TTL=seconds to keep each record; ROW_IDS=1: no id
# column (the published creditcard.csv), each row's number in the file is its id.
features: install
	@test -n "$(IN)" || { echo "usage: make features IN=transactions.parquet [TTL=86400]"; exit 2; }
	$(PY) -m service.offline.feature_writer $(IN) $(if $(TTL),--ttl $(TTL)) $(if $(ROW_IDS),--row-ids)

# Zero-downtime model rollout for a running `make run`: replace the model files (make model does,
# atomically), then this. New workers load the new model before the old ones stop.
reload:
	@test -s .run/gunicorn.pid || { echo "no running service (.run/gunicorn.pid is missing)"; exit 1; }
	kill -HUP $$(cat .run/gunicorn.pid)
	@echo "rollout requested: the log says 'rolled out model …' or why it was refused"

test: test-system-packages install lint $(SPARK_INSTALLED)
	$(PY) -m pytest -n auto -q
	@$(MAKE) --no-print-directory test-sanitized

# The tests that reach the C extensions (marked native) once more, against a build of the same sources
# with AddressSanitizer and UndefinedBehaviorSanitizer (tests/sanitized.py imports it instead of the
# in-place build): any finding stops the run. The interpreter is not instrumented, so the ASan runtime
# is preloaded ahead of it; Python allocates with plain malloc so that ASan sees every object; leaks
# are not reported (the interpreter keeps its objects until exit). -fno-wrapv undoes Python's own
# flag, so that a signed overflow is reported instead of wrapping.
SANITIZED := build/sanitized
SANITIZE := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -fno-wrapv
$(SANITIZED)/.built: setup.py $(wildcard service/*/_*.c) | $(INSTALLED)
	CFLAGS="$(SANITIZE)" LDFLAGS="$(SANITIZE)" $(PY) setup.py -q build_ext --force --build-lib $(SANITIZED) --build-temp $(SANITIZED)/temp
	touch $@

test-sanitized: $(SANITIZED)/.built
	LD_PRELOAD=$$($(CC) -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 PYTHONMALLOC=malloc TEST_EXAMPLE_SHARE=0.05 \
	SANITIZED_EXTENSIONS=$(SANITIZED) \
	$(PY) -m pytest -n auto -q -p tests.sanitized -m native

# Builds every stage of the Dockerfile (stand-in base images where no registry is reachable), prints
# build times and sizes, then runs the compose pair and the Kubernetes pod and tests through them.
container-test: install
	@$(MAKE) --no-print-directory apt-packages PACKAGES="$(APT_PACKAGES) $(TEST_APT_PACKAGES) $(CONTAINER_APT_PACKAGES)"
	$(CONTAINER_ENV) $(PY) -m tests.podman
	$(CONTAINER_ENV) $(PY) -m pytest -p no:xdist -q -s -m container tests/test_container_run.py tests/test_kubernetes_pod.py

# The rule sets and their reasons are in pyproject.toml (ruff; import-linter's layer contracts);
# `ruff format .` fixes what the format check finds.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

# The slow runs, kept out of make test. FUZZ_EXAMPLES sets how many generated requests the fuzz run sends.
FUZZ_EXAMPLES ?= 5000
fuzz: test-system-packages install
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -s -p no:xdist tests/test_fuzz.py

chaos: test-system-packages install $(MODEL_PATH)
	$(PY) -m chaos

# pyspark for the Spark job's test (a few hundred MB from PyPI, once): the spark lock holds the dev
# lock's pins and pyspark's.
$(SPARK_INSTALLED): $(INSTALLED) requirements/spark.txt
	$(PY) -m pip install -q --require-hashes -r requirements/spark.txt
	touch $@

# Bulk scoring with the service's model (MODEL_PATH, FRAUD_THRESHOLD… from the environment or .env);
# its readers (the data extra) are in the dev lock.
score: install $(MODEL_PATH)
	@[ -n "$(IN)" ] && [ -n "$(OUT)" ] || { echo "usage: make score IN=transactions.csv|.parquet OUT=scores.parquet|.csv [SCORE_ARGS='--explain --workers 4']"; exit 2; }
	$(PY) -m service.offline.bulk "$(IN)" "$(OUT)" $(SCORE_ARGS)

# The load generator (wrk, from Debian's packages); the perf extra (matplotlib draws the chart) is in
# the dev lock.
perf-install: install
	@$(MAKE) --no-print-directory test-system-packages

# PLACEMENT=split: the service on SERVICE_CPUS (default the first core), wrk and redis-server on
# LOAD_CPUS (default the others); shared (the default): every process on every core (perf/README.md).
PLACEMENT ?= shared
PLACEMENT_ARGS = --placement $(PLACEMENT) $(if $(SERVICE_CPUS),--service-cpus $(SERVICE_CPUS)) $(if $(LOAD_CPUS),--load-cpus $(LOAD_CPUS))
perf: perf-install $(MODEL_PATH)
	$(PY) -m perf $(PLACEMENT_ARGS) $(PERF_ARGS)

perf-baseline: perf-install $(MODEL_PATH)
	$(PY) -m perf --write-baseline $(PLACEMENT_ARGS) $(PERF_ARGS)

# BASE: a git revision (default: `git merge-base HEAD main`, or HEAD~1 on main); ROUNDS >= 3.
ROUNDS ?= 3
perf-compare: perf-install $(MODEL_PATH)
	$(PY) -m perf.compare $(if $(BASE),--base $(BASE)) --rounds $(ROUNDS) $(PLACEMENT_ARGS) $(COMPARE_ARGS)

# The stage timings' CPU per single score, in-process, this checkout against BASE (default: where it
# left main), interleaved over ROUNDS (perf/experiments/stages_cost.py).
perf-stages: perf-install $(MODEL_PATH)
	$(PY) -m perf.experiments.stages_cost $(if $(BASE),--base $(BASE)) --rounds $(ROUNDS)

# Defaults: the served champion (MODEL_PATH), the configured challenger (CHALLENGER_MODEL_PATH), and
# a fresh synthetic hold-out drawn with another seed than training's.
evaluate: $(INSTALLED) $(MODEL_PATH)
	$(PY) -m model.evaluate $(if $(CHAMPION),--champion $(CHAMPION)) $(if $(CHALLENGER),--challenger $(CHALLENGER)) $(if $(CSV),--csv $(CSV)) $(LOG_ARGS)

# The challenger's files replace the champion's (the old champion's go to the challenger's place,
# or away with RETIRE=1), then the running `make run` rolls out both with zero downtime.
promote: | $(INSTALLED)
	$(PY) -m model.promote $(if $(RETIRE),--retire)

clean:
	rm -rf $(VENV) build *.egg-info service/*/*.so .pytest_cache .hypothesis

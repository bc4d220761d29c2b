# syntax=docker/dockerfile:1
# The api container: gunicorn + the Falcon app. nginx runs in its own container (docker-compose.yml).
# Every step runs the same command a developer runs natively: `make test`, `make venv`,
# `make model`, `python -m service.runtime.serve`, `python -m service.runtime.healthcheck`.
#
# The base image is pinned by digest, so a rebuild gets the same bytes until the pin is moved on
# purpose. To update it (security fixes in Debian or Python), on a machine that can pull:
#   docker buildx imagetools inspect python:3.11-slim-bookworm   # the "Digest:" line (the multi-arch index)
# and replace the digest below (podman: `podman pull` then `podman image inspect --format
# '{{.Digest}}'`). The digest here is the official image's published index digest for 3.11.16.
# `make container-test` passes a local stand-in built from Debian's packages instead
# (--build-arg PYTHON_IMAGE=...) where no registry can be reached: see docs/containers.md.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

FROM ${PYTHON_IMAGE} AS base
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 DEBIAN_FRONTEND=noninteractive
# A C compiler for the C extensions (service/*/_*.c; with its sanitizer runtimes, for make test's second
# run), make for the one install script. Only the build and test stages have them: the production stage
# starts again from the bare Python image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev make zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app

# The whole suite, with real nginx and gunicorn, as CI runs it: a failing test fails the build.
FROM base AS test
# A CA bundle for pip where the build host's network needs its own (make container-test passes one
# mounted outside /etc/ssl, which the image's own packages, Java's keystore included, must write).
ARG PIP_CERT
# tests/test_spark.py skips here (Spark's JVM gateway does not start in a build sandbox); make test
# on the host runs it.
ENV FRAUD_IMAGE_BUILD=1
COPY . .
RUN make test && touch /app/.tests-passed

# Runtime dependencies only (requirements/production.txt: no extras, every package checked against its
# hash), the compiled extensions, and the serving artifact
# (MODEL_CSV trains on real data instead). Then what serving never imports leaves the environment:
# pip and setuptools (nothing is installed at run time) and the packages' own test suites.
FROM base AS build
ARG PIP_CERT
COPY pyproject.toml setup.py Makefile README.md gunicorn.conf.py ./
COPY requirements requirements
COPY service service
COPY model model
RUN make venv LOCK=production && make model MODEL_PATH=/opt/model/fraud-model.joblib && rm -rf build && make slim-venv

# Only what serving reads: the virtual environment, the service package (with the compiled walker),
# gunicorn.conf.py and the model files. No compiler, headers of the build stage, tests, training
# code, build directories or pip caches.
FROM ${PYTHON_IMAGE} AS production
# The production image is built only from a tested tree: this copy makes it depend on the test stage.
COPY --from=test /app/.tests-passed /opt/fraud-scoring/tests-passed
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --no-create-home --shell /usr/sbin/nologin app \
 && install -d -o app -g app -m 0755 /run/fraud-scoring \
 && install -d -o app -g app -m 0750 /var/lib/fraud-scoring/prediction-log
# Owned by root, so the service user can read but never change the code or the model.
COPY --from=build /app/.venv /app/.venv
COPY --from=build /app/service /app/service
COPY --from=build /app/gunicorn.conf.py /app/gunicorn.conf.py
COPY --from=build /opt/model /app/model
WORKDIR /app
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    ENV_FILE=/nonexistent \
    MODEL_PATH=/app/model/fraud-model.joblib \
    GUNICORN_BIND=unix:/run/fraud-scoring/gunicorn.sock \
    PROMETHEUS_MULTIPROC_DIR=/tmp/metrics
USER 10001:10001
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 CMD ["python", "-m", "service.runtime.healthcheck"]
CMD ["python", "-m", "service.runtime.serve"]

"""Fixtures: the stack under test (a local one, or the external service of FRAUD_BASE_URL: see
stack/harness.py), a client for it, and stacks of a test's own. Helpers live in tests/helpers.py."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from stack import harness
from stack.launcher import Stack
from tests.helpers import EXTERNAL, Client, start_stack, train_small_model

# No deadline on property tests: tests are not timed (speed lives in `make perf`), and a machine
# shared with other test runs stretches any single example unpredictably.
settings.register_profile("untimed", deadline=None)
settings.load_profile("untimed")


@pytest.fixture(scope="session")
def small_model(tmp_path_factory: pytest.TempPathFactory):
    """(path, estimator) of a small real forest, trained once per test process."""
    path = tmp_path_factory.mktemp("model") / "fraud-model.joblib"
    return path, train_small_model(path)


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model trained by `make model`'s own code: cost-chosen threshold, drift bins."""
    from model import train

    path = tmp_path_factory.mktemp("trained") / "fraud-model.joblib"
    assert train.main(["--rows", "30000", "--trees", "8", "--output", str(path), "--quiet"]) == 0
    return path


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The service under test: a local stack serving `small_model`, or the external service."""
    if EXTERNAL:
        yield EXTERNAL  # type: ignore[misc]  (host, port and base_url, as a Stack has)
        return
    logs = tmp_path_factory.mktemp("stack-logs")
    running = start_stack(request.getfixturevalue("small_model")[0], logs)
    yield running
    running.stop()


@pytest.fixture
def served_model(small_model):
    """(path, estimator) of the model `stack` serves; a test that compares against it skips when the
    service is external (its model is not the test's)."""
    if EXTERNAL:
        pytest.skip(harness.EXTERNAL_SKIP_REASON)
    return small_model


@pytest.fixture
def local_stack(stack) -> Stack:
    """`stack` for a test that needs its processes, socket or logs (`local_stack.logs`: stack.log,
    nginx-access.log); skips when the service is external."""
    if EXTERNAL:
        pytest.skip(harness.EXTERNAL_SKIP_REASON)
    return stack


@pytest.fixture
def client(stack) -> Client:
    return Client(stack.host, stack.port)


@pytest.fixture
def stack_factory(small_model, tmp_path: Path) -> Iterator:
    """Starts stacks with their own settings (rate limits, workers…); stops them after the test."""
    if EXTERNAL:
        pytest.skip(harness.EXTERNAL_SKIP_REASON)
    started: list[Stack] = []

    def start(**extra: str) -> Stack:
        running = start_stack(small_model[0], tmp_path / f"stack-{len(started)}", **extra)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """One local[2] session per test process (xdist worker): no UI, its own scratch directory.
    The Dockerfile's test stage runs `make test` inside an image build, whose sandbox does not
    start Spark's JVM gateway; `make test` on the host (CI runs it first) runs these tests for real."""
    if os.environ.get("FRAUD_IMAGE_BUILD") == "1":
        pytest.skip("no JVM gateway inside an image build: tested on the host")
    pytest.importorskip("pyspark", reason="make test installs pyspark (the spark extra)")
    from pyspark.sql import SparkSession

    started = time.monotonic()
    os.environ["PYSPARK_PYTHON"] = sys.executable  # the Python workers run this venv's Python
    session = (
        SparkSession.builder.master("local[2]")
        .appName("fraud-scoring-test")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.local.dir", str(tmp_path_factory.mktemp("spark-local")))
        .config("spark.sql.warehouse.dir", str(tmp_path_factory.mktemp("spark-warehouse")))
        .config("spark.sql.shuffle.partitions", "2")
        .getOrCreate()
    )
    session.startup_seconds = time.monotonic() - started  # type: ignore[attr-defined]
    yield session
    session.stop()


def pytest_terminal_summary(terminalreporter) -> None:
    """Start-up costs worth seeing in every run (recorded by tests with record_property, e.g. the
    local Spark session's), one line each; they arrive from xdist workers with the reports."""
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "call":
                continue
            for name, value in getattr(report, "user_properties", ()):
                if name.endswith("_startup_seconds"):
                    terminalreporter.write_line(f"{name.removesuffix('_seconds')}: {value} s ({report.nodeid})")

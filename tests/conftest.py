from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from service.settings import from_mapping
from service.stack import Stack
from tests.helpers import OTHER_KEY, TEST_KEY, Client, free_port, train_small_model

# No deadline on property tests: tests are not timed (speed lives in `make perf`), and a machine
# shared with other test runs stretches any single example unpredictably.
settings.register_profile("untimed", deadline=None)
settings.load_profile("untimed")


@pytest.fixture(scope="session")
def small_model(tmp_path_factory: pytest.TempPathFactory):
    """(path, estimator) of a small real forest, trained once per test process."""
    path = tmp_path_factory.mktemp("model") / "fraud-model.joblib"
    return path, train_small_model(path)


def stack_env(model_path: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH")}
    env.update(
        {
            "API_KEY": f"{TEST_KEY},{OTHER_KEY}",
            "MODEL_PATH": str(model_path),
            "PORT": str(port),
            "WORKERS": "2",
            "ENV_FILE": "/nonexistent/.env",  # a developer's .env must not leak into tests
        }
    )
    env.update(extra)
    return env


def start_stack(model_path: Path, logs: Path, **extra: str) -> Stack:
    """Real gunicorn and real nginx on a free loopback port; retried if another process takes the port."""
    for attempt in range(3):
        port = free_port()
        env = stack_env(model_path, port, **extra)
        logs.mkdir(parents=True, exist_ok=True)
        out = open(logs / "stack.log", "a")
        stack = Stack(from_mapping(env), env=env, stdout=out, stderr=out, access_log=str(logs / "nginx-access.log"))
        try:
            return stack.start(timeout=60)
        except RuntimeError:
            if attempt == 2:
                raise RuntimeError((logs / "stack.log").read_text()[-3000:]) from None
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def stack(small_model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("stack-logs")
    running = start_stack(small_model[0], logs)
    running.logs = logs  # type: ignore[attr-defined]
    yield running
    running.stop()


@pytest.fixture
def client(stack: Stack) -> Client:
    return Client("127.0.0.1", stack.settings.port)


@pytest.fixture
def stack_factory(small_model, tmp_path: Path) -> Iterator:
    """Starts stacks with their own settings (rate limits, workers…); stops them after the test."""
    started: list[Stack] = []

    def start(**extra: str) -> Stack:
        running = start_stack(small_model[0], tmp_path / f"stack-{len(started)}", **extra)
        running.logs = tmp_path / f"stack-{len(started)}"  # type: ignore[attr-defined]
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()

"""Start-up and shutdown of the real processes: one clear line on bad config, clean stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from service.core.artifacts import ArtifactPaths
from service.runtime import serve
from stack.launcher import ROOT, http_get
from tests.helpers import free_port, install_model, stack_env


def run_gunicorn(env: dict[str, str], tmp_path) -> subprocess.CompletedProcess:
    env = {**env, "GUNICORN_BIND": f"unix:{tmp_path}/g.sock"}
    return subprocess.run(serve.argv(), cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "override, expected",
    [
        ({"API_KEY": ""}, "config error: API_KEY is required"),
        ({"FRAUD_THRESHOLD": "high"}, "config error: FRAUD_THRESHOLD must be an integer from 0 to 100"),
        ({"WORKERS": "-2"}, "config error: WORKERS must be an integer"),
        # A URL the Redis client refuses: at start, not as a 500 at every by-id request; its password unshown.
        ({"FEATURE_STORE_URL": "redis://:pw-9f3e@127.0.0.1:99999/0"}, "config error: FEATURE_STORE_URL"),
    ],
)
def test_config_error_stops_gunicorn_with_one_line(small_model, tmp_path, override, expected):
    result = run_gunicorn(stack_env(small_model[0], free_port(), **override), tmp_path)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith(expected), result.stderr
    assert "Traceback" not in result.stderr and "pw-9f3e" not in result.stderr


def test_config_error_stops_the_launcher_with_one_line(small_model):
    env = stack_env(small_model[0], free_port(), PORT="99999")
    result = subprocess.run(
        [sys.executable, "-m", "stack"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert result.stderr.strip() == "config error: PORT must be an integer from 1 to 65535 (got '99999')"


def test_tampered_model_stops_gunicorn_when_a_model_is_required(small_model, tmp_path):
    install_model(small_model[0], tmp_path / "fraud-model.joblib")
    forest = ArtifactPaths.for_model(tmp_path / "fraud-model.joblib").forest
    forest.write_bytes(forest.read_bytes()[:-1] + b"\x00")
    result = run_gunicorn(stack_env(tmp_path / "fraud-model.joblib", free_port(), MODEL_REQUIRED="true"), tmp_path)
    assert result.returncode != 0
    assert "model error: refusing to load" in result.stderr and "does not match" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_launcher_serves_then_stops_cleanly(small_model, tmp_path, stop_signal):
    port = free_port()
    env = stack_env(small_model[0], port)
    with open(tmp_path / "out.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "stack"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if http_get("127.0.0.1", port, "/health")[0] == 200:
                        break
                except OSError:
                    pass
                assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "out.log").read_text()
                time.sleep(0.05)
            # As a terminal does: Ctrl-C signals the whole foreground process group.
            os.killpg(process.pid, stop_signal)
            assert process.wait(timeout=40) == 0
        finally:
            if process.poll() is None:
                process.kill()
    output = (tmp_path / "out.log").read_text()
    assert f"http://127.0.0.1:{port}" in output and "curl" in output
    assert "Shutting down: Master" in output
    assert "Handling signal: term" in output  # gunicorn got the graceful stop, not a fast SIGINT one
    with pytest.raises(OSError):
        http_get("127.0.0.1", port, "/health", timeout=1)

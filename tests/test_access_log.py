"""One access log, nginx's, over the real stack: a complete line per request (with the app's time
and the worker that answered, which gunicorn's own access line used to add), and no second line
from gunicorn. The app's own log lines are correlated with it by request id and process id."""

from __future__ import annotations

import json
import time
from pathlib import Path

from service.app import create_app
from service.settings import Settings
from tests.helpers import TEST_KEY, sample_transaction


def access_lines(logs: Path, request_id: str) -> list[dict]:
    """nginx's lines for one request id, once nginx has written them."""
    deadline = time.monotonic() + 5
    while True:
        lines = [json.loads(line) for line in (logs / "nginx-access.log").read_text().splitlines()]
        found = [entry for entry in lines if entry["request_id"] == request_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_one_complete_access_line_per_request(client, stack):
    request_id = f"log-{time.time_ns()}"
    reply = client.score(sample_transaction(), headers={"X-Request-ID": request_id})
    assert reply.status == 200
    assert "X-Worker-PID" not in reply.headers  # logged by nginx, hidden from clients
    [line] = access_lines(stack.logs, request_id)
    assert line["source"] == "nginx"
    assert (line["method"], line["path"], line["status"]) == ("POST", "/v1/fraud-score", 200)
    assert line["bytes"] == len(reply.raw) and line["request_length"] > 0
    assert float(line["app_ms"]) == float(reply.headers["X-Response-Time-Ms"])
    assert float(line["upstream_ms"]) * 1000 >= float(line["app_ms"]) - 1  # ms resolution
    worker = int(line["worker_pid"])
    status = Path(f"/proc/{worker}/status").read_text()
    assert f"PPid:\t{stack.gunicorn.pid}\n" in status  # one of the master's workers
    logged = (stack.logs / "nginx-access.log").read_text() + (stack.logs / "stack.log").read_text()
    assert TEST_KEY not in logged


def test_gunicorn_writes_no_access_line(client, stack):
    request_id = f"once-{time.time_ns()}"
    client.request("GET", "/health", headers={"X-Request-ID": request_id})
    assert len(access_lines(stack.logs, request_id)) == 1
    assert request_id not in (stack.logs / "stack.log").read_text()


def test_a_refusal_by_nginx_has_no_app_fields(client, stack):
    request_id = f"refused-{time.time_ns()}"
    reply = client.score(sample_transaction() | {"padding": "x" * 20_000}, headers={"X-Request-ID": request_id})
    assert reply.status == 413
    refused = [line for line in access_lines(stack.logs, request_id) if line["status"] == 413]
    assert refused and refused[0]["app_ms"] == "" and refused[0]["worker_pid"] == ""


def test_the_apps_error_line_carries_the_request_id(small_model, capsys):
    """An unexpected error is logged by the app with the request id nginx logs too."""
    import falcon.testing

    from service import logs
    from service.loader import load_model

    logs.configure()
    settings = Settings(api_keys=(TEST_KEY.encode(),), model_path=small_model[0])
    app = create_app(settings, load_model(settings))

    class Broken:
        def on_get(self, req, resp):
            raise RuntimeError("a bug")

    app.add_route("/broken", Broken())
    reply = falcon.testing.TestClient(app).simulate_get("/broken", headers={"X-Request-ID": "corr-1"})
    assert reply.status_code == 500 and reply.headers["X-Request-ID"] == "corr-1"
    [line] = [json.loads(x) for x in capsys.readouterr().err.splitlines() if "unhandled error" in x]
    assert line["request_id"] == "corr-1" and line["process"] == int(reply.headers["X-Worker-PID"])

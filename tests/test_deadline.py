"""Per-request deadlines over the real nginx + gunicorn: a spent budget is refused before the body is
read, the client's X-Deadline-Ms is honoured within its clamp, and only nginx's stamp counts.

The stamp is controlled by talking to gunicorn's unix socket directly, as nginx does; through nginx
the stamp is always nginx's own "now"."""

from __future__ import annotations

import json
import re
import time

import falcon.inspect
import pytest

from service.api.app import create_app
from service.api.deadline import guarded_routes
from service.core.settings import DEADLINE_MAX_MS
from service.engine.loader import load_model
from tests.helpers import TEST_KEY, Upstream, call_upstream, sample_transaction, wait_for


def transaction_body() -> bytes:
    return json.dumps(sample_transaction()).encode()


def api_routes(stack) -> list[tuple[str, str]]:
    """(method, path) of every route the stack's app guards: the API's, whatever they are now."""
    app = create_app(stack.settings, load_model(stack.settings))
    guarded = guarded_routes(app)
    return [
        (method.method, route.path)
        for route in falcon.inspect.inspect_routes(app)
        if route.path in guarded
        for method in route.methods
        if method.method in ("GET", "POST") and not method.internal
    ]


def concrete(template: str, stack) -> str:
    """A real request path for a route template: the model's name and version filled in."""
    model = load_model(stack.settings)
    return template.replace("{name}", "fraud").replace("{version}", model.version)


def test_every_api_route_is_guarded(local_stack):
    routes = api_routes(local_stack)
    assert {path for _, path in routes} >= {"/v1/fraud-score", "/v1/fraud-score/batch", "/v1/model-info"}
    assert "/v2/models/{name}/infer" in {path for _, path in routes}
    for method, path in routes:
        assert_refused_unread(local_stack, method, concrete(path, local_stack))


def test_probes_are_never_shed(local_stack):
    for path in ("/health", "/v2/health/live", "/v2/health/ready"):
        upstream = Upstream(local_stack.socket)
        try:
            upstream.send_head("GET", path, {"X-Request-Start": f"{time.time() - 10:.3f}"})
            status, _, body = upstream.read_reply()
        finally:
            upstream.close()
        assert status == 200, (path, body)


def test_a_method_the_route_does_not_answer_is_a_405_however_late(local_stack):
    """Nothing to shed: the answer is the 405 naming what is allowed, not deadline_exceeded."""
    for method, path in (("PUT", "/v1/fraud-score"), ("DELETE", "/v2/models/fraud/infer"), ("POST", "/v1/model-info")):
        upstream = Upstream(local_stack.socket)
        try:
            upstream.send_head(method, path, {"X-API-Key": TEST_KEY, "X-Request-Start": f"{time.time() - 10:.3f}"})
            status, headers, body = upstream.read_reply()
        finally:
            upstream.close()
        assert status == 405 and headers["allow"], (method, path, body)


def assert_refused_unread(stack, method: str, path: str) -> None:
    upstream = Upstream(stack.socket)
    try:
        # The body is announced but never sent: a worker that read it would wait for it, and this
        # read would time out instead of returning the 503.
        upstream.send_head(
            method,
            path,
            {
                "X-API-Key": TEST_KEY,
                "X-Request-Start": f"{time.time() - 10:.3f}",
                "X-Trace-Id": "4bf92f3577b34da6a3ce929d0e0e4736",
                "Content-Length": "4000",
            },
        )
        status, headers, body = upstream.read_reply()
    finally:
        upstream.close()
    assert status == 503, (method, path, body)
    refusal = json.loads(body)
    if path.startswith("/v2/"):  # the Open Inference Protocol's shape: {"error": message}
        assert list(refusal) == ["error"] and "waited" in refusal["error"], refusal
    else:
        assert refusal["error"] == "deadline_exceeded"
    assert headers["retry-after"] == "1"
    assert int(headers["x-queue-wait-ms"]) >= 10_000
    assert headers["content-type"] == "application/json" and headers["x-request-id"]
    assert re.fullmatch(r"00-4bf92f3577b34da6a3ce929d0e0e4736-[0-9a-f]{16}-00", headers["traceresponse"])  # its trace


def test_a_fresh_request_does_wait_for_its_body(local_stack):
    """The counterpart: with budget left, the worker reads the body, so the test above can fail."""
    upstream = Upstream(local_stack.socket, timeout=0.5)
    body = transaction_body()
    try:
        upstream.send_head(
            "POST",
            "/v1/fraud-score",
            {
                "X-API-Key": TEST_KEY,
                "X-Request-Start": f"{time.time() + 5:.3f}",  # in the future: no wait at all
                "Content-Type": "application/json",
                "Content-Length": str(len(body)),
            },
        )
        with pytest.raises(TimeoutError):
            upstream.sock.recv(1)
        upstream.sock.settimeout(10)
        upstream.sock.sendall(body)
        status, _, answer = upstream.read_reply()
    finally:
        upstream.close()
    assert status == 200, answer


def test_the_clients_deadline_is_honoured(local_stack):
    body = transaction_body()
    waited = time.time() - 0.030
    # 30 ms of the stack's budget spent: scored.
    assert call_upstream(local_stack.socket, "POST", "/v1/fraud-score", waited, body)[0] == 200
    # The client's own 20 ms budget is spent: refused.
    status, _, answer = call_upstream(
        local_stack.socket, "POST", "/v1/fraud-score", waited, body, **{"X-Deadline-Ms": "20"}
    )
    assert status == 503 and json.loads(answer)["error"] == "deadline_exceeded"
    assert b"of its 20 ms budget" in answer


def test_the_clients_deadline_is_clamped(local_stack):
    body = transaction_body()
    # An hour is clamped to DEADLINE_MAX_MS: a request that waited longer than that is refused.
    old = time.time() - DEADLINE_MAX_MS / 1000 - 1
    status, _, answer = call_upstream(
        local_stack.socket, "POST", "/v1/fraud-score", old, body, **{"X-Deadline-Ms": "3600000"}
    )
    assert status == 503 and f"of its {DEADLINE_MAX_MS} ms budget".encode() in answer
    # 1 ms is raised to DEADLINE_MIN_MS, which leaves room for the reserve: with no wait at all
    # (a stamp in the future counts as none), it is scored.
    status, _, answer = call_upstream(
        local_stack.socket, "POST", "/v1/fraud-score", time.time() + 5, body, **{"X-Deadline-Ms": "1"}
    )
    assert status == 200, answer


def test_an_unreadable_deadline_is_a_400(client):
    reply = client.score(sample_transaction(), headers={"X-Deadline-Ms": "soon"})
    assert reply.status == 400
    assert reply.json["error"] == "invalid_deadline"
    assert "X-Deadline-Ms" in reply.json["message"]


def test_without_nginxs_stamp_nothing_is_shed(local_stack):
    assert (
        call_upstream(
            local_stack.socket, "POST", "/v1/fraud-score", None, transaction_body(), **{"X-Deadline-Ms": "5"}
        )[0]
        == 200
    )


@pytest.mark.parametrize("path", ["/health", "/metrics"])
def test_health_and_metrics_are_never_shed(local_stack, path):
    assert call_upstream(local_stack.socket, "GET", path, time.time() - 10)[0] == 200


def test_a_forged_stamp_from_a_client_is_ignored(client, local_stack):
    """nginx replaces the client's X-Request-Start with its own: an hour-old forgery is scored, and
    the queue wait nginx logs is its own measurement, which it does not show the client."""
    reply = client.score(
        sample_transaction(), headers={"X-Request-Start": f"{time.time() - 3600:.3f}", "X-Request-ID": "forged-stamp"}
    )
    assert reply.status == 200, reply.raw
    assert "X-Queue-Wait-Ms" not in reply.headers

    def logged() -> list[dict]:  # nginx writes the line once the answer is sent: it may trail the reply
        lines = [json.loads(line) for line in (local_stack.logs / "nginx-access.log").read_text().splitlines()]
        return [entry for entry in lines if entry["request_id"] == "forged-stamp"]

    (line,) = wait_for(logged, timeout=10)
    assert 0 <= int(line["queue_ms"]) < 3_600_000


def test_metrics_count_sheds_and_queue_waits_by_route(client, local_stack):
    call_upstream(local_stack.socket, "GET", "/v1/model-info", time.time() - 10)
    assert client.score(sample_transaction()).status == 200
    text = client.request("GET", "/metrics").raw.decode()
    shed = [line for line in text.splitlines() if line.startswith("fraud_deadline_exceeded_total{")]
    assert any('route="/v1/model-info"' in line and float(line.split()[-1]) >= 1 for line in shed), shed
    waits = [line for line in text.splitlines() if line.startswith("fraud_queue_wait_seconds_count{")]
    assert any('route="/v1/fraud-score"' in line and float(line.split()[-1]) >= 1 for line in waits), waits

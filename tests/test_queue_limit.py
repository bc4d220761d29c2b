"""nginx's bound on the workers' queue, over the real nginx + gunicorn: at most SCORING_QUEUE
(WORKERS x QUEUE_PER_WORKER) API requests at once; the next is refused at once with the documented
503, before its body is read, without reaching a worker or the error log; the probes and /metrics are
not counted; a place that comes free is used again.

A place is held by a request whose body never comes: nginx has admitted it (it answers the
`Expect: 100-continue` only once it starts reading the body, after the limit's check) and waits."""

from __future__ import annotations

import json
import socket

import pytest

from stack.harness import EXTERNAL_SKIP_REASON
from tests.helpers import EXTERNAL, TEST_KEY, Client, Upstream, sample_transaction, wait_for

# These read the stack's own logs and settings: a local stack only.
pytestmark = pytest.mark.skipif(bool(EXTERNAL), reason=EXTERNAL_SKIP_REASON)

QUEUE = {"WORKERS": "1", "QUEUE_PER_WORKER": "2"}


class Nginx(Upstream):
    """The same byte-by-byte exchange as with gunicorn's socket, with nginx's TCP port."""

    def __init__(self, stack, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((stack.host, stack.port), timeout=timeout)


def hold_a_place(stack, path: str = "/v1/fraud-score") -> Nginx:
    """A request nginx admitted and now waits on for a body that never comes."""
    held = Nginx(stack)
    held.send_head("POST", path, {"X-API-Key": TEST_KEY, "Content-Length": "1000", "Expect": "100-continue"})
    assert held.sock.recv(100).startswith(b"HTTP/1.1 100 Continue"), "nginx did not start reading the body"
    return held


def refused_unread(stack, path: str) -> tuple[int, dict[str, str], bytes]:
    """A request whose announced body is never sent: only an answer given before the body can come."""
    caller = Nginx(stack)
    try:
        caller.send_head("POST", path, {"X-API-Key": TEST_KEY, "Content-Length": "4000", "X-Request-ID": "beyond-1"})
        return caller.read_reply()
    finally:
        caller.close()


@pytest.fixture
def full_queue(stack_factory):
    stack = stack_factory(**QUEUE)
    assert stack.settings.scoring_queue == 2
    held = [hold_a_place(stack) for _ in range(stack.settings.scoring_queue)]
    yield stack, held
    for h in held:
        h.close()


def test_one_more_request_is_refused_before_its_body(full_queue):
    stack, _ = full_queue
    for path in ("/v1/fraud-score", "/v1/fraud-score/batch", "/v1/fraud-score/by-id/batch"):
        status, headers, body = refused_unread(stack, path)
        assert status == 503, (path, body)
        assert headers["retry-after"] == "1"
        assert headers["content-type"].startswith("application/json")
        assert json.loads(body)["error"] == "unavailable"
    status, headers, body = refused_unread(stack, "/v2/models/fraud/infer")
    assert status == 503 and headers["retry-after"] == "1"
    assert set(json.loads(body)) == {"error"}  # the Open Inference Protocol's shape


def test_a_refusal_reaches_no_worker_and_no_error_log(full_queue):
    stack, _ = full_queue
    assert refused_unread(stack, "/v1/fraud-score")[0] == 503

    def logged() -> list[dict]:
        lines = [json.loads(line) for line in (stack.logs / "nginx-access.log").read_text().splitlines()]
        return [e for e in lines if e["request_id"] == "beyond-1"]

    (line,) = wait_for(logged, timeout=5)
    assert line["status"] == 503 and line["refused_by"] == "limit_conn"
    assert line["upstream_ms"] == "" and line["worker_pid"] == ""  # no connect(), no worker
    errors = (stack.logs / "stack.log").read_text()
    assert "limiting connections" not in errors and "connect() to unix:" not in errors


def test_probes_and_metrics_are_not_counted(full_queue):
    stack, _ = full_queue
    client = Client(stack.host, stack.port)
    for path in ("/health", "/v2/health/live", "/v2/health/ready", "/metrics"):
        assert client.request("GET", path).status == 200, path


def test_a_freed_place_is_used_again(full_queue):
    stack, held = full_queue
    client = Client(stack.host, stack.port)
    assert client.score(sample_transaction()).status == 503
    held.pop().close()  # nginx ends that request when it reads the close
    assert wait_for(lambda: client.score(sample_transaction()).status == 200, timeout=10)

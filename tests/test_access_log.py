"""One access log, nginx's, over the real stack: a complete line per request (with the app's time
and the worker that answered, so that no second log is needed to find them), no second line from
gunicorn, and the request the client sent and the limit that refused it, also when nginx answered
itself. The app's own log lines are correlated with it by request id, trace id and process id; a
caller's W3C traceparent is honoured, and every answer of the app names its span in that trace."""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
from pathlib import Path

from service.api.app import create_app
from service.core.settings import Settings
from service.telemetry.trace_context import trace_id
from tests.helpers import OTHER_KEY, TEST_KEY, Client, sample_transaction


def access_lines(logs: Path, request_id: str) -> list[dict]:
    """nginx's lines for one request id, once nginx has written them."""
    deadline = time.monotonic() + 5
    while True:
        found = [entry for entry in complete_lines(logs / "nginx-access.log") if entry["request_id"] == request_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_one_complete_access_line_per_request(client, local_stack):
    request_id = f"log-{time.time_ns()}"
    reply = client.score(sample_transaction(), headers={"X-Request-ID": request_id})
    assert reply.status == 200
    assert "X-Worker-PID" not in reply.headers  # logged by nginx, hidden from clients
    [line] = access_lines(local_stack.logs, request_id)
    assert line["source"] == "nginx"
    assert (line["method"], line["path"], line["status"]) == ("POST", "/v1/fraud-score", 200)
    assert line["bytes"] == len(reply.raw) and line["request_length"] > 0
    assert float(line["app_ms"]) == float(reply.headers["X-Response-Time-Ms"])
    assert float(line["upstream_ms"]) * 1000 >= float(line["app_ms"]) - 1  # ms resolution
    worker = int(line["worker_pid"])
    status = Path(f"/proc/{worker}/status").read_text()
    assert f"PPid:\t{local_stack.gunicorn.pid}\n" in status  # one of the master's workers
    logged = (local_stack.logs / "nginx-access.log").read_text() + (local_stack.logs / "stack.log").read_text()
    assert TEST_KEY not in logged


def test_gunicorn_writes_no_access_line(client, local_stack):
    request_id = f"once-{time.time_ns()}"
    client.request("GET", "/health", headers={"X-Request-ID": request_id})
    assert len(access_lines(local_stack.logs, request_id)) == 1
    assert request_id not in (local_stack.logs / "stack.log").read_text()


def test_a_refusal_by_nginx_has_no_app_fields(client, local_stack):
    request_id = f"refused-{time.time_ns()}"
    reply = client.score(sample_transaction() | {"padding": "x" * 20_000}, headers={"X-Request-ID": request_id})
    assert reply.status == 413
    refused = [line for line in access_lines(local_stack.logs, request_id) if line["status"] == 413]
    assert refused and refused[0]["app_ms"] == "" and refused[0]["worker_pid"] == ""


def test_bytes_a_client_sends_that_are_not_utf8_leave_the_log_line_valid_json(client, local_stack):
    """escape=json escapes quotes and control characters but copies bytes >= 0x80 as they came: a
    User-Agent or path of latin-1 bytes would make the line invalid UTF-8, which a log shipper (and
    Path.read_text) refuses. Only printable ASCII is logged from them."""
    request_id = f"utf8-{time.time_ns()}"
    request = (
        b"GET /v1/caf\xe9/x\xff HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"X-Request-ID: " + request_id.encode() + b'\r\nUser-Agent: agent\xff\xfe"}\r\n\r\n'
    )
    assert raw_request(local_stack.settings.port, request).startswith(b"HTTP/1.1 400")  # not ASCII
    [line] = access_lines(local_stack.logs, request_id)  # read_text() decodes the whole log as UTF-8
    assert (line["path"], line["user_agent"]) == ("/v1/caf", "agent")


def test_the_apps_error_line_carries_the_request_id(small_model, capsys):
    """An unexpected error is logged by the app with the request id and trace id nginx logs too."""
    import falcon.testing

    from service.engine.loader import load_model
    from service.telemetry import logs

    logs.configure()
    settings = Settings(api_keys=(TEST_KEY.encode(),), model_path=small_model[0])
    app = create_app(settings, load_model(settings))

    class Broken:
        def on_get(self, req, resp):
            raise RuntimeError("a bug")

    app.add_route("/broken", Broken())
    reply = falcon.testing.TestClient(app).simulate_get(
        "/broken", headers={"X-Request-ID": "corr-1", "X-Trace-Id": CALLER_TRACE}
    )
    assert reply.status_code == 500 and reply.headers["X-Request-ID"] == "corr-1"
    [line] = [json.loads(x) for x in capsys.readouterr().err.splitlines() if "unhandled error" in x]
    assert line["request_id"] == "corr-1" and line["process"] == int(reply.headers["X-Worker-PID"])
    assert line["trace_id"] == CALLER_TRACE == answered_span(reply)[0]


# --- trace context ---------------------------------------------------------------------------------

TRACERESPONSE = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-00")
CALLER_TRACE, CALLER_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


def answered_span(reply) -> tuple[str, str]:
    """(trace id, span id) of the app's traceresponse header."""
    found = TRACERESPONSE.fullmatch(reply.headers.get("traceresponse", ""))
    assert found, reply.headers
    return found.group(1), found.group(2)


def test_a_callers_traceparent_is_honoured_in_nginxs_line_and_the_answer(client, local_stack):
    request_id = f"traced-{time.time_ns()}"
    traceparent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    reply = client.score(sample_transaction(), headers={"X-Request-ID": request_id, "traceparent": traceparent})
    assert reply.status == 200
    trace, span = answered_span(reply)
    assert trace == CALLER_TRACE and span not in (CALLER_SPAN, "0" * 16)
    [line] = access_lines(local_stack.logs, request_id)
    assert line["trace_id"] == CALLER_TRACE
    again = client.score(sample_transaction(), headers={"traceparent": traceparent})
    assert answered_span(again)[0] == CALLER_TRACE and answered_span(again)[1] != span  # a span per request


def test_without_a_valid_traceparent_each_request_gets_a_fresh_trace(client, local_stack):
    invalid = (
        None,
        f"00-{'0' * 32}-{CALLER_SPAN}-01",  # all-zero trace id
        f"00-{CALLER_TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{CALLER_TRACE.upper()}-{CALLER_SPAN}-01",
        f"ff-{CALLER_TRACE}-{CALLER_SPAN}-01",
        "not a traceparent",
    )
    seen = set()
    for n, traceparent in enumerate(invalid):
        request_id = f"fresh-{n}-{time.time_ns()}"
        headers = {"X-Request-ID": request_id} | ({"traceparent": traceparent} if traceparent else {})
        reply = client.score(sample_transaction(), headers=headers)
        assert reply.status == 200
        trace, _ = answered_span(reply)
        [line] = access_lines(local_stack.logs, request_id)
        assert line["trace_id"] == trace, line
        seen.add(trace)
    assert len(seen) == len(invalid) and CALLER_TRACE not in seen


def test_nginxs_own_refusal_logs_the_callers_trace(client, local_stack):
    request_id = f"traced-refusal-{time.time_ns()}"
    reply = client.score(
        sample_transaction() | {"padding": "x" * 20_000},
        headers={"X-Request-ID": request_id, "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"},
    )
    assert reply.status == 413 and "traceresponse" not in reply.headers  # the app never saw it
    [line] = [line for line in access_lines(local_stack.logs, request_id) if line["status"] == 413]
    assert line["trace_id"] == CALLER_TRACE


def test_the_trace_id_without_nginx():
    """A direct call to the app (no X-Trace-Id): the caller's traceparent's trace id, else a fresh one."""
    assert (
        trace_id({"HTTP_X_TRACE_ID": "a" * 32, "HTTP_TRACEPARENT": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}) == "a" * 32
    )
    assert trace_id({"HTTP_TRACEPARENT": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}) == CALLER_TRACE
    fresh = {trace_id({"HTTP_TRACEPARENT": f"00-{'0' * 32}-{CALLER_SPAN}-01"}) for _ in range(3)}
    assert len(fresh) == 3 and all(re.fullmatch(r"[0-9a-f]{32}", t) for t in fresh)


# --- nginx's access line: the request the client sent, also when nginx refuses it itself ---------


def complete_lines(path: Path) -> list[dict]:
    """The log's finished lines: a long line nginx is writing can be read half-written (no newline yet)."""
    text = path.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


def nginx_lines(stack) -> list[dict]:
    return complete_lines(stack.logs / "nginx-access.log")


def logged(stack, predicate) -> dict:
    """The access line that `predicate` picks, waiting for nginx's log phase to write it."""
    deadline = time.monotonic() + 10
    while True:
        found = [line for line in nginx_lines(stack) if predicate(line)]
        if found or time.monotonic() > deadline:
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.05)


def by_id(request_id: str):
    return lambda line: line["request_id"] == request_id


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        return s.recv(65536)


def test_each_nginx_refusal_is_logged_with_the_original_method_path_and_limit(stack_factory):
    stack = stack_factory(RATE_LIMIT_PER_KEY="1", RATE_LIMIT_PER_IP="1000", RATE_LIMIT_BURST="1")
    port = stack.settings.port
    client = Client("127.0.0.1", port)

    def send(rid: str, method: str, path: str, body=None, **kwargs) -> dict:
        headers = {"X-Request-ID": rid, **kwargs.pop("headers", {})}
        reply = client.request(method, path, body, headers=headers, **kwargs)
        assert reply.headers["Content-Type"] == "application/json" and reply.json["error"]
        line = logged(stack, by_id(rid))
        assert line["status"] == reply.status
        return line

    def expect(line: dict, method: str, path: str, status: int, refused_by: str) -> None:
        assert (line["method"], line["path"], line["status"], line["refused_by"]) == (method, path, status, refused_by)

    # The query string is left out of the log (whatever a client puts there).
    line = send("big-body", "POST", "/v1/fraud-score?explain=true&key=sekrit-in-a-query", "x" * 20_000)
    expect(line, "POST", "/v1/fraud-score", 413, "client_max_body_size")

    # limit_req: requests from one key, faster than its zone's 1 a second, until nginx refuses one
    # (on either route); a refusal by the app, should one come first, carries the app's message.
    def nginx_refusal(name: str, path: str, body: dict) -> dict:
        for i in range(30):
            rid = f"{name}-{i}"
            reply = client.request("POST", path, body, headers={"X-Request-ID": rid})
            if reply.status == 429 and reply.json["message"].startswith("too many requests"):
                return logged(stack, by_id(rid))
        raise AssertionError(f"nginx never refused {path}")

    single, batch = sample_transaction(), {"transactions": [sample_transaction()]}
    expect(nginx_refusal("single", "/v1/fraud-score", single), "POST", "/v1/fraud-score", 429, "limit_req")
    expect(nginx_refusal("batch", "/v1/fraud-score/batch", batch), "POST", "/v1/fraud-score/batch", 429, "limit_req")
    # The app's own 429 (the key's transactions budget) passed through nginx: no nginx limit fired.
    big = {"transactions": [sample_transaction()] * 20}
    assert client.request("POST", "/v1/fraud-score/batch", big, key=OTHER_KEY).status == 200
    line = send("app-429", "POST", "/v1/fraud-score", sample_transaction(), key=OTHER_KEY)
    expect(line, "POST", "/v1/fraud-score", 429, "")
    assert line["upstream_ms"]

    line = send("huge-header", "GET", "/v1/model-info", headers={"X-Padding": "y" * 9000})
    expect(line, "GET", "/v1/model-info", 400, "large_client_header_buffers")
    expect(send("trace", "TRACE", "/v1/fraud-score"), "TRACE", "/v1/fraud-score", 405, "method_not_allowed")
    expect(send("internal", "GET", "/_errors/429.json"), "GET", "/_errors/429.json", 404, "no_such_location")

    reply = raw_request(port, b"GET /v1/model-info HTTP/1.1\r\nX-Request-ID: two-hosts\r\nHost: a\r\nHost: b\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400") and b'"bad_request"' in reply
    expect(logged(stack, by_id("two-hosts")), "GET", "/v1/model-info", 400, "malformed_request")

    long_path = "/v1/" + "z" * 9000
    reply = raw_request(port, f"GET {long_path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 414") and b'"uri_too_long"' in reply
    line = logged(stack, lambda line: line["status"] == 414)
    expect(line, "GET", long_path[:1024], 414, "large_client_header_buffers")

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=("127.0.0.2", 0))
    conn.request("GET", "/metrics", headers={"X-Request-ID": "metrics-denied"})
    assert conn.getresponse().status == 403
    conn.close()
    expect(logged(stack, by_id("metrics-denied")), "GET", "/metrics", 403, "metrics_allow")

    # With the workers gone, nginx answers for them.
    stack.gunicorn.terminate()
    stack.gunicorn.wait(30)
    line = send("no-workers", "GET", "/v1/model-info", key=None)  # a key over its limit would get 429
    expect(line, "GET", "/v1/model-info", 503, "upstream_unavailable")

    # Every line names a real route, never an error page, and no key appears anywhere.
    text = (stack.logs / "nginx-access.log").read_text()
    assert "/_errors/" not in text.replace('"path":"/_errors/429.json"', "")
    assert TEST_KEY not in text and OTHER_KEY not in text and "sekrit" not in text
    assert all(line["refused_by"] == "" for line in nginx_lines(stack) if line["status"] == 200)

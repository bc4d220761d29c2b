"""gunicorn's access line, rendered by JsonGunicornLogger.access, has the fields and values the
generic JSON formatter gives every other log line; nginx's access line names the request the
client sent, and the limit that refused it, also when nginx answered itself."""

from __future__ import annotations

import datetime
import http.client
import io
import json
import logging
import socket
import time
from types import SimpleNamespace

from gunicorn.config import Config

from service.logs import JsonGunicornLogger, json_formatter
from tests.helpers import OTHER_KEY, TEST_KEY, Client, sample_transaction


def access_line(resp: SimpleNamespace, environ: dict, took: datetime.timedelta) -> dict:
    config = Config()
    config.set("accesslog", "-")
    log = JsonGunicornLogger(config)
    stream = io.StringIO()
    log.access_log.handlers[0].stream = stream
    try:
        log.access(resp, None, environ, took)
    finally:
        log.access_log.handlers.clear()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def formatter_line(extra: dict) -> dict:
    record = logging.LogRecord("gunicorn.access", logging.INFO, __file__, 0, "request", None, None)
    record.__dict__.update(extra)
    return json.loads(json_formatter().format(record))


def test_access_line_matches_the_json_formatter():
    environ = {
        "HTTP_X_REQUEST_ID": "abc-1",
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/v1/fraud-score",
        "HTTP_X_API_KEY": "never-logged-0123456789",
    }
    line = access_line(SimpleNamespace(status_code=200, sent=70), environ, datetime.timedelta(microseconds=1234))
    expected = formatter_line(
        {
            "request_id": "abc-1",
            "method": "POST",
            "path": "/v1/fraud-score",
            "status": 200,
            "bytes": 70,
            "duration_ms": 1.234,
        }
    )
    assert list(line) == list(expected)
    assert {k: v for k, v in line.items() if k != "ts"} == {k: v for k, v in expected.items() if k != "ts"}
    assert datetime.datetime.fromisoformat(line["ts"]).utcoffset() == datetime.timedelta(0)
    assert "never-logged" not in json.dumps(line)


def test_missing_values_are_null():
    line = access_line(SimpleNamespace(status_code=404), {}, datetime.timedelta(seconds=1.5))
    assert line["request_id"] is None and line["bytes"] is None and line["duration_ms"] == 1500.0


# --- nginx's access line: the request the client sent, also when nginx refuses it itself ---------


def nginx_lines(stack) -> list[dict]:
    return [json.loads(line) for line in (stack.logs / "nginx-access.log").read_text().splitlines()]


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

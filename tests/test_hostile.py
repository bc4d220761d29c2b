"""Hostile input over real nginx and workers: every one gets a 4xx JSON body, never a 5xx; and a
slow client does not hold a worker. (The basics are in test_http.py; these are the abusive cases.)"""

from __future__ import annotations

import hmac
import json
import socket
import time

import pytest

from service.api.auth import ApiKeys
from service.api.errors import protocol_v2
from tests.helpers import Client, assert_error, sample_transaction

TEXT = json.dumps(sample_transaction())


def with_v3(token: str) -> str:
    text = TEXT.replace('"V3": 2.53634673796914', f'"V3": {token}')
    assert token in text
    return text


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Big": "a" * 9000},  # one header beyond large_client_header_buffers
        {f"X-Many-{i}": "a" * 1000 for i in range(40)},  # many, 40 KB in all
        {"X-API-Key": "k" * 9000},
    ],
)
def test_headers_beyond_limits_are_400_json(client: Client, headers):
    assert_error(client.request("GET", "/health", headers=headers, key=None), 400)


def test_uri_beyond_limits_is_414_json(client: Client):
    assert_error(client.request("GET", "/" + "a" * 9000), 414)


@pytest.mark.parametrize(
    "body",
    [
        "[" * 3000 + "]" * 3000,
        TEXT[:-1] + ', "extra": ' + "[" * 2000 + "]" * 2000 + "}",
        TEXT[:-1] + ', "extra": ' + '{"a":' * 1200 + "1" + "}" * 1200 + "}",
    ],
)
def test_deeply_nested_json_is_400(client: Client, body):
    reply = client.request("POST", "/v1/fraud-score", body)
    assert_error(reply, 400)
    assert "depth" in reply.json["message"] or "JSON" in reply.json["message"]


def test_duplicate_keys_last_one_wins_for_validation_and_scoring_alike(client: Client):
    # Validation and scoring read the same parsed object, so a duplicate cannot be validated as one
    # value and scored as another.
    assert_error(client.request("POST", "/v1/fraud-score", TEXT[:-1] + ', "V1": "x"}'), 422, "V1")
    reply = client.request("POST", "/v1/fraud-score", '{"V1": "x", ' + TEXT[1:])
    assert reply.status == 200
    assert reply.json == client.score(sample_transaction()).json


@pytest.mark.parametrize(
    "token, status",
    [
        ("100000000000000000000", 200),  # beyond 64-bit integers, still a float32
        ("-" + "9" * 30, 200),
        ("1" + "0" * 40, 422),  # beyond float32
        ("1e38", 200),
        ("1e39", 422),
        ("-1e39", 422),
        ("0." + "0" * 500 + "1", 200),
        ("1e-400", 200),  # underflows to 0
        ("1" + "0" * 5000, 422),
    ],
)
def test_huge_and_tiny_numbers(client: Client, token, status):
    reply = client.request("POST", "/v1/fraud-score", with_v3(token))
    if status == 200:
        assert reply.status == 200, reply.raw
    else:
        assert_error(reply, status, "V3")


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "TRACE", "CONNECT", "HEAD"])
def test_wrong_methods_are_405(client: Client, method):
    reply = client.request(method, "/v1/fraud-score", TEXT)
    assert reply.status == 405
    if method != "HEAD":  # HEAD answers carry no body
        assert_error(reply, 405)


def test_unknown_method_is_400_json(client: Client):
    assert assert_error(client.request("BREW", "/v1/fraud-score", TEXT), 400)["error"] == "bad_request"


@pytest.mark.parametrize("path", ["/v1/fraud-score", "/v1/fraud-score/batch"])
def test_an_unreadable_query_parameter_is_400_naming_it(client: Client, path):
    body = TEXT if path == "/v1/fraud-score" else '{"transactions": [' + TEXT + "]}"
    found = assert_error(client.request("POST", f"{path}?explain=maybe", body), 400)
    assert found["error"] == "invalid_parameter" and '"explain"' in found["message"], found


@pytest.mark.parametrize(
    "content_type",
    ["multipart/form-data; boundary=x", "text/json", "application/octet-stream", "application/jsonx", "*/*"],
)
def test_wrong_content_types_are_415(client: Client, content_type):
    assert_error(client.request("POST", "/v1/fraud-score", TEXT, headers={"Content-Type": content_type}), 415)


def test_chunked_and_content_length_together_is_refused(client: Client):
    # Request smuggling: a body framed two ways is refused by nginx before it reaches a worker.
    assert_error(client.request("POST", "/v1/fraud-score", TEXT, headers={"Transfer-Encoding": "chunked"}), 400)


def exchange(client: Client, request: bytes) -> tuple[int, bytes]:
    """Status and body of one raw request (bytes the http.client module will not send)."""
    with socket.create_connection((client.host, client.port), timeout=10) as conn:
        conn.sendall(request)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def assert_bad_request_json(status: int, body: bytes) -> None:
    """A 400 in the service's error shape, whoever answered it (nginx, gunicorn or the app)."""
    assert status == 400, (status, body)
    found = json.loads(body)
    assert found["error"] == "bad_request" and found["message"], found


def assert_in_the_routes_error_shape(request_head: bytes, status: int, body: bytes) -> None:
    """The error shape of the route the request line names: the Open Inference Protocol's,
    {"error": "..."}, under /v2; the service's, {"error": code, "message": ...}, elsewhere."""
    found = json.loads(body)
    path = request_head.split(b" ")[1].decode("latin-1").split("?")[0]
    if protocol_v2(path):
        assert list(found) == ["error"] and isinstance(found["error"], str) and found["error"], (status, found)
    else:
        assert list(found) == ["error", "message"] and found["error"] in ("bad_request", "uri_too_long"), found


@pytest.mark.parametrize(
    "request_head",
    [
        b"POST /v1/fraud-score HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n",
        b"POST /v2/models/fraud/infer HTTP/1.1\r\nTransfer-Encoding: identity\r\n",
        b"POST /v1/fraud-score/batch HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n",
        b"GET /health HTTP/2.0\r\n",
        b"GET /v1/model-info HTTP/3.0\r\n",
    ],
)
def test_framings_nginx_does_not_speak_are_400_json_never_5xx(client: Client, request_head):
    # nginx answers these itself (501, 505) with an HTML page unless the config maps them.
    status, body = exchange(client, request_head + b"Host: x\r\nConnection: close\r\n\r\n0\r\n\r\n")
    assert status == 400, (status, body)
    assert_in_the_routes_error_shape(request_head, status, body)


@pytest.mark.parametrize("prefix", [b"/v2", b"/v2/models/fraud/infer", b"/v2?x=1", b"/v1/fraud-score", b"/v2x"])
@pytest.mark.parametrize(
    "request_head, status",
    [
        (b"POST {path} HTTP/1.1 extra\r\n", 400),  # a broken request line
        (b"POST {path}\x01 HTTP/1.1\r\n", 400),
        (b"POST {path} HTTP/1.1\r\nNo colon here\r\n", 400),  # a broken header
        (b"POST {path} HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n", 400),  # beyond large_client_header_buffers
        (b"POST {path}" + b"a" * 9000 + b" HTTP/1.1\r\n", 414),
        (b"POST {path} HTTP/2.0\r\n", 400),
        (b"POST {path} HTTP/1.1\r\nTransfer-Encoding: identity\r\n", 400),
    ],
)
def test_nginxs_own_refusals_come_in_the_routes_error_shape(client: Client, prefix, request_head, status):
    request_head = request_head.replace(b"{path}", prefix)
    found, body = exchange(client, request_head + b"Host: x\r\nConnection: close\r\n\r\n")
    assert found == status, (found, body)
    assert_in_the_routes_error_shape(request_head, found, body)


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /v1/caf\xe9 HTTP/1.1\r\n",  # a request target must be ASCII: gunicorn refuses it, nginx does not
        b"GET /health?name=\xff HTTP/1.1\r\n",
        b"GET /health HTTP/1.1\r\nX-Note: a\x01b\r\n",  # control characters nginx passes on
        b"POST /v1/fraud-score HTTP/1.1\r\nX-Note: a\x7fb\r\n",
    ],
)
def test_requests_the_workers_refuse_to_parse_get_400_json(client: Client, request_head):
    assert_bad_request_json(*exchange(client, request_head + b"Host: x\r\nConnection: close\r\n\r\n"))


class CountingDigest:
    """Stands in for hmac.compare_digest and records every comparison the key check makes."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, bytes]] = []
        self._compare = hmac.compare_digest

    def __call__(self, a: bytes, b: bytes) -> bool:
        self.calls.append((a, b))
        return self._compare(a, b)


@pytest.mark.parametrize("presented", ["first-key-0123456789", "second-key-0123456789", "no-such-key-0123456789"])
def test_api_key_check_compares_with_every_key_in_constant_time(monkeypatch, presented):
    """Timing says nothing about which key matched: every configured key is compared, whichever
    matched or none, and each comparison is hmac.compare_digest's (constant time for equal lengths).
    Asserted on the calls, not on a stopwatch, so that a busy machine cannot fail it."""
    keys = (b"first-key-0123456789", b"second-key-0123456789", b"third-key-0123456789")
    counting = CountingDigest()
    monkeypatch.setattr("service.api.auth.hmac.compare_digest", counting)
    found = ApiKeys(keys).index(presented)
    assert found == (keys.index(presented.encode()) if presented.encode() in keys else None)
    assert [key for _, key in counting.calls] == list(keys)
    assert {candidate for candidate, _ in counting.calls} == {presented.encode()}


def test_a_body_sent_a_byte_at_a_time_does_not_hold_the_only_worker(stack_factory):
    stack = stack_factory(WORKERS="1")
    port = stack.settings.port
    body = TEXT.encode()
    slow = socket.create_connection(("127.0.0.1", port))
    slow.sendall(
        b"POST /v1/fraud-score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-API-Key: test-key-0123456789abcdef\r\n" + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    client = Client("127.0.0.1", port)
    served = 0
    # 20 bytes over 2 s; meanwhile the single worker serves everyone else. Not timed: a worker held
    # by the slow body would answer nothing until the body is complete, which comes only after this
    # loop, so each request would fail on the client's timeout instead.
    for i in range(20):
        slow.sendall(body[i : i + 1])
        assert client.score(sample_transaction()).status == 200
        served += 1
        time.sleep(0.1)
    slow.sendall(body[20:])  # the rest arrives: nginx hands the whole body over at once
    slow.settimeout(10)
    answer = slow.recv(65536)
    slow.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert served == 20

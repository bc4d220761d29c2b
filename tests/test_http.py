"""The HTTP contract, over real nginx and real gunicorn workers."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from model import synthetic
from service.core.features import FEATURES
from tests.helpers import OTHER_KEY, Client, as_transaction, assert_error, sample_transaction


def test_health_needs_no_key(client: Client):
    reply = client.request("GET", "/health", key=None)
    assert reply.status == 200
    assert reply.json == {"status": "healthy", "model_loaded": True}


def test_scores_the_sample_request(client: Client):
    reply = client.score(sample_transaction())
    assert reply.status == 200, reply.raw
    body = reply.json
    assert set(body) == {"fraud-score", "is-fraud", "model-version", "ood-warning"}
    assert isinstance(body["fraud-score"], int) and 0 <= body["fraud-score"] <= 100
    assert body["is-fraud"] is (body["fraud-score"] >= 50)
    assert isinstance(body["model-version"], str) and body["model-version"]


def test_the_sample_request_is_scored_by_the_served_model(client: Client, served_model):
    body = client.score(sample_transaction()).json
    assert body["model-version"] == "test-3" and body["ood-warning"] is False


def test_scores_equal_sklearn_predict_proba(client: Client, served_model):
    X, y = synthetic.generate(4000, seed=11)
    rows = np.vstack([X[y == 1], X[:60]])  # the frauds give scores across the range
    expected = served_model[1].predict_proba(rows)[:, 1]
    scores = [client.score(as_transaction(r)).json["fraud-score"] for r in rows]
    assert scores == [round(100 * p) for p in expected]
    assert len(set(scores)) > 3


def test_is_fraud_follows_the_threshold(client: Client):
    X, y = synthetic.generate(4000, seed=11)
    for row in X[y == 1][:5]:
        body = client.score(as_transaction(row)).json
        assert body["is-fraud"] is (body["fraud-score"] >= 50)


def test_integers_and_extra_fields_are_accepted(client: Client):
    transaction = {name: 1 for name in FEATURES} | {"merchant": "acme", "nested": {"a": [1]}}
    reply = client.score(transaction)
    assert reply.status == 200, reply.raw


def test_rotated_keys_are_both_accepted(client: Client):
    assert client.score(sample_transaction(), key=OTHER_KEY).status == 200


@pytest.mark.parametrize("key", [None, "", "wrong-key-0123456789abcdef", "test-key-0123456789abcdeX", "ключ".encode()])
def test_missing_empty_or_wrong_key_is_403(client: Client, key):
    reply = client.score(sample_transaction(), key=None, headers={} if key is None else {"X-API-Key": key})
    assert_error(reply, 403)


@pytest.mark.parametrize("field", ["Time", "V1", "V14", "V28", "Amount"])
def test_missing_field_is_named(client: Client, field):
    transaction = sample_transaction()
    del transaction[field]
    body = assert_error(client.score(transaction), 422, field)
    assert body["errors"] == [{"field": field, "message": "is required"}]


@pytest.mark.parametrize("value", ["1.5", True, False, None, [1.0], {"v": 1}])
def test_non_numbers_are_422_with_the_field(client: Client, value):
    transaction = sample_transaction() | {"V7": value}
    assert_error(client.score(transaction), 422, "V7")


def test_empty_object_names_every_field(client: Client):
    body = assert_error(client.score({}), 422)
    assert [e["field"] for e in body["errors"]] == list(FEATURES)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "9" * 400])
def test_non_finite_numbers_are_422_with_the_field(client: Client, token):
    text = json.dumps(sample_transaction()).replace('"V3": 2.53634673796914', f'"V3": {token}')
    assert token in text
    assert_error(client.request("POST", "/v1/fraud-score", text), 422, "V3")


def test_numbers_beyond_float32_are_422(client: Client):
    assert_error(client.score(sample_transaction() | {"Amount": 1e300}), 422, "Amount")


@pytest.mark.parametrize("body", [b"{", b'{"Time": 0,}', b"not json", b"", b"{'Time': 0}"])
def test_malformed_json_is_400(client: Client, body):
    assert_error(client.request("POST", "/v1/fraud-score", body), 400)


@pytest.mark.parametrize("body", [b"[1, 2]", b"3", b'"x"', b"null", b"true"])
def test_body_that_is_not_an_object_is_422(client: Client, body):
    reply = client.request("POST", "/v1/fraud-score", body)
    assert_error(reply, 422)
    assert "object" in reply.json["message"]


def test_bytes_that_are_not_utf8_are_400(client: Client):
    body = assert_error(client.request("POST", "/v1/fraud-score", b'{"Time": "\xff\xfe"}'), 400)
    assert "UTF-8" in body["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
def test_non_json_content_type_is_415(client: Client, content_type):
    reply = client.request(
        "POST", "/v1/fraud-score", json.dumps(sample_transaction()), headers={"Content-Type": content_type}
    )
    assert_error(reply, 415)


def test_json_with_charset_is_accepted(client: Client):
    reply = client.request(
        "POST",
        "/v1/fraud-score",
        json.dumps(sample_transaction()),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert reply.status == 200


def test_unknown_path_is_404_json(client: Client):
    reply = client.request("GET", "/v9/nothing")
    assert_error(reply, 404)  # under /v2 the protocol has its own shape
    assert reply.json["error"] == "not_found"  # the code nginx uses when it answers a 404 itself


def test_wrong_method_is_405_json(client: Client):
    reply = client.request("GET", "/v1/fraud-score")
    assert_error(reply, 405)
    assert reply.json["error"] == "method_not_allowed"  # as nginx's own 405 (TRACE) says
    assert "POST" in reply.headers["Allow"]
    assert_error(client.request("DELETE", "/health"), 405)


def test_large_body_is_413_from_nginx(client: Client):
    transaction = sample_transaction() | {"padding": "x" * 20_000}
    reply = client.score(transaction)
    assert_error(reply, 413)
    assert reply.headers["X-Request-ID"]


def test_every_response_has_request_id_and_time(client: Client):
    for reply in (
        client.request("GET", "/health"),
        client.score(sample_transaction()),
        client.score({}),
        client.score(sample_transaction(), key="nope"),
        client.request("GET", "/nowhere"),
        client.score(sample_transaction() | {"padding": "x" * 20_000}),
    ):
        assert len(reply.headers["X-Request-ID"]) >= 16
        assert float(reply.headers["X-Response-Time-Ms"]) >= 0
        assert len(reply.headers.get_all("X-Request-ID")) == 1


def test_client_request_id_is_kept_and_logged(client: Client, local_stack):
    request_id = f"req-{time.time_ns()}"
    reply = client.score(sample_transaction(), headers={"X-Request-ID": request_id})
    assert reply.headers["X-Request-ID"] == request_id
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        nginx_lines = [json.loads(line) for line in (local_stack.logs / "nginx-access.log").read_text().splitlines()]
        nginx_hit = [entry for entry in nginx_lines if entry["request_id"] == request_id]
        if nginx_hit:
            break
        time.sleep(0.05)
    assert nginx_hit[0]["status"] == 200 and nginx_hit[0]["path"] == "/v1/fraud-score"
    logged = (local_stack.logs / "nginx-access.log").read_text() + (local_stack.logs / "stack.log").read_text()
    assert "test-key-0123456789abcdef" not in logged
    assert "-1.3598071336738" not in logged  # feature values stay out of the logs


def test_forged_request_id_is_replaced(client: Client):
    reply = client.request("GET", "/health", headers={"X-Request-ID": 'x" injected {'})
    assert reply.headers["X-Request-ID"] != 'x" injected {'
    assert len(reply.headers["X-Request-ID"]) == 32

"""A v1 transaction's optional `transaction_id`, over the app in one process (falcon's test client,
the real Scoring and the real prediction log): echoed in its row's answer and logged with its row on
the single and the batch route, however the JSON writes its key; refused as the schema refuses it."""

from __future__ import annotations

import json

import falcon.testing
import jsonschema
import pytest

from service.api.app import create_app
from service.contract.schema import ID_FIELD, id_document
from service.core.settings import Settings
from service.engine.loader import load_model
from service.predlog.sink import decode
from service.predlog.spool import spool_dir, whole_frames
from tests.helpers import TEST_KEY, sample_transaction

HEADERS = {"X-API-Key": TEST_KEY, "Content-Type": "application/json"}
ESCAPED_KEY = '"transaction\\u005fid"'  # the same key, as JSON may write it


@pytest.fixture
def app(small_model, tmp_path):
    settings = Settings(api_keys=(TEST_KEY.encode(),), model_path=small_model[0], prediction_log_dir=tmp_path / "log")
    return falcon.testing.TestClient(create_app(settings, load_model(settings))), tmp_path / "log"


def logged_ids(log_dir) -> list:
    """Every logged row's transaction id, in the order written (one frame per request)."""
    ids = []
    for segment in sorted(spool_dir(log_dir).glob("*.open")):
        frames, _ = whole_frames(segment.read_bytes())
        for payload in frames:
            meta, arrays = decode(payload)
            tid, rows = meta.get("tid"), len(arrays["X"])
            ids.extend(tid if isinstance(tid, list) else [tid] * rows)
    return ids


def post(client, path: str, raw: str, query: str = ""):
    return client.simulate_post(path, body=raw.encode(), headers=HEADERS, query_string=query)


def one(tid_member: str = "") -> str:
    text = json.dumps(sample_transaction())
    return text[:-1] + (", " + tid_member if tid_member else "") + "}"


@pytest.mark.parametrize("query", ["", "explain=true"])
def test_an_escaped_key_is_the_same_transaction_id_on_the_batch_route(app, query):
    client, log_dir = app
    batch = '{"transactions": [' + one(f'{ESCAPED_KEY}: "tx-a"') + ", " + one() + "]}"
    reply = post(client, "/v1/fraud-score/batch", batch, query)
    assert reply.status_code == 200, reply.text
    results = reply.json["results"]
    assert results[0][ID_FIELD] == "tx-a" and ID_FIELD not in results[1]
    assert logged_ids(log_dir) == ["tx-a", None]


def test_an_escaped_key_is_the_same_transaction_id_on_the_single_route(app):
    client, log_dir = app
    reply = post(client, "/v1/fraud-score", one(f'{ESCAPED_KEY}: "tx-b"'))
    assert reply.status_code == 200 and reply.json[ID_FIELD] == "tx-b"
    assert logged_ids(log_dir) == ["tx-b"]


@pytest.mark.parametrize("route", ["/v1/fraud-score/batch", "/v1/fraud-score"])
def test_ids_are_echoed_and_logged_and_rows_without_one_are_plain(app, route):
    client, log_dir = app
    if route.endswith("batch"):
        items = [one('"transaction_id": "tx-1"'), one(), one('"transaction_id":"' + "é" * 3 + '"')]
        reply = post(client, route, '{"transactions": [' + ", ".join(items) + "]}")
        assert [r.get(ID_FIELD) for r in reply.json["results"]] == ["tx-1", None, "ééé"]
        assert logged_ids(log_dir) == ["tx-1", None, "ééé"]
    else:
        reply = post(client, route, one('"transaction_id": "tx-1"'))
        assert reply.json[ID_FIELD] == "tx-1"
        assert ID_FIELD not in post(client, route, one()).json
        assert logged_ids(log_dir) == ["tx-1", None]


LONGEST = id_document()["maxLength"]


@pytest.mark.parametrize(
    "value, says",
    [
        ("null", "must be a string, got null"),
        ("7", "must be a string, got integer"),
        ('["tx"]', "must be a string, got array"),
        ('""', f"must be a string of 1 to {LONGEST} characters, got 0"),
        ('"' + "x" * (LONGEST + 1) + '"', f"must be a string of 1 to {LONGEST} characters, got {LONGEST + 1}"),
    ],
)
@pytest.mark.parametrize("route", ["/v1/fraud-score/batch", "/v1/fraud-score"])
def test_a_bad_transaction_id_is_a_422_naming_it(app, route, value, says):
    client, log_dir = app
    member = f'"transaction_id": {value}'
    if route.endswith("batch"):
        raw, where = '{"transactions": [' + one() + ", " + one(member) + "]}", "transactions[1].transaction_id"
    else:
        raw, where = one(member), "transaction_id"
    reply = post(client, route, raw)
    assert reply.status_code == 422, reply.text
    assert reply.json["message"].startswith(where) and says in reply.json["message"], reply.json
    assert logged_ids(log_dir) == []


def test_the_longest_id_is_taken(app):
    client, _ = app
    tid = "x" * LONGEST
    reply = post(client, "/v1/fraud-score/batch", '{"transactions": [' + one(f'"transaction_id": "{tid}"') + "]}")
    assert reply.status_code == 200 and reply.json["results"][0][ID_FIELD] == tid


def test_the_openapi_document_declares_the_id_and_its_echo(app):
    """The examples of the v1 routes carry an id; the service answers them as the document says."""
    client, _ = app
    document = client.simulate_get("/openapi.json").json
    schemas = document["components"]["schemas"]
    assert schemas["Transaction"]["properties"][ID_FIELD]["maxLength"] == LONGEST
    assert schemas["ScoreResult"]["properties"][ID_FIELD]["maxLength"] == LONGEST
    for path, result in (("/v1/fraud-score", "ScoreResult"), ("/v1/fraud-score/batch", "BatchResult")):
        operation = document["paths"][path]["post"]
        example = operation["requestBody"]["content"]["application/json"]["example"]
        reply = client.simulate_post(path, json=example, headers={"X-API-Key": TEST_KEY})
        assert reply.status_code == 200, reply.text
        jsonschema.validate(reply.json, {**document, "$ref": f"#/components/schemas/{result}"})
        answered = reply.json["results"][0] if "results" in reply.json else reply.json
        documented = operation["responses"]["200"]["content"]["application/json"]["example"]
        assert answered[ID_FIELD] == (documented["results"][0] if "results" in documented else documented)[ID_FIELD]

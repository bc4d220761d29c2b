"""Batch scoring, reason codes and out-of-distribution flags, over real nginx and gunicorn."""

from __future__ import annotations

import json
import logging

import numpy as np
import orjson
import pytest

from model import synthetic
from service.core.features import FEATURES
from service.engine.ood import OutOfDistribution
from tests.helpers import Client, as_transaction, assert_error, sample_transaction, start_stack

BATCH_MAX = 20


@pytest.fixture(scope="module")
def stack(small_model, tmp_path_factory):
    running = start_stack(small_model[0], tmp_path_factory.mktemp("logs"), BATCH_MAX=str(BATCH_MAX))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def rows():
    X, y = synthetic.generate(3000, seed=21)
    return np.vstack([X[y == 1], X[:BATCH_MAX]])[:BATCH_MAX]


def batch(client: Client, transactions, query: str = ""):
    return client.request("POST", f"/v1/fraud-score/batch{query}", {"transactions": transactions})


def test_batch_scores_in_input_order_like_single_calls(client, small_model, rows):
    transactions = [as_transaction(r) for r in rows]
    reply = batch(client, transactions)
    assert reply.status == 200, reply.raw
    body = reply.json
    assert body["model-version"] == "test-3"
    expected = [round(100 * p) for p in small_model[1].predict_proba(rows)[:, 1]]
    assert [r["fraud-score"] for r in body["results"]] == expected
    singles = [client.score(t).json for t in transactions]
    assert body["results"] == singles


def test_batch_limit_is_enforced_by_the_app(client, rows):
    transactions = [as_transaction(rows[0])] * (BATCH_MAX + 1)
    body = assert_error(batch(client, transactions), 413)
    assert f"at most {BATCH_MAX}" in body["message"]


def test_nginx_body_limit_fits_batch_max_items_and_no_more(client, rows):
    full = [sample_transaction()] * BATCH_MAX
    assert batch(client, full).status == 200
    padded = json.dumps({"transactions": full, "padding": "x" * (BATCH_MAX * 1300)})
    reply = client.request("POST", "/v1/fraud-score/batch", padded)
    assert_error(reply, 413)
    assert "for a batch" in reply.json["message"]


def test_invalid_item_names_its_index_and_field(client, rows):
    transactions = [as_transaction(r) for r in rows[:5]]
    transactions[3]["V7"] = "oops"
    del transactions[4]["Amount"]
    body = assert_error(batch(client, transactions), 422)
    assert body["errors"] == [
        {"index": 3, "field": "V7", "message": "must be a number, got string"},
        {"index": 4, "field": "Amount", "message": "is required"},
    ]
    assert body["message"].startswith("transactions[3].V7 must be a number")


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({}, "transactions is required"),
        ({"transactions": []}, "should be non-empty"),
        ({"transactions": {"a": 1}}, "must be an array"),
        ({"transactions": [1]}, "transactions[0] must be an object"),
    ],
)
def test_malformed_batches_are_422(client, body, fragment):
    reply = client.request("POST", "/v1/fraud-score/batch", body)
    assert_error(reply, 422)
    assert fragment in reply.json["message"]


def test_batch_needs_a_key(client, rows):
    assert_error(
        client.request("POST", "/v1/fraud-score/batch", {"transactions": [sample_transaction()]}, key=None), 403
    )


def test_explain_gives_reasons_that_add_up(client, small_model, rows):
    row = rows[0]  # a fraud
    reply = client.request("POST", "/v1/fraud-score?explain=true", as_transaction(row))
    assert reply.status == 200, reply.raw
    body = reply.json
    assert body["fraud-score"] == round(100 * small_model[1].predict_proba([row])[0, 1])
    reasons = body["reasons"]
    assert len(reasons) == 5
    assert [r["contribution"] for r in reasons] == sorted((r["contribution"] for r in reasons), reverse=True)
    for reason in reasons:
        assert reason["value"] == float(row[FEATURES.index(reason["feature"])])
    assert reasons[0]["contribution"] > 0


def test_explain_in_batch_and_off_by_default(client, rows):
    transactions = [as_transaction(r) for r in rows[:3]]
    explained = batch(client, transactions, "?explain=true").json["results"]
    assert all(len(r["reasons"]) == 5 for r in explained)
    plain = batch(client, transactions).json["results"]
    assert all("reasons" not in r for r in plain)
    assert [r["fraud-score"] for r in plain] == [r["fraud-score"] for r in explained]
    assert "reasons" not in client.request("POST", "/v1/fraud-score?explain=false", transactions[0]).json


def test_bad_explain_value_is_400(client):
    reply = client.request("POST", "/v1/fraud-score?explain=maybe", sample_transaction())
    assert_error(reply, 400)


def test_out_of_distribution_features_are_flagged(client, small_model):
    transaction = sample_transaction() | {"V14": 60.0, "Amount": 1e6}
    body = client.score(transaction).json
    assert body["ood-warning"] is True
    assert body["ood-features"] == ["V14", "Amount"]
    ordinary = client.score(sample_transaction()).json
    assert ordinary["ood-warning"] is False and "ood-features" not in ordinary
    results = batch(client, [transaction, sample_transaction()]).json["results"]
    assert [r["ood-warning"] for r in results] == [True, False]
    assert results[0]["ood-features"] == ["V14", "Amount"]


def test_ood_uses_training_mean_and_std():
    stats = {name: {"mean": 1.0, "std": 2.0} for name in FEATURES} | {"V3": {"mean": 0.0, "std": 0.0}}
    ood = OutOfDistribution.for_model({"feature_stats": stats}, 3.0)
    row = [1.0] * 30
    assert ood.features(row) == []
    row[1] = 7.0 + 1e-9  # V1: just beyond 3 std
    row[3] = 1e9  # V3 was constant in training: no scale, never flagged
    assert ood.features(row) == ["V1"]
    assert [list(a) for a in ood.outside(np.array([row, [1.0] * 30])).nonzero()] == [[0], [1]]


def test_model_without_statistics_never_warns_and_says_so(caplog):
    with caplog.at_level(logging.WARNING):
        ood = OutOfDistribution.for_model({}, None)
    assert "no training statistics" in caplog.text
    assert ood.features([1e30] * 30) == [] and not ood.enabled


def test_batch_results_equal_single_results_row_for_row(small_model):
    """The vectorised batch answer (pre-serialised plain results, built OOD ones) against the
    single-transaction answer, over 3,000 rows, some out of distribution."""
    from service.core.settings import from_mapping
    from service.engine.loader import load_model
    from service.engine.scoring import Scoring

    model = load_model(from_mapping({"API_KEY": "k" * 16, "MODEL_PATH": str(small_model[0])}))
    scoring = Scoring(model, OutOfDistribution.for_model(model.manifest, 3.0), 37)
    X, _ = synthetic.generate(3000, seed=8)
    X[::7, 3] *= 40  # far out of distribution
    answer = scoring.many_json(X)
    singles = [scoring.one(row) for row in X.tolist()]
    assert json.loads(answer) == singles
    assert answer == b"[" + b",".join(map(orjson.dumps, singles)) + b"]"  # the same bytes, too
    assert scoring.many(X.tolist(), explain=False) == singles
    assert any(r["ood-warning"] for r in singles) and not all(r["ood-warning"] for r in singles)
    assert {r["is-fraud"] for r in singles} == {True, False}

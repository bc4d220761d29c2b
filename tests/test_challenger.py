"""A challenger scored beside the champion on the real stack, refused when slow, and promoted with no failed request."""

from __future__ import annotations

import json

import joblib
import numpy as np
import pytest
from sklearn.dummy import DummyClassifier

from model import promote, synthetic
from service.core.artifacts import sha256_file
from tests.helpers import (
    UNLIMITED,
    Client,
    SteadyTraffic,
    as_transaction,
    install_model,
    log_text,
    samples,
    start_stack,
    two_trained_models,
    value,
    wait_for,
)


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    return two_trained_models(tmp_path_factory.mktemp("two-models"))


def challenger_lines(logs) -> list[dict]:
    lines = []
    for line in log_text(logs).splitlines():
        if '"challenger_scores"' in line:
            lines.append(json.loads(line))
    return lines


def test_every_row_is_scored_by_the_challenger_and_the_answer_is_the_champions(tmp_path, two_models):
    a, b, _probe, _expected = two_models
    champion_path, challenger_path = tmp_path / "champion" / "fraud-model.joblib", tmp_path / "ch" / "model.joblib"
    install_model(a, champion_path)
    install_model(b, challenger_path)
    model_a, model_b = joblib.load(a), joblib.load(b)
    genuine, _ = synthetic.generate(250, seed=77)
    pool, labels = synthetic.generate(300_000, seed=78)
    pool = pool[labels == 1]  # frauds: where the two models' decisions differ
    differ = (np.round(100 * model_a.predict_proba(pool)[:, 1]) >= 50) != (
        np.round(100 * model_b.predict_proba(pool)[:, 1]) >= 50
    )
    X = np.vstack([genuine[:230], pool[differ][:20], pool[~differ][:50]])
    s_a = np.round(100 * model_a.predict_proba(X)[:, 1]).astype(int)
    s_b = np.round(100 * model_b.predict_proba(X)[:, 1]).astype(int)
    assert ((s_a >= 50) != (s_b >= 50)).sum() >= 10

    logs = tmp_path / "logs"
    stack = start_stack(
        champion_path, logs, CHALLENGER_MODEL_PATH=str(challenger_path), CHALLENGER_LOG_SAMPLE="1", **UNLIMITED
    )
    try:
        client = Client("127.0.0.1", stack.settings.port)
        info = client.request("GET", "/v1/model-info").json
        assert info["champion"]["model-version"] == "test-3" and info["challenger"]["model-version"] == "test-4"
        assert info["challenger"]["threshold"] == {
            "value": 50,
            "source": "default",
            "reason": "the model's manifest records no threshold",
        }
        assert info["challenger"]["estimator_sha256"] == sha256_file(challenger_path)
        answers = []
        for i, row in enumerate(X[:100]):
            traceparent = f"00-{i + 1:032x}-{i + 1:016x}-01"
            reply = client.score(
                as_transaction(row), headers={"X-Request-ID": f"single-{i}", "traceparent": traceparent}
            )
            answers.append(reply.json)
        batch = {"transactions": [as_transaction(r) for r in X[100:]]}
        reply = client.request("POST", "/v1/fraud-score/batch", batch, headers={"X-Request-ID": "the-batch"})
        answers += reply.json["results"]
        assert [r["fraud-score"] for r in answers] == s_a.tolist()  # the champion's answer, unchanged
        assert {r["model-version"] for r in answers} == {"test-3"}
        scraped = samples(client)
        wait_for(lambda: len(challenger_lines(logs)) == 101)
        lines = challenger_lines(logs)
    finally:
        stack.stop()

    assert value(scraped, "fraud_challenger_score_count") == len(X)
    for champion in (False, True):
        for challenger in (False, True):
            expected = int(np.sum(((s_a >= 50) == champion) & ((s_b >= 50) == challenger)))
            got = value(
                scraped,
                "fraud_challenger_agreement_total",
                champion_is_fraud=str(champion).lower(),
                challenger_is_fraud=str(challenger).lower(),
            )
            assert got == expected, (champion, challenger)
    for le in (-10, 0, 5):
        got = value(scraped, "fraud_challenger_score_difference_bucket", le=f"{le:.1f}")
        assert got == np.sum(s_b - s_a <= le), le
    assert value(scraped, "fraud_challenger_score_bucket", le="50.0") == np.sum(s_b <= 50)

    by_id = {line["request_id"]: line for line in lines}
    for i in range(100):
        line = by_id[f"single-{i}"]
        assert line["champion_scores"] == [s_a[i]] and line["challenger_scores"] == [s_b[i]]
        assert line["champion_version"] == "test-3" and line["challenger_version"] == "test-4"
        assert line["trace_id"] == f"{i + 1:032x}"  # the caller's trace, as nginx's line and the log have it
    assert by_id["the-batch"]["challenger_scores"] == s_b[100:].tolist()


def test_a_challenger_only_sklearn_can_serve_is_refused_in_one_line(tmp_path, small_model):
    X, y = synthetic.generate(3000, seed=9)
    slow = tmp_path / "slow" / "model.joblib"
    slow.parent.mkdir()
    joblib.dump(DummyClassifier(strategy="prior").fit(X, y), slow)
    logs = tmp_path / "logs"
    stack = start_stack(
        small_model[0], logs, CHALLENGER_MODEL_PATH=str(slow), CHALLENGER_MODEL_SHA256=sha256_file(slow)
    )
    try:
        client = Client("127.0.0.1", stack.settings.port)
        assert client.score(as_transaction(X[0])).status == 200
        refused = client.request("GET", "/v1/model-info").json["challenger"]["refused"]
        assert "served through sklearn" in refused
    finally:
        stack.stop()
    lines = [line for line in log_text(logs).splitlines() if "challenger refused" in line]
    assert len(lines) == 1 and "Traceback" not in log_text(logs)


def test_promote_swaps_the_models_with_no_failed_request(tmp_path, two_models):
    a, b, probe, expected = two_models
    champion_path, challenger_path = tmp_path / "champion" / "fraud-model.joblib", tmp_path / "ch" / "model.joblib"
    install_model(a, champion_path)
    install_model(b, challenger_path)
    logs = tmp_path / "logs"
    stack = start_stack(champion_path, logs, CHALLENGER_MODEL_PATH=str(challenger_path), **UNLIMITED)
    client = Client("127.0.0.1", stack.settings.port)
    traffic = [SteadyTraffic(Client("127.0.0.1", stack.settings.port), probe) for _ in range(3)]
    try:
        for t in traffic:
            t.start()
        wait_for(lambda: all(len(t.seen) > 20 for t in traffic))
        pidfile = stack.run_dir / "gunicorn.pid"
        assert (
            promote.main(
                ["--model", str(champion_path), "--challenger", str(challenger_path), "--pidfile", str(pidfile)]
            )
            == 0
        )
        wait_for(lambda: all(t.seen[-30:] and all(v == "test-4" for _, v, _ in t.seen[-30:]) for t in traffic))
        seen = [s for t in traffic for s in t.stop()]
        info = client.request("GET", "/v1/model-info").json
    finally:
        for t in traffic:
            t.stopping.set()
        stack.stop()
    failures = [s for s in seen if s[0] != 200]
    assert not failures, f"{len(failures)} of {len(seen)} requests failed during the promotion: {failures[:3]}"
    assert all(score == expected[version] for _, version, score in seen)
    assert info["champion"]["model-version"] == "test-4" and info["challenger"]["model-version"] == "test-3"
    assert "rolled out model test-4 with challenger test-3" in log_text(logs)

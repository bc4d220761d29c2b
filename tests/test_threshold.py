"""The threshold chosen at training for least expected cost, recorded in the manifest and used by the service."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model import synthetic, threshold, train
from service.core.artifacts import ArtifactPaths
from tests.helpers import UNLIMITED, Client, as_transaction, start_stack


def brute_force_cost(y, scores, amount, t, review_cost):
    alerts = scores >= t
    return (amount[y & ~alerts].sum() + review_cost * alerts.sum()) / len(y) * 1000


def test_figures_equal_a_direct_count_at_every_threshold():
    rng = np.random.default_rng(7)
    y = rng.uniform(size=4000) < 0.03
    scores = np.clip(np.round(rng.normal(15 + 45 * y, 18)), 0, 100).astype(np.int64)
    amount = np.round(rng.lognormal(3, 1.5, 4000), 2)
    curve = threshold.figures(y, scores, amount, 5.0)
    assert list(curve["threshold"]) == list(range(102))
    for t in range(102):
        alerts = scores >= t
        assert curve["alert_rate"][t] == alerts.mean()
        assert curve["recall"][t] == (y & alerts).sum() / y.sum()
        if alerts.any():
            assert curve["precision"][t] == (y & alerts).sum() / alerts.sum()
        assert curve["cost_per_1000"][t] == pytest.approx(brute_force_cost(y, scores, amount, t, 5.0), rel=1e-12)
    chosen = threshold.choose(y, scores, amount, 5.0)
    costs = [brute_force_cost(y, scores, amount, t, 5.0) for t in range(102)]
    assert costs[chosen["value"]] == pytest.approx(min(costs), rel=1e-12)
    assert chosen["at_threshold"]["cost_per_1000"] == pytest.approx(min(costs), rel=1e-6)
    assert chosen["frauds"] == int(y.sum()) and chosen["rows"] == 4000


def test_a_weighted_row_counts_as_that_many_rows():
    """A sampled log's row of weight k stands for k transactions: the figures equal those of the
    rows repeated k times."""
    rng = np.random.default_rng(8)
    y = rng.uniform(size=3000) < 0.05
    scores = np.clip(np.round(rng.normal(15 + 45 * y, 18)), 0, 100).astype(np.int64)
    amount = np.round(rng.lognormal(3, 1.5, 3000), 2)
    weights = rng.integers(1, 6, 3000)
    weighted = threshold.figures(y, scores, amount, 5.0, weights.astype(np.float64))
    repeated = threshold.figures(*(np.repeat(a, weights) for a in (y, scores, amount)), 5.0)
    for name in ("recall", "precision", "alert_rate", "cost_per_1000"):
        np.testing.assert_allclose(weighted[name], repeated[name], rtol=1e-12)
    assert (
        threshold.choose(y, scores, amount, 5.0, weights=weights)["value"]
        == threshold.choose(*(np.repeat(a, weights) for a in (y, scores, amount)), 5.0)["value"]
    )


def test_among_equally_cheap_thresholds_the_middle_of_the_longest_run_is_chosen():
    # Scores 10 and 40 only: every threshold from 11 to 40 alerts on the same rows.
    y = np.array([1, 1, 0, 0, 0, 0])
    scores = np.array([40, 40, 10, 10, 10, 10])
    amount = np.array([100.0, 100.0, 1.0, 1.0, 1.0, 1.0])
    chosen = threshold.choose(y, scores, amount, 5.0)
    assert chosen["value"] == 11 + 30 // 2
    assert chosen["at_threshold"] == threshold.at(threshold.figures(y, scores, amount, 5.0), 11)


def test_alert_rate_cap_and_review_cost_move_the_threshold():
    rng = np.random.default_rng(8)
    y = rng.uniform(size=4000) < 0.03
    scores = np.clip(np.round(rng.normal(15 + 45 * y, 18)), 0, 100).astype(np.int64)
    amount = np.round(rng.lognormal(3, 1.5, 4000), 2)
    free = threshold.choose(y, scores, amount, 5.0)
    capped = threshold.choose(y, scores, amount, 5.0, max_alert_rate=free["at_threshold"]["alert_rate"] / 2)
    assert capped["value"] > free["value"]
    assert capped["at_threshold"]["alert_rate"] <= free["at_threshold"]["alert_rate"] / 2
    assert capped["max_alert_rate"] == free["at_threshold"]["alert_rate"] / 2
    expensive = threshold.choose(y, scores, amount, 500.0)
    assert expensive["value"] > free["value"]  # dearer reviews: fewer alerts


@pytest.fixture(scope="module")
def trained(trained_model):
    return trained_model, json.loads(ArtifactPaths.for_model(trained_model).manifest.read_text())


def test_training_records_the_cost_chosen_threshold(trained, capsys):
    _, manifest = trained
    chosen = manifest["threshold"]
    curve = chosen["curve"]
    assert set(curve) == {"threshold", "recall", "precision", "alert_rate", "cost_per_1000"}
    assert all(len(v) == 102 for v in curve.values())
    costs = curve["cost_per_1000"]
    assert costs[chosen["value"]] == min(costs)
    assert chosen["at_threshold"]["cost_per_1000"] == costs[chosen["value"]]
    assert chosen["at_50"]["recall"] == curve["recall"][50]
    assert chosen["costs"] == {"missed_fraud": "its Amount", "review_per_alert": 5.0}
    assert chosen["rows"] == manifest["metrics"]["n_test"] and chosen["frauds"] == manifest["metrics"]["n_test_fraud"]


def test_training_prints_the_chosen_threshold_next_to_50(tmp_path, capsys):
    path = tmp_path / "fraud-model.joblib"
    train.main(["--rows", "20000", "--trees", "4", "--output", str(path), "--quiet", "--review-cost", "2"])
    out = capsys.readouterr().out
    chosen = json.loads(ArtifactPaths.for_model(path).manifest.read_text())["threshold"]
    assert f"threshold {chosen['value']} chosen for least expected cost" in out
    assert "review: 2 per alert" in out and "at  50: recall" in out


def test_the_service_uses_the_manifest_threshold_unless_the_environment_sets_one(trained, tmp_path):
    path, manifest = trained
    chosen = manifest["threshold"]["value"]
    for extra, expected in (({}, (chosen, "manifest")), ({"FRAUD_THRESHOLD": "97"}, (97, "environment"))):
        stack = start_stack(path, tmp_path / f"logs-{expected[1]}", **UNLIMITED, **extra)
        try:
            client = Client("127.0.0.1", stack.settings.port)
            info = client.request("GET", "/v1/model-info").json["threshold"]
            assert (info["value"], info["source"]) == expected
            if expected[1] == "manifest":
                assert info["at_threshold"] == manifest["threshold"]["at_threshold"]
                assert info["frauds"] == manifest["threshold"]["frauds"]
            else:
                assert info["manifest_value"] == chosen
            X, _ = synthetic.generate(400, seed=99)
            X[:200, 14] -= 8  # some rows that score high
            body = {"transactions": [as_transaction(r) for r in X]}
            results = client.request("POST", "/v1/fraud-score/batch", body).json["results"]
            assert all(r["is-fraud"] == (r["fraud-score"] >= expected[0]) for r in results)
            single = client.score(as_transaction(X[0])).json
            assert single["is-fraud"] == (single["fraud-score"] >= expected[0])
        finally:
            stack.stop()

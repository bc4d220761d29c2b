"""Drift: rows counted into the training bins (C, exactly as numpy bins them), PSI, /v1/drift and /metrics."""

from __future__ import annotations

import numpy as np
import pytest

from model import synthetic
from service.core.artifacts import ArtifactPaths, read_manifest
from service.core.features import FEATURES
from service.engine import drift
from tests.helpers import UNLIMITED, Client, a_row_that_empties_itself, as_transaction, samples, start_stack


def reference_and_rows(seed: int = 5):
    rng = np.random.default_rng(seed)
    X = rng.standard_t(3, size=(4000, len(FEATURES)))
    X[:, 0] = np.round(X[:, 0] * 10)  # many ties: edges collapse, values sit exactly on edges
    scores = np.round(rng.beta(0.3, 3, 4000) * 100)
    return drift.reference(X, scores), X, scores


def expected_counts(counter: drift.DriftCounter, X: np.ndarray, scores: np.ndarray) -> list[np.ndarray]:
    columns = [*X.T, scores]
    return [np.bincount(drift.bins_of(v, e), minlength=len(e) + 1) for v, e in zip(columns, counter.edges, strict=True)]


@pytest.mark.native
def test_single_and_batch_counts_equal_numpy_binning():
    ref, X, scores = reference_and_rows()
    rng = np.random.default_rng(6)
    Y = np.vstack([rng.standard_t(3, size=(3000, len(FEATURES))), X[:1000]])  # values on the edges too
    Y[:, 0] = np.round(Y[:, 0] * 10)
    s = np.round(rng.uniform(0, 100, len(Y)))
    counter = drift.DriftCounter(ref, "test", None)
    for row, score in zip(Y[:1500].tolist(), s[:1500].tolist(), strict=True):
        counter.add(tuple(row), int(score))
    counter.add_rows(np.ascontiguousarray(Y[1500:]), s[1500:])
    got = [observed for _, _, _, observed in counter.split(counter.totals())]
    for name, g, e in zip(counter.names, got, expected_counts(counter, Y, s), strict=True):
        assert np.array_equal(g, e), name


@pytest.mark.native
def test_training_shares_and_psi():
    ref, X, scores = reference_and_rows()
    counter = drift.DriftCounter(ref, "test", None)
    for name, _edges, expected, observed in counter.split(counter.totals()):
        assert expected.sum() == pytest.approx(1.0) and observed.sum() == 0, name
    assert counter.report()["rows"] == 0 and counter.report()["score"] is None
    counter.add_rows(np.ascontiguousarray(X), scores)  # the training rows themselves: no drift at all
    report = counter.report()
    assert report["rows"] == len(X)
    assert all(v == pytest.approx(0.0, abs=1e-6) for v in report["features"].values())
    # PSI = sum((a - e) ln(a / e)), empty bins counted as a share of 1e-4
    e = np.array([0.5, 0.5])
    assert drift.psi(e, np.array([90, 10])) == pytest.approx(0.4 * np.log(0.9 / 0.5) - 0.4 * np.log(0.1 / 0.5))
    assert drift.psi(e, np.array([100, 0])) == pytest.approx(
        (1 - 0.5) * np.log(1 / 0.5) + (1e-4 - 0.5) * np.log(1e-4 / 0.5)
    )


@pytest.mark.native
def test_reset_counts_from_now_on(tmp_path):
    ref, X, scores = reference_and_rows()
    counter = drift.DriftCounter(ref, "test", str(tmp_path))
    counter.add_rows(np.ascontiguousarray(X[:100]), scores[:100])
    counter.reset()
    counter.add_rows(np.ascontiguousarray(X[100:130]), scores[100:130])
    assert counter.report()["rows"] == 30
    assert sum(o.sum() for n, _, _, o in counter.split(counter.totals()) if n == "V1") == 130  # counters go on


def test_shifted_v14_crosses_the_act_threshold_and_the_others_stay_low(trained_model, tmp_path):
    trained = trained_model
    manifest = read_manifest(ArtifactPaths.for_model(trained).manifest)
    assert set(manifest["drift"]["features"]) == set(FEATURES) and manifest["drift"]["fraud-score"]["shares"]
    X, _ = synthetic.generate(6000, seed=1234)  # the training distribution, rows the model never saw
    v14 = FEATURES.index("V14")
    X[:, v14] += 3 * manifest["feature_stats"]["V14"]["std"]
    stack = start_stack(trained, tmp_path / "logs", **UNLIMITED)
    try:
        client = Client("127.0.0.1", stack.settings.port)
        assert client.request("GET", "/v1/drift", key=None).status == 403
        before = client.request("GET", "/v1/drift").json
        assert before["rows"] == 0 and before["score"] is None
        for row in X[:200]:  # the single path counts too
            assert client.score(as_transaction(row)).status == 200
        for start in range(200, len(X), 1000):
            batch = {"transactions": [as_transaction(r) for r in X[start : start + 1000]]}
            assert client.request("POST", "/v1/fraud-score/batch", batch).status == 200
        report = client.request("GET", "/v1/drift").json
        scraped = samples(client)
        print("PSI after V14 + 3 std:", {k: round(v, 4) for k, v in report["features"].items()}, report["score"])
        assert report["rows"] == len(X)
        assert report["features"]["V14"] > drift.ACT
        others = {k: v for k, v in report["features"].items() if k != "V14"}
        assert max(others.values()) < drift.WATCH, others
        # /metrics exposes the same counts, summed over both workers
        for name in ("V14", "Amount", "fraud-score"):
            rows = sum(
                v
                for (metric, labels), v in scraped.items()
                if metric == "fraud_drift_rows_total" and ("feature", name) in labels
            )
            assert rows == len(X), name
        assert client.request("POST", "/v1/drift/reset").json["rows"] == 0
        assert client.score(as_transaction(X[0])).status == 200
        assert client.request("GET", "/v1/drift").json["rows"] == 1
    finally:
        stack.stop()


@pytest.mark.native
def test_bins_count_as_searchsorted_for_any_number_of_edges():
    """Few edges are counted one by one, more by a binary search: both give searchsorted's bins."""
    from service.engine._bins import Bins

    rng = np.random.default_rng(4)
    sizes = [0, 1, 2, 9, 16, 17, 40, 257]
    edges = [np.unique(np.round(rng.normal(size=n), 1)) if n else np.empty(0) for n in sizes]
    starts = np.cumsum([0] + [len(e) for e in edges]).astype(np.int64)
    counts = np.zeros(starts[-1] + len(edges), dtype=np.int64)
    bins = Bins(np.concatenate(edges), starts, counts)
    X = np.round(rng.normal(size=(2000, len(edges))), 1)  # many values exactly on an edge
    X[:4] = [[np.inf], [-np.inf], [0.0], [-0.0]]  # no NaN: no scored value is one
    bins.add_rows(np.ascontiguousarray(X[:, :-1]), np.ascontiguousarray(X[:, -1]))
    for c, e in enumerate(edges):
        expected = np.bincount(np.searchsorted(e, X[:, c], side="right"), minlength=len(e) + 1)
        assert counts[starts[c] + c : starts[c + 1] + c + 1].tolist() == expected.tolist(), sizes[c]


@pytest.mark.native
def test_a_row_changed_while_it_is_counted_is_an_error_and_counts_nowhere():
    counter = drift.DriftCounter(reference_and_rows()[0], "test", None)
    with pytest.raises(RuntimeError, match="changed"):
        counter.add(a_row_that_empties_itself(len(FEATURES)), 1.0)
    assert counter.report()["rows"] == 0

"""`make evaluate`'s report: its figures against scikit-learn's, computed here independently, and a screenshot."""

from __future__ import annotations

import json
import re

import joblib
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_score, recall_score, roc_auc_score

from model import evaluate, synthetic
from service.core.features import FEATURES
from tests.helpers import screenshot, two_trained_models


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    return two_trained_models(tmp_path_factory.mktemp("two-models"))


@pytest.fixture(scope="module")
def labelled_csv(tmp_path_factory):
    X, y = synthetic.generate(4000, seed=31)
    Xf, yf = synthetic.generate(40_000, seed=32)
    X, y = np.vstack([X, Xf[yf == 1][:40]]), np.concatenate([y, yf[yf == 1][:40]])
    path = tmp_path_factory.mktemp("labelled") / "labelled.csv"
    np.savetxt(path, np.column_stack([X, y]), delimiter=",", header=",".join([*FEATURES, "Class"]), comments="")
    return path, X, y


def test_report_figures_equal_sklearns(tmp_path, two_models, labelled_csv, capsys):
    a, b, _, _ = two_models
    csv, X, y = labelled_csv
    output = tmp_path / "report.html"
    argv = [
        "--champion",
        str(a),
        "--challenger",
        str(b),
        "--csv",
        str(csv),
        "--bootstrap",
        "40",
        "--output",
        str(output),
    ]
    assert evaluate.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"report: {output.resolve()}" in printed
    figures = json.loads(output.with_suffix(".json").read_text())
    assert figures["rows"] == len(y) and figures["frauds"] == int(y.sum())
    amount = X[:, FEATURES.index("Amount")]
    costs = {}
    for name, path in (("champion", a), ("challenger", b)):
        p = joblib.load(path).predict_proba(X)[:, 1]
        got = figures["models"][name]
        assert got["roc_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert got["average_precision"] == pytest.approx(average_precision_score(y, p), abs=1e-12)
        low, high = got["roc_auc_ci"]
        assert low <= got["roc_auc"] <= high
        alerts = np.round(100 * p) >= 50  # both small models keep the default threshold
        at = got["at_threshold"]
        assert at["recall"] == pytest.approx(recall_score(y, alerts), abs=1e-6)
        assert at["precision"] == pytest.approx(precision_score(y, alerts), abs=1e-6)
        assert at["alert_rate"] == pytest.approx(alerts.mean(), abs=1e-6)
        costs[name] = (amount[(y == 1) & ~alerts].sum() + 5.0 * alerts.sum()) / len(y) * 1000
        assert at["cost_per_1000"] == pytest.approx(costs[name], abs=1e-6)
    assert figures["cost_difference_per_1000"] == pytest.approx(costs["challenger"] - costs["champion"], abs=1e-6)
    assert figures["verdict"].split(":")[0] in ("Promote the challenger", "Keep the champion", "No clear winner")

    page = output.read_text()
    assert figures["verdict"].replace("'", "&#x27;") in page
    assert f"{figures['models']['champion']['roc_auc']:.4f}" in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 2
    assert not re.search(r"(src|href)=\"https?:", page)  # opens offline

    shot = screenshot(output, "evaluation-report.png", tmp_path)
    assert shot.stat().st_size > 20_000

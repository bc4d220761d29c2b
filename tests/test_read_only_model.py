"""A seed-style model (a plain RandomForestClassifier saved with joblib.dump, no manifest) in a
directory mounted read-only: gunicorn starts inside a private mount namespace in which the model
directory is a read-only bind mount, so nothing can be written beside the estimator, root or not.
The master converts in memory before fork and the stack serves, exactly, through nginx."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import joblib
import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from model import synthetic
from service.core.artifacts import sha256_file
from stack.launcher import ROOT
from tests.helpers import UNLIMITED, Client, as_transaction, read_only, require_read_only_mounts, start_stack


@pytest.fixture(scope="module")
def seed_model(tmp_path_factory):
    """(path, estimator) in a directory of its own that holds nothing else."""
    X, y = synthetic.generate(6000, seed=31)
    Xf, yf = synthetic.generate(200_000, seed=32)
    X, y = np.vstack([X, Xf[yf == 1]]), np.concatenate([y, yf[yf == 1]])
    estimator = RandomForestClassifier(n_estimators=20, random_state=7).fit(X, y)
    path = tmp_path_factory.mktemp("read-only-model") / "model.joblib"
    joblib.dump(estimator, path)
    require_read_only_mounts(path.parent)
    return path, estimator


def rows(n: int, seed: int) -> np.ndarray:
    X, y = synthetic.generate(40 * n, seed=seed)
    return np.vstack([X[y == 1], X[:n]])[:n]  # frauds first, so scores span the range


def test_seed_style_model_in_a_read_only_directory_serves(seed_model, tmp_path):
    path, estimator = seed_model
    # Rate limits lifted: 3,300 transactions at once would spend more than a key's default budget.
    stack = start_stack(path, tmp_path, read_only(path.parent), MODEL_SHA256=sha256_file(path), **UNLIMITED)
    try:
        client = Client("127.0.0.1", stack.settings.port)
        health = client.request("GET", "/health")
        assert health.status == 200, health.raw
        info = client.request("GET", "/v1/model-info").json
        assert info["scorer"] == "forest-walker" and info["n_trees"] == 20
        assert info["estimator_sha256"] == sha256_file(path) and info["sha256"] is None  # no file: in memory

        # Thousands of rows through nginx, in batches and one by one: sklearn's scores, every one.
        X = rows(3000, seed=33)
        expected = [round(100 * p) for p in estimator.predict_proba(X)[:, 1]]
        scores = []
        for start in range(0, len(X), 1000):
            chunk = [as_transaction(r) for r in X[start : start + 1000]]
            reply = client.request("POST", "/v1/fraud-score/batch", {"transactions": chunk})
            assert reply.status == 200, reply.raw
            scores += [r["fraud-score"] for r in reply.json["results"]]
        assert scores == expected and len(set(scores)) > 5
        assert [client.score(as_transaction(r)).json["fraud-score"] for r in X[:300]] == expected[:300]
    finally:
        stack.stop()
    log = (tmp_path / "stack.log").read_text()
    assert "Traceback" not in log and "Read-only file system" in log
    assert (
        "converted in memory" in log
        and f"python -m service.engine.convert {path} --sha256 {sha256_file(path)} --output-dir DIR" in log
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.joblib"]  # nothing was written


def test_in_memory_conversion_is_bit_equal_to_predict_proba(seed_model, tmp_path):
    """The loader's in-memory model itself, in the read-only namespace: probabilities, not scores."""
    path, estimator = seed_model
    X = rows(5000, seed=34)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "expected.npy", estimator.predict_proba(X)[:, 1])
    check = textwrap.dedent(
        f"""
        import json, numpy as np
        from service.engine.loader import load_model
        from service.core.settings import from_mapping
        model = load_model(from_mapping({{"API_KEY": "k" * 16, "MODEL_PATH": {str(path)!r},
                                          "MODEL_SHA256": {sha256_file(path)!r}}}))
        X, expected = np.load({str(tmp_path / "X.npy")!r}), np.load({str(tmp_path / "expected.npy")!r})
        rows = model.scorer.predict_rows(X)
        singles = np.array([model.predict_row(r) for r in X.tolist()])
        print(json.dumps({{"kind": type(model.scorer).__name__, "sha256": model.forest_sha256,
                           "rows": bool(np.array_equal(rows, expected)),
                           "singles": bool(np.array_equal(singles, expected))}}))
        """
    )
    done = subprocess.run(
        [*read_only(path.parent), sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"kind": "Forest", "sha256": None, "rows": True, "singles": True}
    assert "converted in memory" in done.stderr

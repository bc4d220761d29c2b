"""Training, export, verification before unpickling, and conversion of dropped-in models."""

from __future__ import annotations

import json
import logging

import joblib
import numpy as np
import pytest
from sklearn.ensemble import ExtraTreesClassifier
from sklearn.linear_model import LogisticRegression

from model import synthetic, train
from service.core.artifacts import ArtifactError, ArtifactPaths, sha256_file
from service.core.features import FEATURES
from service.core.settings import from_mapping
from service.engine.forest import Forest
from service.engine.loader import SklearnScorer, load_model
from tests.helpers import install_model

KEY = "k" * 16


def settings_for(path, **extra):
    return from_mapping({"API_KEY": KEY, "MODEL_PATH": str(path), **extra})


def test_synthetic_data_follows_the_published_facts():
    X, y = synthetic.generate(100_000, seed=42)
    assert X.shape == (100_000, len(FEATURES))
    assert 0.0015 < y.mean() < 0.002
    assert X[:, 0].min() >= 0 and X[:, 0].max() <= 172_792
    v = X[:, 1:29]
    assert np.allclose(v.mean(axis=0), 0, atol=1e-9)
    assert abs(v[:, 0].std() / v[:, 27].std() - 1.96 / 0.33) < 1.5  # std falls with the index
    amount = X[:, 29]
    assert 15 < np.median(amount) < 30 and amount.max() <= 25_691.16
    assert X[y == 1, 14].mean() < -2 and X[y == 1, 4].mean() > 1  # V14 down, V4 up on fraud
    again, _ = synthetic.generate(100_000, seed=42)
    assert np.array_equal(X, again)


def test_train_cli_writes_model_artifact_and_manifest(tmp_path, capsys):
    out = tmp_path / "m" / "fraud-model.joblib"
    assert train.main(["--rows", "20000", "--trees", "10", "--output", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "ROC AUC" in printed and "average precision" in printed
    paths = ArtifactPaths.for_model(out)
    manifest = json.loads(paths.manifest.read_text())
    assert manifest["files"]["estimator"]["sha256"] == sha256_file(paths.estimator)
    assert manifest["files"]["forest"]["sha256"] == sha256_file(paths.forest)
    assert manifest["files"]["forest"]["n_trees"] == 10
    assert set(manifest["metrics"]) >= {"roc_auc", "average_precision"}
    assert set(manifest["feature_stats"]) == set(FEATURES)
    assert manifest["data_source"].startswith("synthetic")
    assert manifest["sklearn_version"] and manifest["trained_at"] and manifest["version"]
    estimator = joblib.load(paths.estimator)
    assert estimator.n_jobs is None  # n_jobs>1 would make every single-row predict spin threads
    loaded = load_model(settings_for(out))
    assert isinstance(loaded.scorer, Forest) and loaded.version == manifest["version"]
    X, _ = synthetic.generate(2000, seed=1)
    assert np.array_equal(loaded.scorer.predict_rows(X), estimator.predict_proba(X)[:, 1])


def test_train_on_csv(tmp_path):
    X, y = synthetic.generate(6000, seed=8)
    csv = tmp_path / "creditcard.csv"
    header = ",".join(f'"{c}"' for c in (*FEATURES, "Class"))
    np.savetxt(csv, np.column_stack([X, y]), delimiter=",", header=header, comments="", fmt="%.10g")
    out = tmp_path / "fraud-model.joblib"
    assert train.main(["--csv", str(csv), "--trees", "5", "--output", str(out), "--quiet"]) == 0
    manifest = json.loads(ArtifactPaths.for_model(out).manifest.read_text())
    assert manifest["data_source"].startswith("csv:creditcard.csv sha256=")


def test_tampered_serving_artifact_is_refused_before_unpickling(small_model, tmp_path, caplog):
    path = tmp_path / "fraud-model.joblib"
    install_model(small_model[0], tmp_path / "fraud-model.joblib")
    forest_file = ArtifactPaths.for_model(path).forest
    # A pickle that would run code if it were ever unpickled.
    forest_file.write_bytes(b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR.")
    with pytest.raises(ArtifactError, match="does not match"):
        load_model(settings_for(path))
    assert not (tmp_path / "pwned").exists()


def test_dropped_in_estimator_without_manifest_needs_a_pinned_digest(tmp_path):
    X, y = synthetic.generate(5000, seed=2)
    path = tmp_path / "fraud-model.joblib"
    estimator = ExtraTreesClassifier(n_estimators=8, random_state=0).fit(X, y)
    joblib.dump(estimator, path)
    with pytest.raises(ArtifactError, match="MODEL_SHA256"):
        load_model(settings_for(path))
    with pytest.raises(ArtifactError, match="does not match"):
        load_model(settings_for(path, MODEL_SHA256="0" * 64))

    loaded = load_model(settings_for(path, MODEL_SHA256=sha256_file(path)))
    paths = ArtifactPaths.for_model(path)
    assert isinstance(loaded.scorer, Forest) and paths.forest.exists()  # converted once
    assert np.array_equal(loaded.scorer.predict_rows(X), estimator.predict_proba(X)[:, 1])
    manifest = json.loads(paths.manifest.read_text())
    assert manifest["files"]["forest"]["sha256"] == sha256_file(paths.forest)
    # The next start memory-maps the converted file without converting again.
    mtime = paths.forest.stat().st_mtime_ns
    again = load_model(settings_for(path, MODEL_SHA256=sha256_file(path)))
    assert again.version == loaded.version and paths.forest.stat().st_mtime_ns == mtime


def test_other_estimators_are_served_through_sklearn_with_a_warning(tmp_path, caplog):
    X, y = synthetic.generate(5000, seed=2)
    path = tmp_path / "fraud-model.joblib"
    estimator = LogisticRegression(max_iter=50).fit(X[:, :30] / 1000, y)
    joblib.dump(estimator, path)
    with caplog.at_level(logging.WARNING):
        loaded = load_model(settings_for(path, MODEL_SHA256=sha256_file(path)))
    assert isinstance(loaded.scorer, SklearnScorer)
    assert "through sklearn" in caplog.text
    row = list(X[0] / 1000)
    assert loaded.predict_row(row) == estimator.predict_proba([row])[0, 1]


def test_missing_model_says_how_to_make_one(tmp_path):
    with pytest.raises(ArtifactError, match="make model"):
        load_model(settings_for(tmp_path / "absent.joblib"))


def test_model_version_setting_overrides_the_manifest(small_model):
    assert load_model(settings_for(small_model[0], MODEL_VERSION="v-override")).version == "v-override"


def test_estimator_replaced_after_training_is_not_silently_ignored(small_model, tmp_path):
    """A new estimator dropped over an old one must not leave the old forest serving unnoticed."""
    path = tmp_path / "fraud-model.joblib"
    install_model(small_model[0], tmp_path / "fraud-model.joblib")
    X, y = synthetic.generate(5000, seed=9)
    replacement = ExtraTreesClassifier(n_estimators=4, random_state=0).fit(X, y)
    joblib.dump(replacement, path)
    with pytest.raises(ArtifactError, match="replaced after training"):
        load_model(settings_for(path))
    loaded = load_model(settings_for(path, MODEL_SHA256=sha256_file(path)))
    assert loaded.scorer.n_trees == 4  # the pinned new file, converted; not the old forest
    assert np.array_equal(loaded.scorer.predict_rows(X[:500]), replacement.predict_proba(X[:500])[:, 1])


def test_serving_artifact_in_an_older_format_is_converted_again(small_model, tmp_path, caplog):
    path = tmp_path / "fraud-model.joblib"
    install_model(small_model[0], tmp_path / "fraud-model.joblib")
    paths = ArtifactPaths.for_model(path)
    current = joblib.load(paths.forest)
    joblib.dump({k: v for k, v in current.items() if k not in ("nodes", "format")}, paths.forest)
    manifest = json.loads(paths.manifest.read_text())
    manifest["files"]["forest"]["sha256"] = sha256_file(paths.forest)
    paths.manifest.write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING):
        loaded = load_model(settings_for(path))
    assert "converting" in caplog.text
    assert isinstance(loaded.scorer, Forest) and "nodes" in joblib.load(paths.forest)
    X, _ = synthetic.generate(1000, seed=4)
    assert np.array_equal(loaded.scorer.predict_rows(X), small_model[1].predict_proba(X)[:, 1])

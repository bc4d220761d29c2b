"""The service's conversion: `python -m service.engine.convert` writes the serving artifact ahead, and
every way a model file can be broken ends as one ArtifactError line, never another exception."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import joblib
import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from model import synthetic
from service.core.artifacts import ArtifactError, ArtifactPaths, sha256_file
from service.core.settings import from_mapping
from service.engine import convert
from service.engine.forest import Forest
from service.engine.loader import load_model
from stack.launcher import ROOT
from tests.helpers import install_model

KEY = "k" * 16


@pytest.fixture(scope="module")
def seed_style(tmp_path_factory):
    """A plain RandomForestClassifier saved with joblib.dump, as the reference service's users have it."""
    X, y = synthetic.generate(4000, seed=11)
    Xf, yf = synthetic.generate(80_000, seed=12)
    X, y = np.vstack([X, Xf[yf == 1]]), np.concatenate([y, yf[yf == 1]])
    estimator = RandomForestClassifier(n_estimators=12, random_state=5).fit(X, y)
    path = tmp_path_factory.mktemp("seed") / "model.joblib"
    joblib.dump(estimator, path)
    return path, estimator


def settings_for(path, **extra):
    return from_mapping({"API_KEY": KEY, "MODEL_PATH": str(path), **extra})


def run_convert(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "service.engine.convert", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        timeout=120,
    )


def test_convert_writes_a_complete_model_directory_ahead(seed_style, tmp_path):
    path, estimator = seed_style
    digest = sha256_file(path)
    out = tmp_path / "ready"
    done = run_convert(str(path), "--output-dir", str(out), "--sha256", digest)
    assert done.returncode == 0, done.stderr
    target = ArtifactPaths.for_model(out / path.name)
    assert f"MODEL_PATH={target.estimator}" in done.stdout
    assert target.estimator.read_bytes() == path.read_bytes()
    manifest = json.loads(target.manifest.read_text())
    assert manifest["files"]["estimator"]["sha256"] == digest
    assert manifest["files"]["forest"]["sha256"] == sha256_file(target.forest)
    assert manifest["files"]["forest"]["n_trees"] == 12
    assert manifest["version"] == f"imported-{digest[:8]}"
    assert sum(manifest["feature_importances"].values()) == pytest.approx(1.0, abs=1e-4)
    assert not ArtifactPaths.for_model(path).manifest.exists()  # the source directory is left alone

    # The manifest now vouches for the estimator: no MODEL_SHA256, no conversion at start.
    loaded = load_model(settings_for(target.estimator))
    assert isinstance(loaded.scorer, Forest) and loaded.forest_sha256 == manifest["files"]["forest"]["sha256"]
    X, _ = synthetic.generate(3000, seed=13)
    assert np.array_equal(loaded.scorer.predict_rows(X), estimator.predict_proba(X)[:, 1])


def test_convert_in_place_takes_the_digest_from_model_sha256(seed_style, tmp_path):
    path = tmp_path / "in-place.joblib"
    path.write_bytes(seed_style[0].read_bytes())
    done = run_convert(str(path), env={"MODEL_SHA256": sha256_file(path)})
    assert done.returncode == 0, done.stderr
    assert ArtifactPaths.for_model(path).forest.exists()
    assert isinstance(load_model(settings_for(path)).scorer, Forest)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "no manifest records its SHA-256; pass --sha256"),
        (["--sha256", "0" * 64], "does not match"),
    ],
)
def test_convert_refuses_an_untrusted_file_in_one_line(seed_style, args, expected):
    done = run_convert(str(seed_style[0]), *args)
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and expected in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def broken_files(good: bytes) -> dict[str, bytes]:
    return {
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "not a pickle": b"certainly not a joblib file\n",
        "a pickled dict": pickle.dumps({"estimator": "no"}),
        "a pickled list of numbers": pickle.dumps([1, 2, 3]),
        "an unfitted forest": pickle.dumps(RandomForestClassifier()),
        "a forest of another width": pickle.dumps(
            RandomForestClassifier(n_estimators=2, random_state=0).fit(np.eye(4), [0, 1, 0, 1])
        ),
    }


@pytest.mark.parametrize("kind", list(broken_files(b"x" * 10)))
def test_every_broken_estimator_is_one_artifact_error(seed_style, tmp_path, kind):
    data = broken_files(seed_style[0].read_bytes())[kind]
    path = tmp_path / "model.joblib"
    path.write_bytes(data)
    with pytest.raises(ArtifactError) as refused:
        load_model(settings_for(path, MODEL_SHA256=sha256_file(path)))
    assert str(path) in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("kind", ["truncated", "not a pickle", "an unfitted forest"])
def test_a_serving_artifact_that_is_not_one_is_one_artifact_error(seed_style, tmp_path, kind):
    """The manifest vouches for a forest file that holds something else (written by another tool)."""
    path = tmp_path / "model.joblib"
    path.write_bytes(seed_style[0].read_bytes())
    assert convert.main([str(path), "--sha256", sha256_file(path)]) == 0
    paths = ArtifactPaths.for_model(path)
    data = paths.forest.read_bytes()
    paths.forest.write_bytes(broken_files(data)[kind])
    manifest = json.loads(paths.manifest.read_text())
    manifest["files"]["forest"]["sha256"] = sha256_file(paths.forest)
    paths.manifest.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError) as refused:
        load_model(settings_for(path))
    assert str(paths.forest) in str(refused.value)


@pytest.mark.parametrize(
    "change",
    [
        {"files": ["not", "a", "mapping"]},
        {"files": {"estimator": "abc"}},
        {"features": "Time,V1"},
        {"feature_stats": "garbage"},
        {"feature_stats": {"V1": {"mean": 0.0}}},
        {"version": 7},
    ],
)
def test_a_manifest_of_the_wrong_shape_is_one_artifact_error(small_model, tmp_path, change):
    path = tmp_path / "fraud-model.joblib"
    install_model(small_model[0], path)
    paths = ArtifactPaths.for_model(path)
    paths.manifest.write_text(json.dumps({**json.loads(paths.manifest.read_text()), **change}))
    with pytest.raises(ArtifactError, match="is not a manifest this service reads"):
        load_model(settings_for(path))


def test_a_model_trained_on_other_columns_is_refused(small_model, tmp_path):
    """Columns added to or reordered in service/core/features.py need a retrain; the manifest says which."""
    path = tmp_path / "fraud-model.joblib"
    install_model(small_model[0], path)
    paths = ArtifactPaths.for_model(path)
    manifest = json.loads(paths.manifest.read_text())
    manifest["features"][1], manifest["features"][2] = manifest["features"][2], manifest["features"][1]
    paths.manifest.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"column 1: 'V2' in its manifest, 'V1' sent\): retrain"):
        load_model(settings_for(path))

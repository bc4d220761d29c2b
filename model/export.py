"""Writes a fitted estimator's files: the estimator itself, the serving artifact, the manifest."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn

from service import forest
from service.artifacts import ArtifactPaths, sha256_file, write_atomically, write_json_atomically
from service.features import FEATURES

log = logging.getLogger(__name__)


def feature_stats(X: np.ndarray) -> dict[str, dict[str, float]]:
    """Training mean and standard deviation per feature, for out-of-distribution checks."""
    return {name: {"mean": float(X[:, i].mean()), "std": float(X[:, i].std())} for i, name in enumerate(FEATURES)}


def feature_importances(estimator: Any) -> dict[str, float] | None:
    importances = getattr(estimator, "feature_importances_", None)
    if importances is None or len(importances) != len(FEATURES):
        return None
    return {name: round(float(v), 6) for name, v in zip(FEATURES, importances, strict=True)}


def write_serving_artifact(estimator: Any, paths: ArtifactPaths) -> dict[str, Any]:
    """Converts the estimator to flat arrays and returns what the manifest records about them."""
    arrays = forest.flatten(estimator)
    forest.save(arrays, paths.forest)
    n_nodes = int(arrays["nodes"].shape[0])
    return {
        "path": paths.forest.name,
        "sha256": sha256_file(paths.forest),
        "n_trees": int(arrays["roots"].shape[0]),
        "n_nodes": n_nodes,
        "max_depth": arrays["max_depth"],
    }


def export(
    estimator: Any,
    model_path: Path,
    *,
    data_source: str,
    metrics: dict[str, Any] | None = None,
    stats: dict[str, dict[str, float]] | None = None,
    version: str | None = None,
    threshold: dict[str, Any] | None = None,
    drift: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Writes the estimator, its serving artifact and the manifest; returns the manifest.
    `threshold` (model.threshold.choose) and `drift` (service.drift.reference) are recorded as given."""
    paths = ArtifactPaths.for_model(model_path)
    paths.estimator.parent.mkdir(parents=True, exist_ok=True)
    # A forest pickled with n_jobs>1 makes every predict_proba spin up threads (~3x slower per row).
    if hasattr(estimator, "n_jobs"):
        estimator.n_jobs = None
    write_atomically(paths.estimator, lambda tmp: joblib.dump(estimator, tmp, compress=3))
    estimator_digest = sha256_file(paths.estimator)
    trained_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    manifest = {
        "format": 1,
        "version": version or f"rf-{trained_at:%Y%m%d}-{estimator_digest[:8]}",
        "trained_at": trained_at.isoformat(),
        "sklearn_version": sklearn.__version__,
        "estimator": type(estimator).__name__,
        "params": {
            k: v for k, v in estimator.get_params().items() if isinstance(v, (int, float, str, bool, type(None)))
        },
        "data_source": data_source,
        "features": list(FEATURES),
        "feature_importances": feature_importances(estimator),
        "metrics": metrics or {},
        "feature_stats": stats,
        "files": {"estimator": {"path": paths.estimator.name, "sha256": estimator_digest}},
    }
    if threshold is not None:
        manifest["threshold"] = threshold
    if drift is not None:
        manifest["drift"] = drift
    try:
        manifest["files"]["forest"] = write_serving_artifact(estimator, paths)
    except forest.UnsupportedEstimator as e:
        log.warning("no serving artifact for %s (%s): it will be served through sklearn", type(estimator).__name__, e)
        paths.forest.unlink(missing_ok=True)
    write_json_atomically(paths.manifest, manifest)
    return manifest

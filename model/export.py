"""Writes a fitted estimator's files: the estimator itself, then, through the service's own
conversion (service/engine/convert.py), the serving artifact and the manifest that records them."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn

from service.core.artifacts import ArtifactPaths, sha256_file, write_atomically
from service.core.features import FEATURES
from service.engine import convert, forest

log = logging.getLogger(__name__)


def feature_stats(X: np.ndarray) -> dict[str, dict[str, float]]:
    """Training mean and standard deviation per feature, for out-of-distribution checks."""
    return {name: {"mean": float(X[:, i].mean()), "std": float(X[:, i].std())} for i, name in enumerate(FEATURES)}


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
    ood: dict[str, Any] | None = None,
    training_set: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Writes the estimator, its serving artifact and the manifest; returns the manifest.
    `threshold` (model.threshold.choose), `drift` (service.engine.drift.reference) and `ood`
    (model.ood_bounds.calibrate) are recorded as given, and so is `training_set` (the log range, the
    label cut-off and the counts of a model trained on the prediction log: service/offline/training_set.py)."""
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
        "params": {
            k: v for k, v in estimator.get_params().items() if isinstance(v, (int, float, str, bool, type(None)))
        },
        "data_source": data_source,
        "features": list(FEATURES),
        "metrics": metrics or {},
        "feature_stats": stats,
    }
    if threshold is not None:
        manifest["threshold"] = threshold
    if drift is not None:
        manifest["drift"] = drift
    if ood is not None:
        manifest["ood"] = ood
    if training_set is not None:
        manifest["training_set"] = training_set
    try:
        arrays = forest.flatten(estimator)
    except forest.UnsupportedEstimator as e:
        log.warning("no serving artifact for %s (%s): it will be served through sklearn", type(estimator).__name__, e)
        arrays = None
    return convert.write(paths, manifest, estimator, estimator_digest, arrays)

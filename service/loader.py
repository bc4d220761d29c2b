"""Loads the model once, in the gunicorn master before fork: verify, then memory-map.

Order matters: every file's SHA-256 is checked against a trusted record before it is unpickled.
A seed-style estimator dropped in without a serving artifact is converted once; an estimator the
fast walker cannot serve is served through sklearn, with a warning."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import joblib
import numpy as np

from service import forest, threshold
from service.artifacts import (
    ArtifactError,
    ArtifactPaths,
    read_manifest,
    read_verified,
    recorded_digest,
    sha256_file,
    verify,
    write_json_atomically,
)
from service.features import N_FEATURES
from service.settings import Settings

log = logging.getLogger(__name__)


class SklearnScorer:
    """Fallback for estimators the walker does not know: correct, but milliseconds per row."""

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator
        classes = list(getattr(estimator, "classes_", [0, 1]))
        self._column = classes.index(1) if 1 in classes else len(classes) - 1

    def predict_row(self, row: Sequence[float]) -> float:
        return float(self.estimator.predict_proba(np.asarray([row], dtype=np.float64))[0, self._column])

    def predict_rows(self, X: np.ndarray) -> np.ndarray:
        return self.estimator.predict_proba(np.asarray(X, dtype=np.float64))[:, self._column]


@dataclass(frozen=True)
class LoadedModel:
    version: str
    predict_row: Callable[[Sequence[float]], float]
    scorer: forest.Forest | SklearnScorer
    manifest: dict[str, Any] = field(default_factory=dict)
    forest_sha256: str | None = None
    threshold: dict[str, Any] = field(default_factory=lambda: threshold.in_force({}, None))


def _convert(estimator: Any, paths: ArtifactPaths, manifest: dict[str, Any], estimator_digest: str) -> dict[str, Any]:
    from model.export import feature_importances, write_serving_artifact

    info = write_serving_artifact(estimator, paths)
    manifest = {
        **manifest,
        "files": {
            **manifest.get("files", {}),
            "estimator": {"path": paths.estimator.name, "sha256": estimator_digest},
            "forest": info,
        },
    }
    manifest.setdefault("version", f"imported-{estimator_digest[:8]}")
    manifest.setdefault("estimator", type(estimator).__name__)
    manifest.setdefault("feature_importances", feature_importances(estimator))
    write_json_atomically(paths.manifest, manifest)
    log.info(
        "converted %s to the serving artifact %s (once; later starts memory-map it)", paths.estimator, paths.forest
    )
    return manifest


def _trusted_manifest(paths: ArtifactPaths, manifest: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The manifest if it describes the estimator now at MODEL_PATH, or {} when the operator pinned
    a different (new) file with MODEL_SHA256. Refuses an estimator nothing vouches for: one without
    a manifest or a pin, or one replaced after the manifest was written."""
    pinned = settings.model_sha256
    if not paths.estimator.exists():
        if pinned:
            raise ArtifactError(f"MODEL_SHA256 is set but there is no file at {paths.estimator}")
        return manifest
    actual = sha256_file(paths.estimator)
    recorded = recorded_digest(manifest, "estimator")
    if pinned:
        if actual != pinned:
            raise ArtifactError(
                f"refusing to load {paths.estimator}: SHA-256 {actual} does not match {pinned} (MODEL_SHA256)"
            )
        return manifest if recorded == actual else {}
    if not recorded:
        raise ArtifactError(
            f"refusing to load {paths.estimator}: no manifest records its SHA-256; "
            f"set MODEL_SHA256 to the file's sha256sum to trust it"
        )
    if recorded != actual:
        raise ArtifactError(
            f"refusing to load {paths.estimator}: SHA-256 {actual} does not match {recorded} "
            f"recorded in {paths.manifest.name} (replaced after training?); set MODEL_SHA256 "
            f"to trust the new file, or run `make model`"
        )
    return manifest


def _unpickle_estimator(paths: ArtifactPaths, expected: str) -> Any:
    """Hashes and unpickles the same bytes, so the file cannot change in between."""
    data = read_verified(paths.estimator, expected)
    try:
        return joblib.load(io.BytesIO(data))
    except Exception as e:  # a verified file that still fails to load is corrupt or from another library version
        raise ArtifactError(f"cannot load {paths.estimator}: {type(e).__name__}: {e}") from e


def _map_forest(paths: ArtifactPaths, expected: str, source: str) -> forest.Forest:
    """Verifies, then memory-maps; a file replaced meanwhile (a rollout racing a write) is refused."""
    before = os.stat(paths.forest)
    verify(paths.forest, expected, source)
    scorer = forest.Forest.load(paths.forest)
    after = os.stat(paths.forest)
    if (before.st_ino, before.st_size, before.st_mtime_ns) != (after.st_ino, after.st_size, after.st_mtime_ns):
        raise ArtifactError(f"{paths.forest} changed while it was being loaded; try again")
    return scorer


def _from_estimator(
    paths: ArtifactPaths, manifest: dict[str, Any], settings: Settings
) -> tuple[forest.Forest | SklearnScorer, dict[str, Any], str | None]:
    """Unpickles the verified estimator and converts it once to the serving artifact; an estimator
    the walker cannot serve is served through sklearn. Returns (scorer, manifest, forest digest)."""
    estimator_digest = settings.model_sha256 or recorded_digest(manifest, "estimator")
    estimator = _unpickle_estimator(paths, estimator_digest)
    try:
        manifest = _convert(estimator, paths, manifest, estimator_digest)
    except forest.UnsupportedEstimator as e:
        if not hasattr(estimator, "predict_proba"):
            raise ArtifactError(
                f"{paths.estimator} holds a {type(estimator).__name__}, which has no predict_proba"
            ) from e
        log.warning("serving %s through sklearn (%s): expect milliseconds per request", type(estimator).__name__, e)
        manifest = {**manifest, "version": manifest.get("version") or f"imported-{estimator_digest[:8]}"}
        return SklearnScorer(estimator), manifest, None
    forest_digest = recorded_digest(manifest, "forest")
    return _map_forest(paths, forest_digest, "just converted"), manifest, forest_digest


def load_model(settings: Settings) -> LoadedModel:
    paths = ArtifactPaths.for_model(settings.model_path)
    manifest = _trusted_manifest(paths, read_manifest(paths.manifest) or {}, settings)
    forest_digest = recorded_digest(manifest, "forest")
    scorer: forest.Forest | SklearnScorer | None = None
    if forest_digest and paths.forest.exists():
        try:
            scorer = _map_forest(paths, forest_digest, f"recorded in {paths.manifest.name}")
        except forest.OutdatedArtifact as e:
            if not paths.estimator.exists():
                raise
            log.warning("%s: %s; converting %s again", paths.forest, e, paths.estimator)
    if scorer is None:
        if not paths.estimator.exists():
            raise ArtifactError(f"no model at {paths.estimator}: run `make model` to train the default one")
        scorer, manifest, forest_digest = _from_estimator(paths, manifest, settings)

    n_features = getattr(scorer, "n_features", None) or getattr(scorer.estimator, "n_features_in_", N_FEATURES)
    if n_features != N_FEATURES:
        raise ArtifactError(f"{paths.estimator} takes {n_features} features; the service sends {N_FEATURES}")
    version = settings.model_version or manifest.get("version") or f"unversioned-{(forest_digest or '')[:8]}"
    return LoadedModel(
        version=version,
        predict_row=scorer.predict_row,
        scorer=scorer,
        manifest=manifest,
        forest_sha256=forest_digest,
        threshold=threshold.in_force(manifest, settings.fraud_threshold),
    )

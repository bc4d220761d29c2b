"""Loads the model once, in the gunicorn master before fork: verify, then memory-map.

Order matters: every file's SHA-256 is checked against a trusted record before it is unpickled.
A seed-style estimator dropped in without a serving artifact is converted (service/engine/convert.py):
once, to a file beside it, or at every start, in memory, when its directory is read-only. An
estimator the fast walker cannot serve is served through sklearn, with a warning. Whatever goes
wrong ends as an ArtifactError with a one-line reason, never another exception."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.core import threshold
from service.core.artifacts import (
    ArtifactError,
    ArtifactPaths,
    read_manifest,
    recorded_digest,
    sha256_file,
    verify,
)
from service.core.features import FEATURES, N_FEATURES
from service.core.settings import Settings
from service.engine import convert, forest

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


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError as e:  # e.g. a directory on the way that the service may not search
        raise ArtifactError(f"cannot read {path}: {e.strerror}") from e


def _trusted_manifest(paths: ArtifactPaths, manifest: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The manifest if it describes the estimator now at MODEL_PATH, or {} when the operator pinned
    a different (new) file with MODEL_SHA256. Refuses an estimator nothing vouches for: one without
    a manifest or a pin, or one replaced after the manifest was written."""
    pinned = settings.model_sha256
    if not _exists(paths.estimator):
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


def _map_forest(paths: ArtifactPaths, expected: str, source: str) -> forest.Forest:
    """Verifies, then memory-maps; a file replaced meanwhile (a rollout racing a write) is refused."""
    try:
        before = os.stat(paths.forest)
        verify(paths.forest, expected, source)
        scorer = forest.Forest.load(paths.forest)
        after = os.stat(paths.forest)
    except ArtifactError:
        raise
    except OSError as e:
        raise ArtifactError(f"cannot read {paths.forest}: {e.strerror or e}") from e
    except Exception as e:  # verified bytes that are not the arrays the walker takes
        raise ArtifactError(f"cannot load {paths.forest}: {type(e).__name__}: {e}") from e
    if (before.st_ino, before.st_size, before.st_mtime_ns) != (after.st_ino, after.st_size, after.st_mtime_ns):
        raise ArtifactError(f"{paths.forest} changed while it was being loaded; try again")
    return scorer


def _sklearn_scorer(estimator: Any, paths: ArtifactPaths) -> SklearnScorer:
    """The fallback, if the estimator can score one transaction now rather than at the first request."""
    kind = type(estimator).__name__
    if not hasattr(estimator, "predict_proba"):
        raise ArtifactError(f"{paths.estimator} holds a {kind}, which has no predict_proba")
    try:
        scorer = SklearnScorer(estimator)
        probability = scorer.predict_row([0.0] * N_FEATURES)
    except Exception as e:  # unfitted, another number of features, not really an estimator
        raise ArtifactError(
            f"{paths.estimator} holds a {kind} that cannot score {N_FEATURES} features: {type(e).__name__}: {e}"
        ) from e
    if not 0.0 <= probability <= 1.0:
        raise ArtifactError(f"{paths.estimator} holds a {kind} whose predict_proba is not a probability")
    return scorer


def _from_estimator(
    paths: ArtifactPaths, manifest: dict[str, Any], settings: Settings
) -> tuple[forest.Forest | SklearnScorer, dict[str, Any], str | None]:
    """Unpickles the verified estimator and converts it to the serving artifact, written beside it
    once so that later starts memory-map it. When that directory cannot be written (a read-only
    mount) the arrays are built in memory here, in the master, and shared by the forked workers.
    An estimator the walker cannot serve is served through sklearn.
    Returns (scorer, manifest, the written artifact's digest or None)."""
    estimator_digest = settings.model_sha256 or recorded_digest(manifest, "estimator")
    estimator = convert.load_estimator(paths.estimator, estimator_digest)
    try:
        arrays = forest.flatten(estimator)
    except forest.UnsupportedEstimator as e:
        scorer = _sklearn_scorer(estimator, paths)
        log.warning("serving %s through sklearn (%s): expect milliseconds per request", type(estimator).__name__, e)
        manifest = {**manifest, "version": manifest.get("version") or f"imported-{estimator_digest[:8]}"}
        return scorer, manifest, None
    except Exception as e:  # a pickle of the wrong thing, or an unfitted estimator
        raise ArtifactError(
            f"{paths.estimator} holds a {type(estimator).__name__} that is not a fitted tree classifier: "
            f"{type(e).__name__}: {e}"
        ) from e
    try:
        manifest = convert.write(paths, manifest, estimator, estimator_digest, arrays)
    except OSError as e:
        log.warning(
            "cannot write the serving artifact beside %s (%s): converted in memory, shared by the workers; "
            "every start converts again. To convert once, ahead: `%s`, then MODEL_PATH=DIR/%s",
            paths.estimator,
            e.strerror or e,
            convert.command(paths.estimator, "DIR", estimator_digest),
            paths.estimator.name,
        )
        return forest.Forest(arrays), convert.recorded(manifest, estimator, paths, estimator_digest), None
    log.info(
        "converted %s to the serving artifact %s (once; later starts memory-map it)", paths.estimator, paths.forest
    )
    forest_digest = recorded_digest(manifest, "forest")
    return _map_forest(paths, forest_digest, "just converted"), manifest, forest_digest


def load_model(settings: Settings) -> LoadedModel:
    """The verified model at MODEL_PATH. Every failure, whatever its cause, is an ArtifactError
    with a one-line reason: the caller then starts degraded (503) or refuses to start."""
    try:
        return _load(settings)
    except ArtifactError:
        raise
    except Exception as e:  # I/O, a malformed manifest, anything the checks above did not name
        raise ArtifactError(f"cannot load the model at {settings.model_path}: {type(e).__name__}: {e}") from e


def _load(settings: Settings) -> LoadedModel:
    paths = ArtifactPaths.for_model(settings.model_path)
    manifest = _trusted_manifest(paths, read_manifest(paths.manifest) or {}, settings)
    forest_digest = recorded_digest(manifest, "forest")
    scorer: forest.Forest | SklearnScorer | None = None
    if forest_digest and _exists(paths.forest):
        try:
            scorer = _map_forest(paths, forest_digest, f"recorded in {paths.manifest.name}")
        except forest.OutdatedArtifact as e:
            if not _exists(paths.estimator):
                raise
            log.warning("%s: %s; converting %s again", paths.forest, e, paths.estimator)
    if scorer is None:
        if not _exists(paths.estimator):
            raise ArtifactError(f"no model at {paths.estimator}: run `make model` to train the default one")
        scorer, manifest, forest_digest = _from_estimator(paths, manifest, settings)

    n_features = getattr(scorer, "n_features", None) or getattr(scorer.estimator, "n_features_in_", N_FEATURES)
    if n_features != N_FEATURES:
        raise ArtifactError(f"{paths.estimator} takes {n_features} features; the service sends {N_FEATURES}")
    trained_on = manifest.get("features")
    if trained_on is not None and list(trained_on) != list(FEATURES):
        column = next(
            (i for i, (a, b) in enumerate(zip(trained_on, FEATURES, strict=False)) if a != b),
            min(len(trained_on), N_FEATURES),
        )
        got, sent = (names[column] if column < len(names) else None for names in (trained_on, FEATURES))
        raise ArtifactError(
            f"{paths.estimator} was trained on other columns than service/core/features.py names (column {column}: "
            f"{got!r} in its manifest, {sent!r} sent): retrain it (`make model`)"
        )
    version = settings.model_version or manifest.get("version") or f"unversioned-{(forest_digest or '')[:8]}"
    return LoadedModel(
        version=version,
        predict_row=scorer.predict_row,
        scorer=scorer,
        manifest=manifest,
        forest_sha256=forest_digest,
        threshold=threshold.in_force(manifest, settings.fraud_threshold),
    )

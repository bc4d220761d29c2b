"""A challenger: a second model scoring every row the champion scores, for comparison only.

The response is always the champion's. The challenger's scores go to Prometheus (its score
histogram, the four champion/challenger is-fraud agreement cells, the score difference) and, for a
sample of requests (CHALLENGER_LOG_SAMPLE), to one JSON log line with the request id, both
versions and both scores, so that they can be joined to chargebacks later. It is loaded, verified
and memory-mapped like the champion, in the master before fork; a challenger that only sklearn can
serve (milliseconds a row) is refused rather than slowing every answer."""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from service.core.artifacts import ArtifactError, ArtifactPaths
from service.core.settings import Settings
from service.engine.forest import Forest
from service.engine.loader import LoadedModel, load_model

log = logging.getLogger("service.engine.challenger")


def load(settings: Settings) -> LoadedModel | None:
    """The challenger CHALLENGER_MODEL_PATH names, verified like the champion (with
    CHALLENGER_MODEL_SHA256 as its pin); None when none is configured or nothing is there.
    Raises ArtifactError when it cannot be served fast."""
    path = settings.challenger_model_path
    if path is None:
        return None
    paths = ArtifactPaths.for_model(path)
    if not any(p.exists() for p in (paths.estimator, paths.forest, paths.manifest)):
        log.warning("no challenger at %s: scoring with the champion alone", path)
        return None
    model = load_model(
        dataclasses.replace(
            settings,
            model_path=path,
            model_sha256=settings.challenger_model_sha256,
            model_version=None,
            fraud_threshold=None,  # FRAUD_THRESHOLD is the champion's; the challenger keeps its own
        )
    )
    if not isinstance(model.scorer, Forest):
        raise ArtifactError(
            f"challenger {path} ({model.manifest.get('estimator') or type(model.scorer).__name__}) could only be "
            f"served through sklearn, milliseconds on every request: refused"
        )
    return model


class Challenger:
    """Scores rows beside the champion; never changes an answer."""

    def __init__(
        self,
        model: LoadedModel,
        champion_version: str,
        champion_threshold: int,
        log_sample: float,
        observe_one: Callable[[int, bool, int, bool], None],
        observe_many: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], None],
    ) -> None:
        self.version = model.version
        self.threshold = model.threshold["value"]
        self._predict_row = model.predict_row
        self._predict_rows = model.scorer.predict_rows
        self._champion_version = champion_version
        self._champion_threshold = champion_threshold
        self.log_sample = log_sample
        self._observe_one = observe_one
        self._observe_many = observe_many
        self._random = random.random

    def one(self, row: Sequence[float], champion_score: int, log_ids: dict[str, str | None] | None) -> float:
        """The challenger's probability of the row."""
        probability = self._predict_row(row)
        score = round(100.0 * probability)
        self._observe_one(champion_score, champion_score >= self._champion_threshold, score, score >= self.threshold)
        if self.log_sample and self._random() < self.log_sample:
            self._log(log_ids, [champion_score], [score])
        return probability

    def many(self, X: np.ndarray, champion_scores: np.ndarray, log_ids: dict[str, str | None] | None) -> np.ndarray:
        """The challenger's probabilities of the rows."""
        probabilities = self._predict_rows(X)
        scores = np.round(100.0 * probabilities)
        self._observe_many(
            champion_scores, champion_scores >= self._champion_threshold, scores, scores >= self.threshold
        )
        if self.log_sample and self._random() < self.log_sample:
            self._log(log_ids, champion_scores.astype(int).tolist(), scores.astype(int).tolist())
        return probabilities

    def _log(self, log_ids: dict[str, str | None] | None, champion: list[int], challenger: list[int]) -> None:
        """A sampled line comparing the two; log_ids: the request's ids (request_id, trace_id)."""
        log.info(
            "challenger",
            extra={
                **(log_ids or {}),
                "champion_version": self._champion_version,
                "champion_scores": champion,
                "challenger_version": self.version,
                "challenger_scores": challenger,
            },
        )


def describe(model: LoadedModel) -> dict[str, Any]:
    """What /v1/model-info shows about a model under "champion" or "challenger"."""
    return {
        "model-version": model.version,
        "sha256": model.forest_sha256,
        "estimator_sha256": (model.manifest.get("files", {}).get("estimator") or {}).get("sha256"),
        "trained_at": model.manifest.get("trained_at"),
        "metrics": model.manifest.get("metrics") or {},
        "threshold": model.threshold,
    }

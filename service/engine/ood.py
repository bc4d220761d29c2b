"""Out-of-distribution flags: features far from what the model saw in training.

A feature is flagged when |x - mean| > z * std, with the training mean and standard deviation
from the model's manifest. The bounds are computed once; a check is 30 comparisons."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.core.features import FEATURES

log = logging.getLogger(__name__)


class OutOfDistribution:
    def __init__(self, feature_stats: dict[str, dict[str, float]] | None, z: float) -> None:
        self.enabled = bool(feature_stats)
        if not self.enabled:
            log.warning("the model's manifest has no training statistics: out-of-distribution warnings are off")
            feature_stats = {}
        # A feature constant in training (std 0) has no scale to measure distance by: never flagged.
        stats = [feature_stats.get(name) or {"mean": 0.0, "std": 0.0} for name in FEATURES]
        self._bounds = [
            (name, i, s["mean"] - z * s["std"], s["mean"] + z * s["std"])
            for i, (name, s) in enumerate(zip(FEATURES, stats, strict=True))
            if s["std"] > 0
        ]
        self.low = np.array([s["mean"] - z * s["std"] if s["std"] > 0 else -np.inf for s in stats])
        self.high = np.array([s["mean"] + z * s["std"] if s["std"] > 0 else np.inf for s in stats])

    def features(self, row: Sequence[float]) -> list[str]:
        """Names of the row's out-of-distribution features, in feature order."""
        return [name for name, i, low, high in self._bounds if not low <= row[i] <= high]

    def outside(self, X: np.ndarray) -> np.ndarray:
        """Which features of each row (n, 30) are out of distribution: a boolean array of X's shape."""
        return (self.low > X) | (self.high < X)


def annotate(result: dict[str, Any], flagged: list[str]) -> dict[str, Any]:
    result["ood-warning"] = bool(flagged)
    if flagged:
        result["ood-features"] = flagged
    return result

"""Out-of-distribution flags: features outside the range the model saw in training.

A feature is flagged when it lies outside its bounds [low, high]; a check is two comparisons a
feature, whichever rule made the bounds. The bounds come from the model's manifest, once:

- calibrated (the manifest's `ood`, written by model/ood_bounds.py): each feature's tail quantiles
  of the training rows, the tail chosen on the held-out split so that rows from the training
  distribution are flagged at a target rate; the manifest records the rate measured there;
- mean ± z training standard deviations (the manifest's `feature_stats`) when OOD_Z is set, or for
  a model that records no calibrated bounds (with z = 3). The 28 components are heavy-tailed, and a
  row has 30 chances to cross 3 standard deviations: this rule flags about a third of ordinary rows.

`Time` is never bounded, by either rule: it is a clock (seconds since a reference instant), not a
measurement. Live traffic runs past the training window by construction, so a bound on it would
flag every transaction once the service has run longer than the training data spans."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.core.features import FEATURES

log = logging.getLogger(__name__)

DEFAULT_Z = 3.0  # the rule of a model without calibrated bounds
UNBOUNDED = ("Time",)  # a clock, not a measurement (see above)


class OutOfDistribution:
    def __init__(self, low: np.ndarray, high: np.ndarray, summary: dict[str, Any]) -> None:
        """low, high: each feature's bounds in FEATURES order (-inf, inf: never flagged);
        summary: the rule and its figures, as GET /v1/model-info shows them."""
        # C-contiguous float64: the table engine reads them in C (service/offline/_columns.c).
        self.low, self.high = (np.array(bound, dtype=np.float64, order="C") for bound in (low, high))
        for name in UNBOUNDED:
            self.low[FEATURES.index(name)], self.high[FEATURES.index(name)] = -np.inf, np.inf
        self.enabled = bool(np.isfinite(self.low).any() or np.isfinite(self.high).any())
        self.summary = {**summary, "enabled": self.enabled}
        self._bounds = [
            (name, i, low, high)
            for i, (name, low, high) in enumerate(zip(FEATURES, self.low.tolist(), self.high.tolist(), strict=True))
            if np.isfinite(low) or np.isfinite(high)
        ]

    @classmethod
    def for_model(cls, manifest: dict[str, Any], z: float | None) -> OutOfDistribution:
        """The model's calibrated bounds; z (OOD_Z) set: mean ± z std instead."""
        calibrated = manifest.get("ood")
        if z is None and calibrated:
            low, high = np.array(
                [calibrated["bounds"].get(name, (-np.inf, np.inf)) for name in FEATURES], dtype=np.float64
            ).T
            figures = {k: calibrated[k] for k in ("target_rate", "heldout_rate", "tail")}
            bounds = {name: b for name, b in calibrated["bounds"].items() if name not in UNBOUNDED}
            return cls(low, high, {"rule": "calibrated", **figures, "bounds": bounds})
        stats = manifest.get("feature_stats")
        if not stats:
            log.warning("the model's manifest has no training statistics: out-of-distribution warnings are off")
            return cls(np.full(len(FEATURES), -np.inf), np.full(len(FEATURES), np.inf), {"rule": "none"})
        summary: dict[str, Any] = {"rule": "z", "z": z or DEFAULT_Z}
        if z is None:
            summary["note"] = (
                f"the model records no calibrated bounds: flagged beyond {DEFAULT_Z:g} training standard "
                "deviations, which flags about a third of ordinary rows; retrain (make model) to calibrate"
            )
        low, high = z_bounds(stats, z or DEFAULT_Z)
        return cls(low, high, summary)

    def features(self, row: Sequence[float]) -> list[str]:
        """Names of the row's out-of-distribution features, in feature order."""
        return [name for name, i, low, high in self._bounds if not low <= row[i] <= high]

    def outside(self, X: np.ndarray) -> np.ndarray:
        """Which features of each row (n, 30) are out of distribution: a boolean array of X's shape."""
        return (self.low > X) | (self.high < X)


def z_bounds(feature_stats: dict[str, dict[str, float]], z: float) -> tuple[np.ndarray, np.ndarray]:
    """mean ± z std a feature; a feature constant in training (std 0) has no scale to measure
    distance by: never flagged."""
    stats = [feature_stats.get(name) or {"mean": 0.0, "std": 0.0} for name in FEATURES]
    low = np.array([s["mean"] - z * s["std"] if s["std"] > 0 else -np.inf for s in stats])
    high = np.array([s["mean"] + z * s["std"] if s["std"] > 0 else np.inf for s in stats])
    return low, high


def annotate(result: dict[str, Any], flagged: list[str]) -> dict[str, Any]:
    result["ood-warning"] = bool(flagged)
    if flagged:
        result["ood-features"] = flagged
    return result

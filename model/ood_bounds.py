"""Out-of-distribution bounds calibrated at training, for the service's flag (service/engine/ood.py).

Each feature's bounds are the q and 1 - q quantiles of its training rows, one tail share q for
every feature, chosen on the held-out split: the largest q whose bounds flag at most the target
share of the held-out rows, a row being flagged when any of its features lies outside its bounds.
The manifest records the bounds, q, the target and the share of held-out rows flagged, which is
what ordinary traffic should show (and what the out-of-distribution alarm compares against).
`Time` gets no bounds (service/engine/ood.py says why), so it spends none of the target share."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.core.features import FEATURES
from service.engine.ood import UNBOUNDED, OutOfDistribution

TARGET_RATE = 0.005  # the share of ordinary rows flagged: `make model OOD_TARGET_RATE=…`
SEARCH_STEPS = 60  # bisection steps on q: far finer than any held-out split can tell apart


def _flagged(X_train: np.ndarray, X_heldout: np.ndarray, tail: float) -> tuple[np.ndarray, np.ndarray, float]:
    low, high = np.quantile(X_train, [tail, 1.0 - tail], axis=0)
    ood = OutOfDistribution(low, high, {})
    return low, high, float(ood.outside(X_heldout).any(axis=1).mean())


def calibrate(X_train: np.ndarray, X_heldout: np.ndarray, target_rate: float = TARGET_RATE) -> dict[str, Any]:
    """The manifest's `ood`: bounds from X_train whose flag rate on X_heldout is at most
    target_rate (or as near as the training range allows: at q = 0, its minimum and maximum)."""
    beyond, within = 0.5, 0.0  # tails known to flag more than the target, and at most it
    if _flagged(X_train, X_heldout, within)[2] <= target_rate:
        for _ in range(SEARCH_STEPS):
            middle = (beyond + within) / 2
            if _flagged(X_train, X_heldout, middle)[2] <= target_rate:
                within = middle
            else:
                beyond = middle
    low, high, rate = _flagged(X_train, X_heldout, within)
    return {
        "target_rate": target_rate,
        "tail": within,
        "heldout_rate": rate,
        "heldout_rows": int(len(X_heldout)),
        "bounds": {
            name: [float(lo), float(hi)]
            for name, lo, hi in zip(FEATURES, low, high, strict=True)
            if name not in UNBOUNDED
        },
    }

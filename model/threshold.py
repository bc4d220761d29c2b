"""The decision threshold that costs least: every missed fraud costs its amount, every alert a review.

Thresholds are fraud-scores (0-100, what the service returns): a transaction is an alert when its
score is at or above the threshold, exactly as `is-fraud` is decided. The same figures serve
training (choose the threshold) and `make evaluate` (compare two models at their thresholds)."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.core.features import FEATURES
from service.core.threshold import REVIEW_COST

THRESHOLDS = np.arange(0, 102)  # 101: never alert
AMOUNT = FEATURES.index("Amount")


def scores_of(probabilities: np.ndarray) -> np.ndarray:
    """The service's fraud-score: round(100 * P(fraud)), Python's rounding (half to even), as numpy's."""
    return np.round(100.0 * np.asarray(probabilities, dtype=np.float64)).astype(np.int64)


def figures(
    y: np.ndarray,
    scores: np.ndarray,
    amount: np.ndarray,
    review_cost: float,
    weights: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per threshold in THRESHOLDS: recall, precision, alert rate and expected cost per 1,000
    transactions (missed frauds' amounts + review_cost per alert). weights: each row counts as that
    many transactions (the prediction log's sample_weight: a sampled row stands for those not logged)."""
    y = np.asarray(y).astype(bool)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    n = w.sum()
    # Rows per score, frauds per score and missed amount per score; cumulated from the top, the
    # alerts at threshold t are the rows with score >= t.
    rows = np.bincount(scores, weights=w, minlength=101)[:101]
    frauds = np.bincount(scores[y], weights=w[y], minlength=101)[:101]
    fraud_amount = np.bincount(scores[y], weights=amount[y] * w[y], minlength=101)[:101]
    alerts = np.append(np.cumsum(rows[::-1])[::-1], 0)
    caught = np.append(np.cumsum(frauds[::-1])[::-1], 0)
    caught_amount = np.append(np.cumsum(fraud_amount[::-1])[::-1], 0.0)
    missed_amount = fraud_amount.sum() - caught_amount
    n_fraud = w[y].sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(alerts > 0, caught / np.maximum(alerts, 1), np.nan)
    return {
        "threshold": THRESHOLDS,
        "recall": caught / n_fraud if n_fraud else np.full(len(THRESHOLDS), np.nan),
        "precision": precision,
        "alert_rate": alerts / n,
        "cost_per_1000": (missed_amount + review_cost * alerts) / n * 1000.0,
    }


def at(curve: dict[str, np.ndarray], threshold: int) -> dict[str, float | None]:
    i = int(threshold)
    return {k: _number(curve[k][i]) for k in ("recall", "precision", "alert_rate", "cost_per_1000")}


def choose(
    y: np.ndarray,
    scores: np.ndarray,
    amount: np.ndarray,
    review_cost: float = REVIEW_COST,
    max_alert_rate: float | None = None,
    weights: np.ndarray | None = None,
) -> dict[str, Any]:
    """The cheapest threshold with its figures and the whole curve, as the manifest records it.

    Where several thresholds cost the same (no held-out row scores between them: common with few
    frauds), the middle of the longest such run is chosen, as far as possible from the scores
    where the cost jumps, rather than its edge."""
    curve = figures(y, scores, amount, review_cost, weights)
    allowed = np.ones(len(THRESHOLDS), dtype=bool)
    if max_alert_rate is not None:
        allowed = curve["alert_rate"] <= max_alert_rate
    cost = np.where(allowed, curve["cost_per_1000"], np.inf)
    cheapest = np.flatnonzero(cost == cost.min())
    runs = np.split(cheapest, np.flatnonzero(np.diff(cheapest) > 1) + 1)
    longest = max(reversed(runs), key=len)  # equal lengths: the higher run, fewer alerts
    best = int(longest[len(longest) // 2])
    return {
        "value": best,
        "unit": "fraud-score 0-100: is-fraud when the score is at or above it",
        "chosen_by": "least expected cost on the held-out split",
        "costs": {"missed_fraud": "its Amount", "review_per_alert": review_cost},
        "max_alert_rate": max_alert_rate,
        "rows": int(len(y)),
        "frauds": int(np.sum(y)),
        "at_threshold": at(curve, best),
        "at_50": at(curve, 50),
        "curve": {k: [_number(v) for v in values] for k, values in curve.items()},
    }


def _number(value: Any) -> float | int | None:
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float):
        return None if np.isnan(value) else round(value, 6)
    return value


def describe(name: str, figures_at: dict[str, float | None]) -> str:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f} %"

    return (
        f"{name}: recall {pct(figures_at['recall'])}, precision {pct(figures_at['precision'])}, "
        f"alert rate {pct(figures_at['alert_rate'])}, expected cost {figures_at['cost_per_1000']:.2f} per 1,000"
    )

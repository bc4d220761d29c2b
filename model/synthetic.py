"""A deterministic synthetic stand-in for the ULB credit-card fraud data set.

It follows the published statistics in shared/data/creditcard-facts.md: two days of `Time` with
quieter nights, a 0.172 % fraud rate, V1…V28 with mean 0 and the published standard deviations,
heavy tails, frauds shifted on V14, V17, V12, V10, V16, V3, V7 (negative) and V11, V4, V2 (positive)
and more spread out, small "card-testing" fraud amounts. Some frauds are disguised as genuine
traffic so that a forest reaches a realistic (not perfect) average precision."""

from __future__ import annotations

import numpy as np

from service.core.features import FEATURES

FULL_SIZE = 284_807
FRAUD_RATE = 492 / 284_807
TWO_DAYS = 172_792.0
V_STD = (
    1.96,
    1.65,
    1.52,
    1.42,
    1.38,
    1.33,
    1.24,
    1.19,
    1.10,
    1.09,
    1.02,
    1.00,
    1.00,
    0.96,
    0.92,
    0.88,
    0.85,
    0.84,
    0.81,
    0.77,
    0.73,
    0.73,
    0.62,
    0.61,
    0.52,
    0.48,
    0.40,
    0.33,
)
FRAUD_MEAN = {3: -7.0, 7: -5.5, 10: -5.7, 12: -6.3, 14: -7.0, 16: -4.1, 17: -6.7, 2: 3.6, 4: 4.5, 11: 3.8}
DISGUISED_SHARE = 0.25  # frauds whose shifts are mostly hidden in the genuine cloud


def _times(rng: np.random.Generator, n: int) -> np.ndarray:
    """Seconds over two days, with about a third of the daytime rate between 1 h and 7 h."""
    out = np.empty(0)
    while out.size < n:
        t = rng.uniform(0.0, TWO_DAYS, size=2 * n)
        hour = (t % 86_400) / 3_600
        keep = rng.uniform(size=t.size) < np.where((hour > 1) & (hour < 7), 0.3, 1.0)
        out = np.concatenate([out, t[keep]])
    return np.sort(np.round(out[:n]))


def generate(n_rows: int = 100_000, seed: int = 42, fraud_rate: float = FRAUD_RATE) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) with X's columns in FEATURES order and y 1 for fraud; the same for the same args.
    `fraud_rate` other than the published one serves generated traffic (perf/outcomes_log.py)."""
    rng = np.random.default_rng(seed)
    n_fraud = max(2, round(n_rows * fraud_rate))
    y = np.zeros(n_rows, dtype=np.int64)
    y[rng.choice(n_rows, size=n_fraud, replace=False)] = 1
    fraud = y == 1

    # Heavy-tailed components: Student's t with 4 degrees of freedom has variance 2, hence / sqrt(2).
    v = rng.standard_t(4, size=(n_rows, 28)) / np.sqrt(2.0) * np.asarray(V_STD)
    shift_scale = np.where(
        rng.uniform(size=n_fraud) < DISGUISED_SHARE, rng.uniform(0.0, 0.35, n_fraud), rng.uniform(0.5, 1.5, n_fraud)
    )
    v[fraud] *= 2.0  # frauds are far more spread out than genuine rows
    for component, mean in FRAUD_MEAN.items():
        v[fraud, component - 1] += mean * shift_scale
    v -= v.mean(axis=0)  # mean 0 over the whole set, as PCA components are

    amount = np.where(fraud, rng.lognormal(np.log(9.0), 2.28, n_rows), rng.lognormal(np.log(22.0), 1.665, n_rows))
    amount = np.round(np.clip(amount, 0.0, 25_691.16), 2)

    X = np.column_stack([_times(rng, n_rows), v, amount])
    assert X.shape[1] == len(FEATURES)
    return X, y

"""Which row-level out-of-distribution rule could see one feature shifted by 3 standard deviations?

Every rule here flags the same share of held-out rows (the target, 0.5 % by default) and is judged
by how many more rows it flags once V14 is shifted by 3 training standard deviations (the drift
test's shift), on the synthetic rows `make model` trains on (Student's t tails, as the published
components). `Time` is left out, as the service leaves it out (service/engine/ood.py).

- uniform quantiles: the service's rule (model/ood_bounds.py), at several targets;
- quantile tails shared out by the model's feature importances (V14 is the most important);
- diagonal Mahalanobis distance (the components are uncorrelated);
- Fisher's combination of the features' empirical two-sided tail probabilities;
- an oracle that spends the whole budget on V14's upper tail, knowing ahead which tail will move.

What it shows: a row-level rule that watches every feature cannot see a 3-deviation shift of one
heavy-tailed feature (1.1x to 2.8x); only the oracle does (about 80x). Seeing a shift of a whole
population is a window-level question: the drift monitor's (GET /v1/drift, tests/test_drift.py).

    .venv/bin/python -m perf.experiments.ood_rules [--rows 100000]"""

from __future__ import annotations

import argparse

import numpy as np

from model import synthetic
from service.core.features import FEATURES
from service.engine.ood import UNBOUNDED

V14 = FEATURES.index("V14")
WATCHED = [j for j, name in enumerate(FEATURES) if name not in UNBOUNDED]
SHIFT_SD = 3.0


def flagged(low: np.ndarray, high: np.ndarray, X: np.ndarray) -> float:
    return float(((X[:, WATCHED] < low[WATCHED]) | (X[:, WATCHED] > high[WATCHED])).any(axis=1).mean())


def calibrated(X_train, X_heldout, target, tails_for) -> tuple[np.ndarray, np.ndarray]:
    """The widest scale k whose bounds (from tails_for(k)) flag at most `target` of X_heldout."""
    narrow, wide = 0.0, 1.0
    for _ in range(40):
        k = (narrow + wide) / 2
        low, high = bounds(X_train, tails_for(k))
        if flagged(low, high, X_heldout) <= target:
            narrow = k
        else:
            wide = k
    return bounds(X_train, tails_for(narrow))


def bounds(X_train: np.ndarray, tails: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tails = np.clip(tails, 0.0, 0.5)
    low = np.array([np.quantile(X_train[:, j], tails[j]) for j in range(X_train.shape[1])])
    high = np.array([np.quantile(X_train[:, j], 1 - tails[j]) for j in range(X_train.shape[1])])
    return low, high


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--target", type=float, default=0.005)
    args = parser.parse_args(argv)
    X_train, y_train = synthetic.generate(args.rows, seed=1)
    X_heldout, _ = synthetic.generate(args.rows // 2, seed=2)
    X_fresh, _ = synthetic.generate(args.rows, seed=3)
    shifted = X_fresh.copy()
    shifted[:, V14] += SHIFT_SD * X_train[:, V14].std()

    def show(name: str, ordinary: float, moved: float) -> None:
        print(f"{name:<58} ordinary {ordinary:7.2%}  V14 +{SHIFT_SD:g} sd {moved:7.2%}  rise {moved / ordinary:5.1f}x")

    for target in (args.target, 2 * args.target, 10 * args.target, 20 * args.target):
        low, high = calibrated(X_train, X_heldout, target, lambda k: np.full(len(FEATURES), k / 2))
        show(f"uniform quantiles, target {target:.1%}", flagged(low, high, X_fresh), flagged(low, high, shifted))

    # Importances of a forest trained on these rows, as `make model` records them.
    from sklearn.ensemble import RandomForestClassifier

    forest = RandomForestClassifier(n_estimators=20, max_depth=10, n_jobs=-1, random_state=0).fit(X_train, y_train)
    share = forest.feature_importances_.copy()
    share[[FEATURES.index(name) for name in UNBOUNDED]] = 0.0
    share /= share.sum()
    low, high = calibrated(X_train, X_heldout, args.target, lambda k: k * share / 2)
    show(f"tails shared by importance (V14 {share[V14]:.0%})", flagged(low, high, X_fresh), flagged(low, high, shifted))

    mean, sd = X_train[:, WATCHED].mean(axis=0), X_train[:, WATCHED].std(axis=0)

    def distance(X: np.ndarray) -> np.ndarray:
        return (((X[:, WATCHED] - mean) / sd) ** 2).sum(axis=1)

    sorted_train = np.sort(X_train[:, WATCHED], axis=0)

    def fisher(X: np.ndarray) -> np.ndarray:
        n = len(sorted_train)
        rank = np.stack([np.searchsorted(sorted_train[:, k], X[:, j]) for k, j in enumerate(WATCHED)], axis=1) / n
        return -2 * np.log(np.clip(2 * np.minimum(rank, 1 - rank), 1 / n, 1)).sum(axis=1)

    for name, score in (("diagonal Mahalanobis distance", distance), ("Fisher's combination of tail p-values", fisher)):
        cut = np.quantile(score(X_heldout), 1 - args.target)
        show(name, float((score(X_fresh) > cut).mean()), float((score(shifted) > cut).mean()))

    cut = np.quantile(X_train[:, V14], 1 - args.target)
    show("oracle: the whole budget on V14's upper tail", (X_fresh[:, V14] > cut).mean(), (shifted[:, V14] > cut).mean())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

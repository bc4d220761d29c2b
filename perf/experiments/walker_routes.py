"""Every batch route of the walker this CPU runs, on the same rows, against predict_proba(n_jobs=1).

    .venv/bin/python -m perf.experiments.walker_routes [--model model/fraud-model.joblib] [--rows 10000] [--rounds 5]

A route is the walker's `lanes`: 64 (bytes, AVX-512BW), 32 (bytes, AVX2), 16 (words, AVX-512), 8
(words, AVX2) or 0 (the tree walk). Each round times every route and sklearn in turn, CPU time of this thread, the
fastest of 15 calls; the figures are the rounds' medians with their range, so that a route's ratio
to another comes from interleaved runs. Every route's probabilities are checked bit for bit against
predict_proba first."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from service.engine._walker import Walker

from model import synthetic
from perf import add_model_argument, existing_model, micro
from service.engine.forest import ROUTES

CALLS = 15


def cpu_ms(function: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(CALLS):
        started = time.thread_time()
        function()
        best = min(best, time.thread_time() - started)
    return best * 1e3


def routes(model_path: Path) -> dict[int, Walker]:
    """A walker on the model's arrays for every route this CPU runs."""
    arrays = micro.load_forest(model_path).arrays
    walkers = {}
    for lanes in ROUTES:
        try:
            walkers[lanes] = Walker(
                nodes=arrays["nodes"],
                value=arrays["value"],
                roots=arrays["roots"],
                n_features=int(arrays["n_features"]),
                lanes=lanes,
            )
        except ValueError:  # a route this CPU cannot run
            continue
    return walkers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(parser)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    model_path = existing_model(args.model)
    estimator = micro.load_estimator(model_path).set_params(n_jobs=1)
    walkers = routes(model_path)
    X, _ = synthetic.generate(args.rows, seed=99)
    rows = np.ascontiguousarray(X, dtype=np.float32)
    out = np.empty(len(rows))
    expected = estimator.predict_proba(X)[:, list(estimator.classes_).index(1)]
    for lanes, walker in walkers.items():
        walker.predict_rows(rows, out)
        if not np.array_equal(out, expected):
            sys.exit(f"route {lanes} differs from predict_proba")
    timings: dict[str, list[float]] = {**{f"lanes {lanes}": [] for lanes in walkers}, "predict_proba(n_jobs=1)": []}
    for _ in range(args.rounds):
        for lanes, walker in walkers.items():
            timings[f"lanes {lanes}"].append(cpu_ms(lambda walker=walker: walker.predict_rows(rows, out)))
        timings["predict_proba(n_jobs=1)"].append(cpu_ms(lambda: estimator.predict_proba(X)))
    sklearn = statistics.median(timings["predict_proba(n_jobs=1)"])
    print(f"{args.rows:,} rows, CPU ms (fastest of {CALLS} calls), medians of {args.rounds} interleaved rounds:")
    for name, samples in timings.items():
        median = statistics.median(samples)
        print(
            f"  {name:<24}{median:8.2f} ms ({min(samples):.2f}–{max(samples):.2f})  "
            f"{args.rows / median * 1e3:>12,.0f} rows/s  {sklearn / median:6.2f}× predict_proba"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

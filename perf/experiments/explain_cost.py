"""Cost of reason codes: one explained row against one plain row, on the default model.

    .venv/bin/python -m perf.experiments.explain_cost [--model model/fraud-model.joblib] [--rows 2000]

Prints medians of repeated runs and their ratio (absolute times on a shared machine are noise)."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from model import synthetic
from service.core.settings import from_mapping
from service.engine.loader import load_model
from service.engine.ood import OutOfDistribution
from service.engine.scoring import Scoring


def per_row_us(function, rows: list[list[float]], repeats: int = 7) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        for row in rows:
            function(row)
        samples.append((time.perf_counter() - started) / len(rows) * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("model/fraud-model.joblib"))
    parser.add_argument("--rows", type=int, default=2000)
    args = parser.parse_args()
    model = load_model(from_mapping({"API_KEY": "benchmark-only-key", "MODEL_PATH": str(args.model)}))
    scoring = Scoring(model, OutOfDistribution.for_model(model.manifest, 3.0), 50)
    forest = model.scorer
    X, _ = synthetic.generate(args.rows, seed=123)
    rows = [list(map(float, r)) for r in X]
    figures = {
        "walk one row": per_row_us(forest.predict_row, rows),
        "walk + decompose one row": per_row_us(forest.explain_row, rows),
        "result (score, OOD)": per_row_us(scoring.one, rows),
        "result with reasons": per_row_us(scoring.one_explained, rows),
    }
    print(f"model: {forest.n_trees} trees, {forest.n_nodes} nodes; {args.rows} rows, median of 7 runs")
    for name, us in figures.items():
        print(f"{name:<26} {us:8.2f} µs")
    extra = figures["result with reasons"] - figures["result (score, OOD)"]
    print(
        f"explaining costs {extra:.2f} µs more per row "
        f"({figures['result with reasons'] / figures['result (score, OOD)']:.1f}x the plain result)"
    )


if __name__ == "__main__":
    main()

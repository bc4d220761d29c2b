"""Bulk scoring figures for `make perf`: a file of a million transactions scored end to end
(read, score on every core, write) by `service.offline.bulk`, next to sklearn's predict_proba(n_jobs=-1)
on the same rows, already in memory, in the same run.

    python -m perf.bulk [--rows 1000000] [--rounds 3] [--json FILE]      # this part alone

The input files are generated once with model/synthetic.py and kept under perf/results/."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from model import synthetic
from perf import add_model_argument, micro
from service.core.features import FEATURES
from service.core.settings import from_mapping
from service.offline.score_file import score_file
from service.offline.tables import Engine
from service.offline.workers import Workers

ROOT = Path(__file__).resolve().parent.parent
SEED = 2027
ROUNDS = 3  # sklearn, Parquet and CSV in turn: a ratio from interleaved runs, with its spread


def input_files(rows: int, directory: Path) -> tuple[Path, Path]:
    """(Parquet, CSV): the same rows, an id column first; written once per row count."""
    directory.mkdir(parents=True, exist_ok=True)
    parquet, csv = directory / f"bulk-{rows}.parquet", directory / f"bulk-{rows}.csv"
    if parquet.exists() and csv.exists():
        return parquet, csv
    X, y = synthetic.generate(rows, seed=SEED)
    columns = {"txn_id": pa.array(np.arange(rows))}
    columns.update({name: pa.array(X[:, j]) for j, name in enumerate(FEATURES)})
    columns["Class"] = pa.array(y)
    table = pa.table(columns)
    for path, write in ((parquet, pq.write_table), (csv, pacsv.write_csv)):
        tmp = path.with_name(f".{path.name}.partial")
        write(table, tmp)
        os.replace(tmp, path)
    return parquet, csv


def features(parquet: Path) -> np.ndarray:
    table = pq.read_table(parquet, columns=list(FEATURES))
    return np.column_stack([table[name].to_numpy() for name in FEATURES])


def sklearn_seconds(estimator: Any, parquet: Path) -> tuple[float, np.ndarray]:
    """predict_proba(n_jobs=-1) on the file's rows, already in memory: (seconds, P(class 1))."""
    X = features(parquet)
    column = list(estimator.classes_).index(1)
    started = time.perf_counter()
    probability = estimator.predict_proba(X)[:, column].copy()
    return time.perf_counter() - started, probability


def measure(model_path: Path, rows: int, directory: Path, rounds: int = ROUNDS) -> dict[str, Any]:
    """Rounds of sklearn, then the Parquet file, then the CSV file scored end to end: each path's
    ratio to sklearn is the median of its rounds' ratios, with their range."""
    parquet, csv = input_files(rows, directory)
    estimator = micro.load_estimator(model_path).set_params(n_jobs=-1)
    engine = Engine.load(from_mapping({"MODEL_PATH": str(model_path)}, require_api_key=False))
    workers = Workers(engine, os.cpu_count() or 1)
    paths = {
        "parquet_to_parquet": (parquet, directory / "bulk-out.parquet"),
        "csv_to_parquet": (csv, directory / "bulk-out-from-csv.parquet"),
    }
    sklearn: list[float] = []
    runs: dict[str, list[float]] = {name: [] for name in paths}
    identical = dict.fromkeys(paths, True)
    try:
        for _ in range(rounds):
            # The rows in memory are sklearn's input only, and are gone before the scoring processes
            # are forked: `make score` never holds such an array, whose page tables would be copied
            # at each fork and torn down at each exit (about 0.2 s of a run for 240 MB).
            seconds, expected = sklearn_seconds(estimator, parquet)
            sklearn.append(seconds)
            for name, (source, target) in paths.items():
                runs[name].append(score_file(engine, workers, source, target).seconds)
                scored = pq.read_table(target, columns=["probability"])["probability"].to_numpy()
                identical[name] &= bool(np.array_equal(scored, expected))
                target.unlink()
                Path(f"{target}.rejects.csv").unlink(missing_ok=True)
        private_kib = max(m["Private_Dirty"] + m["Anonymous"] for m in workers.mappings())
    finally:
        workers.close()
    results: dict[str, Any] = {
        "rows": rows,
        "workers": workers.count,
        "rounds": rounds,
        "sklearn_n_jobs_-1": {"seconds": median(sklearn), "rows_per_s": rows / median(sklearn)},
    }
    for name, (source, _) in paths.items():
        ratios = [sk / own for sk, own in zip(sklearn, runs[name], strict=True)]
        results[name] = {
            "seconds": median(runs[name]),
            "rows_per_s": rows / median(runs[name]),
            "vs_sklearn": median(ratios),
            "vs_sklearn_range": [min(ratios), max(ratios)],
            "bit_identical": identical[name],
            "input_bytes": source.stat().st_size,
        }
    results["worker_artifact_private_kib"] = private_kib
    return results


def measure_apart(model_path: Path, rows: int, directory: Path) -> dict[str, Any]:
    """measure() in a process of its own, as `make score` runs: forked scoring processes copy the
    page tables of all the memory of the process that forks them, and make perf's own (its load
    tests' bodies and figures, about 250 MB) is not a scoring job's."""
    with tempfile.TemporaryDirectory(prefix="fraud-perf-bulk-") as tmp:
        out = Path(tmp) / "bulk.json"
        command = [sys.executable, "-m", "perf.bulk", "--model", str(model_path), "--rows", str(rows)]
        run = [*command, "--results-dir", str(directory), "--json", str(out)]
        subprocess.run(run, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)  # make perf prints the table
        return json.loads(out.read_text())


def table(results: dict[str, Any]) -> str:
    sk = results["sklearn_n_jobs_-1"]
    lines = [
        f"bulk scoring, {results['rows']:,} rows, {results['workers']} worker processes, medians of "
        f"{results['rounds']} rounds (sklearn predict_proba n_jobs=-1 on the rows in memory: {sk['rows_per_s']:,.0f} rows/s)"
    ]
    for name in ("parquet_to_parquet", "csv_to_parquet"):
        r = results[name]
        low, high = r["vs_sklearn_range"]
        lines.append(
            f"  {name.replace('_', ' '):<20}{r['rows_per_s']:>12,.0f} rows/s  {r['seconds']:6.2f} s  "
            f"{r['vs_sklearn']:5.2f}× sklearn ({low:.2f}–{high:.2f})  bit-identical {r['bit_identical']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(parser)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "perf" / "results")
    args = parser.parse_args(argv)
    results = measure(args.model.resolve(), args.rows, args.results_dir, args.rounds)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Bulk scoring figures for `make perf`: a file of a million transactions scored end to end
(read, score on every core, write) by `service.bulk`, next to sklearn's predict_proba(n_jobs=-1)
on the same rows, already in memory, in the same run.

    python -m perf.bulk [--rows 1000000]      # this part alone

The input files are generated once with model/synthetic.py and kept under perf/results/."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from model import synthetic
from perf import add_model_argument, micro
from service import bulk
from service.features import FEATURES
from service.settings import from_mapping
from service.tables import Engine

ROOT = Path(__file__).resolve().parent.parent
SEED = 2027


def input_files(rows: int, directory: Path) -> tuple[Path, Path, np.ndarray]:
    """(Parquet, CSV, X): the same rows, an id column first; written once per row count."""
    directory.mkdir(parents=True, exist_ok=True)
    parquet, csv = directory / f"bulk-{rows}.parquet", directory / f"bulk-{rows}.csv"
    if parquet.exists() and csv.exists():
        table = pq.read_table(parquet, columns=list(FEATURES))
        return parquet, csv, np.column_stack([table[name].to_numpy() for name in FEATURES])
    X, y = synthetic.generate(rows, seed=SEED)
    columns = {"txn_id": pa.array(np.arange(rows))}
    columns.update({name: pa.array(X[:, j]) for j, name in enumerate(FEATURES)})
    columns["Class"] = pa.array(y)
    table = pa.table(columns)
    for path, write in ((parquet, pq.write_table), (csv, pacsv.write_csv)):
        tmp = path.with_name(f".{path.name}.partial")
        write(table, tmp)
        os.replace(tmp, path)
    return parquet, csv, X


def measure(model_path: Path, rows: int, directory: Path) -> dict[str, Any]:
    parquet, csv, X = input_files(rows, directory)
    estimator = micro.load_estimator(model_path).set_params(n_jobs=-1)
    column = list(estimator.classes_).index(1)
    started = time.perf_counter()
    expected = estimator.predict_proba(X)[:, column].copy()
    sklearn_seconds = time.perf_counter() - started
    # The rows in memory are sklearn's input only. Kept, they would be this process's memory when
    # it forks the scoring processes, which `make score` never holds: page tables to copy at each
    # fork and tear down at each exit, about 0.2 s of a run for 240 MB.
    del estimator, X

    engine = Engine.load(from_mapping({"MODEL_PATH": str(model_path)}, require_api_key=False))
    workers = bulk.Workers(engine, os.cpu_count() or 1)
    results: dict[str, Any] = {
        "rows": rows,
        "workers": workers.count,
        "sklearn_n_jobs_-1": {"seconds": sklearn_seconds, "rows_per_s": rows / sklearn_seconds},
    }
    try:
        for name, source, target in (
            ("parquet_to_parquet", parquet, directory / "bulk-out.parquet"),
            ("csv_to_parquet", csv, directory / "bulk-out-from-csv.parquet"),
        ):
            summary = bulk.run(engine, workers, source, target)
            scored = pq.read_table(target, columns=["probability"])["probability"].to_numpy()
            results[name] = {
                "seconds": summary.seconds,
                "rows_per_s": summary.rows_per_second,
                "vs_sklearn": summary.rows_per_second / (rows / sklearn_seconds),
                "bit_identical": bool(np.array_equal(scored, expected)),
                "input_bytes": source.stat().st_size,
            }
            target.unlink()
            Path(f"{target}.rejects.csv").unlink(missing_ok=True)
        results["worker_artifact_private_kib"] = max(m["Private_Dirty"] + m["Anonymous"] for m in workers.mappings())
    finally:
        workers.close()
    return results


def table(results: dict[str, Any]) -> str:
    sk = results["sklearn_n_jobs_-1"]
    lines = [
        f"bulk scoring, {results['rows']:,} rows, {results['workers']} worker processes "
        f"(sklearn predict_proba n_jobs=-1 on the rows in memory: {sk['rows_per_s']:,.0f} rows/s)"
    ]
    for name in ("parquet_to_parquet", "csv_to_parquet"):
        r = results[name]
        lines.append(
            f"  {name.replace('_', ' '):<20}{r['rows_per_s']:>12,.0f} rows/s  {r['seconds']:6.1f} s  "
            f"{r['vs_sklearn']:5.2f}× sklearn  bit-identical {r['bit_identical']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(parser)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--results-dir", type=Path, default=ROOT / "perf" / "results")
    args = parser.parse_args(argv)
    results = measure(args.model.resolve(), args.rows, args.results_dir)
    print(table(results))
    print(json.dumps(results, indent=2), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

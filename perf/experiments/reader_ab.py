"""The transaction readers of this checkout against a baseline's, in one process, interleaved A/B:
the single route's check (compile_flat_numbers), the batch route's body reader (_rows.c `parse`) and
its decoded-items reader (_rows.c `fill`), on bodies without transaction ids (the hot path) and with.

    .venv/bin/python -m perf.experiments.reader_ab [--baseline main] [--rounds 31] [--rows 1000]

The baseline's service/contract/schema.py and _rows.c are read from git and _rows.c is compiled with
this interpreter's flags into a temporary directory. Each round times every variant in a fresh
random order, in this thread's CPU time (a loaded machine's waits are not counted); a variant's
figure is its median per call, and each ratio (this checkout / baseline) is the median of the
per-round ratios, with their 10th-90th percentile spread, and the ratio of the fastest rounds, the
least disturbed by other work (absolute times on a shared machine are noise)."""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import types
from pathlib import Path

import orjson

from model import synthetic
from service.contract import schema as current
from service.core.features import FEATURES


def baseline_schema(ref: str, directory: Path) -> types.ModuleType:
    """The baseline's schema module, importing the baseline's _rows built here."""
    source = subprocess.run(["git", "show", f"{ref}:service/contract/_rows.c"], check=True, capture_output=True).stdout
    (directory / "_rows.c").write_bytes(source)
    library = directory / f"_rows{sysconfig.get_config_var('EXT_SUFFIX')}"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O3", "-std=c11", f"-I{sysconfig.get_paths()['include']}"]
        + [str(directory / "_rows.c"), "-o", str(library)],
        check=True,
    )
    spec = importlib.util.spec_from_file_location("baseline._rows", library)
    rows = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rows)
    text = subprocess.run(["git", "show", f"{ref}:service/contract/schema.py"], check=True, capture_output=True).stdout
    module = types.ModuleType("baseline_schema")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    module.__dict__["_baseline_rows"] = rows
    code = text.decode().replace("from service.contract import _rows\n", "_rows = _baseline_rows\n")
    exec(compile(code, f"{ref}:service/contract/schema.py", "exec"), module.__dict__)
    return module


def readers(schema: types.ModuleType, batch_max: int) -> dict[str, object]:
    document = schema.load_schema_document()
    one = schema.TransactionValidator(document)
    many = schema.TransactionValidator(schema.batch_document(document, batch_max))
    return {"is_valid": one.is_valid, "read_body": many.read_body, "matrix": many.matrix}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="main")
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--rows", type=int, default=1000)
    args = parser.parse_args()
    X, _ = synthetic.generate(args.rows, seed=7)
    items = [dict(zip(FEATURES, map(float, r), strict=True)) for r in X]
    with_ids = [{**item, "transaction_id": f"tx-{i:08d}"} for i, item in enumerate(items)]
    body = orjson.dumps({"transactions": items})
    body_ids = orjson.dumps({"transactions": with_ids})
    with tempfile.TemporaryDirectory() as directory:
        old = readers(baseline_schema(args.baseline, Path(directory)), args.rows)
    new = readers(current, args.rows)

    def batch_with_ids(r: dict) -> object:
        """The batch route's work for a body with ids: the reader (this checkout's reads them); the
        baseline's route decoded such a body, then read the decoded items and their ids."""
        if r is new:
            return r["read_body"](body_ids)
        decoded = orjson.loads(body_ids)
        return r["matrix"](decoded), [item.get("transaction_id") for item in decoded["transactions"]]

    cases = {
        "single is_valid, no id (per call)": (lambda r: r["is_valid"](items[0]), 2000),
        f"batch read_body, {args.rows} rows, no ids": (lambda r: r["read_body"](body), 5),
        f"batch matrix (decoded), {args.rows} rows, no ids": (lambda r: r["matrix"]({"transactions": items}), 5),
        f"batch route's reading, {args.rows} rows, with ids": (batch_with_ids, 5),
    }
    assert new["read_body"](body) is not None and new["read_body"](body_ids) is not None
    samples: dict[tuple[str, str], list[float]] = {(c, v): [] for c in cases for v in ("old", "new")}
    for _ in range(args.rounds):
        order = [(c, v) for c in cases for v in ("old", "new")]
        random.shuffle(order)
        for case, variant in order:
            call, repeat = cases[case]
            r = old if variant == "old" else new
            started = time.thread_time_ns()
            for _ in range(repeat):
                call(r)
            samples[case, variant].append((time.thread_time_ns() - started) / repeat / 1000)
    print(
        f"{args.rounds} interleaved rounds; baseline {args.baseline}; median µs of thread CPU time per call; new/old per round"
    )
    for case in cases:
        old_us, new_us = samples[case, "old"], samples[case, "new"]
        ratios = sorted(n / o for n, o in zip(new_us, old_us, strict=True))
        low, high = ratios[len(ratios) // 10], ratios[-1 - len(ratios) // 10]
        print(
            f"{case:52s} old {statistics.median(old_us):9.2f}  new {statistics.median(new_us):9.2f}  "
            f"ratio {statistics.median(ratios):.3f} (p10-p90 {low:.3f}-{high:.3f}); "
            f"fastest rounds old {min(old_us):.2f} new {min(new_us):.2f} ratio {min(new_us) / min(old_us):.3f}"
        )


if __name__ == "__main__":
    main()

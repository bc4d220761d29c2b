"""What the prediction log costs: two stacks, one writing the log and one without, both running,
measured in alternating rounds whose order alternates too (as the challenger's comparison is).

- single scoring at 64 connections: throughput with ÷ without, and the workers' CPU per request
  added (user + system from /proc: the frame a request costs, whatever else the machine runs);
  a worker's CPU per request moves by tens of µs from round to round there, so the target's figure
  comes from one process instead (perf.experiments.prediction_log_cost: one app, its log attached
  and detached by turns, 40 interleaved passes of 1,000 requests), and the stacks' is reported;
- the 1,000-row JSON batch at 4 connections, every row logged: rows/s with ÷ without;
- the compactor (its own process, started by the launcher): its CPU per million rows, from its CPU
  time and the rows that reached Parquet while the batch runs wrote at full speed; and whether it
  keeps up: the spool's largest size and the longest wait of a sealed segment during those runs
  (sampled), and how long after the last run sealed segments were left.

The logging stack seals its segments every second (PREDICTION_LOG_SEGMENT_SECONDS=1) rather than
every minute, so that the compactor works while the runs go on and its pace can be judged: that
costs each worker a rename a second, nothing a request would see.

`make perf` runs it among the rest; this part alone, in either placement:

    .venv/bin/python -m perf.prediction_log [--placement split] [--rounds 6] [--seconds 4]"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from perf import add_model_argument, batch, existing_model, memory, stats, wrk
from perf.common import as_bodies, log, sample_rows, start_stack, watched
from perf.lifecycle import run_counting_cpu
from perf.placement import Watch
from perf.placement import add_arguments as add_placement_arguments
from perf.placement import failures as placement_failures
from perf.placement import from_arguments as placement_from_arguments
from perf.report import Target
from service.predlog.spool import SEALED, spool_bytes, spool_dir
from service.predlog.status import LAG_SEGMENTS, segments
from stack.launcher import Stack

SINGLE_RATIO_TARGET = 0.95
BATCH_RATIO_TARGET = 0.85
WORKER_CPU_TARGET_US = 10.0
SEGMENT_SECONDS = 1
SAMPLE_SECONDS = 0.25
DRAIN_TIMEOUT = 120.0
EXPERIMENT_TIMEOUT = 600.0


def parquet_rows(directory: Path) -> int:
    """Rows in the log's Parquet files (from their footers: nothing else is read)."""
    return sum(pq.ParquetFile(p).metadata.num_rows for p in directory.glob("date=*/hour=*/*.parquet"))


def sealed_waits(directory: Path, now: float) -> list[float]:
    """How long each sealed segment has waited for the compactor since it was sealed (its rename
    set its ctime). Not since it was opened: a worker idle between two rounds keeps its segment
    open until its next request or idle tick, which is no measure of the compactor's pace."""
    waits = []
    with contextlib.suppress(FileNotFoundError), os.scandir(spool_dir(directory)) as entries:
        for entry in entries:
            if entry.name.endswith(SEALED):
                with contextlib.suppress(FileNotFoundError):
                    waits.append(now - entry.stat().st_ctime)
    return waits


class SpoolWatch:
    """Samples the spool's size and the longest wait of a sealed segment while a run goes on: a
    thread of this measuring process, never of the service."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.largest_bytes = 0
        self.longest_wait_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> SpoolWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.largest_bytes = max(self.largest_bytes, spool_bytes(spool_dir(self.directory)))
            self.longest_wait_s = max([self.longest_wait_s, *sealed_waits(self.directory, time.time())])


def drained_after(directory: Path, timeout: float = DRAIN_TIMEOUT) -> float | None:
    """Seconds until no sealed segment is left: every record sealed by then in Parquet (None: not
    within `timeout`). The segment a worker still holds open is sealed by its next request or idle
    tick, the compactor's pace has no part in that."""
    started = time.monotonic()
    while segments(directory)[1]:
        if time.monotonic() - started > timeout:
            return None
        time.sleep(SAMPLE_SECONDS)
    return time.monotonic() - started


def in_process_cost(model: Path, rounds: int = 40) -> dict[str, Any]:
    """The log's CPU per single score in one process (perf.experiments.prediction_log_cost's JSON),
    run in a process of its own: it sets the metrics' multiprocess directory before it imports them."""
    found = subprocess.run(
        [sys.executable, "-m", "perf.experiments.prediction_log_cost", "--model", str(model), "--rounds", str(rounds)],
        check=True,
        capture_output=True,
        timeout=EXPERIMENT_TIMEOUT,
        cwd=Path(__file__).resolve().parent.parent,
    )
    return json.loads(found.stdout)


def measure(
    start: Callable[[dict[str, str]], Stack],
    model: Path,
    files: dict[str, Path],
    batch_file: Path,
    key: str,
    rounds: int,
    seconds: float,
) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="fraud-perf-prediction-log-"))
    stacks: dict[str, Stack] = {}
    single: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
    rows: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
    compactor = {"cpu_s": 0.0, "rows": 0, "largest_spool_bytes": 0, "longest_wait_s": 0.0}
    try:
        stacks["without"] = start({})
        stacks["with"] = start(
            {"PREDICTION_LOG_DIR": str(directory), "PREDICTION_LOG_SEGMENT_SECONDS": str(SEGMENT_SECONDS)}
        )
        compactor_pid = stacks["with"].compactor.pid if stacks["with"].compactor else None
        for stack in stacks.values():  # warm both
            wrk.run(wrk.Scenario("score", 64, 2), stack.base_url, files["score"], key)
        for round_ in range(rounds):
            for name in ("without", "with") if round_ % 2 == 0 else ("with", "without"):
                single[name].append(run_counting_cpu(stacks[name], files, key, 64, seconds))
        for round_ in range(rounds):
            for name in ("without", "with") if round_ % 2 == 0 else ("with", "without"):
                stack = stacks[name]
                run = partial(
                    wrk.run, wrk.Scenario("batch", batch.CONNECTIONS, seconds), stack.base_url, batch_file, key
                )
                if name == "without" or compactor_pid is None:
                    rows[name].append(run())
                    continue
                cpu_before, rows_before = memory.cpu_seconds([compactor_pid]), parquet_rows(directory)
                with SpoolWatch(directory) as watch:
                    rows[name].append(run())
                compactor["cpu_s"] += memory.cpu_seconds([compactor_pid]) - cpu_before
                compactor["rows"] += parquet_rows(directory) - rows_before
                compactor["largest_spool_bytes"] = max(compactor["largest_spool_bytes"], watch.largest_bytes)
                compactor["longest_wait_s"] = max(compactor["longest_wait_s"], watch.longest_wait_s)
        compactor["drained_after_s"] = drained_after(directory)
    finally:
        for stack in stacks.values():
            stack.stop()
        shutil.rmtree(directory, ignore_errors=True)
    in_process = in_process_cost(model)  # with the stacks stopped: nothing else on these cores
    single_ratios = [
        w["scored_rps"] / wo["scored_rps"] for wo, w in zip(single["without"], single["with"], strict=True)
    ]
    batch_ratios = [
        batch.scored_rps(w) / batch.scored_rps(wo) for wo, w in zip(rows["without"], rows["with"], strict=True)
    ]
    cpu = {name: [r["worker_cpu_us"] for r in runs if r["worker_cpu_us"] is not None] for name, runs in single.items()}
    paired_cpu = [
        w["worker_cpu_us"] - wo["worker_cpu_us"]
        for wo, w in zip(single["without"], single["with"], strict=True)
        if w["worker_cpu_us"] is not None and wo["worker_cpu_us"] is not None
    ]
    return {
        "rounds": rounds,
        "single": {
            "connections": 64,
            "rps": {name: stats.median(r["scored_rps"] for r in runs) for name, runs in single.items()},
            "refused": sum(sum(r["refused"].values()) for runs in single.values() for r in runs),
            "ratio": stats.median(single_ratios),
            "ratio_spread": [min(single_ratios), max(single_ratios)],
            "worker_cpu_us_per_request": {name: stats.median(v) for name, v in cpu.items() if v},
            "worker_cpu_us_added": stats.median(paired_cpu) if paired_cpu else None,
            "worker_cpu_us_added_spread": [min(paired_cpu), max(paired_cpu)] if paired_cpu else None,
            "in_process": in_process,
        },
        "batch": {
            "connections": batch.CONNECTIONS,
            "rows_per_request": batch.ROWS,
            "rows_per_s": {
                name: stats.median(batch.scored_rps(r) * batch.ROWS for r in runs) for name, runs in rows.items()
            },
            "ratio": stats.median(batch_ratios),
            "ratio_spread": [min(batch_ratios), max(batch_ratios)],
        },
        "compactor": {
            **compactor,
            "cpu_s_per_million_rows": compactor["cpu_s"] / compactor["rows"] * 1e6 if compactor["rows"] else None,
        },
        "failed": sum(r["failed"] for found in (single, rows) for runs in found.values() for r in runs),
    }


def targets(found: dict[str, Any] | None) -> list[Target]:
    if not found:
        return []
    single, rows, compactor = found["single"], found["batch"], found["compactor"]
    added = single["worker_cpu_us_added"]
    in_process = single["in_process"]["added_us"]
    per_million = compactor["cpu_s_per_million_rows"]
    drained = compactor["drained_after_s"]
    return [
        Target(
            "prediction log on ÷ off, single scoring at 64 connections (rounds' median [min-max])",
            f"{single['ratio']:.1%} [{single['ratio_spread'][0]:.1%}-{single['ratio_spread'][1]:.1%}]",
            f"≥ {SINGLE_RATIO_TARGET:.0%}",
            single["ratio"] >= SINGLE_RATIO_TARGET,
        ),
        Target(
            "prediction log: a worker's CPU added per single score, in one process (paired passes' median [quartiles])",
            f"{in_process['median']:.1f} µs [{in_process['q1']:.1f}-{in_process['q3']:.1f}]",
            f"≤ {WORKER_CPU_TARGET_US:g} µs",
            in_process["median"] <= WORKER_CPU_TARGET_US,
        ),
        Target(
            "prediction log: workers' CPU added per request, the stacks (paired rounds' median [min-max])",
            "not measured"
            if added is None
            else f"{added:.1f} µs [{single['worker_cpu_us_added_spread'][0]:.1f}-"
            f"{single['worker_cpu_us_added_spread'][1]:.1f}]",
            "reported: it moves by tens of µs from round to round",
            True,
        ),
        Target(
            "prediction log on ÷ off, 1,000-row JSON batch rows/s, every row logged",
            f"{rows['ratio']:.1%} [{rows['ratio_spread'][0]:.1%}-{rows['ratio_spread'][1]:.1%}]",
            f"≥ {BATCH_RATIO_TARGET:.0%}",
            rows["ratio"] >= BATCH_RATIO_TARGET,
        ),
        Target(
            "prediction log compactor beside the batch runs: CPU per million rows; its pace",
            ("not measured" if per_million is None else f"{per_million:.2f} s")
            + f"; largest spool {compactor['largest_spool_bytes'] / 2**20:.0f} MiB, "
            f"a sealed segment waited ≤ {compactor['longest_wait_s']:.1f} s, "
            + ("not caught up" if drained is None else f"no sealed segment left {drained:.1f} s after"),
            f"keeps up: no sealed segment waits > {LAG_SEGMENTS} segment ages, none left after",
            drained is not None and compactor["longest_wait_s"] <= LAG_SEGMENTS * SEGMENT_SECONDS,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(parser)
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds of each route (make perf: 6)")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each round")
    add_placement_arguments(parser)
    args = parser.parse_args(argv)
    placement = placement_from_arguments(parser, args)
    model = existing_model(args.model)
    key = secrets.token_urlsafe(24)
    work = Path(tempfile.mkdtemp(prefix="fraud-perf-prediction-log-run-"))
    X = sample_rows()
    bodies = as_bodies(X[:1000])
    files = wrk.write_requests(work, bodies)
    batch_files = batch.write_files(work / "batch", X, bodies)
    placement.confine_load()  # wrk (and the compactor, a sidecar) on the load's cores
    watch = Watch(placement)

    def launch(extra: dict[str, str]) -> Stack:
        return watched(start_stack(model, key, work / "stack.log", placement=placement, **extra), watch)

    with watch:
        found = measure(launch, model, files, batch_files["batch"], key, args.rounds, args.seconds)
    for target in targets(found):
        log(f"{target.figure}: {target.measured}")
    checked = watch.report()
    print(f"placement: {placement.name}, violations: {checked['violations'] or 'none'}")
    return 1 if found.get("failed") or placement_failures(checked) else 0


if __name__ == "__main__":
    sys.exit(main())

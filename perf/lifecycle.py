"""What the model lifecycle costs a request: drift counting per row (micro-benchmark) and a
challenger scored beside every request (two stacks, with and without, in alternating rounds)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from perf import memory, stats, wrk
from perf.micro import per_call
from service.core.artifacts import ArtifactPaths, read_manifest
from service.engine.drift import DriftCounter
from stack.launcher import Stack

BATCH = 1000


def counting(model_path: Path, X: np.ndarray) -> dict[str, float]:
    """µs per row of drift counting, one row and in a batch of 1,000 (the challenger's cost is
    measured on the stack: `with_and_without`)."""
    manifest = read_manifest(ArtifactPaths.for_model(model_path).manifest) or {}
    if not manifest.get("drift"):
        return {}
    counter = DriftCounter(manifest["drift"], "perf", None)
    rows = [tuple(r) for r in X[:BATCH].tolist()]  # different rows: a repeated one trains the branch predictor
    batch = np.ascontiguousarray(X[:BATCH], dtype=np.float64)
    scores = np.zeros(BATCH)
    return {
        "drift_row_us": per_call(lambda: [counter.add(row, 3) for row in rows]) / BATCH * 1e6,
        "drift_batch_row_us": per_call(lambda: counter.add_rows(batch, scores)) / BATCH * 1e6,
    }


def with_and_without(
    model_path: Path,
    start: Callable[[dict[str, str]], Stack],
    files: dict[str, Path],
    key: str,
    rounds: int,
    seconds: float,
    connections: int = 64,
) -> dict[str, Any]:
    """Single-request scoring throughput of a stack with a challenger (a copy of the model: the same
    walk) over one without, both running, in alternating rounds whose order alternates too (without
    first, then with first, ...), so that neither side always runs second. Beside the throughput, the
    workers' CPU per request on each side: the challenger's cost itself, which background load on
    a shared machine disturbs far less than throughput."""
    directory = Path(tempfile.mkdtemp(prefix="fraud-perf-challenger-"))
    challenger_path = directory / model_path.name
    for source, target in zip(
        ArtifactPaths.for_model(model_path).__dict__.values(),
        ArtifactPaths.for_model(challenger_path).__dict__.values(),
        strict=True,
    ):
        if source.exists():
            shutil.copyfile(source, target)
    stacks: dict[str, Stack] = {}
    try:
        stacks["without"] = start({})
        stacks["with"] = start({"CHALLENGER_MODEL_PATH": str(challenger_path)})
        runs: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
        for stack in stacks.values():  # warm both
            wrk.run(wrk.Scenario("score", connections, 2), stack.base_url, files["score"], key)
        for round_ in range(rounds):
            for name in ("without", "with") if round_ % 2 == 0 else ("with", "without"):
                runs[name].append(run_counting_cpu(stacks[name], files, key, connections, seconds))
    finally:
        for stack in stacks.values():
            stack.stop()
        shutil.rmtree(directory, ignore_errors=True)
    ratios = [w["scored_rps"] / wo["scored_rps"] for wo, w in zip(runs["without"], runs["with"], strict=True)]
    cpu = {name: [r["worker_cpu_us"] for r in rs if r["worker_cpu_us"] is not None] for name, rs in runs.items()}
    worker_cpu_us = {name: stats.median(values) for name, values in cpu.items() if values}
    return {
        "connections": connections,
        "rounds": rounds,
        "rps": {name: stats.median(r["scored_rps"] for r in rs) for name, rs in runs.items()},
        "refused": sum(sum(r["refused"].values()) for rs in runs.values() for r in rs),
        "failed": sum(r["failed"] for rs in runs.values() for r in rs),
        "ratio": stats.median(ratios),
        "ratio_spread": [min(ratios), max(ratios)],
        "worker_cpu_us_per_request": worker_cpu_us,
        "challenger_cpu_us_per_request": (
            worker_cpu_us["with"] - worker_cpu_us["without"] if len(worker_cpu_us) == 2 else None
        ),
    }


def run_counting_cpu(
    stack: Stack, files: dict[str, Path], key: str, connections: int, seconds: float
) -> dict[str, Any]:
    """One closed-loop run, its answers sorted by kind: a deadline's 503 is a designed answer, counted
    apart (`refused`), not a failure; `scored_rps` and the workers' CPU per scored request (None when
    a worker was replaced during the run: its time would be lost) count the 200s."""
    result, cpu = memory.workers_cpu_during(
        stack.gunicorn.pid if stack.gunicorn else None,
        partial(
            wrk.run, wrk.Scenario("score", connections, seconds, classify=True), stack.base_url, files["score"], key
        ),
    )
    scored = result["kinds"].get("ok", 0)
    result["worker_cpu_us"] = cpu * 1e6 / scored if cpu is not None and scored else None
    return result

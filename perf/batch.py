"""`make perf`'s many-rows scenarios: 1,000-row requests at 4 connections, as a JSON batch
(POST /v1/fraud-score/batch), as a V2 inference request with JSON data, and as one with Triton's
binary tensor data (what tritonclient sends by default: FP64 in, every output binary out).

The three alternate round by round, so that all see the same background load. Each reports rows
per second through nginx and, when the stack is local, the application's CPU per row: the
gunicorn workers' user + system time over the run (from /proc), divided by the rows scored."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from perf import memory, stats, wrk
from perf.report import Target
from service.api.v2 import HEADER_LENGTH, INPUT, MODEL_NAME

ROWS = 1000
CONNECTIONS = 4
SCENARIOS = ("batch", "v2-json", "v2-binary")
CPU_PER_ROW_TARGET_US = 5.0
V2_BINARY_TARGET = 5.0  # × today's JSON batch rows/s
V2_PATH = f"/v2/models/{MODEL_NAME}/infer"


def write_files(directory: Path, X: np.ndarray, transactions: list[bytes]) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    X = np.ascontiguousarray(X[:ROWS], dtype=np.float64)
    n = len(X)
    as_json = {"inputs": [{"name": INPUT, "shape": [n, X.shape[1]], "datatype": "FP64", "data": X.ravel().tolist()}]}
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": INPUT,
                    "shape": [n, X.shape[1]],
                    "datatype": "FP64",
                    "parameters": {"binary_data_size": X.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    return {
        "batch": wrk.write_request_file(
            directory / "batch.requests",
            "POST",
            "/v1/fraud-score/batch",
            [b'{"transactions":[' + b",".join(transactions[:ROWS]) + b"]}"],
        ),
        "v2-json": wrk.write_request_file(directory / "v2-json.requests", "POST", V2_PATH, [orjson.dumps(as_json)]),
        "v2-binary": wrk.write_raw_request_file(
            directory / "v2-binary.requests",
            "POST",
            V2_PATH,
            header + X.astype("<f8").tobytes(),
            {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"},
        ),
    }


def measure(
    url: str, files: dict[str, Path], key: str, rounds: int, seconds: float, master_pid: int | None
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SCENARIOS}
    for _ in range(rounds):
        for name in SCENARIOS:
            result, cpu = memory.workers_cpu_during(
                master_pid, partial(wrk.run, wrk.Scenario(name, CONNECTIONS, seconds), url, files[name], key)
            )
            scored = result["requests"] - result["failed"]
            result["app_cpu_us_per_row"] = cpu * 1e6 / (scored * ROWS) if cpu is not None and scored else None
            runs[name].append(result)
    summary = {}
    for name, results in runs.items():
        cpu = [r["app_cpu_us_per_row"] for r in results if r.get("app_cpu_us_per_row") is not None]
        summary[name] = {
            # Rows scored: a refused request (a 429, a 503) scored none.
            "rows_per_s": stats.median(scored_rps(r) * ROWS for r in results),
            "requests": sum(r["requests"] for r in results),
            "failed": sum(r["failed"] for r in results),
            "p99_ms": stats.median(r["latency_ms"]["p99"] for r in results),
            "app_cpu_us_per_row": stats.median(cpu) if cpu else None,
            "rounds": results,
        }
    summary["v2_binary_vs_batch"] = stats.median(
        scored_rps(b) / scored_rps(j) for j, b in zip(runs["batch"], runs["v2-binary"], strict=True)
    )
    return summary


def scored_rps(result: dict[str, Any]) -> float:
    """Answered requests a second, less the failed ones' share."""
    requests = result["requests"]
    return result["rps"] * (requests - result["failed"]) / requests if requests else 0.0


def targets(found: dict[str, Any]) -> list[Target]:
    batch = found["batch"]
    cpu = batch["app_cpu_us_per_row"]
    ratio = found["v2_binary_vs_batch"]
    return [
        Target(
            "JSON batch, 1,000 rows, 4 connections: app CPU per row",
            f"{cpu:.2f} µs ({batch['rows_per_s']:,.0f} rows/s)" if cpu is not None else "not measured (--url)",
            f"≤ {CPU_PER_ROW_TARGET_US:g} µs",
            cpu is not None and cpu <= CPU_PER_ROW_TARGET_US,
        ),
        # The goal is relative to a base revision's JSON batch, which only an A/B run measures:
        # this ratio times perf-compare's batch ratio against that base.
        Target(
            f"V2 binary ÷ JSON batch rows/s, same run (goal ≥ {V2_BINARY_TARGET:g}× a base revision's JSON "
            "batch: this × make perf-compare's batch ratio)",
            f"{ratio:.2f}× ({found['v2-binary']['rows_per_s']:,.0f} vs {batch['rows_per_s']:,.0f} rows/s)",
            "reported",
            True,
        ),
    ]


def lines(found: dict[str, Any]) -> list[str]:
    out = []
    for name in SCENARIOS:
        s = found[name]
        cpu = "" if s["app_cpu_us_per_row"] is None else f", app CPU {s['app_cpu_us_per_row']:.2f} µs/row"
        out.append(f"{name}: {s['rows_per_s']:,.0f} rows/s, p99 {s['p99_ms']:.1f} ms{cpu}, {s['failed']} failed")
    return out

"""By-id scoring under load: the feature-store routes next to the raw-feature routes, one stack.

A real redis-server on a free loopback port holds the sample transactions (written with the
feature writer, as `make features` does); one stack serves both kinds of route, and wrk runs them
alternately round by round at 64 connections, so both see the same background load. Reported:
throughput and p99 of each, by-id single ÷ raw single (target ≥ 70 %) and by-id p99 (< 5 ms)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis

from perf import stats, wrk
from service.feature_record import encode_record
from service.features import FEATURES
from service.stack import RedisServer, Stack

PREFIX = "perf:tx:"
CONNECTIONS = 64
BATCH_ROWS = 100
ROUTES = {
    "raw single": "/v1/fraud-score",
    "by-id single": "/v1/fraud-score/by-id",
    "raw batch": "/v1/fraud-score/batch",
    "by-id batch": "/v1/fraud-score/by-id/batch",
}


def request_files(directory: Path, X: np.ndarray) -> dict[str, Path]:
    """load.lua's format ("METHOD PATH", then one body per line) for each route; the same rows."""
    ids = [f"tx-{i}" for i in range(len(X))]
    transactions = [dict(zip(FEATURES, map(float, row), strict=True)) for row in X]
    chunks = range(0, len(X) - BATCH_ROWS + 1, BATCH_ROWS)
    bodies = {
        "raw single": [orjson.dumps(t) for t in transactions],
        "by-id single": [orjson.dumps({"transaction_id": i}) for i in ids],
        "raw batch": [orjson.dumps({"transactions": transactions[s : s + BATCH_ROWS]}) for s in chunks],
        "by-id batch": [orjson.dumps({"transaction_ids": ids[s : s + BATCH_ROWS]}) for s in chunks],
    }
    files = {}
    for name, path in ROUTES.items():
        files[name] = directory / f"{name.replace(' ', '-')}.requests"
        files[name].write_bytes(f"POST {path}\n".encode() + b"".join(b + b"\n" for b in bodies[name]))
    return files


def measure(
    X: np.ndarray,
    key: str,
    start_stack: Callable[..., Stack],
    free_port: Callable[[], int],
    rounds: int,
    seconds: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    files = request_files(Path(tempfile.mkdtemp(prefix="fraud-perf-by-id-")), X)
    store = RedisServer(free_port()).start()
    stack = None
    try:
        client = redis.Redis.from_url(store.url)
        with client.pipeline(transaction=False) as pipe:
            for i, row in enumerate(X):
                pipe.set(f"{PREFIX}tx-{i}", encode_record(list(map(float, row))))
            pipe.execute()
        # A generous store timeout: the benchmark measures latency, and a machine shared with the load
        # generator must not turn a slow moment into failed requests (timeouts are tested in tests/).
        stack = start_stack(
            FEATURE_STORE_URL=store.url,
            FEATURE_STORE_PREFIX=PREFIX,
            FEATURE_STORE_TIMEOUT_MS="100",
            BATCH_MAX=str(BATCH_ROWS),
        )
        url = stack.base_url
        for name in ROUTES:  # warm-up: connections, workers' store connections, caches
            wrk.run(wrk.Scenario(name, CONNECTIONS, 1), url, files[name], key)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in ROUTES}
        for _ in range(rounds):
            for name in ROUTES:
                runs[name].append(wrk.run(wrk.Scenario(name, CONNECTIONS, seconds), url, files[name], key))
    finally:
        if stack:
            stack.stop()
        store.stop()
    result: dict[str, Any] = {"connections": CONNECTIONS, "batch_rows": BATCH_ROWS, "routes": {}}
    for name, route_runs in runs.items():
        rows = BATCH_ROWS if name.endswith("batch") else 1
        result["routes"][name] = {
            "rps": stats.median(r["rps"] for r in route_runs),
            "rows_per_s": rows * stats.median(r["rps"] for r in route_runs),
            "p99_ms": stats.median(r["latency_ms"]["p99"] for r in route_runs),
            "failed": sum(r["failed"] for r in route_runs),
        }
    pairs = zip(runs["raw single"], runs["by-id single"], strict=True)
    result["single_ratio"] = stats.median(b["rps"] / a["rps"] for a, b in pairs)
    pairs = zip(runs["raw batch"], runs["by-id batch"], strict=True)
    result["batch_ratio"] = stats.median(b["rps"] / a["rps"] for a, b in pairs)
    for name, route in result["routes"].items():
        log(f"{name}: {route['rps']:.0f} req/s ({route['rows_per_s']:.0f} rows/s), p99 {route['p99_ms']:.2f} ms")
    log(f"by-id ÷ raw: single {result['single_ratio']:.2f}, batch of {BATCH_ROWS} {result['batch_ratio']:.2f}")
    return result

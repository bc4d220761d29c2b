"""By-id scoring under load: the feature-store routes next to the raw-feature routes.

A real redis-server holds the sample transactions (written with the feature writer's record, as
`make features` does) and listens on a free loopback port and on a unix socket; two stacks serve
the by-id routes, one reaching the store over TCP, one over the unix socket (a store replica beside
the service). wrk runs every route alternately round by round at 64 connections, so all see the
same background load; the raw routes run on the TCP stack (they never touch the store).

Closed loop gives throughput: by-id single ÷ raw single is the goal (≥ 70 %). Its latency is set by
Little's law (64 requests always in flight: mean latency = 64 ÷ throughput), whatever the route, so
the latency goal (p99 < 5 ms at 64 connections) is judged open loop: 64 connections sending at a
fixed rate the service carries (half the raw route's capacity, as make perf's open-loop scenarios
do), by-id next to raw at the same rate, with the store round trip's p99 from the service's own
fetch histogram.

`make perf` runs this section among the others; alone (e.g. to compare worker counts):
    .venv/bin/python -m perf.by_id [--rounds 3] [--seconds 4] [--open-seconds 10] [--workers N]"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis
from prometheus_client.parser import text_string_to_metric_families

from perf import add_model_argument, existing_model, report, stats, wrk
from perf.common import log, sample_rows, start_stack, watched
from perf.placement import Watch
from perf.placement import add_arguments as add_placement_arguments
from perf.placement import failures as placement_failures
from perf.placement import from_arguments as placement_from_arguments
from service.core.features import FEATURES
from service.store.feature_record import encode_record
from stack import harness
from stack.launcher import RedisServer, Stack

PREFIX = "perf:tx:"
CONNECTIONS = 64
BATCH_ROWS = 100
OPEN_LOOP_LOAD = 0.5  # of the raw single route's closed-loop throughput
FETCH_HISTOGRAM = "fraud_feature_store_fetch_seconds"
# name: (path, which stack serves it: the one reaching the store over TCP or over the unix socket)
ROUTES = {
    "raw single": ("/v1/fraud-score", "tcp"),
    "by-id single": ("/v1/fraud-score/by-id", "tcp"),
    "by-id single unix": ("/v1/fraud-score/by-id", "unix"),
    "raw batch": ("/v1/fraud-score/batch", "tcp"),
    "by-id batch": ("/v1/fraud-score/by-id/batch", "tcp"),
    "by-id batch unix": ("/v1/fraud-score/by-id/batch", "unix"),
}
OPEN_LOOP_ROUTES = ("raw single", "by-id single", "by-id single unix")
TRANSPORTS = {"by-id single": "TCP loopback", "by-id single unix": "unix socket"}


def request_files(directory: Path, X: np.ndarray) -> dict[str, Path]:
    """load.lua's format ("METHOD PATH", then one body per line) for each route; the same rows."""
    ids = [f"tx-{i}" for i in range(len(X))]
    transactions = [dict(zip(FEATURES, map(float, row), strict=True)) for row in X]
    chunks = range(0, len(X) - BATCH_ROWS + 1, BATCH_ROWS)
    bodies = {
        "/v1/fraud-score": [orjson.dumps(t) for t in transactions],
        "/v1/fraud-score/by-id": [orjson.dumps({"transaction_id": i}) for i in ids],
        "/v1/fraud-score/batch": [orjson.dumps({"transactions": transactions[s : s + BATCH_ROWS]}) for s in chunks],
        "/v1/fraud-score/by-id/batch": [orjson.dumps({"transaction_ids": ids[s : s + BATCH_ROWS]}) for s in chunks],
    }
    files = {}
    for name, (path, _) in ROUTES.items():
        files[name] = directory / f"{name.replace(' ', '-')}.requests"
        files[name].write_bytes(f"POST {path}\n".encode() + b"".join(b + b"\n" for b in bodies[path]))
    return files


def fetch_buckets(base_url: str) -> dict[float, float]:
    """The store fetch histogram's cumulative buckets (upper bound in seconds: count), all workers."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        float(s.labels["le"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == FETCH_HISTOGRAM
        for s in family.samples
        if s.name == f"{FETCH_HISTOGRAM}_bucket"
    }


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """The upper bound (ms) of the histogram bucket holding the q-quantile of what was observed
    between two snapshots; None if nothing was."""
    counts = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    total = counts[-1][1] if counts else 0.0
    if total <= 0:
        return None
    return next(le * 1000.0 for le, cumulative in counts if cumulative >= q * total)


def start_store(directory: Path, X: np.ndarray, free_port: Callable[[], int]) -> RedisServer:
    """A redis-server on a free loopback port and a unix socket, holding X's rows as tx-0, tx-1, …"""
    store = RedisServer(free_port(), unix_socket=directory / "redis.sock").start()
    try:
        client = redis.Redis.from_url(store.url)
        with client.pipeline(transaction=False) as pipe:
            for i, row in enumerate(X):
                pipe.set(f"{PREFIX}tx-{i}", encode_record(list(map(float, row))))
            pipe.execute()
    except BaseException:
        store.stop()
        raise
    return store


def start_stacks(store: RedisServer, start_stack: Callable[..., Stack]) -> dict[str, Stack]:
    """The two stacks of ROUTES: one reaching the store over TCP, one over its unix socket."""
    stacks: dict[str, Stack] = {}
    try:
        for transport, url in (("tcp", store.url), ("unix", store.unix_url)):
            # A generous store timeout: the benchmark measures latency, and a machine shared with the
            # load generator must not turn a slow moment into failed requests (timeouts are tested in tests/).
            stacks[transport] = start_stack(
                FEATURE_STORE_URL=url,
                FEATURE_STORE_PREFIX=PREFIX,
                FEATURE_STORE_TIMEOUT_MS="100",
                BATCH_MAX=str(BATCH_ROWS),
            )
    except BaseException:
        for stack in stacks.values():
            stack.stop()
        raise
    return stacks


def measure(
    X: np.ndarray,
    key: str,
    start_stack: Callable[..., Stack],
    free_port: Callable[[], int],
    rounds: int,
    seconds: float,
    log: Callable[[str], None],
    open_seconds: float = 10.0,
) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="fraud-perf-by-id-"))
    files = request_files(directory, X)
    store = start_store(directory, X, free_port)
    stacks: dict[str, Stack] = {}
    try:
        stacks.update(start_stacks(store, start_stack))
        workers = stacks["tcp"].settings.workers
        log(f"  {workers} workers per stack (raw and by-id alike)")

        def run(name: str, scenario: wrk.Scenario) -> dict[str, Any]:
            return wrk.run(scenario, stacks[ROUTES[name][1]].base_url, files[name], key)

        for name in ROUTES:  # warm-up: connections, workers' store connections, caches
            run(name, wrk.Scenario(name, CONNECTIONS, 1))
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in ROUTES}
        for _ in range(rounds):
            for name in ROUTES:
                # answers sorted: a deadline's 503 (a batch on a one-core placement) is a designed
                # refusal, reported apart; throughput counts the scored answers
                runs[name].append(run(name, wrk.Scenario(name, CONNECTIONS, seconds, classify=True)))

        rate = round(OPEN_LOOP_LOAD * stats.median(r["scored_rps"] for r in runs["raw single"]))
        log(f"  open loop: {CONNECTIONS} connections at {rate}/s ({100 * OPEN_LOOP_LOAD:.0f} % of raw single)")
        open_loop: dict[str, dict[str, Any]] = {}
        for name in OPEN_LOOP_ROUTES:
            base_url = stacks[ROUTES[name][1]].base_url
            before = fetch_buckets(base_url)
            found = run(name, wrk.Scenario(name, CONNECTIONS, open_seconds, rate=rate))
            after = fetch_buckets(base_url)
            open_loop[name] = {
                "rate": rate,
                "sent_per_s": found["sent_per_s"],
                "rps": found["rps"],
                "p50_ms": found["latency_ms"]["p50"],
                "p99_ms": found["latency_ms"]["p99"],
                "failed": found["failed"],
                "fetch_p99_ms": bucket_quantile(before, after, 0.99) if name in TRANSPORTS else None,
            }
    finally:
        for stack in stacks.values():
            stack.stop()
        store.stop()

    result: dict[str, Any] = {
        "workers": workers,
        "connections": CONNECTIONS,
        "batch_rows": BATCH_ROWS,
        "routes": {},
        "open_loop": open_loop,
    }
    for name, route_runs in runs.items():
        rows = BATCH_ROWS if "batch" in name else 1
        rps = stats.median(r["scored_rps"] for r in route_runs)
        result["routes"][name] = {
            "rps": rps,
            "rows_per_s": rows * rps,
            "p99_ms": stats.median(r["latency_ms"]["p99"] for r in route_runs),
            # Little's law for a closed loop: CONNECTIONS always in flight
            "mean_ms_by_littles_law": 1000.0 * CONNECTIONS / rps,
            "refused": sum(sum(r["refused"].values()) for r in route_runs),
            "failed": sum(r["failed"] for r in route_runs),
        }

    def ratios(raw: str, by_id: str) -> list[float]:
        return [b["scored_rps"] / a["scored_rps"] for a, b in zip(runs[raw], runs[by_id], strict=True)]

    for field, raw, by_id in (
        ("single_ratio", "raw single", "by-id single"),
        ("single_ratio_unix", "raw single", "by-id single unix"),
        ("batch_ratio", "raw batch", "by-id batch"),
        ("batch_ratio_unix", "raw batch", "by-id batch unix"),
    ):
        found = ratios(raw, by_id)
        result[field], result[f"{field}_spread"] = stats.median(found), [min(found), max(found)]
    for name, route in result["routes"].items():
        log(
            f"{name}: {route['rps']:.0f} req/s ({route['rows_per_s']:.0f} rows/s), p99 {route['p99_ms']:.2f} ms "
            f"(Little's law: mean {route['mean_ms_by_littles_law']:.1f} ms)"
        )
    log(
        f"by-id ÷ raw: single {result['single_ratio']:.2f} (TCP), {result['single_ratio_unix']:.2f} (unix socket); "
        f"batch of {BATCH_ROWS} {result['batch_ratio']:.2f} (TCP), {result['batch_ratio_unix']:.2f} (unix socket)"
    )
    for name, found in open_loop.items():
        fetch = f", store fetch p99 ≤ {found['fetch_p99_ms']:g} ms" if found["fetch_p99_ms"] is not None else ""
        behind = " (the schedule fell behind: not carried at this rate)" if found["sent_per_s"] < 0.95 * rate else ""
        log(
            f"{name} open loop at {rate}/s: sent {found['sent_per_s']:.0f}/s{behind}, p50 {found['p50_ms']:.2f} ms, "
            f"p99 {found['p99_ms']:.2f} ms{fetch}"
        )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(parser)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each closed-loop round")
    parser.add_argument("--open-seconds", type=float, default=10.0, help="length of each open-loop run")
    parser.add_argument("--workers", type=int, help="WORKERS of both stacks (default: the service's)")
    add_placement_arguments(parser)
    args = parser.parse_args(argv)
    placement = placement_from_arguments(parser, args)
    model = existing_model(args.model)
    key = secrets.token_urlsafe(24)
    stack_log = Path(tempfile.mkdtemp(prefix="fraud-perf-by-id-log-")) / "stack.log"
    placement.confine_load()  # redis-server and wrk on the load's cores, as other hosts would be
    watch = Watch(placement)

    def launch(**extra: str) -> Stack:
        return watched(start_stack(model, key, stack_log, args.workers, placement=placement, **extra), watch)

    with watch:
        result = measure(
            sample_rows()[:1000], key, launch, harness.free_port, args.rounds, args.seconds, log, args.open_seconds
        )
    print(report.targets_table(report.by_id_targets(result)))
    checked = watch.report()
    print(f"placement: {placement.name}, violations: {checked['violations'] or 'none'}")
    failed = {**result["routes"], **result["open_loop"]}
    return 1 if any(route["failed"] for route in failed.values()) or placement_failures(checked) else 0


if __name__ == "__main__":
    sys.exit(main())

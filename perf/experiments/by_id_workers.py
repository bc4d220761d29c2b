"""Worker counts A/B for the by-id routes: which WORKERS serves them best, next to the raw route.

One store (perf/by_id.py's), and for each worker count the two stacks of make perf's by-id section
(raw and by-id TCP on one, by-id unix on the other), all started before the first run. Each round
runs every route once per worker count, the counts in a fresh random order each time and side by
side, so that a count is compared with the others at the same moment of a shared machine's load:

- closed loop at 64 connections: throughput; the CPU per request (user + system from /proc: what a
  request costs them, whatever else runs) of the workers, of nginx's workers and of redis-server,
  which together say where a by-id request's cost beyond a raw one goes; and the share of the machine
  left idle (from /proc/stat: cores a count leaves unused while its workers wait on the store);
- open loop at one rate for every count (half the first count's raw single capacity, as make perf
  picks it): p50 and p99.

Printed: medians [min-max] over the rounds, by-id ÷ raw per count, and each count ÷ the first for
the same route in the same round (paired, so a busy moment on the machine does not pick a winner).

    .venv/bin/python -m perf.experiments.by_id_workers [--workers 2,3,4] [--rounds 6] [--seconds 3]
        [--open-rounds 3] [--open-seconds 5]"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

from perf import add_model_argument, by_id, existing_model, memory, stats, wrk
from perf.common import sample_rows, start_stack, watched
from perf.placement import Watch
from perf.placement import add_arguments as add_placement_arguments
from perf.placement import failures as placement_failures
from perf.placement import from_arguments as placement_from_arguments
from stack import harness
from stack.launcher import Stack

ROUTES = ("raw single", "by-id single", "by-id single unix")


def idle_and_total() -> tuple[int, int]:
    """The machine's idle (idle + iowait) and total CPU ticks since boot."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return ticks[3] + ticks[4], sum(ticks)


def run(stack: Stack, scenario: wrk.Scenario, requests: Path, key: str, store_pid: int) -> dict[str, Any]:
    """One wrk run with the CPU per request of the workers, of nginx's workers and of the store, and
    the machine's idle share around it."""
    groups = {
        "worker": memory.children(stack.gunicorn.pid) if stack.gunicorn else [],
        "nginx": memory.children(stack.nginx.pid) if stack.nginx else [],
        "store": [store_pid],
    }
    cpu_before, (idle_before, total_before) = {g: memory.cpu_seconds(p) for g, p in groups.items()}, idle_and_total()
    found = wrk.run(scenario, stack.base_url, requests, key)
    cpu, (idle, total) = {g: memory.cpu_seconds(p) for g, p in groups.items()}, idle_and_total()
    requests_done = max(found["requests"], 1)
    return {
        "rps": found["rps"],
        "p50_ms": found["latency_ms"]["p50"],
        "p99_ms": found["latency_ms"]["p99"],
        "failed": found["failed"],
        **{f"{g}_cpu_us": (cpu[g] - cpu_before[g]) * 1e6 / requests_done for g in groups},
        "idle": (idle - idle_before) / max(total - total_before, 1),
    }


def spread(values: list[float], scale: float = 1.0, digits: int = 0) -> str:
    ordered = sorted(v * scale for v in values)
    return f"{stats.median(ordered):.{digits}f} [{ordered[0]:.{digits}f}-{ordered[-1]:.{digits}f}]"


def report(counts: list[int], closed: dict, open_loop: dict, rate: int) -> str:
    lines = ["closed loop, 64 connections: median [min-max] over the rounds"]
    for n in counts:
        for route in ROUTES:
            runs = closed[n][route]
            lines.append(
                f"  {n} workers  {route:<18} {spread([r['rps'] for r in runs]):>22} req/s   "
                f"CPU µs/req: workers {spread([r['worker_cpu_us'] for r in runs]):>17}  "
                f"nginx {spread([r['nginx_cpu_us'] for r in runs]):>13}  "
                f"store {spread([r['store_cpu_us'] for r in runs]):>11}   "
                f"idle {spread([r['idle'] for r in runs], 100)} %"
            )
        for route in ROUTES[1:]:
            ratios = [b["rps"] / a["rps"] for a, b in zip(closed[n]["raw single"], closed[n][route], strict=True)]
            lines.append(f"  {n} workers  {route} ÷ raw single: {spread(ratios, 100)} %")
    first = counts[0]
    lines.append(f"paired with {first} workers (same route, same round): throughput, worker CPU per request")
    for n in counts[1:]:
        for route in ROUTES:
            pairs = list(zip(closed[first][route], closed[n][route], strict=True))
            lines.append(
                f"  {n} ÷ {first} workers  {route:<18} {spread([b['rps'] / a['rps'] for a, b in pairs], 100)} %   "
                f"CPU {spread([b['worker_cpu_us'] / a['worker_cpu_us'] for a, b in pairs], 100)} %"
            )
    lines.append(f"open loop, 64 connections at {rate:,}/s: median [min-max] over the rounds")
    for n in counts:
        for route in ROUTES:
            runs = open_loop[n][route]
            lines.append(
                f"  {n} workers  {route:<18} p50 {spread([r['p50_ms'] for r in runs], digits=2)} ms   "
                f"p99 {spread([r['p99_ms'] for r in runs], digits=2)} ms   failed {sum(r['failed'] for r in runs)}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(parser)
    parser.add_argument("--workers", default="2,3,4", help="worker counts, comma-separated; the first is the base")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=3, help="length of each closed-loop run")
    parser.add_argument("--open-rounds", type=int, default=3)
    parser.add_argument("--open-seconds", type=int, default=5, help="length of each open-loop run")
    parser.add_argument("--output", type=Path, help="also write every run's figures here (JSON)")
    add_placement_arguments(parser)
    args = parser.parse_args(argv)
    placement = placement_from_arguments(parser, args)
    placement.confine_load()  # the store and wrk on the load's cores
    watch = Watch(placement)
    counts = [int(n) for n in args.workers.split(",")]
    model = existing_model(args.model)
    key = secrets.token_urlsafe(24)
    directory = Path(tempfile.mkdtemp(prefix="fraud-perf-by-id-workers-"))
    X = sample_rows()[:1000]
    files = by_id.request_files(directory, X)
    store = by_id.start_store(directory, X, harness.free_port)
    store_pid = store.process.pid
    stacks: dict[int, dict[str, Stack]] = {}
    closed: dict[int, dict[str, list]] = {n: {route: [] for route in ROUTES} for n in counts}
    open_loop: dict[int, dict[str, list]] = {n: {route: [] for route in ROUTES} for n in counts}

    def stack(n: int, route: str) -> Stack:
        return stacks[n][by_id.ROUTES[route][1]]

    def launch(n: int, **extra: str) -> Stack:
        started = start_stack(model, key, directory / f"{n}-workers.log", n, placement=placement, **extra)
        return watched(started, watch)

    try:
        watch.__enter__()
        for n in counts:
            stacks[n] = by_id.start_stacks(store, partial(launch, n))
        for n in counts:  # warm-up: connections, workers' store connections, caches
            for route in ROUTES:
                run(stack(n, route), wrk.Scenario(route, by_id.CONNECTIONS, 1), files[route], key, store_pid)
        for _ in range(args.rounds):
            for route in ROUTES:
                for n in random.sample(counts, len(counts)):
                    scenario = wrk.Scenario(route, by_id.CONNECTIONS, args.seconds)
                    closed[n][route].append(run(stack(n, route), scenario, files[route], key, store_pid))
        rate = round(by_id.OPEN_LOOP_LOAD * stats.median(r["rps"] for r in closed[counts[0]]["raw single"]))
        for _ in range(args.open_rounds):
            for route in ROUTES:
                for n in random.sample(counts, len(counts)):
                    scenario = wrk.Scenario(route, by_id.CONNECTIONS, args.open_seconds, rate=rate)
                    open_loop[n][route].append(run(stack(n, route), scenario, files[route], key, store_pid))
    finally:
        watch.__exit__()
        for pair in stacks.values():
            for running in pair.values():
                running.stop()
        store.stop()
    print(report(counts, closed, open_loop, rate))
    if args.output:
        args.output.write_text(json.dumps({"rate": rate, "closed": closed, "open": open_loop}, indent=1))
    checked = placement_failures(watch.report())
    print("\n".join(checked) or f"placement: {placement.name}, held")
    return (
        1
        if checked
        or any(
            r["failed"] for found in (closed, open_loop) for n in found.values() for runs in n.values() for r in runs
        )
        else 0
    )


if __name__ == "__main__":
    sys.exit(main())

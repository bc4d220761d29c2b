"""The worker's CPU per request, by id against raw, in one process: where the by-id gap goes.

The Falcon app the workers serve, built in this process as a worker builds it (the feature store
from FEATURE_STORE_URL, the deadline guard, the metrics), answers N requests of each route in turn
against a real redis-server, in interleaved rounds; `time.process_time` around each batch of N is
the worker's CPU per request, without nginx, gunicorn or the load generator. With --placement split
(the default) this process runs on SERVICE_CPUS and redis-server on LOAD_CPUS, as another host's
store would be: the process time then holds nothing of the store's own work.

Printed: per route the median µs a request [min-max over the rounds], and by-id minus raw per round.
Profiling the same loop (relative figures, valid under load):

    .venv/bin/py-spy record --native -o /tmp/by-id.svg -- .venv/bin/python -m perf.experiments.by_id_cost --rounds 30
    strace -c -f .venv/bin/python -m perf.experiments.by_id_cost --rounds 3

    .venv/bin/python -m perf.experiments.by_id_cost [--rounds 9] [--requests 2000]"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from perf import add_model_argument, by_id, existing_model, stats
from perf.common import as_bodies, log, sample_rows
from perf.micro import lifted_settings, serving
from perf.placement import SPLIT
from perf.placement import add_arguments as add_placement_arguments
from perf.placement import from_arguments as placement_from_arguments
from service.api.app import create_app
from service.engine.loader import load_model
from stack import harness

ROUTES = {"raw single": "/v1/fraud-score", "by-id single": "/v1/fraud-score/by-id"}


def app_for(model_path: Path, key: str, store_url: str, spin_us: int | None = None) -> Any:
    spin = {} if spin_us is None else {"feature_store_spin_us": spin_us}
    settings = lifted_settings(
        model_path,
        key,
        **spin,
        feature_store_url=store_url,
        feature_store_prefix=by_id.PREFIX,
        feature_store_timeout_ms=100,  # generous, as make perf's: a busy machine is not a failure here
    )
    return create_app(settings, load_model(settings))


def measure(app: Any, bodies: dict[str, list[bytes]], key: str, rounds: int, n: int) -> dict[str, list[float]]:
    """µs of process time per request, each round every route once, the order alternating."""
    headers = {"Content-Type": "application/json", "X-API-Key": key, "X-Request-ID": "by-id-cost"}
    calls = {
        route: [serving(app, "POST", path, body, headers, n // len(bodies[route])) for body in bodies[route]]
        for route, path in ROUTES.items()
    }
    found: dict[str, list[float]] = {route: [] for route in ROUTES}
    for index in range(rounds):
        order = list(ROUTES) if index % 2 == 0 else list(reversed(ROUTES))
        for route in order:
            started = time.process_time()
            for call in calls[route]:
                call()
            found[route].append((time.process_time() - started) * 1e6 / n)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(parser)
    add_placement_arguments(parser)
    parser.set_defaults(placement=os.environ.get("PLACEMENT") or SPLIT)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=2000, help="requests of each route per round")
    parser.add_argument("--transport", choices=("tcp", "unix"), default="tcp")
    parser.add_argument("--json", type=Path, help="also write the rounds here")
    parser.add_argument(
        "--spin-us", type=int, help="FEATURE_STORE_SPIN_US (default: the setting's default), to compare"
    )
    args = parser.parse_args(argv)
    placement = placement_from_arguments(parser, args)
    model = existing_model(args.model)
    X = sample_rows()[:100]
    key = secrets.token_urlsafe(24)
    placement.confine_load()  # redis-server starts on the load's cores
    store = by_id.start_store(Path(tempfile.mkdtemp(prefix="fraud-by-id-cost-")), X, harness.free_port)
    try:
        if placement.service:
            for tid in os.listdir("/proc/self/task"):
                os.sched_setaffinity(int(tid), placement.service)
        app = app_for(model, key, store.url if args.transport == "tcp" else store.unix_url, args.spin_us)
        bodies = {
            "raw single": as_bodies(X),
            "by-id single": [orjson.dumps({"transaction_id": f"tx-{i}"}) for i in range(len(X))],
        }
        measure(app, bodies, key, 1, len(X))  # warm-up: the worker's store connection, caches
        found = measure(app, bodies, key, args.rounds, args.requests)
    finally:
        store.stop()
    gap = [b - r for r, b in zip(found["raw single"], found["by-id single"], strict=True)]
    for route, rounds in {**found, "by-id − raw": gap}.items():
        log(
            f"{route}: {stats.median(rounds):.1f} µs a request [{min(rounds):.1f}–{max(rounds):.1f}], "
            f"{args.rounds} rounds of {args.requests}, {placement.name} placement, store over {args.transport}"
        )
    if args.json:
        args.json.write_text(json.dumps({"placement": placement.describe(), "rounds": found}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The feature store client's CPU per fetch: this revision's against another's, in one process.

Both clients fetch single records from one real redis-server (on LOAD_CPUS, this process on
SERVICE_CPUS, as `--placement split` puts them), round after round in alternating order, each call
with a slightly different time left, as the request deadline gives it. `time.process_time` per
fetch: the worker's own cost, the store's work excluded.

    git show main:service/store/feature_store.py > /tmp/base_feature_store.py
    .venv/bin/python -m perf.experiments.store_client_ab /tmp/base_feature_store.py [--rounds 10] [--calls 2000]"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

from perf import by_id, stats
from perf.common import log, sample_rows
from perf.placement import SPLIT
from perf.placement import add_arguments as add_placement_arguments
from perf.placement import from_arguments as placement_from_arguments
from service.store import feature_store
from stack import harness

TIMEOUT_S = 1.0  # generous: a busy machine's stall is not what is measured


def load_base(path: Path):
    spec = importlib.util.spec_from_file_location("base_feature_store", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path, help="the other revision's service/store/feature_store.py")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=2000, help="fetches of each client per round")
    add_placement_arguments(parser)
    parser.set_defaults(placement=os.environ.get("PLACEMENT") or SPLIT)
    args = parser.parse_args(argv)
    placement = placement_from_arguments(parser, args)
    base = load_base(args.base)
    X = sample_rows()[:100]
    placement.confine_load()  # redis-server starts on the load's cores
    store = by_id.start_store(Path(tempfile.mkdtemp(prefix="fraud-store-ab-")), X, harness.free_port)
    try:
        if placement.service:
            for tid in os.listdir("/proc/self/task"):
                os.sched_setaffinity(int(tid), placement.service)
        clients = {
            "base": base.FeatureStore(base.StoreConfig(store.url, by_id.PREFIX, TIMEOUT_S)),
            "current": feature_store.FeatureStore(feature_store.StoreConfig(store.url, by_id.PREFIX, TIMEOUT_S)),
        }
        ids = [[f"tx-{i}"] for i in range(len(X))]
        found: dict[str, list[float]] = {name: [] for name in clients}
        for client in clients.values():  # warm-up: the connection
            for i in range(200):
                client.fetch(ids[i % len(ids)], TIMEOUT_S)
        for index in range(args.rounds):
            for name in list(clients) if index % 2 == 0 else reversed(list(clients)):
                fetch = clients[name].fetch
                started = time.process_time()
                for i in range(args.calls):
                    fetch(ids[i % len(ids)], TIMEOUT_S - (i % 7) * 1e-4)
                found[name].append((time.process_time() - started) * 1e6 / args.calls)
    finally:
        store.stop()
    for name, rounds in found.items():
        log(f"{name}: {stats.median(rounds):.1f} µs CPU a fetch [{min(rounds):.1f}–{max(rounds):.1f}]")
    ratios = [c / b for b, c in zip(found["base"], found["current"], strict=True)]
    log(f"current ÷ base, paired rounds: {stats.median(ratios):.2f} [{min(ratios):.2f}–{max(ratios):.2f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())

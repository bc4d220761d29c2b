"""What the prediction log costs a worker per single score: the same app with the log on and off,
in one process, passes interleaved (off on, then on off), CPU time per request.

    .venv/bin/python -m perf.experiments.prediction_log_cost [--rounds 12] [--requests 5000]

`make perf` compares two whole stacks under wrk; there a worker's CPU per request (several hundred
µs with the kernel's socket work and nginx beside it) moves by tens of µs from round to round, so a
difference of ten cannot be resolved. Here each app (built as gunicorn's master builds it, behind
its deadline guard, nginx's stamp set) answers the same POST /v1/fraud-score request many times
over (perf/micro.py's `serving`); `time.process_time_ns` counts this process's CPU only, the
spool's write into the page cache included. Reported: each pass's µs per request, and the median of the paired differences
(on − off) with their min–max. A benchmark, not a test."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Multiprocess mode is chosen when prometheus_client is imported: set it first, as gunicorn.conf.py does.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="prediction-log-cost-")

from perf import add_model_argument, existing_model  # noqa: E402
from perf.common import as_bodies, log, sample_rows  # noqa: E402
from perf.micro import serving  # noqa: E402
from service.api.app import create_app  # noqa: E402
from service.api.deadline import Deadlines  # noqa: E402
from service.core.settings import Settings  # noqa: E402
from service.engine.loader import load_model  # noqa: E402
from service.telemetry import metrics  # noqa: E402

KEY = "perf-prediction-log-key-0123456789"


def app(model: Path, log_dir: Path | None):
    extra = {"prediction_log_dir": log_dir} if log_dir else {}
    settings = Settings(
        api_keys=(KEY.encode(),), model_path=model, rate_limit_per_key=10**9, rate_limit_burst=10**9, **extra
    )
    return Deadlines(
        create_app(settings, load_model(settings)),
        settings.request_deadline_ms,
        observe_wait=metrics.observe_queue_wait,
        count_shed=metrics.count_shed,
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_argument(parser)
    parser.add_argument("--rounds", type=int, default=12, help="passes of each app, interleaved (>= 2)")
    parser.add_argument("--requests", type=int, default=5000, help="requests per pass")
    args = parser.parse_args(argv)
    model = existing_model(args.model)
    apps = {"off": app(model, None), "on": app(model, Path(tempfile.mkdtemp(prefix="prediction-log-cost-log-")))}
    body = as_bodies(sample_rows()[:1])[0]
    headers = {
        "Content-Type": "application/json",
        "X-API-Key": KEY,
        "X-Request-ID": "perf-prediction-log",
        "X-Request-Start": f"{time.time() + 86400:.3f}",  # nginx's stamp, ahead of this clock: never shed
    }
    serve_all = {
        name: serving(target, "POST", "/v1/fraud-score", body, headers, args.requests) for name, target in apps.items()
    }

    def serve(name: str) -> float:
        started = time.process_time_ns()
        serve_all[name]()  # fails unless every answer is a 200
        return (time.process_time_ns() - started) / args.requests / 1e3

    for name in apps:  # warm: every label's samples made, the spool's segment opened, caches filled
        serve(name)
    passes: dict[str, list[float]] = {"off": [], "on": []}
    for round_ in range(args.rounds):
        for name in ("off", "on") if round_ % 2 == 0 else ("on", "off"):
            passes[name].append(serve(name))
        log(f"round {round_ + 1}: off {passes['off'][-1]:.1f} µs, on {passes['on'][-1]:.1f} µs per request")
    added = [on - off for off, on in zip(passes["off"], passes["on"], strict=True)]
    found = {
        "requests": args.requests,
        "rounds": args.rounds,
        "cpu_us": passes,
        "added_us": {"median": statistics.median(added), "min": min(added), "max": max(added)},
        "least_on_minus_least_off_us": min(passes["on"]) - min(passes["off"]),
    }
    log(
        f"log on − off: {found['added_us']['median']:.1f} µs a request (rounds {found['added_us']['min']:.1f} to "
        f"{found['added_us']['max']:.1f}); least on − least off {found['least_on_minus_least_off_us']:.1f} µs"
    )
    json.dump(found, sys.stdout, indent=1)
    print()
    return found


if __name__ == "__main__":
    main()

"""What the prediction log costs a worker per single score, in one process: one app, its log on and
off by turns, and the log's own call timed inside the requests.

    .venv/bin/python -m perf.experiments.prediction_log_cost [--rounds 40] [--requests 1000]

`make perf` compares two whole stacks under wrk; there a worker's CPU per request (several hundred
µs with the kernel's socket work and nginx beside it) moves by tens of µs from round to round, so a
difference of ten cannot be resolved. Here one app (built as gunicorn's master builds it, behind its
deadline guard, nginx's stamp set) answers the same POST /v1/fraud-score request many times over
(perf/micro.py's `serving`), with its scoring's log attached for an "on" pass and detached (None,
as with PREDICTION_LOG_DIR unset) for an "off" pass: the same objects at the same addresses, where
two apps' layouts alone differ by tens of µs a pass. Passes interleave (on off, then off on);
`time.process_time_ns` counts this process's CPU only, the copy into the page cache and its page
faults included. Reported:

- `added_us`: the median of the paired differences (on − off), with their quartiles: everything the
  log adds, the request's entry and the caches it cools included;
- `log_call_us`: the log's call itself (PredictionLog.one: the frame, the copy into the segment),
  timed with perf_counter_ns around each call in passes of their own, their median and range.

A benchmark, not a test."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# Multiprocess mode is chosen when prometheus_client is imported: set it first, as gunicorn.conf.py does.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="prediction-log-cost-")

from perf import add_model_argument, existing_model  # noqa: E402
from perf.common import as_bodies, log, sample_rows  # noqa: E402
from perf.micro import lifted_settings, serving  # noqa: E402
from service.api.app import create_app  # noqa: E402
from service.api.deadline import Deadlines  # noqa: E402
from service.engine.loader import load_model  # noqa: E402
from service.engine.scoring import Scoring  # noqa: E402
from service.telemetry import metrics  # noqa: E402

KEY = "perf-prediction-log-key-0123456789"
ROUTE = "/v1/fraud-score"


def app(model: Path, log_dir: Path) -> tuple[Deadlines, Scoring]:
    """The served app with its log on, and the Scoring its single route scores with."""
    settings = lifted_settings(model, KEY, prediction_log_dir=log_dir)
    falcon_app = create_app(settings, load_model(settings))
    resource = falcon_app._router.find(ROUTE)[0]  # the route's resource, as the app routes a request
    served = Deadlines(
        falcon_app, settings.request_deadline_ms, observe_wait=metrics.observe_queue_wait, count_shed=metrics.count_shed
    )
    return served, resource._scoring


def served_singles(model: Path, requests: int) -> tuple[Scoring, Callable[[], None]]:
    """The app's single route with its log on, and a callable that serves it `requests` copies of
    one single score (failing unless every answer is a 200)."""
    served, scoring = app(model, Path(tempfile.mkdtemp(prefix="prediction-log-cost-log-")))
    body = as_bodies(sample_rows()[:1])[0]
    headers = {
        "Content-Type": "application/json",
        "X-API-Key": KEY,
        "X-Request-ID": "perf-prediction-log",
        "X-Request-Start": f"{time.time() + 86400:.3f}",  # nginx's stamp, ahead of this clock: never shed
    }
    return scoring, serving(served, "POST", ROUTE, body, headers, requests)


def spread(values: list[float]) -> dict[str, float]:
    quartiles = statistics.quantiles(values, n=4)
    return {
        "median": statistics.median(values),
        "q1": quartiles[0],
        "q3": quartiles[2],
        "min": min(values),
        "max": max(values),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_argument(parser)
    parser.add_argument("--rounds", type=int, default=40, help="passes of each state, interleaved (>= 2)")
    parser.add_argument("--requests", type=int, default=1000, help="requests per pass")
    args = parser.parse_args(argv)
    scoring, serve_all = served_singles(existing_model(args.model), args.requests)
    prediction_log = scoring.log

    def serve(state: str) -> float:
        scoring.log = prediction_log if state == "on" else None
        started = time.process_time_ns()
        serve_all()
        return (time.process_time_ns() - started) / args.requests / 1e3

    for state in ("on", "off"):  # warm: every label's samples made, the spool's segment opened, caches filled
        serve(state)
    passes: dict[str, list[float]] = {"off": [], "on": []}
    for round_ in range(args.rounds):
        for state in ("on", "off") if round_ % 2 == 0 else ("off", "on"):
            passes[state].append(serve(state))
    added = [on - off for off, on in zip(passes["off"], passes["on"], strict=True)]

    # The call alone: its own passes, so that the timing's few hundred ns stay out of the A/B above.
    one = prediction_log.one
    spent = [0]

    def timed(*arguments):
        started = time.perf_counter_ns()
        one(*arguments)
        spent[0] += time.perf_counter_ns() - started

    prediction_log.one = timed
    calls = []
    for _ in range(max(2, args.rounds // 4)):
        spent[0] = 0
        serve("on")
        calls.append(spent[0] / args.requests / 1e3)
    prediction_log.one = one
    found = {
        "requests": args.requests,
        "rounds": args.rounds,
        "cpu_us": passes,
        "added_us": spread(added),
        "log_call_us": spread(calls),
    }
    log(
        f"log on − off: {found['added_us']['median']:.1f} µs a request (quartiles {found['added_us']['q1']:.1f} to "
        f"{found['added_us']['q3']:.1f}); the log's call alone {found['log_call_us']['median']:.1f} µs "
        f"({found['log_call_us']['min']:.1f} to {found['log_call_us']['max']:.1f})"
    )
    json.dump(found, sys.stdout, indent=1)
    print()
    return found


if __name__ == "__main__":
    main()

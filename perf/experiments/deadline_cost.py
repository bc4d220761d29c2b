"""What a deadline costs in a worker: refusing a late request, and checking one that is on time.

    .venv/bin/python -m perf.experiments.deadline_cost [--model model/fraud-model.joblib]

Compares the service's way (service/api/deadline.py: a WSGI wrapper that answers before Falcon builds a
request) with the alternative, a Falcon middleware's process_resource (after routing, before the
responder reads the body), which would raise the app's ApiError through Falcon's error handling and
pass through the app's own middleware (request metrics included). Both record the same metrics. A
benchmark, not a test: the median of repeated runs, in one process, on whatever machine it runs on
(gunicorn's own parsing of the request, and the accept and close around it, come on top of either)."""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Multiprocess mode is chosen when prometheus_client is imported: set it first, as gunicorn.conf.py does.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="deadline-cost-")

import falcon  # noqa: E402
import falcon.testing  # noqa: E402

from perf.micro import lifted_settings, serving  # noqa: E402
from service.api.app import create_app  # noqa: E402
from service.api.budget import RowBudget  # noqa: E402
from service.api.deadline import RESERVE_MS, RETRY_AFTER_SECONDS, Deadlines, budget_ms  # noqa: E402
from service.api.errors import ApiError  # noqa: E402
from service.engine.loader import load_model  # noqa: E402
from service.telemetry import metrics  # noqa: E402

KEY = "perf-deadline-key-0123456789"
BODY = (Path(__file__).resolve().parents[2] / "service/contract/schemas/transaction.example.json").read_bytes()
N = 2000
DEFAULT_MS = 150


class MiddlewareDeadline:
    """The alternative: the same check as a Falcon middleware."""

    def __init__(self) -> None:
        self._observe_wait = metrics.observe_queue_wait
        self._count_shed = metrics.count_shed

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: Any, params: Any) -> None:
        stamp = req.get_header("X-Request-Start")
        if stamp is None or resource is None:
            return
        waited_ms = max(0.0, (time.time() - float(stamp)) * 1000.0)
        self._observe_wait(req.uri_template, waited_ms / 1000.0)
        budget = budget_ms(req.get_header("X-Deadline-Ms"), DEFAULT_MS)
        if budget - waited_ms < RESERVE_MS:
            self._count_shed(req.uri_template)
            raise ApiError(
                falcon.HTTP_503,
                "deadline_exceeded",
                f"the request waited {waited_ms:.0f} ms in the queue of its {budget} ms budget",
                headers={"Retry-After": RETRY_AFTER_SECONDS},
            )


def per_request_us(app: Callable[..., Any], stamp: float | None, expect: str) -> float:
    headers = {"Content-Type": "application/json", "X-API-Key": KEY, "X-Request-ID": "perf-deadline"}
    if stamp is not None:
        headers["X-Request-Start"] = f"{stamp:.3f}"
    serve_all = serving(app, "POST", "/v1/fraud-score", BODY, headers, N, expect)
    serve_all()
    return statistics.median(timeit.repeat(serve_all, number=1, repeat=7)) / N * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("model/fraud-model.joblib"))
    args = parser.parse_args(argv)
    settings = lifted_settings(args.model, KEY)
    model = load_model(settings)

    def app() -> falcon.App:
        return create_app(settings, model, budget=RowBudget.for_settings(settings))

    bare = app()
    wrapped = Deadlines(
        app(),
        DEFAULT_MS,
        observe_wait=metrics.observe_queue_wait,
        count_shed=metrics.count_shed,
    )
    with_middleware = app()
    with_middleware.add_middleware(MiddlewareDeadline())
    # Stamps far in the future count as no wait: on time however slow the run.
    late, on_time = time.time() - 10, time.time() + 3600
    rows = [
        ("score, no deadline (no stamp)", bare, None, "200"),
        ("score, on time: WSGI wrapper (the service)", wrapped, on_time, "200"),
        ("score, on time: Falcon middleware", with_middleware, on_time, "200"),
        ("late, refused: WSGI wrapper (the service)", wrapped, late, "503"),
        ("late, refused: Falcon middleware", with_middleware, late, "503"),
    ]
    for name, target, stamp, expect in rows:
        print(f"{name:<44} {per_request_us(target, stamp, expect):8.2f} µs per request")


if __name__ == "__main__":
    main()

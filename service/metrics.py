"""Prometheus metrics, correct across gunicorn's pre-forked workers.

prometheus-client's multiprocess mode: every process writes its samples to memory-mapped files in
PROMETHEUS_MULTIPROC_DIR, and /metrics adds them up. The variable must be set before
prometheus_client is first imported (it picks its value class at import time), so the gunicorn
master calls `service.multiproc.prepare` from gunicorn.conf.py before anything imports this module.
Without the variable (unit tests, a plain `python -c`), metrics live in the process.

The hot path pays one dictionary lookup, one counter increment and one histogram observation per
request (`python -m perf.metrics_cost` measures it): labelled children are resolved once and cached."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import falcon
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from service.multiproc import ENV as MULTIPROC_ENV

# Latency of the app itself (nginx's view, with queueing, is in its access log): tens of µs to
# the proxy's 10 s read timeout.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
SCORE_BUCKETS = (1, 2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99, 100)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

REQUESTS = Counter(
    "fraud_http_requests_total",
    "HTTP requests answered by the app, by route, method and status",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "fraud_http_request_duration_seconds",
    "Time the app spent on a request, by route",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
SCORES = Histogram(
    "fraud_score", "Fraud scores returned (0-100): their distribution drifts with the data", buckets=SCORE_BUCKETS
)
SCORED = Counter("fraud_scored_total", "Transactions scored, by whether they were flagged as fraud", ["is_fraud"])
OUT_OF_DISTRIBUTION = Counter(
    "fraud_out_of_distribution_total", "Transactions scored with an ood-warning (features outside the training range)"
)
MODEL_INFO = Gauge(
    "fraud_model_info",
    "The model being served (value 1, version in the label)",
    ["version"],
    multiprocess_mode="livemax",
)
# Queue waits from nginx's stamp to a worker: well under a millisecond idle, the deadline's
# reserve to its clamp under overload.
QUEUE_WAIT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0)
QUEUE_WAIT = Histogram(
    "fraud_queue_wait_seconds",
    "Time from nginx handing a request on to a worker starting it (socket backlog, busy workers), by route",
    ["route"],
    buckets=QUEUE_WAIT_BUCKETS,
)
SHED = Counter(
    "fraud_deadline_exceeded_total",
    "Requests refused with 503 deadline_exceeded, unread, because their budget was spent waiting",
    ["route"],
)
WORKER_EXITS = Counter(
    "fraud_worker_exits_total",
    "gunicorn workers that exited and were replaced (crashes, kills, max_requests recycling)",
)

_flagged = SCORED.labels(is_fraud="true").inc
_cleared = SCORED.labels(is_fraud="false").inc
_score = SCORES.observe
_ood = OUT_OF_DISTRIBUTION.inc


def observe_score(score: int, is_fraud: bool, ood_warning: bool = False) -> None:
    """Called by the score path once per transaction scored."""
    _score(score)
    (_flagged if is_fraud else _cleared)()
    if ood_warning:
        _ood()


_served_versions: list[str] = []


def set_model_version(version: str) -> None:
    """In the master, at start and on every rollout: the new version 1, the ones before it 0."""
    for old in _served_versions:
        MODEL_INFO.labels(version=old).set(0)
    MODEL_INFO.labels(version=version).set(1)
    _served_versions[:] = [version]


def worker_exited(pid: int) -> None:
    """gunicorn's child_exit hook, in the master: drop the dead worker's live gauges, count it."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)
    WORKER_EXITS.inc()


class RequestMetrics:
    """Falcon middleware: counts and times every request the app answers, errors included.

    Labels are bounded: the route template (or "unmatched"), a known method (or "other") and the
    status code. Each label combination's counter and histogram child is looked up once."""

    def __init__(self) -> None:
        self._children: dict[tuple[str, str, int], tuple[Callable[[], None], Callable[[float], None]]] = {}

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any, req_succeeded: bool) -> None:
        # The start time RequestContext took: it runs inside this middleware, before any responder.
        elapsed = time.perf_counter() - req.context.started
        key = (req.uri_template or "unmatched", req.method if req.method in METHODS else "other", resp.status_code)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                REQUESTS.labels(route=key[0], method=key[1], status=str(key[2])).inc,
                LATENCY.labels(route=key[0]).observe,
            )
        children[0]()
        children[1](elapsed)


class ByRoute:
    """One labelled child's method per route, looked up once: `ByRoute(QUEUE_WAIT, "observe")`."""

    def __init__(self, metric: Any, method: str) -> None:
        self._metric = metric
        self._method = method
        self._children: dict[str, Callable[..., None]] = {}

    def __call__(self, route: str, *value: float) -> None:
        child = self._children.get(route)
        if child is None:
            child = self._children[route] = getattr(self._metric.labels(route=route), self._method)
        child(*value)


class MetricsResource:
    """GET /metrics: the Prometheus text format, summed over every worker (live and dead)."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        else:
            registry = REGISTRY
        resp.data = generate_latest(registry)
        resp.content_type = CONTENT_TYPE_LATEST

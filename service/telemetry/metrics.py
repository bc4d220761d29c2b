"""Prometheus metrics, correct across gunicorn's pre-forked workers.

prometheus-client's multiprocess mode: every process writes its samples to memory-mapped files in
PROMETHEUS_MULTIPROC_DIR, and /metrics adds them up. The variable must be set before
prometheus_client is first imported (it picks its value class at import time), so the gunicorn
master calls `service.telemetry.multiproc.prepare` from gunicorn.conf.py before anything imports this module.
Without the variable (unit tests, a plain `python -c`), metrics live in the process.

In multiprocess mode the hot path (every request's count and latency, every score) does not go
through prometheus_client's values, which take a lock, check the pid and pack two doubles for each of
the five or six samples a scored request updates. Each worker writes those samples into files of its
own in the same format (`SampleFile`), which the same collector sums: an update is one float added in
shared memory. `python -m perf.experiments.metrics_cost` measures what a request pays."""

from __future__ import annotations

import math
import mmap
import os
import struct
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Any

import falcon
import numpy as np
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
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.utils import INF, floatToGoString

from service.telemetry.multiproc import ENV as MULTIPROC_ENV

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
OOD_HELDOUT_RATE = Gauge(
    "fraud_model_ood_heldout_rate",
    "The share of held-out rows the served model's out-of-distribution bounds flag: what ordinary traffic shows "
    "(NaN without calibrated bounds)",
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
CHALLENGER_SCORES = Histogram(
    "fraud_challenger_score", "The challenger's fraud scores of the same transactions (0-100)", buckets=SCORE_BUCKETS
)
AGREEMENT = Counter(
    "fraud_challenger_agreement_total",
    "Transactions scored by both models, by each one's is-fraud decision at its own threshold",
    ["champion_is_fraud", "challenger_is_fraud"],
)
# Negative observations make _sum useless for reset detection; the buckets and _count stay exact.
DIFFERENCE_BUCKETS = (-50, -20, -10, -5, -2, -1, 0, 1, 2, 5, 10, 20, 50, 100)
SCORE_DIFFERENCE = Histogram(
    "fraud_challenger_score_difference",
    "Challenger's score minus champion's, per transaction",
    buckets=DIFFERENCE_BUCKETS,
)
WORKER_EXITS = Counter(
    "fraud_worker_exits_total",
    "gunicorn workers that exited and were replaced (crashes, kills, max_requests recycling)",
)

FEATURE_STORE_FETCH = Histogram(
    "fraud_feature_store_fetch_seconds",
    "Round trips to the online feature store (one GET or MGET per request), successful ones",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)
FEATURE_STORE_MISSES = Counter(
    "fraud_feature_store_misses_total", "Transaction ids asked for that the feature store did not hold"
)
FEATURE_STORE_ROWS = Counter("fraud_feature_store_rows_total", "Transaction ids asked of the feature store")
PREDICTION_LOG_RECORDS = Counter(
    "fraud_prediction_log_records_total", "Records written to the prediction log's spool (one per scored row logged)"
)
PREDICTION_LOG_DROPPED = Counter(
    "fraud_prediction_log_dropped_total",
    "Records of scored rows the prediction log could not keep, by reason (spool_full, disk_full, unwritable, error)",
    ["reason"],
)


class SampleFile:
    """One process's samples of one metric type, in the file format of prometheus_client's
    multiprocess mode (MultiProcessCollector sums every `{type}_*.db` file in the directory, dead
    processes' too), with each sample a float64 slot of the mapped file, updated in place."""

    HEADER = struct.Struct("i")

    def __init__(self, path: str) -> None:
        self._file = open(path, "a+b")  # noqa: SIM115  (open for the life of the process)
        size = os.fstat(self._file.fileno()).st_size
        # A pid reused within one run continues the dead process's file, as prometheus_client does.
        self._slots = {key: pos // 8 for key, _, _, pos in MmapedDict.read_all_values_from_file(path)} if size else {}
        if not size:
            size = 1 << 16
            self._file.truncate(size)
        self._map = mmap.mmap(self._file.fileno(), size)
        self._used = self.HEADER.unpack_from(self._map, 0)[0] or 8
        self._map[0:4] = self.HEADER.pack(self._used)
        self.values = memoryview(self._map).cast("d")  # read it again after slot(): growing remaps

    def slot(self, key: str) -> int:
        """The index in `values` of the sample named by `key` (prometheus_client's mmap_key)."""
        found = self._slots.get(key)
        if found is not None:
            return found
        encoded = key.encode()
        padded = encoded + b" " * (8 - (len(encoded) + 4) % 8)
        entry = struct.pack(f"i{len(padded)}sdd", len(encoded), padded, 0.0, 0.0)
        if self._used + len(entry) > len(self._map):
            self.values.release()
            self._map.resize(2 * len(self._map) + len(entry))
            self.values = memoryview(self._map).cast("d")
        self._map[self._used : self._used + len(entry)] = entry
        self._used += len(entry)
        self._map[0:4] = self.HEADER.pack(self._used)  # last: a reader sees the entry whole or not at all
        self._slots[key] = slot = (self._used - 16) // 8
        return slot


def _key(metric: Any, sample: str, labels: dict[str, str]) -> str:
    return mmap_key(metric._name, sample, list(labels), list(labels.values()), metric._documentation)


class _HistogramSlots:
    def __init__(self, metric: Any, samples: SampleFile, bounds: Sequence[float], labels: dict[str, str]) -> None:
        name = metric._name
        self.sum = samples.slot(_key(metric, f"{name}_sum", labels))
        self.buckets = tuple(
            samples.slot(_key(metric, f"{name}_bucket", {**labels, "le": floatToGoString(b)})) for b in bounds
        )


class _Worker:
    """This process's sample files and the slots it has used, opened on the first update in the
    process: a forked worker starts with none (os.register_at_fork below) and opens its own."""

    def __init__(self, directory: str) -> None:
        pid = os.getpid()
        self.counters = SampleFile(os.path.join(directory, f"counter_hot_{pid}.db"))
        self.histograms = SampleFile(os.path.join(directory, f"histogram_hot_{pid}.db"))
        self.requests: dict[tuple[str, str, int], tuple[int, _HistogramSlots]] = {}
        self.score = _HistogramSlots(SCORES, self.histograms, SCORE_BOUNDS, {})
        self.flagged = self.counters.slot(_key(SCORED, "fraud_scored_total", {"is_fraud": "true"}))
        self.cleared = self.counters.slot(_key(SCORED, "fraud_scored_total", {"is_fraud": "false"}))
        self.ood = self.counters.slot(_key(OUT_OF_DISTRIBUTION, "fraud_out_of_distribution_total", {}))
        self.waits: dict[str, _HistogramSlots] = {}
        self.sheds: dict[str, int] = {}

    def request_slots(self, key: tuple[str, str, int]) -> tuple[int, _HistogramSlots]:
        route, method, status = key
        labels = {"route": route, "method": method, "status": str(status)}
        count = self.counters.slot(_key(REQUESTS, "fraud_http_requests_total", labels))
        latency = _HistogramSlots(LATENCY, self.histograms, LATENCY_BOUNDS, {"route": route})
        self.requests[key] = slots = (count, latency)
        return slots

    def wait_slots(self, route: str) -> _HistogramSlots:
        self.waits[route] = slots = _HistogramSlots(QUEUE_WAIT, self.histograms, QUEUE_WAIT_BOUNDS, {"route": route})
        return slots

    def shed_slot(self, route: str) -> int:
        self.sheds[route] = slot = self.counters.slot(_key(SHED, "fraud_deadline_exceeded_total", {"route": route}))
        return slot


LATENCY_BOUNDS = (*LATENCY_BUCKETS, INF)
SCORE_BOUNDS = (*SCORE_BUCKETS, INF)
QUEUE_WAIT_BOUNDS = (*QUEUE_WAIT_BUCKETS, INF)
_worker: list[_Worker] = []  # this process's, once opened
os.register_at_fork(after_in_child=_worker.clear)


def _this_worker() -> _Worker:
    if not _worker:
        _worker.append(_Worker(os.environ[MULTIPROC_ENV]))
    return _worker[0]


def _record_request_shared(key: tuple[str, str, int], elapsed: float) -> None:
    worker = _worker[0] if _worker else _this_worker()
    count, latency = worker.requests.get(key) or worker.request_slots(key)
    worker.counters.values[count] += 1.0
    histograms = worker.histograms.values
    histograms[latency.buckets[bisect_left(LATENCY_BOUNDS, elapsed)]] += 1.0
    histograms[latency.sum] += elapsed


def _observe_score_shared(score: int, is_fraud: bool, ood_warning: bool) -> None:
    worker = _worker[0] if _worker else _this_worker()
    histograms = worker.histograms.values
    histograms[worker.score.buckets[bisect_left(SCORE_BOUNDS, score)]] += 1.0
    histograms[worker.score.sum] += score
    counters = worker.counters.values
    counters[worker.flagged if is_fraud else worker.cleared] += 1.0
    if ood_warning:
        counters[worker.ood] += 1.0


_children: dict[tuple[str, str, int], tuple[Callable[[], None], Callable[[float], None]]] = {}


def _record_request_in_process(key: tuple[str, str, int], elapsed: float) -> None:
    children = _children.get(key)
    if children is None:
        children = _children[key] = (
            REQUESTS.labels(route=key[0], method=key[1], status=str(key[2])).inc,
            LATENCY.labels(route=key[0]).observe,
        )
    children[0]()
    children[1](elapsed)


_flagged = SCORED.labels(is_fraud="true").inc
_cleared = SCORED.labels(is_fraud="false").inc


def _observe_score_in_process(score: int, is_fraud: bool, ood_warning: bool) -> None:
    SCORES.observe(score)
    (_flagged if is_fraud else _cleared)()
    if ood_warning:
        OUT_OF_DISTRIBUTION.inc()


# prometheus_client chose its mode when first imported, from the same variable.
_SHARED = bool(os.environ.get(MULTIPROC_ENV))
_record_request = _record_request_shared if _SHARED else _record_request_in_process
_observe_score = _observe_score_shared if _SHARED else _observe_score_in_process


def observe_score(score: int, is_fraud: bool, ood_warning: bool = False) -> None:
    """Called by the score path once per transaction scored."""
    _observe_score(score, is_fraud, ood_warning)


def _batch_counts(scores: np.ndarray, is_fraud: np.ndarray, ood_warning: np.ndarray) -> tuple[list[int], int, int]:
    """Per score bucket, how many of the scores observe() would put in it (the first upper bound
    >= the score); how many rows were flagged; how many were out of distribution."""
    buckets = np.bincount(np.searchsorted(_SCORE_BOUNDS, scores, side="left"), minlength=len(SCORE_BOUNDS))
    return buckets.tolist(), int(np.count_nonzero(is_fraud)), int(np.count_nonzero(ood_warning))


def _observe_scores_shared(scores: np.ndarray, is_fraud: np.ndarray, ood_warning: np.ndarray) -> None:
    buckets, flagged, outside = _batch_counts(scores, is_fraud, ood_warning)
    worker = _worker[0] if _worker else _this_worker()
    histograms = worker.histograms.values
    for slot, count in zip(worker.score.buckets, buckets, strict=True):
        if count:
            histograms[slot] += count
    histograms[worker.score.sum] += float(scores.sum())
    counters = worker.counters.values
    counters[worker.flagged] += flagged
    counters[worker.cleared] += len(scores) - flagged
    if outside:
        counters[worker.ood] += outside


def _observe_scores_in_process(scores: np.ndarray, is_fraud: np.ndarray, ood_warning: np.ndarray) -> None:
    # prometheus-client has no bulk observe: add to the histogram's bucket and sum values directly.
    buckets, flagged, outside = _batch_counts(scores, is_fraud, ood_warning)
    for value, count in zip(SCORES._buckets, buckets, strict=True):
        if count:
            value.inc(count)
    SCORES._sum.inc(float(scores.sum()))
    if flagged:
        _flagged(flagged)
    if flagged < len(scores):
        _cleared(len(scores) - flagged)
    if outside:
        OUT_OF_DISTRIBUTION.inc(outside)


_SCORE_BOUNDS = np.array(SCORE_BOUNDS, dtype=np.float64)
_observe_scores = _observe_scores_shared if _SHARED else _observe_scores_in_process


def observe_scores(scores: np.ndarray, is_fraud: np.ndarray, ood_warning: np.ndarray) -> None:
    """A batch's scores in one update per bucket and counter, not one per row: the samples
    observe_score leaves row by row (tests/test_metrics.py compares them, in both modes)."""
    if len(scores):
        _observe_scores(scores, is_fraud, ood_warning)


DIFFERENCE_BOUNDS = (*DIFFERENCE_BUCKETS, INF)
_CELLS = tuple((champion, challenger) for champion in (False, True) for challenger in (False, True))


def _cell_labels(champion: bool, challenger: bool) -> dict[str, str]:
    return {"champion_is_fraud": str(champion).lower(), "challenger_is_fraud": str(challenger).lower()}


def _cells(champion_is_fraud: np.ndarray, is_fraud: np.ndarray) -> list[int]:
    """Rows in each agreement cell, in _CELLS order."""
    return np.bincount(2 * champion_is_fraud.astype(np.int64) + is_fraud.astype(np.int64), minlength=4).tolist()


class _ChallengerSlots:
    def __init__(self, worker: _Worker) -> None:
        self.score = _HistogramSlots(CHALLENGER_SCORES, worker.histograms, SCORE_BOUNDS, {})
        self.difference = _HistogramSlots(SCORE_DIFFERENCE, worker.histograms, DIFFERENCE_BOUNDS, {})
        self.cells = tuple(
            worker.counters.slot(_key(AGREEMENT, "fraud_challenger_agreement_total", _cell_labels(*cell)))
            for cell in _CELLS
        )


_challenger: list[_ChallengerSlots] = []  # this process's, once opened
os.register_at_fork(after_in_child=_challenger.clear)


def _challenger_slots() -> _ChallengerSlots:
    if not _challenger:
        _challenger.append(_ChallengerSlots(_this_worker()))
    return _challenger[0]


def _observe_challenger_shared(champion_score: int, champion_is_fraud: bool, score: int, is_fraud: bool) -> None:
    slots = _challenger[0] if _challenger else _challenger_slots()
    worker = _worker[0]
    histograms = worker.histograms.values
    histograms[slots.score.buckets[bisect_left(SCORE_BOUNDS, score)]] += 1.0
    histograms[slots.score.sum] += score
    difference = score - champion_score
    histograms[slots.difference.buckets[bisect_left(DIFFERENCE_BOUNDS, difference)]] += 1.0
    histograms[slots.difference.sum] += difference
    worker.counters.values[slots.cells[2 * champion_is_fraud + is_fraud]] += 1.0


def _add_to_histogram(samples: SampleFile, slots: _HistogramSlots, bounds: Sequence[float], values: np.ndarray) -> None:
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds)).tolist()
    for slot, n in zip(slots.buckets, counts, strict=True):
        if n:
            samples.values[slot] += n
    samples.values[slots.sum] += float(np.sum(values))


def _observe_challenger_rows_shared(
    champion_scores: np.ndarray, champion_is_fraud: np.ndarray, scores: np.ndarray, is_fraud: np.ndarray
) -> None:
    slots = _challenger[0] if _challenger else _challenger_slots()
    worker = _worker[0]
    _add_to_histogram(worker.histograms, slots.score, SCORE_BOUNDS, scores)
    _add_to_histogram(worker.histograms, slots.difference, DIFFERENCE_BOUNDS, scores - champion_scores)
    for slot, n in zip(slots.cells, _cells(champion_is_fraud, is_fraud), strict=True):
        if n:
            worker.counters.values[slot] += n


_agreement = [AGREEMENT.labels(**_cell_labels(*cell)).inc for cell in _CELLS]


def _observe_challenger_in_process(champion_score: int, champion_is_fraud: bool, score: int, is_fraud: bool) -> None:
    CHALLENGER_SCORES.observe(score)
    _agreement[2 * champion_is_fraud + is_fraud]()
    SCORE_DIFFERENCE.observe(score - champion_score)


def _observe_challenger_rows_in_process(
    champion_scores: np.ndarray, champion_is_fraud: np.ndarray, scores: np.ndarray, is_fraud: np.ndarray
) -> None:
    for score, difference in zip(scores.tolist(), (scores - champion_scores).tolist(), strict=True):
        CHALLENGER_SCORES.observe(score)
        SCORE_DIFFERENCE.observe(difference)
    for increment, n in zip(_agreement, _cells(champion_is_fraud, is_fraud), strict=True):
        if n:
            increment(n)


_observe_challenger = _observe_challenger_shared if _SHARED else _observe_challenger_in_process
_observe_challenger_rows = _observe_challenger_rows_shared if _SHARED else _observe_challenger_rows_in_process


def observe_challenger(champion_score: int, champion_is_fraud: bool, score: int, is_fraud: bool) -> None:
    """Called once per transaction the challenger scored beside the champion."""
    _observe_challenger(champion_score, champion_is_fraud, score, is_fraud)


def observe_challenger_rows(
    champion_scores: np.ndarray, champion_is_fraud: np.ndarray, scores: np.ndarray, is_fraud: np.ndarray
) -> None:
    """observe_challenger for a batch's rows, in one update per bucket and per agreement cell."""
    _observe_challenger_rows(champion_scores, champion_is_fraud, scores, is_fraud)


_fetched = FEATURE_STORE_FETCH.observe
_asked = FEATURE_STORE_ROWS.inc
_missed = FEATURE_STORE_MISSES.inc


def observe_fetch(seconds: float, rows: int, misses: int) -> None:
    """Called once per round trip to the feature store. Failed ones are in the request metrics as
    503s with the route's label."""
    _fetched(seconds)
    _asked(rows)
    if misses:
        _missed(misses)


_served_versions: list[str] = []


def set_ood_heldout_rate(rate: float | None) -> None:
    """In the master, at start and on every rollout: the out-of-distribution alarm compares the live
    rate against a multiple of it. NaN (the alarm never fires) for a model without calibrated
    bounds, or with OOD_Z's rule, whose ordinary rate nobody measured."""
    OOD_HELDOUT_RATE.set(math.nan if rate is None else rate)


def count_logged(rows: int) -> None:
    PREDICTION_LOG_RECORDS.inc(rows)


def count_log_dropped(reason: str, rows: int) -> None:
    PREDICTION_LOG_DROPPED.labels(reason).inc(rows)


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


def record_request(route: str | None, method: str, status: int, elapsed: float) -> None:
    """Counts and times one request the app answered, errors included (service/api/app.py's middleware
    calls it last, with the final status).

    Labels are bounded: the route template (or "unmatched"), a known method (or "other") and the
    status code. Each label combination's samples are looked up once."""
    _record_request((route or "unmatched", method if method in METHODS else "other", status), elapsed)


def _observe_queue_wait_shared(route: str, seconds: float) -> None:
    worker = _worker[0] if _worker else _this_worker()
    slots = worker.waits.get(route) or worker.wait_slots(route)
    histograms = worker.histograms.values
    histograms[slots.buckets[bisect_left(QUEUE_WAIT_BOUNDS, seconds)]] += 1.0
    histograms[slots.sum] += seconds


def _count_shed_shared(route: str) -> None:
    worker = _worker[0] if _worker else _this_worker()
    slot = worker.sheds.get(route)
    worker.counters.values[worker.shed_slot(route) if slot is None else slot] += 1.0


_wait_children: dict[str, Callable[[float], None]] = {}
_shed_children: dict[str, Callable[[], None]] = {}


def _observe_queue_wait_in_process(route: str, seconds: float) -> None:
    child = _wait_children.get(route)
    if child is None:
        child = _wait_children[route] = QUEUE_WAIT.labels(route=route).observe
    child(seconds)


def _count_shed_in_process(route: str) -> None:
    child = _shed_children.get(route)
    if child is None:
        child = _shed_children[route] = SHED.labels(route=route).inc
    child()


_observe_queue_wait = _observe_queue_wait_shared if _SHARED else _observe_queue_wait_in_process
_count_shed = _count_shed_shared if _SHARED else _count_shed_in_process


def observe_queue_wait(route: str, seconds: float) -> None:
    """Called for every request the deadline guard sees: its wait from nginx's stamp, by route."""
    _observe_queue_wait(route, seconds)


def count_shed(route: str) -> None:
    """Called for every request refused with 503 deadline_exceeded, by route."""
    _count_shed(route)


class MetricsResource:
    """GET /metrics: the Prometheus text format, summed over every worker (live and dead), and what
    the collectors passed in (drift counts, which keep their own per-worker files) report."""

    def __init__(self, collectors: Sequence[Any] = ()) -> None:
        self._collectors = collectors

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        else:
            registry = REGISTRY
        resp.data = generate_latest(registry) + b"".join(generate_latest(c) for c in self._collectors)
        resp.content_type = CONTENT_TYPE_LATEST

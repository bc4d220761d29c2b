"""Prometheus metrics, correct across gunicorn's pre-forked workers.

Every metric is written in one code path, whatever the mode. The request and score metrics (the hot
path: every request's count and latency, every score) are written by each process into sample files
of its own (`SampleFile`), in prometheus_client's multiprocess format, and read back summed by its
MultiProcessCollector: an update is one float added in shared memory, with none of the lock, pid
check and packing of prometheus_client's own multiprocess values (`python -m
perf.experiments.metrics_cost` measures what a request pays). The files are in
PROMETHEUS_MULTIPROC_DIR under gunicorn, else (unit tests, a plain `python -c`) in a directory of
this process's own. The rare metrics (the model's version, worker exits, feature-store round
trips) are prometheus_client's own objects, in its multiprocess mode when PROMETHEUS_MULTIPROC_DIR
is set: it must be set before prometheus_client is first imported (it picks its value class at
import time), so the gunicorn master calls `service.telemetry.multiproc.prepare` from
gunicorn.conf.py before anything imports this module.

The sample files rely on prometheus_client's multiprocess file format, not a public API:
pyproject.toml bounds prometheus-client's version, and tests/test_metrics.py compares these files
with prometheus_client's own values for the same updates, so that a change in the format fails there
first."""

from __future__ import annotations

import atexit
import math
import mmap
import os
import shutil
import struct
import tempfile
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
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
from service.telemetry.stages import STAGES, Stages, use_histogram

# Latency of the app itself (nginx's view, with queueing, is in its access log): tens of µs to
# the proxy's 10 s read timeout.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
SCORE_BUCKETS = (1, 2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99, 100)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Queue waits from nginx's stamp to a worker: well under a millisecond idle, the deadline's
# reserve to its clamp under overload.
QUEUE_WAIT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0)
# A request's stages (service/telemetry/stages.py): a few µs (reading, scoring and writing one
# transaction) to the milliseconds of a batch, a feature-store round trip or a queue under load.
STAGE_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
# Negative observations make _sum useless for reset detection; the buckets and _count stay exact.
DIFFERENCE_BUCKETS = (-50, -20, -10, -5, -2, -1, 0, 1, 2, 5, 10, 20, 50, 100)


@dataclass(frozen=True)
class Family:
    """A metric written through the sample files: its name (a counter's without `_total`), help,
    type and labels, and a histogram's buckets."""

    name: str
    documentation: str
    kind: str  # "counter" or "histogram"
    labelnames: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    @property
    def bounds(self) -> tuple[float, ...]:
        """A histogram's upper bounds, +Inf last: bucket i holds the values <= bounds[i]."""
        return (*self.buckets, INF)

    def key(self, sample: str, labels: dict[str, str]) -> str:
        """The sample's key in a sample file, as prometheus_client writes it."""
        return mmap_key(self.name, f"{self.name}{sample}", list(labels), list(labels.values()), self.documentation)


REQUESTS = Family(
    "fraud_http_requests",
    "HTTP requests answered by the app, by route, method and status",
    "counter",
    ("route", "method", "status"),
)
LATENCY = Family(
    "fraud_http_request_duration_seconds",
    "Time the app spent on a request, by route",
    "histogram",
    ("route",),
    LATENCY_BUCKETS,
)
SCORES = Family(
    "fraud_score",
    "Fraud scores returned (0-100): their distribution drifts with the data",
    "histogram",
    buckets=SCORE_BUCKETS,
)
SCORED = Family("fraud_scored", "Transactions scored, by whether they were flagged as fraud", "counter", ("is_fraud",))
OUT_OF_DISTRIBUTION = Family(
    "fraud_out_of_distribution",
    "Transactions scored with an ood-warning (features outside the training range)",
    "counter",
)
QUEUE_WAIT = Family(
    "fraud_queue_wait_seconds",
    "Time from nginx handing a request on to a worker starting it (socket backlog, busy workers), by route",
    "histogram",
    ("route",),
    QUEUE_WAIT_BUCKETS,
)
SHED = Family(
    "fraud_deadline_exceeded",
    "Requests refused with 503 deadline_exceeded, unread, because their budget was spent waiting",
    "counter",
    ("route",),
)
CHALLENGER_SCORES = Family(
    "fraud_challenger_score",
    "The challenger's fraud scores of the same transactions (0-100)",
    "histogram",
    buckets=SCORE_BUCKETS,
)
AGREEMENT = Family(
    "fraud_challenger_agreement",
    "Transactions scored by both models, by each one's is-fraud decision at its own threshold",
    "counter",
    ("champion_is_fraud", "challenger_is_fraud"),
)
SCORE_DIFFERENCE = Family(
    "fraud_challenger_score_difference",
    "Challenger's score minus champion's, per transaction",
    "histogram",
    buckets=DIFFERENCE_BUCKETS,
)
STAGE = Family(
    "fraud_request_stage_seconds",
    "Time a scoring request spent in each stage (queue, read, fetch, score, challenger, write), by route",
    "histogram",
    ("route", "stage"),
    STAGE_BUCKETS,
)
use_histogram(STAGE.bounds)  # the C pass that records a request's stages reads them
# Counted on every logged request: through the sample files, as the scores are, not prometheus_client's
# locked value (≈ 2.5 µs a request).
PREDICTION_LOG_RECORDS = Family(
    "fraud_prediction_log_records",
    "Records written to the prediction log's spool (one per scored row logged)",
    "counter",
)
FAMILIES = (
    REQUESTS,
    LATENCY,
    SCORES,
    SCORED,
    OUT_OF_DISTRIBUTION,
    QUEUE_WAIT,
    SHED,
    CHALLENGER_SCORES,
    AGREEMENT,
    SCORE_DIFFERENCE,
    STAGE,
    PREDICTION_LOG_RECORDS,
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
PREDICTION_LOG_DROPPED = Counter(
    "fraud_prediction_log_dropped_total",
    "Records of scored rows the prediction log could not keep, by reason (spool_full, disk_full, unwritable, error)",
    ["reason"],
)
TRACE_SPANS_DROPPED = Counter(
    "fraud_trace_spans_dropped_total",
    "Server spans the OpenTelemetry export could not deliver, by reason (queue_full: the export queue was "
    "full; export_failed: the collector did not take the batch)",
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


class _HistogramSlots:
    def __init__(self, family: Family, samples: SampleFile, labels: dict[str, str]) -> None:
        self.bounds = family.bounds
        self.sum = samples.slot(family.key("_sum", labels))
        self.buckets = tuple(
            samples.slot(family.key("_bucket", {**labels, "le": floatToGoString(b)})) for b in self.bounds
        )

    def observe(self, samples: SampleFile, value: float) -> None:
        values = samples.values
        values[self.buckets[bisect_left(self.bounds, value)]] += 1.0
        values[self.sum] += value

    def observe_many(self, samples: SampleFile, values: np.ndarray) -> None:
        """Every value, in one update per bucket: the samples observe() leaves value by value."""
        counts = np.bincount(np.searchsorted(self.bounds, values, side="left"), minlength=len(self.bounds)).tolist()
        for slot, n in zip(self.buckets, counts, strict=True):
            if n:
                samples.values[slot] += n
        samples.values[self.sum] += float(np.sum(values))


def _cell_labels(champion: bool, challenger: bool) -> dict[str, str]:
    return {"champion_is_fraud": str(champion).lower(), "challenger_is_fraud": str(challenger).lower()}


_CELLS = tuple((champion, challenger) for champion in (False, True) for challenger in (False, True))


class _Process:
    """This process's sample files and the slots it has used, opened on the first update in the
    process (a forked worker starts with none: os.register_at_fork below); the metrics without
    labels are there from the start, at zero, as prometheus_client's own are."""

    def __init__(self, directory: str) -> None:
        pid = os.getpid()
        self.counters = SampleFile(os.path.join(directory, f"counter_hot_{pid}.db"))
        self.histograms = SampleFile(os.path.join(directory, f"histogram_hot_{pid}.db"))
        self.requests: dict[tuple[str, str, int], tuple[int, _HistogramSlots]] = {}
        self.score = _HistogramSlots(SCORES, self.histograms, {})
        self.flagged = self.counters.slot(SCORED.key("_total", {"is_fraud": "true"}))
        self.cleared = self.counters.slot(SCORED.key("_total", {"is_fraud": "false"}))
        self.ood = self.counters.slot(OUT_OF_DISTRIBUTION.key("_total", {}))
        self.logged = self.counters.slot(PREDICTION_LOG_RECORDS.key("_total", {}))
        self.waits: dict[str, _HistogramSlots] = {}
        self.sheds: dict[str, int] = {}
        # route -> per stage in STAGES order, (sum's slot, bucket slots), or None until first timed
        self.stages: dict[str, list[tuple[int, ...] | None]] = {}
        self.challenger_score = _HistogramSlots(CHALLENGER_SCORES, self.histograms, {})
        self.difference = _HistogramSlots(SCORE_DIFFERENCE, self.histograms, {})
        self._cells: tuple[int, ...] | None = None

    def request_slots(self, key: tuple[str, str, int]) -> tuple[int, _HistogramSlots]:
        route, method, status = key
        labels = {"route": route, "method": method, "status": str(status)}
        count = self.counters.slot(REQUESTS.key("_total", labels))
        latency = _HistogramSlots(LATENCY, self.histograms, {"route": route})
        self.requests[key] = slots = (count, latency)
        return slots

    def wait_slots(self, route: str) -> _HistogramSlots:
        self.waits[route] = slots = _HistogramSlots(QUEUE_WAIT, self.histograms, {"route": route})
        return slots

    def route_stages(self, route: str) -> list[tuple[int, ...] | None]:
        self.stages[route] = slots = [None] * len(STAGES)
        return slots

    def shed_slot(self, route: str) -> int:
        self.sheds[route] = slot = self.counters.slot(SHED.key("_total", {"route": route}))
        return slot

    @property
    def cells(self) -> tuple[int, ...]:
        """The agreement counters, in _CELLS order, made on the first challenger score."""
        if self._cells is None:
            self._cells = tuple(self.counters.slot(AGREEMENT.key("_total", _cell_labels(*cell))) for cell in _CELLS)
        return self._cells


def _private_directory() -> str:
    """Without PROMETHEUS_MULTIPROC_DIR: a directory of this process's own (and its forks'),
    removed when the process that made it exits."""
    path = tempfile.mkdtemp(prefix="fraud-scoring-metrics-")
    owner = os.getpid()
    atexit.register(lambda: os.getpid() == owner and shutil.rmtree(path, ignore_errors=True))
    return path


# prometheus_client chose its mode when first imported, from the same variable.
_SHARED = bool(os.environ.get(MULTIPROC_ENV))
SAMPLES_DIR = os.environ[MULTIPROC_ENV] if _SHARED else _private_directory()
_process: list[_Process] = []  # this process's, once opened
os.register_at_fork(after_in_child=_process.clear)


def _this_process() -> _Process:
    if not _process:
        _process.append(_Process(SAMPLES_DIR))
    return _process[0]


_this_process()  # the metrics without labels, at zero, before the first request


def record_request(route: str | None, method: str, status: int, elapsed: float) -> None:
    """Counts and times one request the app answered, errors included (service/api/app.py's middleware
    calls it last, with the final status).

    Labels are bounded: the route template (or "unmatched"), a known method (or "other") and the
    status code. Each label combination's samples are looked up once."""
    key = (route or "unmatched", method if method in METHODS else "other", status)
    process = _process[0] if _process else _this_process()
    count, latency = process.requests.get(key) or process.request_slots(key)
    process.counters.values[count] += 1.0
    latency.observe(process.histograms, elapsed)


def record_stages(route: str, stages: Stages, app_ms: str) -> str:
    """Times each stage a scoring request went through (its finished Stages) and returns their
    Server-Timing header, in one C pass (service/telemetry/stages.py); service/api/app.py's
    middleware calls it with record_request. The labels are bounded: a route template and a
    stage's name."""
    process = _process[0] if _process else _this_process()
    slots = process.stages.get(route) or process.route_stages(route)
    header = stages.report(process.histograms.values, slots, app_ms)
    if header is None:  # a stage not timed on this route before: its samples made, then recorded
        for stage, _ in stages.durations:
            index = STAGES.index(stage)
            if slots[index] is None:
                made = _HistogramSlots(STAGE, process.histograms, {"route": route, "stage": stage})
                slots[index] = (made.sum, *made.buckets)
        header = stages.report(process.histograms.values, slots, app_ms)  # read again: the file may have grown
    return header


def observe_score(score: int, is_fraud: bool, ood_warning: bool = False) -> None:
    """Called by the score path once per transaction scored."""
    process = _process[0] if _process else _this_process()
    process.score.observe(process.histograms, score)
    counters = process.counters.values
    counters[process.flagged if is_fraud else process.cleared] += 1.0
    if ood_warning:
        counters[process.ood] += 1.0


def observe_scores(scores: np.ndarray, is_fraud: np.ndarray, ood_warning: np.ndarray) -> None:
    """A batch's scores in one update per bucket and counter, not one per row: the samples
    observe_score leaves row by row (tests/test_metrics.py compares them)."""
    if not len(scores):
        return
    process = _process[0] if _process else _this_process()
    process.score.observe_many(process.histograms, scores)
    flagged, outside = int(np.count_nonzero(is_fraud)), int(np.count_nonzero(ood_warning))
    counters = process.counters.values
    counters[process.flagged] += flagged
    counters[process.cleared] += len(scores) - flagged
    if outside:
        counters[process.ood] += outside


def observe_challenger(champion_score: int, champion_is_fraud: bool, score: int, is_fraud: bool) -> None:
    """Called once per transaction the challenger scored beside the champion."""
    process = _process[0] if _process else _this_process()
    process.challenger_score.observe(process.histograms, score)
    process.difference.observe(process.histograms, score - champion_score)
    process.counters.values[process.cells[2 * champion_is_fraud + is_fraud]] += 1.0


def observe_challenger_rows(
    champion_scores: np.ndarray, champion_is_fraud: np.ndarray, scores: np.ndarray, is_fraud: np.ndarray
) -> None:
    """observe_challenger for a batch's rows, in one update per bucket and per agreement cell."""
    process = _process[0] if _process else _this_process()
    process.challenger_score.observe_many(process.histograms, scores)
    process.difference.observe_many(process.histograms, scores - champion_scores)
    cells = np.bincount(2 * champion_is_fraud.astype(np.int64) + is_fraud.astype(np.int64), minlength=4).tolist()
    for slot, n in zip(process.cells, cells, strict=True):
        if n:
            process.counters.values[slot] += n


def observe_queue_wait(route: str, seconds: float) -> None:
    """Called for every request the deadline guard sees: its wait from nginx's stamp, by route."""
    process = _process[0] if _process else _this_process()
    slots = process.waits.get(route) or process.wait_slots(route)
    slots.observe(process.histograms, seconds)


def count_shed(route: str) -> None:
    """Called for every request refused with 503 deadline_exceeded, by route."""
    process = _process[0] if _process else _this_process()
    slot = process.sheds.get(route)
    process.counters.values[process.shed_slot(route) if slot is None else slot] += 1.0


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
    process = _process[0] if _process else _this_process()
    process.counters.values[process.logged] += rows


def count_log_dropped(reason: str, rows: int) -> None:
    PREDICTION_LOG_DROPPED.labels(reason).inc(rows)


def count_spans_dropped(reason: str, spans: int) -> None:
    TRACE_SPANS_DROPPED.labels(reason).inc(spans)


def set_model_version(version: str) -> None:
    """In the master, at start and on every rollout: the new version 1, the ones before it 0."""
    for old in _served_versions:
        MODEL_INFO.labels(version=old).set(0)
    MODEL_INFO.labels(version=version).set(1)
    _served_versions[:] = [version]


def worker_exited(pid: int) -> None:
    """gunicorn's child_exit hook, in the master: drop the dead worker's live gauges, count it."""
    if _SHARED:
        multiprocess.mark_process_dead(pid)
    WORKER_EXITS.inc()


def exposition() -> bytes:
    """Every metric in the Prometheus text format, summed over every process (live and dead)."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=SAMPLES_DIR)
    text = generate_latest(registry)
    # In multiprocess mode prometheus_client's own metrics are in the same files; else in here.
    return text if _SHARED else generate_latest(REGISTRY) + text


class MetricsResource:
    """GET /metrics: the Prometheus text format, summed over every worker (live and dead), and what
    the collectors passed in (drift counts, which keep their own per-worker files) report."""

    def __init__(self, collectors: Sequence[Any] = ()) -> None:
        self._collectors = collectors

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data = exposition() + b"".join(generate_latest(c) for c in self._collectors)
        resp.content_type = CONTENT_TYPE_LATEST

"""/metrics over real nginx and several real gunicorn workers: counts add up across processes,
survive a worker's death, and the per-request cost stays within the hot path's budget."""

from __future__ import annotations

import math
import os
import signal

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import Client, sample_transaction, samples, start_stack, value, wait_for, workers_of


def test_counts_add_up_across_workers_and_survive_a_killed_worker(stack_factory):
    stack = stack_factory(WORKERS="3")
    client = Client("127.0.0.1", stack.settings.port)
    master = stack.gunicorn.pid
    workers = wait_for(lambda: w if len(w := workers_of(master)) == 3 else None)
    for _ in range(60):  # a new connection each time: the kernel spreads them over the workers
        reply = client.score(sample_transaction())
        assert reply.status == 200
    for _ in range(4):
        assert client.score({}).status == 422
    assert client.score(sample_transaction(), key="not-a-valid-key-at-all").status == 403

    found = samples(client)
    assert value(found, "fraud_http_requests_total", route="/v1/fraud-score", method="POST", status="200") == 60
    assert value(found, "fraud_http_requests_total", route="/v1/fraud-score", method="POST", status="422") == 4
    assert value(found, "fraud_http_requests_total", route="/v1/fraud-score", method="POST", status="403") == 1
    assert value(found, "fraud_http_request_duration_seconds_count", route="/v1/fraud-score") == 65
    assert value(found, "fraud_score_count") == 60
    assert (
        value(found, "fraud_scored_total", is_fraud="false") + value(found, "fraud_scored_total", is_fraud="true") == 60
    )
    assert value(found, "fraud_model_info", version="test-3") == 1
    assert math.isnan(value(found, "fraud_model_ood_heldout_rate"))  # no calibrated bounds: the alarm is off
    assert value(found, "fraud_worker_exits_total") == 0
    # More than one process wrote those samples.
    files = os.listdir(stack.run_dir / "metrics")
    assert len({f.rsplit("_", 1)[-1] for f in files if f.startswith("counter_")}) >= 2, files

    victim = sorted(workers)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in workers_of(master) and len(workers_of(master)) == 3)
    found = samples(client)
    assert value(found, "fraud_worker_exits_total") == 1
    # The dead worker's requests still count: counters are never lost with a process.
    assert value(found, "fraud_http_requests_total", route="/v1/fraud-score", method="POST", status="200") == 60
    assert value(found, "fraud_model_info", version="test-3") == 1


def test_the_metrics_directory_is_wiped_at_start(small_model, tmp_path):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    stale = metrics_dir / "counter_999999.db"
    stale.write_bytes(b"left over from a previous run")
    stack = start_stack(small_model[0], tmp_path / "logs", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    try:
        assert not stale.exists()
        assert samples(Client("127.0.0.1", stack.settings.port))  # and the scrape works
    finally:
        stack.stop()


def test_a_batch_counted_in_one_update_gives_the_samples_of_row_by_row_counting():
    """observe_scores and observe_challenger_rows add a batch in one update per bucket and counter:
    they must leave exactly the samples the row-by-row calls leave for the same rows (bucket edges
    included)."""
    import numpy as np

    from service.telemetry import metrics

    names = ("fraud_score", "fraud_scored", "fraud_out_of_distribution", "fraud_challenger")

    def snapshot() -> dict:
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(metrics.exposition().decode())
            if family.name.startswith(names)
            for s in family.samples
        }

    rng = np.random.default_rng(5)
    scores = np.concatenate([np.array([0, 1, 2, 5, 99, 100, 50, 51], dtype=np.int32), rng.integers(0, 101, 500)])
    is_fraud = scores >= 50
    ood = rng.random(len(scores)) < 0.2
    champion = rng.integers(0, 101, len(scores)).astype(np.int32)

    def delta(count) -> dict:
        before = snapshot()
        count()
        return {k: v - before.get(k, 0.0) for k, v in snapshot().items()}

    def row_by_row() -> None:
        for s, f, o, c in zip(scores.tolist(), is_fraud.tolist(), ood.tolist(), champion.tolist(), strict=True):
            metrics.observe_score(s, f, o)
            metrics.observe_challenger(c, c >= 50, s, f)

    def at_once() -> None:
        metrics.observe_scores(scores, is_fraud, ood)
        metrics.observe_challenger_rows(champion, champion >= 50, scores, is_fraud)

    one_by_one = delta(row_by_row)
    assert delta(at_once) == one_by_one
    assert one_by_one[("fraud_score_count", frozenset())] == len(scores)
    assert one_by_one[("fraud_challenger_score_difference_count", frozenset())] == len(scores)


# The same updates written through the service's metrics (its sample files), or through
# prometheus_client's own multiprocess values for metrics of the same names, help, labels and buckets:
# the reference the sample files' format must match.
RECORD = """
import os, sys
import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from service.telemetry import metrics as m
from service.telemetry.stages import Stages


def timed(queue, read, fetch, score, challenger, write):  # a finished request's Stages, from each stage's ns
    timing = Stages(10**9)
    at = timing.start
    if read:
        timing.read = at = at + read
        if fetch:
            timing.fetched = at = at + fetch
        if score:
            timing.scored = at = at + score + challenger
            timing.challenger = challenger
    timing.end, timing.queue = at + write, queue
    return timing


if sys.argv[1] == "prometheus":
    own = {
        f.name: Counter(f.name, f.documentation, f.labelnames, registry=None)
        if f.kind == "counter"
        else Histogram(f.name, f.documentation, f.labelnames, buckets=f.buckets, registry=None)
        for f in m.FAMILIES
    }

    def child(family, **labels):
        return own[family.name].labels(**labels) if labels else own[family.name]

    def record(route, method, status, elapsed):
        child(m.REQUESTS, route=route, method=method, status=str(status)).inc()
        child(m.LATENCY, route=route).observe(elapsed)

    def observe(score, is_fraud, ood):
        child(m.SCORES).observe(score)
        child(m.SCORED, is_fraud=str(bool(is_fraud)).lower()).inc()
        if ood:
            child(m.OUT_OF_DISTRIBUTION).inc()

    def wait(route, seconds):
        child(m.QUEUE_WAIT, route=route).observe(seconds)

    def shed(route):
        child(m.SHED, route=route).inc()

    def stages(route, timing):
        for stage, seconds in timing.durations:
            child(m.STAGE, route=route, stage=stage).observe(seconds)

    def challenger(champion, champion_is_fraud, score, is_fraud):
        child(m.CHALLENGER_SCORES).observe(score)
        child(m.SCORE_DIFFERENCE).observe(score - champion)
        labels = {"champion_is_fraud": str(bool(champion_is_fraud)).lower(), "challenger_is_fraud": str(bool(is_fraud)).lower()}
        child(m.AGREEMENT, **labels).inc()

    def batch(scores, is_fraud, ood):
        for row in zip(scores.tolist(), is_fraud.tolist(), ood.tolist()):
            observe(*row)

    def challenger_rows(champions, champions_fraud, scores, is_fraud):
        for row in zip(champions.tolist(), champions_fraud.tolist(), scores.tolist(), is_fraud.tolist()):
            challenger(*row)
else:
    record, observe, wait, shed = m.record_request, m.observe_score, m.observe_queue_wait, m.count_shed
    def stages(route, timing):
        m.record_stages(route, timing, "1.000")
    challenger, batch, challenger_rows = m.observe_challenger, m.observe_scores, m.observe_challenger_rows

for i in range(300):  # bounds included: a value on a bucket's bound belongs to that bucket
    record("/v1/fraud-score", "POST", 200 if i % 7 else 422, [0.0005, 0.001, 0.0123, 20.0, i * 1e-4][i % 5])
    observe(i % 101, i % 3 == 0, i % 11 == 0)
    wait(["/v1/fraud-score", "/v2/models/{name}/infer"][i % 2], [0.0, 0.001, 0.0042, 0.15, 3.0, i * 1e-3][i % 6])
    challenger((i * 7) % 101, i % 5 == 0, i % 101, i % 3 == 0)
    if i % 13 == 0:
        shed("/v1/fraud-score/batch")
    stages(  # 10,000 ns: on a bucket's bound
        ["/v1/fraud-score", "/v1/fraud-score/by-id"][i % 2],
        timed(0.001 if i % 5 else None, i * 1000 if i % 3 else 0, 250_000 * (i % 3 == 2), 10_000, 3_000 * (i % 4 == 0), 500_000),
    )
scores = np.arange(202, dtype=np.int32) % 101  # a batch counted at once: the samples of 202 more rows
batch(scores, scores >= 50, scores % 4 == 0)
challenger_rows(scores[::-1].copy(), scores[::-1] >= 50, scores, scores >= 40)
if os.fork() == 0:  # a forked worker writes files of its own
    record("/health", "GET", 200, 0.002)
    observe(100, True, True)
    wait("/v1/fraud-score", 0.2)
    shed("/v1/fraud-score")
    challenger(0, False, 100, True)
    stages("/v1/fraud-score", timed(None, 2_000_000, 0, 50_000, 100_000, 10_000))
    os._exit(0)
os.wait()
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
sys.stdout.write(generate_latest(registry).decode())
"""


def test_the_sample_files_expose_what_prometheus_clients_own_values_would(tmp_path):
    """The same updates through prometheus_client's own multiprocess values and through the sample
    files give the same /metrics text, forked processes included. The sample files follow
    prometheus_client's file format, which is not its public API: this fails first if it changes."""
    import subprocess
    import sys

    exposed = {}
    for way in ("prometheus", "sample-files"):
        directory = tmp_path / way
        directory.mkdir()
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
        run = subprocess.run(
            [sys.executable, "-c", RECORD, way], env=env, capture_output=True, text=True, check=True, timeout=120
        )
        exposed[way] = {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(run.stdout)
            for s in family.samples
        }
    assert exposed["sample-files"] == exposed["prometheus"]
    assert exposed["sample-files"][("fraud_score_count", frozenset())] == 301 + 202  # rows, then a batch
    assert exposed["sample-files"][("fraud_challenger_score_count", frozenset())] == 301 + 202
    assert exposed["sample-files"][("fraud_queue_wait_seconds_count", frozenset({("route", "/v1/fraud-score")}))] == 151
    assert exposed["sample-files"][("fraud_deadline_exceeded_total", frozenset({("route", "/v1/fraud-score")}))] == 1
    read = frozenset({("route", "/v1/fraud-score"), ("stage", "read")})
    assert exposed["sample-files"][("fraud_request_stage_seconds_count", read)] == 100 + 1
    assert any(f.name.startswith("counter_hot_") for f in (tmp_path / "sample-files").iterdir())

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
    """observe_scores writes into prometheus-client's histogram values directly: it must leave
    exactly the samples observe_score leaves for the same rows (bucket edges included)."""
    import numpy as np
    from prometheus_client import REGISTRY

    from service.telemetry import metrics

    def snapshot() -> dict:
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for name in ("fraud_score", "fraud_scored", "fraud_out_of_distribution")
            for s in REGISTRY._names_to_collectors[name].collect()[0].samples
            if not s.name.endswith("_created")
        }

    rng = np.random.default_rng(5)
    scores = np.concatenate([np.array([0, 1, 2, 5, 99, 100, 50, 51], dtype=np.int32), rng.integers(0, 101, 500)])
    is_fraud = scores >= 50
    ood = rng.random(len(scores)) < 0.2

    def delta(count) -> dict:
        before = snapshot()
        count()
        return {k: v - before.get(k, 0.0) for k, v in snapshot().items()}

    row_by_row = delta(
        lambda: [
            metrics.observe_score(s, f, o) for s, f, o in zip(scores.tolist(), is_fraud, ood.tolist(), strict=True)
        ]
    )
    at_once = delta(lambda: metrics.observe_scores(scores, is_fraud, ood))
    assert at_once == row_by_row
    assert row_by_row[("fraud_score_count", frozenset())] == len(scores)


RECORD = """
import os, sys, json
from service.telemetry import metrics
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
use_prometheus = sys.argv[1] == "prometheus"
record = metrics._record_request_in_process if use_prometheus else metrics._record_request
observe = metrics._observe_score_in_process if use_prometheus else metrics.observe_score
wait = metrics._observe_queue_wait_in_process if use_prometheus else metrics.observe_queue_wait
shed = metrics._count_shed_in_process if use_prometheus else metrics.count_shed
for i in range(300):  # bounds included: a value on a bucket's bound belongs to that bucket
    record(("/v1/fraud-score", "POST", 200 if i % 7 else 422), [0.0005, 0.001, 0.0123, 20.0, i * 1e-4][i % 5])
    observe(i % 101, i % 3 == 0, i % 11 == 0)
    wait(["/v1/fraud-score", "/v2/models/{name}/infer"][i % 2], [0.0, 0.001, 0.0042, 0.15, 3.0, i * 1e-3][i % 6])
    if i % 13 == 0:
        shed("/v1/fraud-score/batch")
import numpy as np  # a batch counted at once: the samples of 202 more rows
batch = metrics._observe_scores_in_process if use_prometheus else metrics.observe_scores
scores = np.arange(202, dtype=np.int32) % 101
batch(scores, scores >= 50, scores % 4 == 0)
if os.fork() == 0:  # a forked worker writes files of its own
    record(("/health", "GET", 200), 0.002)
    observe(100, True, True)
    wait("/v1/fraud-score", 0.2)
    shed("/v1/fraud-score")
    os._exit(0)
os.wait()
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
sys.stdout.write(generate_latest(registry).decode())
"""


def test_the_workers_sample_files_expose_what_prometheus_clients_own_values_would(tmp_path):
    """The same updates through prometheus_client's values and through SampleFile give the same
    /metrics text, forked processes included."""
    import subprocess
    import sys

    exposed = {}
    for way in ("prometheus", "sample-files"):
        directory = tmp_path / way
        directory.mkdir()
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
        run = subprocess.run([sys.executable, "-c", RECORD, way], env=env, capture_output=True, text=True, check=True)
        exposed[way] = {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(run.stdout)
            for s in family.samples
        }
    assert exposed["sample-files"] == exposed["prometheus"]
    assert exposed["sample-files"][("fraud_score_count", frozenset())] == 301 + 202  # rows, then a batch
    assert exposed["sample-files"][("fraud_queue_wait_seconds_count", frozenset({("route", "/v1/fraud-score")}))] == 151
    assert exposed["sample-files"][("fraud_deadline_exceeded_total", frozenset({("route", "/v1/fraud-score")}))] == 1
    assert any(f.name.startswith("counter_hot_") for f in (tmp_path / "sample-files").iterdir())

"""What Prometheus metrics add to a scored request, in multiprocess mode as gunicorn runs them.

    .venv/bin/python -m perf.experiments.metrics_cost

A benchmark, not a test: median of repeated runs, on whatever machine it runs on."""

from __future__ import annotations

import os
import statistics
import tempfile
import timeit

# Multiprocess mode is chosen when prometheus_client is imported: set it first, as gunicorn.conf.py does.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="metrics-cost-")


from service.telemetry import metrics  # noqa: E402


def main() -> None:
    def request_metrics() -> None:
        metrics.record_request("/v1/fraud-score", "POST", 200, 0.0004)

    def score_metrics() -> None:
        metrics.observe_score(12, False, False)

    n = 100_000
    for name, function in (
        ("request count + latency", request_metrics),
        ("score histogram + fraud count", score_metrics),
    ):
        function()
        us = statistics.median(timeit.repeat(function, number=n, repeat=5)) / n * 1e6
        print(f"{name:<32} {us:6.2f} µs per request")


if __name__ == "__main__":
    main()

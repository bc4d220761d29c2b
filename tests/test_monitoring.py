"""A real Prometheus (Debian's package) with mtail and prometheus-nginx-exporter beside a real stack,
as `make run MONITORING=1` starts them (stack/monitoring.py): the rules of deploy/prometheus/ are
evaluated on what the stack really exports. Traffic with V14 shifted (as tests/test_drift.py) and
beyond nginx's per-address rate limit: the drift alarm and nginx's 429 alarm go pending, every
recording rule and every query of the Grafana dashboard returns series, and the alarms of a healthy
stack stay quiet."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from model import synthetic
from service.core.artifacts import ArtifactPaths, read_manifest
from service.core.features import FEATURES
from stack.dashboard import OUTPUT as DASHBOARD
from stack.dashboard import queries
from stack.harness import EXTERNAL_SKIP_REASON, free_port
from stack.launcher import ROOT, RedisServer, http_get
from stack.monitoring import RULES, Monitoring
from tests.helpers import EXTERNAL, Client, as_transaction, stack_env, start_stack

pytestmark = pytest.mark.skipif(bool(EXTERNAL), reason=EXTERNAL_SKIP_REASON)

# nginx's per-address limit, low enough that a loop of single scores goes beyond it; the key's
# limits out of the way. The burst lets the drift traffic (a few batches) through first.
RATE_LIMITS = {"RATE_LIMIT_PER_IP": "10", "RATE_LIMIT_BURST": "40", "RATE_LIMIT_PER_KEY": "1000000"}
PATIENCE = 120.0  # seconds for Prometheus to scrape, evaluate and report; a loaded machine is slow


def query(monitoring: Monitoring | str, path: str, **params: str) -> Any:
    base = monitoring if isinstance(monitoring, str) else monitoring.prometheus_url
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    return answer["data"]


def series(monitoring: Monitoring | str, expr: str) -> list[dict]:
    return query(monitoring, "query", query=expr)["result"]


def until(
    what: str,
    done: Callable[[], Any],
    between: Callable[[], None] = lambda: time.sleep(0.5),
    detail: Callable[[], Any] = lambda: "",
) -> Any:
    """Polls `done` until it is truthy, running `between` after each miss, for at most PATIENCE;
    then fails saying `what` and `detail()`."""
    deadline = time.monotonic() + PATIENCE
    while not (result := done()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {PATIENCE:.0f} s: {what} {detail()}")
        between()
    return result


def recording_rules() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["record"] for group in groups for rule in group["rules"] if "record" in rule]


def dashboard_queries() -> list[str]:
    """The dashboard's queries as Grafana sends them, its rate interval (4 scrapes at least) filled in."""
    return [expr.replace("$__rate_interval", "1m") for expr in queries(json.loads(DASHBOARD.read_text()))]


def test_prometheus_sees_the_stack_and_its_alarms_go_pending(trained_model, tmp_path):
    manifest = read_manifest(ArtifactPaths.for_model(trained_model).manifest)
    X, _ = synthetic.generate(1000, seed=4321)
    X[:, FEATURES.index("V14")] += 3 * manifest["feature_stats"]["V14"]["std"]
    store = RedisServer(free_port()).start()
    stack = start_stack(
        trained_model,
        tmp_path / "logs",
        CHALLENGER_MODEL_PATH=str(trained_model),  # the same model: every champion-vs-challenger series
        FEATURE_STORE_URL=store.url,
        FEATURE_STORE_TIMEOUT_MS="1000",  # the by-id 404 below must not be a busy machine's late store
        **RATE_LIMITS,
    )
    (tmp_path / "monitoring").mkdir()
    monitoring = Monitoring(stack, stack.logs / "nginx-access.log", tmp_path / "monitoring", interval="1s")
    try:
        monitoring.start()
        client = Client(stack.host, stack.port)
        # Counted from the first scrape on: the drift counts' zeros must be in Prometheus first.
        until("the first scrape of every target", lambda: len(series(monitoring, 'up{job=~"fraud-.*"} == 1')) == 3)
        until("the drift counts scraped", lambda: series(monitoring, "fraud_drift_rows_total"))

        for start in range(0, len(X), 250):
            batch = {"transactions": [as_transaction(row) for row in X[start : start + 250]]}
            assert client.request("POST", "/v1/fraud-score/batch", batch).status == 200
        assert client.score(as_transaction(X[0])).status == 200
        assert client.request("POST", "/v1/fraud-score/by-id", {"transaction_id": "unknown"}).status == 404

        statuses: list[int] = []

        def beyond_the_rate_limit() -> None:
            statuses.extend(client.score(as_transaction(X[1])).status for _ in range(20))
            time.sleep(0.5)

        def pending() -> dict[str, list[dict]]:
            alerts = query(monitoring, "alerts")["alerts"]
            found: dict[str, list[dict]] = {}
            for alert in alerts:
                found.setdefault(alert["labels"]["alertname"], []).append(alert)
            return found if {"FraudFeatureDriftAct", "FraudNginxRateLimited"} <= found.keys() else {}

        alerts = until("the drift and 429 alarms pending", pending, beyond_the_rate_limit)
        print("pending:", {name: [a["labels"] for a in found] for name, found in alerts.items()})
        assert 429 in statuses and 200 in statuses
        # Of the features, V14 alone; the score's own column moves with it (and with the repeated row).
        drifted = {a["labels"]["feature"] for a in alerts["FraudFeatureDriftAct"]}
        assert drifted & set(FEATURES) == {"V14"}, drifted
        assert [a["labels"]["refused_by"] for a in alerts["FraudNginxRateLimited"]] == ["limit_req"]
        assert all(a["state"] == "pending" for found in alerts.values() for a in found)  # none has its `for` yet
        # A healthy stack: its model loaded, every target up, no error answers.
        assert {"FraudModelNotLoaded", "FraudScrapeTargetDown", "FraudErrorRateHigh"}.isdisjoint(alerts)

        def without_series() -> list[str]:
            return [expr for expr in recording_rules() + dashboard_queries() if not series(monitoring, expr)]

        until(
            "every recording rule and dashboard query returns series",
            lambda: not without_series(),
            detail=without_series,
        )
        # nginx's refusals, which the app never sees, by status and limit; its connections.
        refused = series(monitoring, 'fraud_nginx_responses_total{refused_by="limit_req"}')
        assert [r["metric"]["status"] for r in refused] == ["429"]
        assert series(monitoring, "nginx_connections_accepted")
    finally:
        monitoring.stop()
        stack.stop()
        store.stop()


def test_make_run_monitoring_prints_prometheus_which_scrapes_all_three_and_stops_with_the_stack(small_model, tmp_path):
    """`make run MONITORING=1` is `python -m stack --monitoring`."""
    port = free_port()
    out = tmp_path / "out.log"
    with out.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "stack", "--monitoring"],
            cwd=ROOT,
            env=stack_env(small_model[0], port),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        found = until(
            "the launcher prints Prometheus' URL",
            lambda: process.poll() is None and re.search(r"Prometheus: (http://127\.0\.0\.1:\d+)", out.read_text()),
            detail=out.read_text,
        )
        prometheus = found.group(1)
        until(
            "Prometheus scrapes the app, mtail and the exporter",
            lambda: len(series(prometheus, 'up{job=~"fraud-.*"} == 1')) == 3,
            detail=lambda: series(prometheus, "up"),
        )
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C
        assert process.wait(timeout=60) == 0, out.read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert "nginx's access log: tail -f" in out.read_text()
    for where in (prometheus, f"http://127.0.0.1:{port}"):
        with pytest.raises(OSError):
            host, _, number = where.removeprefix("http://").partition(":")
            http_get(host, int(number), "/", timeout=1)

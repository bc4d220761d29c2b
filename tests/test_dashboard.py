"""deploy/grafana/fraud-scoring.json is what stack/dashboard.py generates (run `python -m
stack.dashboard` after changing the code), and every query in it is one Prometheus can run: only
the datasource and $__rate_interval are Grafana's. tests/test_monitoring.py runs the queries."""

from __future__ import annotations

import json
import re

from stack import dashboard


def test_the_committed_dashboard_is_what_the_code_generates():
    assert dashboard.OUTPUT.read_text() == dashboard.render(), "run: .venv/bin/python -m stack.dashboard"


def test_every_panel_queries_prometheus_with_only_known_variables():
    document = json.loads(dashboard.OUTPUT.read_text())
    panels = [panel for panel in document["panels"] if panel["type"] != "row"]
    assert panels and all(panel.get("targets") for panel in panels)
    assert len({panel["id"] for panel in document["panels"]}) == len(document["panels"])
    for expr in dashboard.queries(document):
        assert set(re.findall(r"\$\{?\w+", expr)) <= {"$__rate_interval"}, expr

"""The service's Grafana dashboard, as code (grafana-foundation-sdk): `python -m stack.dashboard`
writes deploy/grafana/fraud-scoring.json, the importable file that is committed;
tests/test_dashboard.py checks the file is what this code makes, and tests/test_monitoring.py that
every query returns series from a real Prometheus scraping a real stack.

Queries use deploy/prometheus/rules.yml's recording rules where one exists (computed once by
Prometheus, the same numbers the alarms see), raw series with Grafana's $__rate_interval otherwise."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

OUTPUT = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "fraud-scoring.json"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"


def query(expr: str, legend: str = "") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend or "__auto").datasource(DATASOURCE)


def graph(title: str, description: str, unit: str, *queries: prometheus.Dataquery) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).description(description).unit(unit).datasource(DATASOURCE)
    for q in queries:
        panel = panel.with_target(q)
    return panel.span(12).height(8)


def single(title: str, description: str, unit: str, q: prometheus.Dataquery) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(DATASOURCE)
        .with_target(q)
        .span(6)
        .height(4)
    )


def build() -> dashboard.Dashboard:
    return (
        dashboard.Dashboard("Fraud scoring")
        .uid("fraud-scoring")
        .description(
            "nginx and the scoring workers: traffic, latency, refusals, scores, drift, challenger, feature store"
        )
        .tags(["fraud-scoring"])
        .refresh("30s")
        .time("now-3h", "now")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_row(dashboard.Row("Traffic and outcomes"))
        .with_panel(
            graph(
                "App answers by route and status",
                "Requests the app answered (errors included; deadline refusals are in Shed and refused)",
                "reqps",
                query("fraud:http_requests:rate5m", "{{route}} {{status}}"),
            )
        )
        .with_panel(
            graph(
                "nginx answers by status and refusal",
                "Every request nginx answered, from its access log (mtail): refused_by names nginx's own limit, empty when the app answered",
                "reqps",
                query("fraud:nginx_responses:rate5m", "{{status}} {{refused_by}}"),
            )
        )
        .with_row(dashboard.Row("Latency"))
        .with_panel(
            graph(
                "p99 by stage",
                "nginx's whole time, the app's own time by route, and each stage of a scoring request by route "
                "(queue: the wait for a worker; read, fetch: the feature store, score, challenger, write: the answer's "
                "serialisation), as the Server-Timing header gives them",
                "s",
                query("fraud:nginx_request_duration_seconds:p99_5m", "nginx (whole request)"),
                query("fraud:http_request_duration_seconds:p99_5m", "app {{route}}"),
                query("fraud:request_stage_seconds:p99_5m", "{{stage}} {{route}}"),
            )
        )
        .with_panel(
            graph(
                "Shed and refused",
                "Share of requests refused by nginx's limits (429 limit_req, 503 limit_conn and upstream_unavailable, 413…) and by the app's deadline",
                "percentunit",
                query("fraud:nginx_refused_ratio:rate5m", "nginx {{refused_by}}"),
                query("fraud:deadline_exceeded_ratio:rate5m", "deadline exceeded"),
                query("fraud:http_5xx_ratio:rate5m", "app 5xx"),
            )
        )
        .with_row(dashboard.Row("Scores"))
        .with_panel(
            graph(
                "Score distribution",
                "Scores returned per second, by the upper bound of their bucket (0-100)",
                "ops",
                query(f"sum by (le) (rate(fraud_score_bucket[{RATE}]))", "score <= {{le}}"),
            )
        )
        .with_panel(
            graph(
                "Fraud rate, out of distribution, mean score",
                "Share flagged as fraud and share out of distribution (left), mean score over the last hour",
                "percentunit",
                query("fraud:fraud_ratio:rate1h", "flagged as fraud"),
                query("fraud:ood_ratio:rate15m", "out of distribution"),
                query("fraud:score_mean:rate1h / 100", "mean score / 100"),
            )
        )
        .with_panel(
            graph(
                "Drift per feature (PSI, last hour)",
                "Population stability index against training: above 0.1 watch, above 0.25 act",
                "none",
                query("fraud:drift_psi:1h", "{{feature}}"),
            )
        )
        .with_panel(
            graph(
                "Champion vs challenger",
                "Share of decisions the challenger makes differently, and both models' mean scores / 100",
                "percentunit",
                query("fraud:challenger_disagreement_ratio:rate1h", "decisions differ"),
                query(
                    f"sum(rate(fraud_challenger_score_sum[{RATE}])) / sum(rate(fraud_challenger_score_count[{RATE}])) / 100",
                    "challenger mean score / 100",
                ),
                query(
                    f"sum(rate(fraud_score_sum[{RATE}])) / sum(rate(fraud_score_count[{RATE}])) / 100",
                    "champion mean score / 100",
                ),
            )
        )
        .with_row(dashboard.Row("Feature store and workers"))
        .with_panel(
            graph(
                "Feature store",
                "Share of ids the store did not hold, and share of by-id requests answered 503 (store unavailable)",
                "percentunit",
                query(
                    f"sum(rate(fraud_feature_store_misses_total[{RATE}])) / sum(rate(fraud_feature_store_rows_total[{RATE}]))",
                    "ids missing",
                ),
                query("fraud:feature_store_unavailable_ratio:rate5m", "by-id 503"),
            )
        )
        .with_panel(
            graph(
                "nginx connections",
                "From stub_status (prometheus-nginx-exporter): active, and of those reading, writing, idle keep-alive",
                "short",
                query("sum(nginx_connections_active)", "active"),
                query("sum(nginx_connections_reading)", "reading"),
                query("sum(nginx_connections_writing)", "writing"),
                query("sum(nginx_connections_waiting)", "waiting"),
            )
        )
        .with_panel(
            single(
                "Worker exits (last hour)",
                "gunicorn workers that exited and were replaced",
                "short",
                query("sum(increase(fraud_worker_exits_total[1h]))"),
            )
        )
        .with_panel(
            single(
                "Model versions serving",
                "Instances serving each model version",
                "short",
                query("count by (version) (fraud_model_info == 1)", "{{version}}"),
            )
        )
    )


def queries(document: dict) -> list[str]:
    """Every PromQL expression of a rendered dashboard, as Grafana would send it (variables unfilled)."""
    return [target["expr"] for panel in document["panels"] for target in panel.get("targets", [])]


def render() -> str:
    model = build().build()
    for number, panel in enumerate(model.panels or [], start=1):
        panel.id_val = number  # Grafana links and edits panels by id: one each, stable from one render to the next
    return json.dumps(model, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main() -> int:
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make outcomes`' page: the figures of service/offline/outcomes.py as one self-contained HTML file
(inline style and SVG charts). A week below the maturity bar shows its counts and how mature it is,
never its rates: too few of its labels are in for them to say how the model did."""

from __future__ import annotations

import html
from typing import Any

from service.offline.report_page import page, percent

WIDTH, HEIGHT, PAD = 900, 300, 70
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
STYLE = """
tr.immature td { color: #888; font-style: italic; }
td.verdict-line { text-align: left; }
svg { background: #fff; border: 1px solid #ddd; margin: 0.5em 0; }
"""


def judged(week: dict[str, Any], bar: float) -> bool:
    return week["labelled"] > 0 and week["maturity"] is not None and week["maturity"] >= bar


def _with_ci(value: float | None, ci: list[float] | None, fmt: str) -> str:
    if value is None:
        return "n/a"
    text = fmt(value)
    return text if ci is None else f"{text} [{fmt(ci[0])}, {fmt(ci[1])}]"


def _cost(v: float) -> str:
    return f"{v:.2f}"


def _figures_cells(f: dict[str, Any]) -> str:
    return "".join(
        f"<td>{_with_ci(f[name], f[f'{name}_ci'], fmt)}</td>"
        for name, fmt in (
            ("recall", percent),
            ("precision", percent),
            ("alert_rate", percent),
            ("cost_per_1000", _cost),
        )
    )


def week_table(figures: dict[str, Any]) -> str:
    e, bar = html.escape, figures["maturity_bar"]
    rows = []
    for w in figures["weeks"]:
        maturity = "n/a" if w["maturity"] is None else f"{100 * w['maturity']:.0f} %"
        cells = _figures_cells(w["champion"]) if judged(w, bar) else '<td colspan="4">not judged</td>'
        rows.append(
            f'<tr class="{"" if judged(w, bar) else "immature"}"><td>{e(str(w["model_version"]))}</td>'
            f"<td>{e(w['week'])} ({e(w['week_start'])})</td><td>{w['rows_weighted']:,.0f}</td>"
            f"<td>{w['labelled']:,}</td><td>{maturity}</td>{cells}"
            f'<td class="verdict-line">{e(w["verdict"])}</td></tr>'
        )
    return (
        "<table><tr><th>model version</th><th>ISO week (Monday)</th><th>rows scored (weighted)</th><th>labelled</th>"
        "<th>maturity</th><th>recall [95 %]</th><th>precision [95 %]</th><th>alert rate [95 %]</th>"
        f"<th>cost per 1,000 [95 %]</th><th>verdict</th></tr>{''.join(rows)}</table>"
    )


def challenger_table(figures: dict[str, Any]) -> str:
    e, bar = html.escape, figures["maturity_bar"]
    rows = []
    for w in figures["weeks"]:
        for c in w["challengers"]:
            if judged(w, bar):
                champion, challenger = c["champion"], c["challenger"]
                cells = (
                    f"<td>{_with_ci(champion['cost_per_1000'], champion['cost_per_1000_ci'], _cost)}</td>"
                    f"<td>{_with_ci(challenger['cost_per_1000'], challenger['cost_per_1000_ci'], _cost)}</td>"
                    f"<td>{_with_ci(c['cost_difference_per_1000'], c['cost_difference_ci'], _cost)}</td>"
                    f"<td>{percent(challenger['recall'])}</td><td>{percent(challenger['precision'])}</td>"
                )
            else:
                cells = '<td colspan="5">not judged (immature)</td>'
            rows.append(
                f'<tr class="{"" if judged(w, bar) else "immature"}"><td>{e(str(w["model_version"]))}</td>'
                f"<td>{e(w['week'])}</td><td>{e(c['version'])}</td><td>{c['labelled']:,}</td>{cells}</tr>"
            )
    if not rows:
        return "<p>No challenger was logged in this range.</p>"
    return (
        "<table><tr><th>champion</th><th>week</th><th>challenger</th><th>labelled rows both scored</th>"
        "<th>champion cost [95 %]</th><th>challenger cost [95 %]</th><th>difference [95 %]</th>"
        f"<th>challenger recall</th><th>challenger precision</th></tr>{''.join(rows)}</table>"
    )


def _axes(x_label: str, y_label: str, y_max: float, ticks: list[tuple[float, str]]) -> list[str]:
    parts = [
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - 10}" y2="{HEIGHT - PAD}" stroke="#444"/>',
        f'<line x1="{PAD}" y1="10" x2="{PAD}" y2="{HEIGHT - PAD}" stroke="#444"/>',
        f'<text x="{WIDTH / 2}" y="{HEIGHT - 8}" text-anchor="middle" font-size="12">{html.escape(x_label)}</text>',
        f'<text x="12" y="{HEIGHT / 2}" font-size="12" transform="rotate(-90 12 {HEIGHT / 2})" '
        f'text-anchor="middle">{html.escape(y_label)}</text>',
    ]
    for i in range(5):
        value = y_max * i / 4
        y = _y(value, y_max)
        text = f"{value:,.0f}" if y_max >= 10 else f"{value:.2f}"
        parts.append(f'<text x="{PAD - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10">{text}</text>')
    for x, label in ticks:
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - PAD + 14}" text-anchor="middle" font-size="10">{html.escape(label)}</text>'
        )
    return parts


def _y(value: float, y_max: float) -> float:
    return HEIGHT - PAD - (HEIGHT - PAD - 10) * (value / y_max if y_max > 0 else 0)


def cost_chart(figures: dict[str, Any]) -> str:
    """Cost per 1,000 by week, one line per model version with its interval; immature weeks are a
    grey band with no point in it."""
    bar = figures["maturity_bar"]
    weeks = sorted({w["week"] for w in figures["weeks"]})
    if not weeks:
        return ""
    step = (WIDTH - PAD - 30) / max(1, len(weeks))
    x = {week: PAD + step * (i + 0.5) for i, week in enumerate(weeks)}
    highs = [
        (w["champion"]["cost_per_1000_ci"] or [0, w["champion"]["cost_per_1000"] or 0])[1]
        for w in figures["weeks"]
        if judged(w, bar)
    ]
    y_max = max([*highs, 1e-9]) * 1.1
    parts = _axes("ISO week of scoring", "cost per 1,000 rows", y_max, [(x[w], w) for w in weeks])
    for week in weeks:
        if not any(judged(w, bar) for w in figures["weeks"] if w["week"] == week):
            parts.insert(
                0,
                f'<rect x="{x[week] - step / 2:.1f}" y="10" width="{step:.1f}" height="{HEIGHT - PAD - 10}" '
                f'fill="#eee"><title>{html.escape(week)}: immature, not judged</title></rect>',
            )
    versions = sorted({str(w["model_version"]) for w in figures["weeks"]})
    for i, version in enumerate(versions):
        colour = COLOURS[i % len(COLOURS)]
        points = [w for w in figures["weeks"] if str(w["model_version"]) == version and judged(w, bar)]
        points = [w for w in points if w["champion"]["cost_per_1000"] is not None]
        line = " ".join(f"{x[w['week']]:.1f},{_y(w['champion']['cost_per_1000'], y_max):.1f}" for w in points)
        if len(points) > 1:
            parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for w in points:
            cx, f = x[w["week"]], w["champion"]
            if f["cost_per_1000_ci"]:
                low, high = f["cost_per_1000_ci"]
                parts.append(
                    f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{_y(low, y_max):.1f}" y2="{_y(high, y_max):.1f}" '
                    f'stroke="{colour}"/>'
                )
            parts.append(
                f'<circle cx="{cx:.1f}" cy="{_y(f["cost_per_1000"], y_max):.1f}" r="4" fill="{colour}">'
                f"<title>{html.escape(version)} {w['week']}: {f['cost_per_1000']:.2f}</title></circle>"
            )
        parts.append(
            f'<text x="{PAD + 10}" y="{24 + 14 * i}" font-size="12" fill="{colour}">{html.escape(version)}</text>'
        )
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}">{"".join(parts)}</svg>'


def calibration_chart(figures: dict[str, Any]) -> str:
    """Observed fraud rate against mean predicted probability, by score band; the diagonal is a
    calibrated model."""
    if not figures["calibration"]:
        return "<p>No labelled rows: no calibration yet.</p>"
    span = WIDTH - PAD - 10
    parts = _axes("mean predicted P(fraud) in the band", "observed fraud rate", 1.0, [])
    for i in range(5):
        parts.append(f'<text x="{PAD + span * i / 4:.1f}" y="{HEIGHT - PAD + 14}" font-size="10">{i / 4:.2f}</text>')
    parts.append(
        f'<line x1="{PAD}" y1="{_y(0, 1)}" x2="{PAD + span}" y2="{_y(1, 1)}" stroke="#aaa" stroke-dasharray="4"/>'
    )
    for i, (version, bands) in enumerate(sorted(figures["calibration"].items(), key=lambda kv: str(kv[0]))):
        colour = COLOURS[i % len(COLOURS)]
        for b in bands:
            parts.append(
                f'<circle cx="{PAD + span * b["predicted"]:.1f}" cy="{_y(b["observed"], 1):.1f}" r="4" fill="{colour}">'
                f"<title>{html.escape(str(version))} band {b['band']}: {b['labelled']} labelled</title></circle>"
            )
        parts.append(
            f'<text x="{PAD + 10}" y="{24 + 14 * i}" font-size="12" fill="{colour}">{html.escape(str(version))}</text>'
        )
    svg = f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}">{"".join(parts)}</svg>'
    rows = "".join(
        f"<tr><td>{html.escape(str(version))}</td><td>{b['band']}</td><td>{b['labelled']:,}</td>"
        f"<td>{percent(b['predicted'])}</td><td>{percent(b['observed'])}</td></tr>"
        for version, bands in sorted(figures["calibration"].items(), key=lambda kv: str(kv[0]))
        for b in bands
    )
    return (
        f"{svg}<table><tr><th>model version</th><th>fraud-score band</th><th>labelled</th>"
        f"<th>predicted</th><th>observed</th></tr>{rows}</table>"
    )


def render(figures: dict[str, Any]) -> str:
    e = html.escape
    d = figures["delays"]
    delays = (
        "no labels yet"
        if d["median_days"] is None
        else f"median {d['median_days']:.0f} days, 90th percentile {d['p90_days']:.0f} days"
    )
    verdicts = "".join(
        f"<li>{e(str(w['model_version']))} {e(w['week'])}: {e(w['verdict'])}</li>" for w in figures["weeks"]
    )
    body = f"""<h1>How each model really did</h1>
<p>Scored {e(figures["from"])} to {e(figures["to"])} ({figures["rows"]:,} transactions in the log), labels known at
{e(figures["as_of"])}. Rows are weighted by the log's sampling weight. A row without a label is neither fraud nor
legitimate: it counts among the rows scored and is left out of recall, precision, alert rate and cost, which are over
the labelled rows. Cost: each missed fraud costs its amount, each alert {figures["review_cost"]:g}. Intervals: 95 %
bootstrap ({figures["bootstrap"]} resamples of the week's labelled rows). A week is judged once
{100 * figures["maturity_bar"]:.0f} % of the labels a {figures["window_days"]}-day window brings are in, by the label
delays seen so far ({delays}). Generated {e(figures.get("generated", ""))}.</p>
<div class="verdict"><ul>{verdicts}</ul></div>
<h2>By model version and week</h2>
{week_table(figures)}
{cost_chart(figures)}
<h2>Challengers, on the rows where both were logged</h2>
{challenger_table(figures)}
<h2>Calibration (labelled rows)</h2>
{calibration_chart(figures)}"""
    return page("Model outcomes", body, STYLE)

"""The latency-percentile chart: one line per scenario, the tail stretched out to the right."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _position(percentile: float) -> float:
    """50 → 0.3, 90 → 1, 99 → 2, 99.9 → 3: each step right is ten times rarer."""
    return -math.log10(1.0 - percentile / 100.0)


def draw(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (closed, opened) = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, connections in enumerate(sorted({s["connections"] for s in results["closed_loop"].values()})):
        for s in results["closed_loop"].values():
            if s["connections"] == connections:
                _line(closed, s, colours[i % len(colours)], "-" if s["endpoint"] == "score" else ":")
    for i, s in enumerate(results.get("open_loop", {}).values()):
        _line(opened, s, colours[(i + 4) % len(colours)], "-")
    closed.set_title("closed loop (wrk): solid = POST /v1/fraud-score, dotted = GET /health")
    opened.set_title("open loop, fixed rate: from each request's scheduled send time")
    ticks = [50, 90, 99, 99.9, 99.99]
    for ax in (closed, opened):
        ax.set_xticks([_position(p) for p in ticks], [f"p{p:g}" for p in ticks])
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_xlabel("percentile")
    closed.set_ylabel("latency (ms)")
    fig.suptitle(f"fraud scoring latency - {results['started']} - {results['model']['version']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _line(ax: Any, scenario: dict[str, Any], colour: str, style: str) -> None:
    points = sorted((float(p), ms) for p, ms in scenario["curve_ms"].items())
    if scenario.get("load"):
        label = f"{100 * scenario['load']:.0f} % of capacity: {scenario['rate']:.0f}/s, {scenario['connections']} connections"
    else:
        label = f"{scenario['scenario']}: {scenario['rps']:.0f}/s"
    ax.plot([_position(p) for p, _ in points], [ms for _, ms in points], style, color=colour, marker=".", label=label)

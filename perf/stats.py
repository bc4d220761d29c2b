"""Percentiles and medians: the few statistics the harness reports."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

# What the table and the JSON report for every scenario, in this order.
REPORTED = (50.0, 90.0, 99.0, 99.9)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of values sorted ascending: the smallest value with at least p %
    of the values at or below it (no interpolation, so it is always a latency that happened)."""
    if not sorted_values:
        raise ValueError("no values")
    if not 0.0 < p <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {p}")
    rank = math.ceil(p / 100.0 * len(sorted_values))
    return sorted_values[max(rank, 1) - 1]


def latency_summary(values_us: Iterable[float]) -> dict[str, float]:
    """p50 … p99.9 and max, in milliseconds, of latencies given in microseconds."""
    ordered = sorted(values_us)
    summary = {f"p{p:g}": percentile(ordered, p) / 1000.0 for p in REPORTED}
    summary["max"] = ordered[-1] / 1000.0
    return summary


def curve(values_us: Iterable[float], points: Sequence[float]) -> dict[str, float]:
    """The latency (ms) at each percentile in points, for the chart."""
    ordered = sorted(values_us)
    return {f"{p:g}": percentile(ordered, p) / 1000.0 for p in points}


def median(values: Iterable[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2.0

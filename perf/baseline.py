"""Regression check against perf/baseline.json, on ratios measured within one run.

A slower or busier machine slows the scoring endpoint and /health alike, sklearn and the walker
alike, so ratios between figures of the same run stay put; a real regression moves them.

Only a ratio measured in interleaved rounds can fail a run (`regressions`): the rounds show how far
the figure moves by itself, and it has regressed only when even its best round is worse than the
baseline by more than that spread (and a small floor, for rounds that happen to agree). A figure
measured once cannot tell its own noise from a change: it is reported against the baseline with its
old tolerance (`drifts`), never gated. A gate that fails on noise gets switched off."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Ratio:
    name: str
    meaning: str
    higher_is_better: bool
    tolerance: float  # the relative change, in the worse direction, reported as drift beyond it
    compute: Callable[[dict[str, Any]], float]
    # the figure of every interleaved round, for the ratios that can fail a run
    rounds: Callable[[dict[str, Any]], list[float]] | None = None


MIN_ROUNDS = 3  # fewer cannot show a spread
FLOOR = 0.05  # the least change, beyond the rounds' spread, that fails a run


def _closed(results: dict[str, Any], endpoint: str, connections: int) -> dict[str, Any]:
    return results["closed_loop"][f"{endpoint} c{connections}"]


def _pss_ratio(results: dict[str, Any]) -> float:
    memory = results["memory"]
    return memory["4"]["total_pss"] / memory["1"]["total_pss"]


RATIOS = (
    Ratio(
        "score_vs_health_rps_c64",
        "POST /v1/fraud-score ÷ GET /health throughput, 64 connections",
        True,
        0.12,
        lambda r: r["closed_loop_ratios"]["score_vs_health_rps"]["64"],
        lambda r: r["closed_loop_ratios"]["score_vs_health_rps_rounds"]["64"],
    ),
    Ratio(
        "score_vs_health_rps_c20",
        "POST /v1/fraud-score ÷ GET /health throughput, 20 connections",
        True,
        0.12,
        lambda r: r["closed_loop_ratios"]["score_vs_health_rps"]["20"],
        lambda r: r["closed_loop_ratios"]["score_vs_health_rps_rounds"]["20"],
    ),
    Ratio(
        "score_p99_vs_p50_c64",
        "scoring p99 ÷ p50, 64 connections (closed loop)",
        False,
        0.75,
        lambda r: _closed(r, "score", 64)["latency_ms"]["p99"] / _closed(r, "score", 64)["latency_ms"]["p50"],
    ),
    Ratio(
        "open50_p99_vs_p50",
        "scoring p99 ÷ p50 at 50 % of capacity (open loop)",
        False,
        3.0,
        lambda r: r["open_loop"]["50"]["latency_ms"]["p99"] / r["open_loop"]["50"]["latency_ms"]["p50"],
    ),
    Ratio(
        "engine_single_row_speedup",
        "predict_proba ÷ walker time, one row",
        True,
        0.35,
        lambda r: r["micro"]["engine"]["single_row_speedup"],
    ),
    Ratio(
        "engine_batch_10000_speedup",
        "walker ÷ predict_proba(n_jobs=1) throughput, 10,000 rows",
        True,
        0.35,
        lambda r: r["micro"]["engine"]["batch"]["10000"]["speedup"],
    ),
    Ratio(
        "validation_speedup",
        "jsonschema ÷ compiled validator time per request",
        True,
        0.35,
        lambda r: r["micro"]["validation"]["speedup"],
    ),
    Ratio(
        "app_score_vs_health_cpu",
        "in-process CPU of a score ÷ of a /health answer",
        False,
        0.35,
        lambda r: r["micro"]["hot_path"]["app_score_us"] / r["micro"]["hot_path"]["app_health_us"],
    ),
    Ratio("pss_4_vs_1_workers", "total PSS with 4 workers ÷ with 1", False, 0.25, _pss_ratio),
    Ratio(
        "bulk_parquet_vs_sklearn",
        "bulk scoring Parquet → Parquet (every core, end to end) ÷ predict_proba(n_jobs=-1) throughput",
        True,
        0.35,
        lambda r: r["bulk"]["parquet_to_parquet"]["vs_sklearn"],
    ),
)


def ratios(results: dict[str, Any]) -> dict[str, float]:
    """Every ratio the results hold (a run without memory figures, e.g. against --url, has fewer)."""
    found = {}
    for ratio in RATIOS:
        try:
            found[ratio.name] = ratio.compute(results)
        except (KeyError, ZeroDivisionError):
            continue
    return found


def regressed(rounds: list[float], then: float, higher_is_better: bool, floor: float = FLOOR) -> bool | None:
    """Whether interleaved rounds show a regression against the baseline `then`: their best round is
    worse than it by more than their own spread (max − min) plus `floor` of it. None: too few rounds
    to judge."""
    if len(rounds) < MIN_ROUNDS:
        return None
    spread = max(rounds) - min(rounds)
    if higher_is_better:
        return max(rounds) < then * (1 - floor) - spread
    return min(rounds) > then * (1 + floor) + spread


def regressions(results: dict[str, Any], baseline: dict[str, float]) -> list[str]:
    """One line per ratio measured in rounds that regressed (see regressed()): these fail a run."""
    found = []
    for ratio in RATIOS:
        if ratio.rounds is None or ratio.name not in baseline:
            continue
        try:
            rounds = ratio.rounds(results)
        except (KeyError, ZeroDivisionError):
            continue
        if regressed(rounds, baseline[ratio.name], ratio.higher_is_better):
            found.append(
                f"{ratio.name}: rounds {min(rounds):.3g}–{max(rounds):.3g} against a baseline of "
                f"{baseline[ratio.name]:.3g} (worse than the rounds' own spread allows) - {ratio.meaning}"
            )
    return found


def drifts(current: dict[str, float], baseline: dict[str, float]) -> list[str]:
    """One line per ratio worse than its baseline by more than its tolerance: reported, not gated
    (a ratio in rounds is judged by regressions() instead)."""
    found = []
    for ratio in RATIOS:
        if ratio.name not in current or ratio.name not in baseline:
            continue
        now, then = current[ratio.name], baseline[ratio.name]
        change = (then - now) / then if ratio.higher_is_better else (now - then) / then
        if change > ratio.tolerance:
            found.append(
                f"{ratio.name}: {now:.3g} against a baseline of {then:.3g} "
                f"({100 * change:.0f} % worse; tolerance {100 * ratio.tolerance:.0f} %) - {ratio.meaning}"
            )
    return found


def load(path: Path) -> dict[str, float]:
    return json.loads(path.read_text())["ratios"]


def write(path: Path, current: dict[str, float], context: dict[str, Any]) -> None:
    path.write_text(json.dumps({"ratios": current, "recorded_with": context}, indent=2, sort_keys=True) + "\n")

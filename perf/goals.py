"""The deployment goals, judged on a run's figures and written into its results JSON (`goals`).

They are meant for the split placement (the service on its own cores, its callers and its store on
others: perf/README.md, Placement), and are computed in every run, with the placement beside them,
so that the shared placement's figures can be read next to them. Each goal: what, the figure, the
target, and whether it is met (None: reported, no target)."""

from __future__ import annotations

from typing import Any

from perf import overload

BY_ID_SHARE = 0.70  # by-id single ÷ raw single throughput
BY_ID_P99_MS = 5.0  # by-id single, open loop at ½ raw capacity
TAIL_RATIO = 5.0  # p99 ÷ p50, open loop at 50 % of capacity


def goal(name: str, measured: float | None, target: str, met: bool | None) -> dict[str, Any]:
    return {"goal": name, "measured": measured, "target": target, "met": met}


def _overload(found: dict[str, Any] | None, deadline_ms: float) -> list[dict[str, Any]]:
    if not found:
        return []
    capacity, limit = found["capacity_per_s"], deadline_ms + overload.MARGIN_MS
    goals = []
    for name, share in (("open_150", overload.SCORED_SHARE), ("open_300", overload.FAR_SCORED_SHARE)):
        run = found.get(name)
        if not run:
            continue
        scored = run["scored_per_s"] / capacity
        errors = run["timeouts"] + run["socket_errors"]
        goals += [
            goal(f"overload {name}: scored ÷ capacity", scored, f">= {share}", scored >= share),
            goal(f"overload {name}: p99 of every answer, ms", run["p99_ms"], f"<= {limit:g}", run["p99_ms"] <= limit),
            goal(f"overload {name}: timeouts + socket errors", errors, "== 0", errors == 0),
        ]
    recovery = found["after_50"]["recovery_s"]
    goals.append(
        goal(
            "overload: recovery to normal p99, s",
            recovery,
            f"<= {overload.RECOVERY_S:g}",
            recovery is not None and recovery <= overload.RECOVERY_S,
        )
    )
    return goals


def _by_id(results: dict[str, Any]) -> list[dict[str, Any]]:
    found = results.get("by_id")
    if not found:
        return []
    single = found["single_ratio"]
    p99 = found["open_loop"]["by-id single"]["p99_ms"]
    goals = [
        goal(
            f"by-id single ÷ raw single throughput, {found['workers']} workers",
            single,
            f">= {BY_ID_SHARE}",
            single >= BY_ID_SHARE,
        ),
        goal("by-id single p99 at ½ raw capacity, open loop, ms", p99, f"< {BY_ID_P99_MS:g}", p99 < BY_ID_P99_MS),
    ]
    per_workers = results.get("by_id_workers", {})
    for workers, measured in sorted(per_workers.items()):
        goals.append(goal(f"by-id single ÷ raw single, {workers} workers", measured["single_ratio"], "reported", None))
        goals.append(
            goal(f"by-id single req/s, {workers} workers", measured["routes"]["by-id single"]["rps"], "reported", None)
        )
    if per_workers:
        best = max(per_workers, key=lambda n: per_workers[n]["routes"]["by-id single"]["rps"])
        goals.append(goal("by-id single: the worker count with the most throughput", int(best), "reported", None))
    return goals


def _ceilings(results: dict[str, Any]) -> list[dict[str, Any]]:
    goals = []
    for key, placement in (
        ("ceiling", results.get("placement", {}).get("name", "shared")),
        ("ceiling_shared", "shared"),
    ):
        found = results.get(key)
        if not found:
            continue
        for name in ("bare", "falcon"):
            if f"score_vs_{name}_rps" in found:
                goals.append(
                    goal(
                        f"single scoring ÷ {name} stack throughput, {placement}",
                        found[f"score_vs_{name}_rps"],
                        "reported",
                        None,
                    )
                )
    return goals


def judge(results: dict[str, Any], deadline_ms: float) -> dict[str, Any]:
    goals = _overload(results.get("overload"), deadline_ms) + _by_id(results)
    tail = results.get("open_loop", {}).get("50")
    if tail:
        ratio = tail["latency_ms"]["p99"] / tail["latency_ms"]["p50"]
        goals.append(
            goal("tail: p99 ÷ p50, open loop at 50 % of capacity", ratio, f"<= {TAIL_RATIO:g}", ratio <= TAIL_RATIO)
        )
    goals += _ceilings(results)
    return {
        "placement": results.get("placement", {}).get("name"),
        "goals": goals,
        "met": sum(g["met"] is True for g in goals),
        "missed": [g["goal"] for g in goals if g["met"] is False],
    }


def table(judged: dict[str, Any]) -> str:
    lines = [f"goals, {judged['placement']} placement:"]
    for g in judged["goals"]:
        verdict = "reported" if g["met"] is None else ("met" if g["met"] else "MISSED")
        value = "—" if g["measured"] is None else f"{g['measured']:.3g}"
        lines.append(f"  {g['goal']}: {value} (target {g['target']}) {verdict}")
    return "\n".join(lines)

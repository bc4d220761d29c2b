"""Overload, for `make perf`: what callers see beyond capacity, judged against its targets (perf/README.md, Overload).

Four runs against the same stack, right after the capacity it was measured at (closed loop, 64
connections):

  open loop at 50 %, before        undisturbed: what normal is, per quarter second
  open loop at 150 % of capacity   latency counted from each request's scheduled send (load.lua)
  open loop at 50 %, right after   the recovery: p99 per quarter second until it is back to normal
  open loop at 300 % of capacity   two refusals for every answer scored
  closed loop, 1,024 connections   far more callers than workers, each resending at once

Goals: the p99 of every answer (200 and 503 alike) within the deadline + 10 ms; scored (200)
throughput during overload at least 90 % of capacity (80 % at 300 %); no timeouts; no 5xx but the documented 503s
(deadline_exceeded from the app, unavailable from nginx when the workers' queue is full); p99 back
to normal within 1 s of the overload stopping.

Normal, and recovery: the before and after runs use the same generator (rate, connections, length)
and the same quarter-second windows. A window is normal when its p99 is no worse than the worst
window of the before run. The service has recovered at the start of the first window of the after
run that is normal and from which on the after run, taken whole, is normal too (the p99 of every
answer sent from then on is no worse than that worst window): a lone quiet window in a queue still
draining does not count, and a later noisy window, such as the undisturbed run has as well, does not
undo it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from perf import stats, wrk
from perf.report import Target

OVERLOAD = 1.5
FAR_OVERLOAD = 3.0
AFTER = 0.5
# Enough connections to keep a schedule of 150 % while each answer may take up to the deadline.
OPEN_CONNECTIONS = 512
CLOSED_CONNECTIONS = 1024
MARGIN_MS = 10.0
SCORED_SHARE = 0.9
FAR_SCORED_SHARE = 0.8  # at FAR_OVERLOAD
RECOVERY_S = 1.0
WINDOW_S = 0.25  # recovery is judged on p99 per quarter second


def sent_order(answers: list[tuple[int, int, str]]) -> list[tuple[int, int]]:
    """(sent µs, latency µs) of every answer, by when it was sent."""
    return sorted((at - latency, latency) for at, latency, _ in answers)


def windows(answers: list[tuple[int, int, str]], width_s: float) -> list[dict[str, float]]:
    """p99 (ms) and count per window of `width_s`, by when each request was sent."""
    if not answers:
        return []
    sent = sent_order(answers)
    start, width_us = sent[0][0], width_s * 1e6
    buckets: dict[int, list[int]] = {}
    for at, latency in sent:
        buckets.setdefault(int((at - start) // width_us), []).append(latency)
    return [
        {"from_s": i * width_s, "n": len(v), "p99_ms": stats.percentile(sorted(v), 99.0) / 1000.0}
        for i, v in sorted(buckets.items())
    ]


def normal_limit_ms(before: list[tuple[int, int, str]], width_s: float) -> float:
    """The worst window p99 of the undisturbed run: a window no worse than it is normal."""
    return max(w["p99_ms"] for w in windows(before, width_s))


def recovery_s(after: list[tuple[int, int, str]], limit_ms: float, width_s: float) -> float | None:
    """Seconds from the start of the after run to the start of its first normal window from which on
    the run as a whole is normal too (module docstring); None if that never happens."""
    sent = sent_order(after)
    if not sent:
        return None
    start = sent[0][0]
    for window in windows(after, width_s):
        if window["p99_ms"] > limit_ms:
            continue
        since = start + window["from_s"] * 1e6
        rest = sorted(latency for at, latency in sent if at >= since)
        if stats.percentile(rest, 99.0) / 1000.0 <= limit_ms:
            return window["from_s"]
    return None


def figures(result: dict[str, Any], seconds: float) -> dict[str, Any]:
    kinds = result["kinds"]
    return {
        "scenario": result["scenario"],
        "p99_ms": result["latency_ms"]["p99"],
        "max_ms": result["latency_ms"]["max"],
        "scored_per_s": kinds.get("ok", 0) / seconds,
        "answers": kinds,
        "timeouts": result["errors"]["timeout"],
        "socket_errors": sum(result["errors"][k] for k in ("connect", "read", "write")),
        "sent_per_s": result.get("sent_per_s"),
        "generator_cpu_cores": result["generator_cpu_cores"],
    }


def measure(
    url: str,
    requests_file: Path,
    key: str,
    capacity: float,
    seconds: float,
    after_seconds: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    undisturbed = wrk.Scenario("score", OPEN_CONNECTIONS, after_seconds, rate=round(AFTER * capacity))
    before = wrk.run(undisturbed, url, requests_file, key, keep_answers=True)
    over = wrk.run(
        wrk.Scenario("score", OPEN_CONNECTIONS, seconds, rate=round(OVERLOAD * capacity)), url, requests_file, key
    )
    after = wrk.run(undisturbed, url, requests_file, key, keep_answers=True)
    before_answers, after_answers = before.pop("answers"), after.pop("answers")
    limit = normal_limit_ms(before_answers, WINDOW_S)
    recovered = recovery_s(after_answers, limit, WINDOW_S)
    far = wrk.run(
        wrk.Scenario("score", OPEN_CONNECTIONS, seconds, rate=round(FAR_OVERLOAD * capacity)), url, requests_file, key
    )
    closed = wrk.run(wrk.Scenario("score", CLOSED_CONNECTIONS, seconds, classify=True), url, requests_file, key)
    results = {
        "capacity_per_s": capacity,
        "before_50": {
            **figures(before, after_seconds),
            "p99_per_s": [w["p99_ms"] for w in windows_per_second(windows(before_answers, WINDOW_S))],
            "normal_window_p99_ms": limit,
        },
        "open_150": figures(over, seconds),
        "after_50": {
            **figures(after, after_seconds),
            "p99_per_s": [w["p99_ms"] for w in windows_per_second(windows(after_answers, WINDOW_S))],
            "recovery_s": recovered,
        },
        "open_300": figures(far, seconds),
        "closed_1024": figures(closed, seconds),
    }
    for name in ("before_50", "open_150", "after_50", "open_300", "closed_1024"):
        run = results[name]
        log(
            f"overload {name} {run['scenario']}: p99 {run['p99_ms']:.1f} ms, scored {run['scored_per_s']:.0f}/s "
            f"(capacity {capacity:.0f}/s), answers {run['answers']}, timeouts {run['timeouts']}"
        )
    log(
        f"recovery: p99 normal again {'never' if recovered is None else f'{recovered:.2f} s'} after the overload "
        f"(normal: a quarter second's p99 ≤ {limit:.1f} ms, the worst of the run before it)"
    )
    return results


def windows_per_second(timeline: list[dict[str, float]]) -> list[dict[str, float]]:
    """Quarter-second windows merged by second (the worst quarter stands for its second)."""
    seconds: dict[int, float] = {}
    for w in timeline:
        second = int(w["from_s"])
        seconds[second] = max(seconds.get(second, 0.0), w["p99_ms"])
    return [{"from_s": s, "p99_ms": p} for s, p in sorted(seconds.items())]


def targets(overload: dict[str, Any] | None, deadline_ms: float) -> list[Target]:
    if not overload:
        return []
    found = []
    limit = deadline_ms + MARGIN_MS
    capacity = overload["capacity_per_s"]
    runs = (
        ("open_150", "open loop at 150 %", SCORED_SHARE),
        ("open_300", "open loop at 300 %", FAR_SCORED_SHARE),
        ("closed_1024", "closed loop, 1,024 connections", SCORED_SHARE),
    )
    for name, label, share in runs:
        if name not in overload:  # results from before it was measured
            continue
        run = overload[name]
        answers = run["answers"]
        found += [
            Target(
                f"overload, {label}: p99 of every answer",
                f"{run['p99_ms']:.1f} ms",
                f"≤ {limit:.0f} ms",
                run["p99_ms"] <= limit,
            ),
            Target(
                f"overload, {label}: scored throughput ÷ capacity",
                f"{100 * run['scored_per_s'] / capacity:.0f} %",
                f"≥ {100 * share:.0f} %",
                run["scored_per_s"] >= share * capacity,
            ),
            Target(
                f"overload, {label}: timeouts, socket errors, 5xx but the 503s, other statuses",
                f"{run['timeouts']}, {run['socket_errors']}, {answers.get('other_5xx', 0)}, {answers.get('other', 0)}",
                "0, 0, 0, 0",
                run["timeouts"] + run["socket_errors"] + answers.get("other_5xx", 0) + answers.get("other", 0) == 0,
            ),
        ]
    recovery = overload["after_50"]["recovery_s"]
    found.append(
        Target(
            "overload: p99 back to normal after it stops (perf/overload.py says what normal is)",
            "never in the run" if recovery is None else f"{recovery:.2f} s",
            f"≤ {RECOVERY_S:.0f} s",
            recovery is not None and recovery <= RECOVERY_S,
        )
    )
    return found

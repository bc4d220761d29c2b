"""Drives wrk with perf/load.lua, closed loop or at a fixed rate, and reads what it reports.

wrk is a compiled event-loop generator (Debian package `wrk`); the Lua script only picks a
prepared request, and at a fixed rate stamps it and reads one header of the answer. The
generator's own CPU time is recorded for every run, so a report shows that it was not the limit."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perf import stats

LUA_SCRIPT = Path(__file__).with_name("load.lua")
MARKER = "PERF_RESULT "
ENDPOINTS = {
    "score": ("POST", "/v1/fraud-score"),
    "health": ("GET", "/health"),
    "batch": ("POST", "/v1/fraud-score/batch"),  # one body: every transaction given, in one batch
}
# Percentiles drawn on the chart; wrk's histogram gives these for closed-loop runs.
CHART_POINTS = (50.0, 75.0, 90.0, 99.0, 99.9, 99.99)
SOCKET_ERRORS = ("connect", "read", "write", "timeout")
KINDS = ("ok", "deadline", "unavailable", "other_5xx", "other", "store")  # load.lua's kinds of answer, in its order
# The documented refusals of an overloaded service (docs/operations.md; the by-id routes' answer when
# their store is late, docs/feature-store.md): counted, not failures.
REFUSALS = ("deadline", "unavailable", "store")
# Closed loops with more connections than this also sort their answers: towards and beyond the
# scoring queue (nginx's limit_conn) and the deadline, some answers are refusals by design. So do
# closed loops of batches at any count: 64 requests of a thousand rows already wait out the deadline.
SORTED_ABOVE = 64
SORTED_ENDPOINTS = frozenset({"batch"})
TIMEOUT = "10s"  # above nginx's 10 s proxy timeouts: a slow answer is measured, not dropped


@dataclass(frozen=True)
class Scenario:
    endpoint: str  # a key of ENDPOINTS
    connections: int
    duration_s: float
    rate: float | None = None  # requests per second; None runs closed loop
    # Closed loop: also sort the answers by kind (load.lua), at a small cost; None: beyond SORTED_ABOVE.
    classify: bool | None = None

    @property
    def sorted(self) -> bool:
        if self.classify is not None:
            return self.classify
        return self.connections > SORTED_ABOVE or (self.endpoint in SORTED_ENDPOINTS and not self.rate)

    @property
    def threads(self) -> int:
        return min(2, self.connections)  # one per core of the machine this is sized for

    @property
    def name(self) -> str:
        loop = f"{self.rate:.0f}/s" if self.rate else "closed"
        return f"{self.endpoint} c{self.connections} {loop}"


def write_requests(directory: Path, transactions: Iterable[bytes]) -> dict[str, Path]:
    """The request files load.lua reads: "METHOD PATH", then one body per line."""
    directory.mkdir(parents=True, exist_ok=True)
    transactions = list(transactions)
    files = {}
    for endpoint, (method, path) in ENDPOINTS.items():
        if endpoint == "batch":
            lines = [b'{"transactions":[' + b",".join(transactions) + b"]}"]
        else:
            lines = transactions if method == "POST" else []
        files[endpoint] = write_request_file(directory / f"{endpoint}.requests", method, path, lines)
    return files


def write_request_file(
    file: Path, method: str, path: str, bodies: Iterable[bytes], headers: Mapping[str, str] | None = None
) -> Path:
    """A request file for load.lua: "METHOD PATH [Name:value …]", then one body per line."""
    first = " ".join([method, path, *(f"{k}:{v}" for k, v in (headers or {}).items())])
    file.write_bytes(first.encode() + b"\n" + b"".join(b + b"\n" for b in bodies))
    return file


def write_raw_request_file(file: Path, method: str, path: str, body: bytes, headers: Mapping[str, str]) -> Path:
    """A request file whose one body is raw bytes (binary tensor data may hold newlines)."""
    first = " ".join([method, path, *(f"{k}:{v}" for k, v in headers.items()), "RAW"])
    file.write_bytes(first.encode() + b"\n" + body)
    return file


def command(scenario: Scenario, base_url: str, requests_file: Path) -> list[str]:
    args = [
        "wrk",
        f"-t{scenario.threads}",
        f"-c{scenario.connections}",
        f"-d{scenario.duration_s:g}s",
        "--timeout",
        TIMEOUT,
        "-s",
        str(LUA_SCRIPT),
        base_url,
        "--",
        str(requests_file),
    ]
    if scenario.rate:
        args.append(f"{scenario.rate / scenario.threads:.3f}")  # the script's rate is per thread
    elif scenario.sorted:
        args += ["0", "classify"]
    return args


def parse_output(text: str) -> dict[str, Any]:
    """The JSON line load.lua's done() prints among wrk's own output."""
    for line in text.splitlines():
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER) :])
    raise ValueError("wrk printed no PERF_RESULT line: " + text[-500:])


def summarize(raw: Mapping[str, Any], scenario: Scenario) -> dict[str, Any]:
    """Requests per second, latency percentiles (ms) and errors of one wrk run."""
    seconds = raw["duration_us"] / 1e6
    errors = {k: raw["errors"][k] for k in SOCKET_ERRORS}
    result: dict[str, Any] = {
        "scenario": scenario.name,
        "endpoint": scenario.endpoint,
        "connections": scenario.connections,
        "rate": scenario.rate,
    }
    open_loop = raw.get("open_loop")
    if scenario.rate:
        if not open_loop:
            raise ValueError("a fixed-rate run must report its own latencies (open_loop)")
        latencies = [v for thread in open_loop for v in thread["latencies_us"]]
        if not latencies:
            raise ValueError("a fixed-rate run got no answers")
        errors["non_2xx"] = sum(t["non_2xx"] for t in open_loop)
        errors["unmatched"] = sum(t["unmatched"] for t in open_loop)  # answers without our request id
        result["sent_per_s"] = sum(t["sent"] for t in open_loop) / seconds
        result["latency_ms"] = stats.latency_summary(latencies)
        result["curve_ms"] = stats.curve(latencies, CHART_POINTS)
        answered = len(latencies)
    else:
        wrk_us = raw["wrk_latency_us"]
        errors["non_2xx"] = raw["errors"]["status"]  # wrk counts statuses above 399
        result["latency_ms"] = {
            **{f"p{p:g}": wrk_us[f"{p:g}"] / 1000.0 for p in stats.REPORTED},
            "max": wrk_us["max"] / 1000.0,
        }
        result["curve_ms"] = {f"{p:g}": wrk_us[f"{p:g}"] / 1000.0 for p in CHART_POINTS}
        answered = raw["requests"]
    result["requests"] = answered
    result["rps"] = answered / seconds
    result["kinds"] = raw.get("kinds", {})
    result["errors"] = errors
    result["failed"] = sum(errors.values())
    if scenario.rate or scenario.sorted:
        # The documented refusals (a queue beyond its limit, a deadline spent waiting, a late store)
        # are the service's designed answers: reported apart, never failures, so that a slow machine
        # does not fail a run (its figures say it); a fixed-rate run always sorts its answers.
        result["refused"] = {k: result["kinds"].get(k, 0) for k in REFUSALS}
        result["failed"] -= sum(result["refused"].values())
        result["scored_rps"] = result["kinds"].get("ok", 0) / seconds
    return result


def answers(raw: Mapping[str, Any]) -> list[tuple[int, int, str]]:
    """A fixed-rate run's answers in arrival order: (arrival µs, latency µs, kind)."""
    found = [
        (at, latency, KINDS[kind - 1])
        for thread in raw["open_loop"]
        for at, latency, kind in zip(thread["answered_us"], thread["latencies_us"], thread["kinds"], strict=True)
    ]
    return sorted(found)


def run(
    scenario: Scenario, base_url: str, requests_file: Path, api_key: str, keep_answers: bool = False
) -> dict[str, Any]:
    """Runs wrk once; adds the generator's CPU use (cores) to the summary, and with `keep_answers`
    every answer of a fixed-rate run (see answers())."""
    if not shutil.which("wrk"):
        raise RuntimeError("wrk is not installed: `make perf` installs it (apt-get install wrk)")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    completed = subprocess.run(
        command(scenario, base_url, requests_file),
        capture_output=True,
        text=True,
        env={**os.environ, "PERF_API_KEY": api_key},
        timeout=scenario.duration_s + 60,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode != 0:
        raise RuntimeError(
            f"wrk failed ({completed.returncode}): {completed.stderr.strip() or completed.stdout[-500:]}"
        )
    raw = parse_output(completed.stdout)
    result = summarize(raw, scenario)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result["generator_cpu_cores"] = cpu_s / (raw["duration_us"] / 1e6)
    if keep_answers:
        result["answers"] = answers(raw)
    return result

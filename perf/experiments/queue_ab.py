"""The workers' queue bound, A/B on one machine: `python -m perf.experiments.queue_ab [--rounds 3 --seconds 10]`.

Each configuration runs on a stack of its own (same model, same lifted rate limits, same wrk load);
configurations are interleaved round by round, so a shared machine's drift falls on all of them.
Per configuration and round:
  capacity     closed loop, 64 connections: every answer scored; CPU per scored request
  refusals     open loop at capacity's rate with the overload runs' 512 connections, the bound
               already reached by requests that never finish: every answer a 503; CPU per refusal
  near         make perf's open loop at 90 % of that capacity (128 connections): requests refused
  overload     make perf's runs (perf/overload.py): open loop at 150 % of that capacity, 50 % right
               after, closed loop with 1,024 connections
CPU is read from /proc for nginx and gunicorn (each with its children) and from getrusage for wrk.

  backlog   the socket's backlog (64 x WORKERS) is the bound: nginx's connect() fails, 503
  queue=K   nginx's limit_conn at K x WORKERS (QUEUE_PER_WORKER=K), the backlog far larger"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from perf import add_model_argument, overload, stats, wrk
from perf.__main__ import OPEN_LOOP_CONNECTIONS, OPEN_LOOP_LOADS
from perf.common import as_bodies, log, sample_rows, start_stack, watched
from perf.placement import Watch
from perf.placement import add_arguments as add_placement_arguments
from perf.placement import failures as placement_failures
from perf.placement import from_arguments as placement_from_arguments
from stack.launcher import Stack

TICK = os.sysconf("SC_CLK_TCK")
NEAR_CAPACITY = max(OPEN_LOOP_LOADS)  # make perf's busiest open loop below capacity


def configurations(workers: int, queues: list[int]) -> dict[str, dict[str, str]]:
    found = {"backlog": {"QUEUE_PER_WORKER": "1024", "GUNICORN_CMD_ARGS": f"--backlog {64 * workers}"}}
    found |= {f"queue={k}": {"QUEUE_PER_WORKER": str(k)} for k in queues}
    return found


def tree(pid: int) -> list[int]:
    pids, i = [pid], 0
    while i < len(pids):
        try:
            with open(f"/proc/{pids[i]}/task/{pids[i]}/children") as f:
                pids += [int(p) for p in f.read().split()]
        except FileNotFoundError:
            pass
        i += 1
    return pids


def cpu_s(pid: int) -> float:
    """User + system seconds of a process and its living children."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except FileNotFoundError:
            pass
    return total / TICK


def measured(stack: Stack, scenario: wrk.Scenario, requests: Path, key: str, **kwargs: Any) -> dict[str, Any]:
    before = {"nginx": cpu_s(stack.nginx.pid), "gunicorn": cpu_s(stack.gunicorn.pid)}
    result = wrk.run(scenario, stack.base_url, requests, key, **kwargs)
    seconds = scenario.duration_s
    result["cpu_s"] = {
        "nginx": cpu_s(stack.nginx.pid) - before["nginx"],
        "gunicorn": cpu_s(stack.gunicorn.pid) - before["gunicorn"],
        "wrk": result["generator_cpu_cores"] * seconds,
    }
    return result


def bound_reached(stack: Stack, limit_conn: bool) -> list[socket.socket]:
    """Requests that hold the bound and never finish. With nginx's limit: requests nginx admitted
    that wait for a body that never comes (it says `100 Continue` once past the limit's check).
    With the backlog alone: the workers stopped and their socket's backlog filled to the brim."""
    held = []
    if limit_conn:
        for _ in range(stack.settings.scoring_queue):
            s = socket.create_connection((stack.host, stack.port), timeout=10)
            s.sendall(
                b"POST /v1/fraud-score HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n"
            )
            assert s.recv(100).startswith(b"HTTP/1.1 100"), "nginx did not admit the request"
            held.append(s)
        return held
    for worker in tree(stack.gunicorn.pid)[1:]:
        os.kill(worker, signal.SIGSTOP)
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(str(stack.socket))
        except BlockingIOError:
            s.close()
            return held
        held.append(s)


def released(stack: Stack, held: list[socket.socket]) -> None:
    for s in held:
        s.close()
    for worker in tree(stack.gunicorn.pid)[1:]:
        os.kill(worker, signal.SIGCONT)


def per_answer_us(run: dict[str, Any], kind: str) -> dict[str, float]:
    answers = max(run["kinds"].get(kind, 0), 1)
    return {part: 1e6 * cpu / answers for part, cpu in run["cpu_s"].items()}


def one_round(
    stack: Stack, requests: Path, key: str, seconds: float, limit_conn: bool, connections: int
) -> dict[str, Any]:
    capacity_run = measured(stack, wrk.Scenario("score", connections, 3, classify=True), requests, key)
    capacity = capacity_run["scored_rps"]  # a busy machine may shed a few even here
    held = bound_reached(stack, limit_conn)
    try:
        refusals = measured(
            stack, wrk.Scenario("score", overload.OPEN_CONNECTIONS, 3, rate=round(capacity)), requests, key
        )
    finally:
        released(stack, held)
    assert refusals["kinds"].get("ok", 0) == 0, refusals["kinds"]
    wrk.run(wrk.Scenario("score", 64, 1), stack.base_url, requests, key)  # workers back at work
    # Below capacity, as make perf's open loop at 90 %: a queue too short refuses ordinary bursts.
    near = wrk.run(
        wrk.Scenario("score", OPEN_LOOP_CONNECTIONS, seconds, rate=round(NEAR_CAPACITY * capacity)),
        stack.base_url,
        requests,
        key,
    )
    over = measured(
        stack,
        wrk.Scenario("score", overload.OPEN_CONNECTIONS, seconds, rate=round(overload.OVERLOAD * capacity)),
        requests,
        key,
    )
    after = wrk.run(
        wrk.Scenario("score", overload.OPEN_CONNECTIONS, seconds / 2, rate=round(overload.AFTER * capacity)),
        stack.base_url,
        requests,
        key,
    )
    closed = measured(stack, wrk.Scenario("score", overload.CLOSED_CONNECTIONS, seconds, classify=True), requests, key)
    found: dict[str, Any] = {
        "capacity_per_s": capacity,
        "capacity_cpu_cores": {part: cpu / 3 for part, cpu in capacity_run["cpu_s"].items()},
        "cpu_us_per_scored": per_answer_us(capacity_run, "ok"),
        "cpu_us_per_refusal": per_answer_us(refusals, "unavailable"),
        "refusals_per_s": refusals["kinds"].get("unavailable", 0) / 3,
        "after_50": overload.figures(after, seconds / 2),
        "near_capacity": {
            "load": NEAR_CAPACITY,
            "answered": near["requests"],
            "refused": near["errors"]["non_2xx"],
            "p99_ms": near["latency_ms"]["p99"],
        },
    }
    for name, run in (("open_150", over), ("closed_1024", closed)):
        found[name] = {
            **overload.figures(run, seconds),
            "scored_share": run["kinds"].get("ok", 0) / seconds / capacity,
            "cpu_cores": {part: cpu / seconds for part, cpu in run["cpu_s"].items()},
        }
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(parser)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each overload run (default 10)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--queues", default="32,128", help="QUEUE_PER_WORKER values to compare (default 32,128)")
    parser.add_argument(
        "--capacity-connections", type=int, default=64, help="closed-loop connections of the capacity run (64)"
    )
    parser.add_argument("--output", type=Path, help="write every round's figures here (JSON)")
    add_placement_arguments(parser)
    args = parser.parse_args(argv)
    placement = placement_from_arguments(parser, args)
    placement.confine_load()
    watch = Watch(placement)
    key = secrets.token_urlsafe(24)
    requests = wrk.write_requests(Path(tempfile.mkdtemp(prefix="fraud-queue-ab-")), as_bodies(sample_rows()[:1000]))
    queues = [int(q) for q in args.queues.split(",")]
    if min(queues) * args.workers < args.capacity_connections:
        sys.exit("every queue must hold the capacity run's connections (K x workers ≥ --capacity-connections)")
    configs = configurations(args.workers, queues)
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    stack_log = Path(tempfile.mkdtemp(prefix="fraud-queue-ab-logs-")) / "stack.log"
    with watch:
        for i in range(args.rounds):
            order = list(configs) if i % 2 == 0 else list(reversed(configs))
            for name in order:
                stack = watched(
                    start_stack(
                        args.model.resolve(), key, stack_log, args.workers, placement=placement, **configs[name]
                    ),
                    watch,
                )
                try:
                    wrk.run(wrk.Scenario("score", 64, 2), stack.base_url, requests["score"], key)  # warm up
                    rounds[name].append(
                        found := one_round(
                            stack, requests["score"], key, args.seconds, name != "backlog", args.capacity_connections
                        )
                    )
                finally:
                    stack.stop()
                log(
                    f"round {i + 1} {name}: capacity {found['capacity_per_s']:.0f}/s, refusals "
                    f"{found['refusals_per_s']:.0f}/s; at 90 % {found['near_capacity']['refused']} refused of "
                    f"{found['near_capacity']['answered']}; scored "
                    f"{100 * found['open_150']['scored_share']:.0f} % at 150 %, "
                    f"{100 * found['closed_1024']['scored_share']:.0f} % closed 1,024; p99 "
                    f"{found['open_150']['p99_ms']:.1f} / {found['closed_1024']['p99_ms']:.1f} ms"
                )
    if args.output:
        args.output.write_text(json.dumps(rounds, indent=2) + "\n")
    print(table(rounds))
    checked = placement_failures(watch.report())
    print("\n".join(checked) or f"placement: {placement.name}, held")
    return 1 if checked else 0


def table(rounds: dict[str, list[dict[str, Any]]]) -> str:
    """Medians over rounds, per configuration."""

    def med(runs: list[dict[str, Any]], *path: str) -> float:
        values = []
        for run in runs:
            for step in path:
                run = run[step]
            values.append(run if run is not None else float("nan"))
        return stats.median(values)

    head = (
        f"{'configuration':<14}{'scored 150%':>12}{'p99':>8}{'scored c1024':>13}{'p99':>8}"
        f"{'refusals/s':>11}{'  CPU µs/scored: nginx gunicorn wrk':>36}{'  CPU µs/refusal: nginx gunicorn wrk':>37}"
    )
    lines = [head, "-" * len(head)]
    for name, runs in rounds.items():
        cost = "".join(
            f"{med(runs, kind, part):>{width}.0f}"
            for kind in ("cpu_us_per_scored", "cpu_us_per_refusal")
            for part, width in (("nginx", 23), ("gunicorn", 9), ("wrk", 5))
        )
        lines.append(
            f"{name:<14}{100 * med(runs, 'open_150', 'scored_share'):>11.0f}%{med(runs, 'open_150', 'p99_ms'):>8.1f}"
            f"{100 * med(runs, 'closed_1024', 'scored_share'):>12.0f}%{med(runs, 'closed_1024', 'p99_ms'):>8.1f}"
            f"{med(runs, 'refusals_per_s'):>11.0f}{cost}"
        )
    lines.append("")
    lines.append(f"{'cores used (nginx gunicorn wrk)':<34}{'capacity':>20}{'open 150 %':>20}{'closed 1,024':>20}")
    for name, runs in rounds.items():
        cells = "".join(
            f"{' '.join(f'{med(runs, *path, part):.2f}' for part in ('nginx', 'gunicorn', 'wrk')):>20}"
            for path in (("capacity_cpu_cores",), ("open_150", "cpu_cores"), ("closed_1024", "cpu_cores"))
        )
        lines.append(f"{name:<34}{cells}")
    lines.append("scored = 200s per second ÷ the round's capacity (closed loop, 64 connections); medians over rounds")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""`make chaos`: faults under steady load against the real stack (nginx + gunicorn from
stack/launcher.py, the default model), on loopback, each scenario bounded in time.

  kill -9 of a worker      gunicorn replaces it; failed requests stay under 0.5 % of the load
  SIGTERM to the launcher  in-flight requests finish: nothing is cut mid-response
  max_requests recycling   workers restart under load: no failed request
  slow body                a client dribbling its body holds no worker, and is cut when it stalls
  overload                 1,024 callers resending at once for 2 workers: every answer a 200 or a
                           documented 503 within the deadline + 10 ms, none timed out; then back to
                           normal within 1 s (as make perf judges it, perf/overload.py)

Load comes from wrk (Debian package), as in the perf harness; the SIGTERM scenario uses a small
client of its own because it must tell a refused connection (never processed, safe to retry) from a
response cut half-way, which wrk cannot. Prints one table: fault, load, requests, failures, recovery."""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from chaos.load import Clients, finish_wrk, start_wrk, wrk_script
from perf import overload as overload_runs
from perf import wrk
from service.contract.schema import sample_transaction
from stack import harness
from stack.launcher import ROOT, Stack, http_get

SAMPLE = json.dumps(sample_transaction())
MAX_FAILURE_RATE = 0.005


@dataclass
class Row:
    fault: str
    load: str
    requests: int
    failures: int
    recovery: str
    passed: bool
    note: str = ""


class Bench:
    """Settings shared by the scenarios: a throwaway key, limits out of the way, logs kept."""

    def __init__(self, model_path: Path, workers: int, work: Path) -> None:
        self.key = secrets.token_urlsafe(32)
        self.model_path, self.workers, self.work = model_path, workers, work
        self.script = wrk_script(work / "score.lua", SAMPLE, self.key)

    def env(self, **extra: str) -> dict[str, str]:
        return harness.environment(
            self.key, self.model_path, **{"WORKERS": str(self.workers), **harness.UNLIMITED, **extra}
        )

    def stack(self, name: str, **extra: str) -> Stack:
        return harness.start(
            self.env(**extra), log=self.work / f"{name}.log", access_log=str(self.work / f"{name}-nginx-access.log")
        )


def workers_of(master_pid: int) -> set[int]:
    with open(f"/proc/{master_pid}/task/{master_pid}/children") as f:
        return {int(pid) for pid in f.read().split()}


def wait_for(predicate, timeout: float = 30.0) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise TimeoutError("condition not met")
        time.sleep(0.005)
    return time.monotonic() - started


def metric(stack: Stack, name: str) -> float:
    status, body = http_get("127.0.0.1", stack.settings.port, "/metrics")
    found = re.search(rf"^{name} ([0-9.e+]+)$", body.decode(), re.M)
    return float(found.group(1)) if found else 0.0


def kill_a_worker(bench: Bench, seconds: int, connections: int) -> Row:
    stack = bench.stack("kill9")
    try:
        master = stack.gunicorn.pid
        wait_for(lambda: len(workers_of(master)) == bench.workers)
        load = start_wrk(stack.base_url + "/v1/fraud-score", bench.script, seconds, connections)
        time.sleep(seconds / 3)
        victim = min(workers_of(master))
        os.kill(victim, signal.SIGKILL)
        recovery = wait_for(lambda: victim not in (w := workers_of(master)) and len(w) == bench.workers)
        result = finish_wrk(load)
        healthy = http_get("127.0.0.1", stack.settings.port, "/health")[0] == 200
    finally:
        stack.stop()
    rate = result.failures / max(result.requests, 1)
    return Row(
        "kill -9 one worker",
        f"wrk {connections} conn, {seconds} s",
        result.requests,
        result.failures,
        f"{recovery * 1000:.0f} ms to a new worker",
        healthy and rate < MAX_FAILURE_RATE,
        f"failure rate {rate:.4%} (limit {MAX_FAILURE_RATE:.1%})",
    )


def recycle_workers(bench: Bench, seconds: int, connections: int) -> Row:
    stack = bench.stack("recycle", GUNICORN_CMD_ARGS="--max-requests 500 --max-requests-jitter 100")
    try:
        result = finish_wrk(start_wrk(stack.base_url + "/v1/fraud-score", bench.script, seconds, connections))
        restarts = metric(stack, "fraud_worker_exits_total")
    finally:
        stack.stop()
    return Row(
        "max_requests recycling",
        f"wrk {connections} conn, {seconds} s",
        result.requests,
        result.failures,
        f"{restarts:.0f} workers recycled",
        result.failures == 0 and restarts > 0,
        "max_requests 500 (jitter 100)",
    )


def sigterm_the_stack(bench: Bench, seconds: int, threads: int) -> Row:
    """The launcher (`python -m stack`, what `make run` starts) gets SIGTERM mid-load."""
    port = harness.free_port()
    log = open(bench.work / "sigterm.log", "w")
    launcher = subprocess.Popen(
        [sys.executable, "-m", "stack"], cwd=ROOT, env=bench.env(PORT=str(port)), stdout=log, stderr=log
    )
    harness.wait_for_health("127.0.0.1", port, 60)
    with Clients("127.0.0.1", port, SAMPLE, bench.key, threads) as clients:
        time.sleep(seconds / 2)
        before = clients.snapshot()
        signalled = time.monotonic()
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(60)
        stopped_in = time.monotonic() - signalled
        time.sleep(0.5)
    counts = clients.snapshot()
    failures = counts["cut"] + counts["error_status"]
    requests = counts["ok"] + failures
    return Row(
        "SIGTERM to the stack",
        f"{threads} clients, {seconds / 2:.0f} s before",
        requests,
        failures,
        f"stopped in {stopped_in:.2f} s",
        failures == 0 and launcher.returncode == 0,
        f"{counts['ok'] - before['ok']} answered after the signal; {counts['refused']} refused once "
        f"nginx had closed its port (never processed); 0 cut mid-response required",
    )


def slow_body(bench: Bench, seconds: int, connections: int) -> Row:
    """One worker only; a client sends a byte a second of its body, then goes silent."""
    stack = bench.stack("slowbody", WORKERS="1")
    try:
        port = stack.settings.port
        body = SAMPLE.encode()
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(
            b"POST /v1/fraud-score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"X-API-Key: {bench.key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        load = start_wrk(stack.base_url + "/v1/fraud-score", bench.script, seconds, connections)
        for i in range(min(seconds, 5)):  # a byte a second while the load runs on the one worker
            if i:
                time.sleep(1)
            slow.sendall(body[i : i + 1])
        silent_from = time.monotonic()
        slow.settimeout(60)
        try:
            answer = slow.recv(4096)  # b"" when nginx closes it (reset_timedout_connection: maybe a reset)
        except ConnectionResetError:
            answer = b""
        cut_after = time.monotonic() - silent_from
        slow.close()
        result = finish_wrk(load)
    finally:
        stack.stop()
    return Row(
        "slow body (1 B/s, then silent)",
        f"wrk {connections} conn, {seconds} s, 1 worker",
        result.requests,
        result.failures,
        f"cut {cut_after:.1f} s after its last byte",
        result.failures == 0 and answer == b"" and cut_after < 15,
        "nginx client_body_timeout 10s is between reads: a client that keeps sending is bounded "
        "by the 8k body limit instead, and never reaches a worker",
    )


def overload(bench: Bench, seconds: int, connections: int) -> Row:
    """Far more callers than workers (closed loop, each resending the moment it is answered), between
    two open-loop runs at half the capacity measured first, which judge the recovery as make perf
    does (perf/overload.py: normal is what the run before showed)."""
    stack = bench.stack("overload")
    callers = 1024
    try:
        files = wrk.write_requests(bench.work / "overload", [SAMPLE.encode()])
        url = stack.base_url
        capacity = wrk.run(wrk.Scenario("score", connections, 3), url, files["score"], bench.key)["rps"]
        half = wrk.Scenario("score", overload_runs.OPEN_CONNECTIONS, 3, rate=round(overload_runs.AFTER * capacity))
        before = wrk.run(half, url, files["score"], bench.key, keep_answers=True)
        during = wrk.run(wrk.Scenario("score", callers, seconds, classify=True), url, files["score"], bench.key)
        after = wrk.run(half, url, files["score"], bench.key, keep_answers=True)
    finally:
        stack.stop()
    deadline_ms = stack.settings.request_deadline_ms
    kinds = during["kinds"]
    failures = sum(during["errors"][k] for k in wrk.SOCKET_ERRORS) + kinds.get("other_5xx", 0) + kinds.get("other", 0)
    scored = kinds.get("ok", 0) / seconds / capacity
    normal = overload_runs.normal_limit_ms(before.pop("answers"), overload_runs.WINDOW_S)
    recovered = overload_runs.recovery_s(after.pop("answers"), normal, overload_runs.WINDOW_S)
    back = after["failed"] == 0 and recovered is not None and recovered <= overload_runs.RECOVERY_S
    on_time = during["latency_ms"]["p99"] <= deadline_ms + overload_runs.MARGIN_MS
    return Row(
        "overload (closed loop)",
        f"wrk {callers} conn, {seconds} s",
        during["requests"],
        failures,
        "p99 normal again "
        + ("never in 3 s" if recovered is None else f"after {recovered:.2f} s")
        + f" (a quarter second ≤ {normal:.1f} ms, the worst before)",
        failures == 0 and on_time and back,
        f"p99 {during['latency_ms']['p99']:.1f} ms (deadline {deadline_ms} + {overload_runs.MARGIN_MS:.0f}); scored "
        f"{100 * scored:.0f} % of the {capacity:.0f}/s measured at {connections} conn; "
        f"{kinds.get('deadline', 0)} deadline_exceeded, {kinds.get('unavailable', 0)} unavailable (queue full), "
        "both 503 with Retry-After",
    )


def table(rows: list[Row]) -> str:
    head = ("fault", "load", "requests", "failures", "recovery", "result")
    cells = [head] + [
        (r.fault, r.load, str(r.requests), str(r.failures), r.recovery, "ok" if r.passed else "FAIL") for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    notes = [f"  {r.fault}: {r.note}" for r in rows if r.note]
    return "\n".join(lines + [""] + notes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("MODEL_PATH", "model/fraud-model.joblib"))
    parser.add_argument("--seconds", type=int, default=10, help="load duration per scenario")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the logs (their directory is printed)")
    args = parser.parse_args()
    model = Path(args.model).resolve()
    if not model.exists():
        sys.exit(f"no model at {model}: run `make model`")
    work = Path(tempfile.mkdtemp(prefix="fraud-chaos-"))
    bench = Bench(model, args.workers, work)
    rows = []
    for scenario in (kill_a_worker, sigterm_the_stack, recycle_workers, slow_body, overload):
        print(f"running: {scenario.__name__} …", file=sys.stderr, flush=True)
        n = args.connections // 2 if scenario is sigterm_the_stack else args.connections
        rows.append(scenario(bench, args.seconds, n))
    print(table(rows))
    if args.keep:
        print(f"\nlogs: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r.passed for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

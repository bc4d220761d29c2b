"""What the OpenTelemetry export costs a request, A/B on one machine:
`python -m perf.experiments.tracing_cost [--rounds 5 --seconds 5]`.

Three stacks of the same model, started together: the export off (the default), on at 100 %
sampling (OTEL_TRACES_SAMPLER=always_on) and at 1 % (traceidratio 0.01), each exporting to an
OTLP/HTTP receiver of its own in a separate process (it answers 200 and reads nothing more: the
collector's cost is not the service's). Each round runs the single route, closed loop at 64
connections, once per stack in a fresh random order, so that a shared machine's drift falls on all
three. Per run: throughput and the CPU time of gunicorn's workers per request (user + system from
/proc: what a request costs them, the exporter's thread included).

Printed: medians [min-max] over the rounds, and each setting against off in the same round (paired):
the throughput ratio and the extra worker CPU per request, in microseconds."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import secrets
import sys
import tempfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from perf import add_model_argument, existing_model, memory, wrk
from perf.common import as_bodies, sample_rows, start_stack
from perf.experiments.by_id_workers import spread
from stack import harness
from stack.launcher import Stack

CONNECTIONS = 64
SETTINGS = {
    "off": {},
    "100 %": {"OTEL_TRACES_SAMPLER": "always_on"},
    "1 %": {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"},
}


class _Accept(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802  (http.server's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _serve(port: int) -> None:
    ThreadingHTTPServer(("127.0.0.1", port), _Accept).serve_forever()


def receiver() -> tuple[multiprocessing.Process, str]:
    port = harness.free_port()
    process = multiprocessing.Process(target=_serve, args=(port,), daemon=True)
    process.start()
    return process, f"http://127.0.0.1:{port}"


def run(stack: Stack, scenario: wrk.Scenario, requests: Path, key: str) -> dict[str, Any]:
    workers = memory.children(stack.gunicorn.pid) if stack.gunicorn else []
    before = memory.cpu_seconds(workers)
    found = wrk.run(scenario, stack.base_url, requests, key)
    done = max(found["requests"], 1)
    return {
        "rps": found["rps"],
        "failed": found["failed"],
        "worker_cpu_us": (memory.cpu_seconds(workers) - before) * 1e6 / done,
    }


def report(runs: dict[str, list[dict[str, Any]]]) -> str:
    lines = [f"single route, closed loop, {CONNECTIONS} connections: median [min-max] over the rounds"]
    for name, found in runs.items():
        lines.append(
            f"  {name:<6} {spread([r['rps'] for r in found]):>22} req/s   "
            f"worker CPU {spread([r['worker_cpu_us'] for r in found], digits=1):>20} µs/req"
        )
    lines.append("paired with off (same round): throughput ratio, extra worker CPU per request")
    for name in list(runs)[1:]:
        pairs = list(zip(runs["off"], runs[name], strict=True))
        lines.append(
            f"  {name:<6} {spread([b['rps'] / a['rps'] for a, b in pairs], 100, 1)} %   "
            f"{spread([b['worker_cpu_us'] - a['worker_cpu_us'] for a, b in pairs], digits=1)} µs"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(parser)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5, help="length of each run")
    parser.add_argument("--output", type=Path, help="also write every run's figures here (JSON)")
    args = parser.parse_args(argv)
    model = existing_model(args.model)
    key = secrets.token_urlsafe(24)
    directory = Path(tempfile.mkdtemp(prefix="fraud-perf-tracing-"))
    requests = wrk.write_requests(directory, as_bodies(sample_rows()[:1000]))["score"]
    stacks: dict[str, Stack] = {}
    receivers = []
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SETTINGS}
    try:
        for name, extra in SETTINGS.items():
            env = dict(extra)
            if name != "off":
                process, endpoint = receiver()
                receivers.append(process)
                env |= {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
            stacks[name] = start_stack(model, key, directory / f"stack-{len(stacks)}.log", **env)
        for name in SETTINGS:  # warm-up: connections, the workers' first requests, the exporters' sessions
            run(stacks[name], wrk.Scenario("score", CONNECTIONS, 1), requests, key)
        for _ in range(args.rounds):
            for name in random.sample(list(SETTINGS), len(SETTINGS)):
                runs[name].append(run(stacks[name], wrk.Scenario("score", CONNECTIONS, args.seconds), requests, key))
    finally:
        for running in stacks.values():
            running.stop()
        for process in receivers:
            process.terminate()
    print(report(runs))
    if args.output:
        args.output.write_text(json.dumps(runs, indent=1))
    return 1 if any(r["failed"] for found in runs.values() for r in found) else 0


if __name__ == "__main__":
    sys.exit(main())

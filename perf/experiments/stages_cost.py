"""What the stage timings (Server-Timing, the stage histogram) cost a single score: this checkout
against a base revision, in-process, interleaved A B B A.

    .venv/bin/python -m perf.experiments.stages_cost                 # BASE: where this branch left main
    .venv/bin/python -m perf.experiments.stages_cost --base e5cea3c --rounds 8
    make perf-stages                                                # the same, with ROUNDS and BASE

A difference of a microsecond or two is far below what `make perf-compare` (the whole stack under
wrk, ±several % from round to round) can resolve, so this measures the worker's CPU alone: each
revision's own Falcon app, behind its deadline guard as gunicorn serves it (nginx's stamp set, so
the queue stage is timed too), answers the same POST /v1/fraud-score many times in one process;
CPU time per request (time.process_time_ns, so another process taking the core is not counted) is
the least of a few passes. The base runs from a worktree of BASE (its C extensions built in place
with this interpreter; cached per commit), each revision in a process of its own, their order
alternating round by round so that a shared machine's drift falls on both. Reported: each round's
CPU µs per request for both, and the median over rounds of (this − base) with its min–max spread.
A difference counts only when the whole spread lies on one side of 0."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from perf import add_model_argument, existing_model, stats
from perf.common import as_bodies, log, sample_rows
from perf.compare import git, resolve

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(tempfile.gettempdir()) / f"fraud-stages-cost-{os.getuid()}"

# Run in each checkout (its own `service` first on the path): only what both revisions have.
MEASURE = """
import json, sys, time
from pathlib import Path
import falcon.testing
from service.api.app import create_app
from service.api.deadline import Deadlines
from service.core.settings import Settings
from service.engine.loader import load_model
from service.telemetry import metrics

model_path, body_path, n, passes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
key = "perf-stages-key-0123456789"
settings = Settings(api_keys=(key.encode(),), model_path=Path(model_path), rate_limit_per_key=10**9,
                    rate_limit_burst=10**9)
app = Deadlines(create_app(settings, load_model(settings)), settings.request_deadline_ms,
                observe_wait=metrics.observe_queue_wait, count_shed=metrics.count_shed)
body = Path(body_path).read_bytes()
headers = {"Content-Type": "application/json", "X-API-Key": key, "X-Request-ID": "perf-stages",
           # nginx's stamp, ahead of this clock: timed as no wait, never shed
           "X-Request-Start": f"{time.time() + 86400:.3f}"}
environs = [falcon.testing.create_environ(method="POST", path="/v1/fraud-score", body=body, headers=headers)
            for _ in range(n)]
statuses = []
start_response = lambda status, headers, exc_info=None: statuses.append(status)

def serve_all():
    for environ in environs:
        environ["wsgi.input"].seek(0)
        for _ in app(environ, start_response):
            pass

serve_all()  # warm: every label's samples made, caches filled
best = float("inf")
for _ in range(passes):
    started = time.process_time_ns()
    serve_all()
    best = min(best, (time.process_time_ns() - started) / n / 1e3)
if any(not s.startswith("200") for s in statuses):
    raise SystemExit(f"not every answer was 200: {set(statuses)}")
print(json.dumps({"cpu_us": best}))
"""


def base_checkout(commit: str, cache: Path = CACHE) -> Path:
    """A worktree of `commit` with its C extensions built in place by this interpreter (reused)."""
    checkout = cache / commit
    built = checkout / ".built"
    if built.exists():
        return checkout
    cache.mkdir(parents=True, exist_ok=True)
    git(ROOT, "worktree", "prune")
    if not checkout.exists():
        git(ROOT, "worktree", "add", "--detach", "--force", str(checkout), commit)
    log(f"building the base's C extensions in {checkout}")
    subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace", "-q"], cwd=checkout, check=True, capture_output=True
    )
    built.touch()
    return checkout


def measure(checkout: Path, model: Path, body: Path, requests: int, passes: int) -> float:
    """CPU µs per single score of the app in `checkout`, in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "ENV_FILE": "/nonexistent"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(model), str(body), str(requests), str(passes)],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"measuring {checkout} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])["cpu_us"]


def stage_work_us(calls: int = 100_000, repeats: int = 7) -> float:
    """The stage work alone in this checkout, µs a request (least of `repeats`): a Stages made,
    stamped as a single score stamps it, finished, and recorded with its header written, the app's
    time formatted as X-Response-Time-Ms needs it anyway."""
    import timeit

    from service.telemetry import metrics
    from service.telemetry.stages import Stages, clock

    def request() -> None:
        stages = Stages(clock())
        stages.read = clock()
        stages.scored = clock()
        elapsed = stages.finish(0.0012) / 1e9
        metrics.record_stages("/v1/fraud-score", stages, f"{elapsed * 1000.0:.3f}")

    return min(timeit.repeat(request, number=calls, repeat=repeats)) / calls * 1e6


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="git revision to compare with (default: where this branch left main)")
    parser.add_argument("--rounds", type=int, default=6, help="A/B rounds (>= 3)")
    parser.add_argument("--requests", type=int, default=5000, help="requests per pass")
    parser.add_argument("--passes", type=int, default=5, help="passes per round; the least CPU counts")
    add_model_argument(parser)
    args = parser.parse_args(argv)
    model = existing_model(args.model)
    base = resolve(ROOT, args.base)
    checkouts = {"base": base_checkout(base), "this": ROOT}
    with tempfile.TemporaryDirectory(prefix="stages-cost-") as scratch:
        body = Path(scratch) / "transaction.json"
        body.write_bytes(as_bodies(sample_rows()[:1])[0])
        rounds = []
        for r in range(max(3, args.rounds)):
            order = ("base", "this") if r % 2 == 0 else ("this", "base")
            found = {name: measure(checkouts[name], model, body, args.requests, args.passes) for name in order}
            rounds.append(found)
            log(f"round {r + 1}: base {found['base']:.2f} µs, this {found['this']:.2f} µs per request")
    direct = stage_work_us()
    log(f"the stage work alone in this checkout: {direct:.2f} µs a request")
    deltas = [found["this"] - found["base"] for found in rounds]
    ratios = [found["base"] / found["this"] for found in rounds]
    result = {
        "base": base,
        "head": git(ROOT, "rev-parse", "HEAD"),
        "rounds": rounds,
        "delta_cpu_us": {"median": stats.median(deltas), "min": min(deltas), "max": max(deltas)},
        "throughput_ratio": {"median": stats.median(ratios), "min": min(ratios), "max": max(ratios)},
        "stage_work_us": direct,
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

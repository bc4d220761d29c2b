"""`make perf-compare BASE=<rev>`: this checkout against a base revision, A B A B on one machine.

    python -m perf.compare                    # BASE: the last commit on main before this change
    python -m perf.compare --base 2493c6f --rounds 5

A shared machine's speed moves by ±20 % from one minute to the next, so two `make perf` runs taken
minutes apart cannot settle a 10 % claim. Here both revisions run side by side, each with its own
code: the base from a worktree of BASE with its own .venv (built once by BASE's own `make install`,
cached per commit), the current one from this checkout. Both serve copies of the same model files
with the same lifted rate limits and take the same wrk load (this checkout's perf/load.lua and
request files). Only one is under load at a time: every scenario runs on A then B, then B then A in
the next round, so slow drift of the machine falls on both. Each figure is reported as the median
over rounds of that round's current ÷ base ratio, with the rounds' min–max as its spread; a
difference counts only when the whole spread lies on one side of 1.

Default BASE: `git merge-base HEAD main` (where this branch left main); when HEAD is already on
main (merged, or main itself), HEAD~1."""

from __future__ import annotations

import argparse
import datetime
import fcntl
import http.client
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perf import add_model_argument, existing_model, report, stats, wrk
from perf.__main__ import CONNECTIONS
from perf.common import as_bodies, log, sample_rows
from perf.placement import Watch
from perf.placement import add_arguments as add_placement_arguments
from perf.placement import failures as placement_failures
from perf.placement import from_arguments as placement_from_arguments
from service.core.artifacts import ArtifactPaths
from stack import harness

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(tempfile.gettempdir()) / f"fraud-perf-compare-{os.getuid()}"
# The figures compared for every scenario, and which way is better.
FIGURES = {"rps": "higher", "p50": "lower", "p99": "lower"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def default_base(repo: Path) -> str:
    """The last commit on main before the change being measured: the merge base with main, or
    HEAD~1 when HEAD is itself on main."""
    head = git(repo, "rev-parse", "HEAD")
    fork = git(repo, "merge-base", "HEAD", "main")
    return git(repo, "rev-parse", "HEAD~1") if fork == head else fork


def resolve(repo: Path, rev: str | None) -> str:
    return git(repo, "rev-parse", "--verify", f"{rev}^{{commit}}") if rev else default_base(repo)


def prepare_base(repo: Path, commit: str, cache: Path = CACHE) -> Path:
    """A worktree of `commit` with its own .venv, built by its own `make install`; reused while
    its .venv is complete (one per commit, locked so that two runs do not build it at once)."""
    cache.mkdir(parents=True, exist_ok=True)
    checkout = cache / commit
    with open(cache / f"{commit}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (checkout / ".venv" / ".installed").exists():
            return checkout
        if checkout.exists():  # an interrupted build: start again
            shutil.rmtree(checkout)
        git(repo, "worktree", "prune")
        git(repo, "worktree", "add", "--detach", "--force", str(checkout), commit)
        log(f"building the base's .venv in {checkout} (its own `make install`; cached for later runs)")
        build_log = cache / f"{commit}-install.log"
        with open(build_log, "w") as out:
            built = subprocess.run(["make", "-C", str(checkout), "install"], stdout=out, stderr=subprocess.STDOUT)
        if built.returncode != 0:
            raise RuntimeError(f"`make install` of {commit[:12]} failed:\n{build_log.read_text()[-2000:]}")
        return checkout


def copy_model(model_path: Path, into: Path) -> Path:
    """The model's files (estimator, forest, manifest) copied: both stacks serve the same bytes."""
    into.mkdir(parents=True, exist_ok=True)
    paths = ArtifactPaths.for_model(model_path)
    for source in (paths.estimator, paths.forest, paths.manifest):
        shutil.copy2(source, into / source.name)
    return into / model_path.name


@dataclass
class Side:
    """One revision's stack, started by its own `python -m stack` (what `make run` runs)."""

    name: str
    checkout: Path
    python: Path
    process: subprocess.Popen | None = None
    url: str = ""
    confine: tuple[str, ...] = ()  # the placement's command prefix: the launcher and its servers

    def tooling(self) -> str:
        """The package of this side's launcher and harness: `stack`, or `service` in revisions from
        before they left the shipped package (`python -m service.stack` was the launcher there)."""
        return "service" if (self.checkout / "service" / "stack.py").exists() else "stack"

    def start(self, model_path: Path, api_key: str, stack_log: Path, timeout: float = 90.0) -> None:
        for attempt in range(3):
            # The harness's environment, but each side's own launcher (its checkout's code) starts it.
            port = harness.free_port()
            passed = ("WORKERS", "GUNICORN_CMD_ARGS")
            env = harness.environment(api_key, model_path, passed, PORT=str(port), **self.unlimited())
            with open(stack_log, "a") as errors:
                # Access lines go to stdout, formatted and written as in production, then dropped.
                self.process = subprocess.Popen(
                    [
                        *self.confine,
                        str(self.python),
                        "-m",
                        "service.stack" if self.tooling() == "service" else "stack",
                    ],
                    cwd=self.checkout,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=errors,
                    start_new_session=True,
                )
            self.url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + timeout
            while self.process.poll() is None and time.monotonic() < deadline:
                if status(self.url, "GET", "/health") == 200:
                    return
                time.sleep(0.1)
            self.stop()
            if attempt == 2:
                raise RuntimeError(f"the {self.name} stack did not come up: see {stack_log}")

    def unlimited(self) -> dict[str, str]:
        """The rate limits lifted as far as this side's own settings allow (a revision's ceilings
        may differ from the current one's)."""
        asked = subprocess.run(
            [
                str(self.python),
                "-c",
                f"import json; from {self.tooling()}.harness import UNLIMITED; print(json.dumps(UNLIMITED))",
            ],
            cwd=self.checkout,
            capture_output=True,
            text=True,
        )
        return json.loads(asked.stdout) if asked.returncode == 0 else harness.UNLIMITED

    def stop(self) -> None:
        """The launcher stops nginx and gunicorn gracefully on SIGTERM; its session is killed if not."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(40)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def status(url: str, method: str, path: str, body: bytes | None = None, api_key: str = "") -> int | None:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        headers = {"X-API-Key": api_key, "Content-Type": "application/json"} if api_key else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return None
    finally:
        conn.close()


def servable(url: str, files: Mapping[str, Path], api_key: str) -> dict[str, str]:
    """Endpoints this stack cannot serve (no such route, or refusing the request), with the reason."""
    missing = {}
    for endpoint, requests in files.items():
        lines = requests.read_bytes().splitlines()
        method, path = lines[0].decode().split(" ", 1)
        body = lines[1] if len(lines) > 1 else None
        code = status(url, method, path, body, api_key)
        if code is None or not 200 <= code < 300:
            missing[endpoint] = f"{method} {path} answered {code}"
    return missing


def figures(result: Mapping[str, Any]) -> dict[str, float]:
    """Throughput counts scored answers where the run sorted them (documented refusals apart)."""
    rps = result.get("scored_rps", result["rps"])
    return {"rps": rps, "p50": result["latency_ms"]["p50"], "p99": result["latency_ms"]["p99"]}


def compare(rounds: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per scenario and figure: current ÷ base in each round, their median and min–max spread, and
    whether the difference is larger than the spread (every round on the same side of 1).

    `rounds`: one mapping per round, {"base": wrk result, "current": wrk result} under each scenario."""
    scenarios: dict[str, dict[str, Any]] = {}
    for name in rounds[0]:
        per_figure = {}
        for figure, better in FIGURES.items():
            ratios = [figures(r[name]["current"])[figure] / figures(r[name]["base"])[figure] for r in rounds]
            low, high = min(ratios), max(ratios)
            significant = low > 1.0 or high < 1.0
            improved = (low > 1.0) == (better == "higher")
            per_figure[figure] = {
                "ratio": stats.median(ratios),
                "min": low,
                "max": high,
                "ratios": ratios,
                "better": better,
                "verdict": ("better" if improved else "worse") if significant else "within spread",
                "base": stats.median(figures(r[name]["base"])[figure] for r in rounds),
                "current": stats.median(figures(r[name]["current"])[figure] for r in rounds),
            }
        scenarios[name] = per_figure
    return scenarios


def scenarios(endpoints: Iterable[str], connections: Iterable[int], seconds: float) -> list[wrk.Scenario]:
    """`make perf`'s closed-loop scenarios: every endpoint at every connection count."""
    return [wrk.Scenario(e, c, seconds) for c in connections for e in endpoints]


def run(
    sides: Mapping[str, Side], plan: Sequence[wrk.Scenario], files: Mapping[str, Path], key: str, rounds: int
) -> list[dict[str, dict[str, Any]]]:
    """Every scenario on both sides in each round, one side under load at a time; the order
    alternates round by round (A B, then B A)."""
    recorded = []
    for index in range(rounds):
        order = ["base", "current"] if index % 2 == 0 else ["current", "base"]
        this_round: dict[str, dict[str, Any]] = {}
        for scenario in plan:
            this_round[scenario.name] = {
                side: wrk.run(scenario, sides[side].url, files[scenario.endpoint], key) for side in order
            }
        recorded.append(this_round)
        log(f"round {index + 1} of {rounds} done")
    return recorded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", help="the base revision (default: see above)")
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds, at least 3 (default 3)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each wrk run (default 3)")
    parser.add_argument(
        "--connections", default=",".join(map(str, CONNECTIONS)), help="connection counts (default: make perf's)"
    )
    add_model_argument(parser)
    add_placement_arguments(parser)
    parser.add_argument("--results-dir", type=Path, default=ROOT / "perf" / "results")
    args = parser.parse_args(argv)
    if args.rounds < 3:
        parser.error("--rounds must be at least 3: fewer cannot show a spread")
    model_path = existing_model(args.model)
    placement = placement_from_arguments(parser, args)

    base = resolve(ROOT, args.base)
    head = git(ROOT, "rev-parse", "HEAD")
    dirty = bool(git(ROOT, "status", "--porcelain", "--untracked-files=no"))
    log(f"base {base[:12]} against current {head[:12]}{' + uncommitted changes' if dirty else ''}")
    checkout = prepare_base(ROOT, base)

    started = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fraud-perf-compare-"))
    files = wrk.write_requests(work / "requests", as_bodies(sample_rows()[:1000]))
    key = secrets.token_urlsafe(24)
    confine = placement.service_prefix()
    sides = {
        "base": Side("base", checkout, checkout / ".venv" / "bin" / "python", confine=confine),
        "current": Side("current", ROOT, Path(sys.executable), confine=confine),
    }
    placement.confine_load()
    watch = Watch(placement)
    stack_log = args.results_dir / f"{started}-compare-stack.log"
    try:
        for name, side in sides.items():
            side.start(copy_model(model_path, work / name), key, stack_log)
            watch.service(side.process.pid)
        skipped = {e: r for side in sides.values() for e, r in servable(side.url, files, key).items()}
        for side in sides.values():
            if side.process is None or side.process.poll() is not None:
                raise RuntimeError(f"the {side.name} stack stopped: see {stack_log}")
        endpoints = [e for e in files if e not in skipped]
        if not endpoints:
            raise RuntimeError(f"no endpoint can be compared: {skipped}")
        for endpoint, reason in skipped.items():
            log(f"skipping {endpoint}: {reason}")
        connections = [int(c) for c in args.connections.split(",")]
        plan = scenarios(endpoints, connections, args.seconds)
        log("warming up both stacks")
        for side in sides.values():
            for endpoint in endpoints:
                wrk.run(wrk.Scenario(endpoint, 64, 2), side.url, files[endpoint], key)
        with watch:
            recorded = run(sides, plan, files, key, args.rounds)
    finally:
        for side in sides.values():
            side.stop()
        shutil.rmtree(work, ignore_errors=True)

    compared = compare(recorded)
    checked = watch.report()
    failed = placement_failures(checked) + [
        f"{name} ({side}): {r[side]['failed']} failed requests"
        for this_round in recorded
        for name, r in this_round.items()
        for side in r
        if r[side]["failed"]
    ]
    out = args.results_dir / f"{started}-compare.json"
    out.write_text(
        json.dumps(
            {
                "started": started,
                "base": base,
                "current": head,
                "current_dirty": dirty,
                "rounds": args.rounds,
                "seconds": args.seconds,
                "machine": {"cpus": os.cpu_count(), "load_average_after": os.getloadavg()},
                "skipped": skipped,
                "placement": checked,
                "compared": compared,
                "recorded": recorded,
                "failures": failed,
            },
            indent=2,
        )
        + "\n"
    )
    print()
    print(
        f"current {head[:12]}{' (+ uncommitted changes)' if dirty else ''} ÷ base {base[:12]}, {args.rounds} rounds, "
        f"{placement.name} placement"
    )
    print(report.comparison_table(compared))
    for endpoint, reason in skipped.items():
        print(f"skipped {endpoint}: the base or current stack cannot serve it ({reason})")
    print(f"\nresults: {out}")
    if failed:
        print("\nFAILED:\n  " + "\n  ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

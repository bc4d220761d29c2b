"""The outcomes commands on a large generated log: wall time and peak memory of each.

    python -m perf.outcomes_scale DIR [--generate ROWS]

DIR holds what `python -m perf.outcomes_log DIR` writes (prediction-log/, labels.parquet); with
--generate it is written first. Each command runs as `make labels`, `make outcomes` and `make
training-set` run it (the same module and arguments, with the directories named), in a process of
its own under GNU time (`/usr/bin/time -v`: the peak RSS is the process's, DuckDB's buffers
included). Prints a table and writes DIR/scale-results.json with every command line and figure."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from perf.outcomes_log import Traffic

TIME = "/usr/bin/time"


def commands(root: Path, traffic: Traffic) -> list[tuple[str, list[str]]]:
    log, labels = root / "prediction-log", root / "labels"
    as_of = traffic.end.isoformat()
    start, last = traffic.start.isoformat(), (traffic.end - dt.timedelta(days=1)).isoformat()
    last_week = (traffic.end - dt.timedelta(days=7)).isoformat()
    first_month = (traffic.start + dt.timedelta(days=27)).isoformat()
    py = [sys.executable, "-m"]

    def outcomes(first: str, out: str) -> list[str]:
        return [
            *py,
            "service.offline.outcomes",
            *("--log-dir", str(log), "--labels-dir", str(labels), "--as-of", as_of),
            *("--from", first, "--to", last, "--out", str(root / out)),
        ]

    def training_set(to: str, output: str) -> list[str]:
        return [
            *py,
            "service.offline.training_set",
            *("--dir", str(log), "--labels-dir", str(labels), "--as-of", as_of),
            *("--from", start, "--to", to, "--output", str(root / output)),
        ]

    labels_run = [*py, "service.offline.labels", str(root / "labels.parquet")]
    return [
        (
            "make labels IN=labels.parquet (every label, one run)",
            [*labels_run, "--dir", str(labels), "--log-dir", str(log), "--ingested-at", as_of],
        ),
        ("make outcomes FROM=<last week> (1 week of 26)", outcomes(last_week, "outcomes-week")),
        (
            "make training-set FROM=<start> TO=<4 weeks on> (4 weeks of 26)",
            training_set(first_month, "training-month.parquet"),
        ),
        ("make outcomes FROM=<start> (all 26 weeks)", outcomes(start, "outcomes-all")),
        ("make training-set FROM=<start> TO=<end> (all 26 weeks)", training_set(last, "training-all.parquet")),
    ]


def measure(argv: list[str], cwd: Path | None = None) -> dict[str, object]:
    """One run under GNU time: its wall seconds, peak RSS, exit status and last lines of output."""
    started = time.monotonic()
    done = subprocess.run([TIME, "-v", *argv], capture_output=True, text=True, cwd=cwd)
    wall = time.monotonic() - started
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    cpu = [float(x) for x in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", done.stderr)]
    return {
        "command": " ".join(argv),
        "exit": done.returncode,
        "wall_s": round(wall, 1),
        "cpu_s": round(sum(cpu), 1),
        "peak_rss_mib": round(int(peak.group(1)) / 1024, 1) if peak else None,
        "output": done.stdout.strip().splitlines()[-6:],
        "errors": [line for line in done.stderr.splitlines() if "Command being timed" not in line][-3:]
        if done.returncode
        else [],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.outcomes_scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--generate", type=int, metavar="ROWS", help="write the log and labels first")
    parser.add_argument("--rows", type=int, default=Traffic.rows, help="the rows the log was generated with")
    parser.add_argument("--only", help="only the commands whose name contains this, e.g. training-set")
    parser.add_argument("--code", type=Path, help="the checkout whose modules the commands run (default: here)")
    args = parser.parse_args(argv)
    traffic = Traffic(rows=args.generate or args.rows)
    results: dict[str, object] = {"traffic": {"rows": traffic.rows, "weeks": traffic.weeks, "end": str(traffic.end)}}
    if args.generate:
        results["generate"] = measure(
            [sys.executable, "-m", "perf.outcomes_log", str(args.dir), "--rows", str(args.generate)]
        )
    runs: dict[str, dict[str, object]] = {}
    out = args.dir / f"scale-results{'-' + args.only if args.only else ''}.json"
    for name, command in commands(args.dir.resolve(), traffic):
        if args.only and args.only not in name:
            continue
        runs[name] = measure(command, args.code)
        r = runs[name]
        print(
            f"{name}: exit {r['exit']}, {r['wall_s']} s wall, {r['cpu_s']} s CPU, peak RSS {r['peak_rss_mib']} MiB",
            flush=True,
        )
        results["runs"] = runs
        out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"results -> {out}")
    return 0 if all(r["exit"] == 0 for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

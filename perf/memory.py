"""Memory of the gunicorn workers, read from /proc: PSS, private memory, and the model file's pages.

A page is "private" in smaps when only one process maps it. For the model's read-only mapping that
means one worker alone has touched it; "Anonymous" pages inside it would be copies a worker wrote,
which a read-only map never allows. Shared pages are counted once in the page cache, whatever
the number of workers."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

FIELD = re.compile(r"^(\w+):\s+(\d+) kB$")
MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")
MODEL_FIELDS = ("Rss", "Pss", "Shared_Clean", "Private_Clean", "Private_Dirty", "Anonymous")
TICKS = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


def parse_fields(lines: list[str]) -> dict[str, int]:
    """`Key:  N kB` lines as bytes."""
    fields = {}
    for line in lines:
        match = FIELD.match(line.strip())
        if match:
            fields[match.group(1)] = int(match.group(2)) * 1024
    return fields


def parse_smaps(text: str) -> list[tuple[str, dict[str, int]]]:
    """(path, fields) of every mapping in a /proc/PID/smaps text; path is "" for anonymous ones."""
    mappings: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if MAPPING.match(line):
            parts = line.split(maxsplit=5)
            mappings.append((parts[5].strip() if len(parts) > 5 else "", []))
        elif mappings:
            mappings[-1][1].append(line)
    return [(path, parse_fields(lines)) for path, lines in mappings]


def rollup(pid: int) -> dict[str, int]:
    return parse_fields(Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines())


def file_pages(smaps: list[tuple[str, dict[str, int]]], path: Path) -> dict[str, int]:
    """The fields of every mapping of `path` added up (joblib maps each array separately)."""
    wanted = os.path.realpath(path)
    total = {k: 0 for k in ("mappings", *MODEL_FIELDS)}
    for mapped, fields in smaps:
        if mapped == wanted:
            total["mappings"] += 1
            for k in MODEL_FIELDS:
                total[k] += fields.get(k, 0)
    return total


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def cpu_seconds(pids: list[int]) -> float:
    """The CPU time (user + system) these processes have used, in seconds; an exited one counts 0."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # a worker that exited: its time is lost, and workers_cpu_during says so
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def workers_cpu_during(master_pid: int | None, run: Callable[[], T]) -> tuple[T, float | None]:
    """run()'s result, and the CPU seconds the master's workers used meanwhile: None without a
    master (a stack elsewhere) or when its workers changed during the run (a replaced one's time
    would be lost)."""
    workers = children(master_pid) if master_pid else []
    before = cpu_seconds(workers)
    result = run()
    if not workers or children(master_pid) != workers:
        return result, None
    return result, cpu_seconds(workers) - before


def snapshot(master: int, model_file: Path) -> dict[str, Any]:
    workers = {}
    for pid in children(master):
        try:
            workers[pid] = {
                "rollup": rollup(pid),
                "model": file_pages(parse_smaps(Path(f"/proc/{pid}/smaps").read_text()), model_file),
            }
        except OSError:  # a worker that was just recycled
            continue
    return {"master": rollup(master), "workers": workers}


def wait_for_workers(master: int, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(children(master)) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"gunicorn did not start {count} workers within {timeout:.0f} s")
        time.sleep(0.1)


def summarize(before: dict[str, Any], after: dict[str, Any], artifact_bytes: int) -> dict[str, Any]:
    """Per worker that lived through the load: its private memory and model pages, before and after."""
    workers = []
    for pid, now in after["workers"].items():
        then = before["workers"].get(pid)
        if then is None:
            continue  # started during the load (gunicorn's max_requests): no "before" to compare
        model_private = now["model"]["Private_Clean"] + now["model"]["Private_Dirty"]
        model_private_before = then["model"]["Private_Clean"] + then["model"]["Private_Dirty"]
        workers.append(
            {
                "pid": pid,
                "pss": now["rollup"]["Pss"],
                "private": now["rollup"]["Private_Clean"] + now["rollup"]["Private_Dirty"],
                "private_growth": (now["rollup"]["Private_Clean"] + now["rollup"]["Private_Dirty"])
                - (then["rollup"]["Private_Clean"] + then["rollup"]["Private_Dirty"]),
                "model_mappings": now["model"]["mappings"],
                "model_rss": now["model"]["Rss"],
                "model_private": model_private,
                "model_private_growth": model_private - model_private_before,
                # Anonymous pages inside a file mapping are copies a process wrote. (Private_Dirty is
                # no evidence of a copy: a file written moments ago still has dirty page-cache pages.)
                "model_copied": now["model"]["Anonymous"],
            }
        )
    total_pss = after["master"]["Pss"] + sum(w["rollup"]["Pss"] for w in after["workers"].values())
    return {
        "workers": workers,
        "total_pss": total_pss,
        "master_pss": after["master"]["Pss"],
        "artifact_bytes": artifact_bytes,
    }


def measure(
    worker_counts: tuple[int, ...], start: Callable[[int], Any], load: Callable[[Any], None], model_file: Path
) -> dict[str, Any]:
    """For each worker count: start the stack, read /proc, score under load, read /proc again."""
    results = {}
    for count in worker_counts:
        stack = start(count)
        try:
            master = stack.gunicorn.pid
            wait_for_workers(master, count)
            before = snapshot(master, model_file)
            load(stack)
            after = snapshot(master, model_file)
        finally:
            stack.stop()
        results[str(count)] = summarize(before, after, model_file.stat().st_size)
    return results

"""Where the measured processes run, and a check that they ran there.

Two placements:

  shared  every process may run on every core (the default: the figures of earlier runs).
  split   the service (nginx, the gunicorn master and workers) on SERVICE_CPUS, the load generator
          and the feature store (wrk, redis-server, this harness) on LOAD_CPUS: the service measured
          as a small node of its own, without its callers' or its store's cost, as in production
          where they are other hosts. The prediction log's compactor, a container of its own in
          production (a sidecar with its own CPU request), runs on LOAD_CPUS too: the service's
          core does not pay for it, and its own CPU is measured apart.

The service is confined at spawn (`taskset`, util-linux, execs the command with the affinity set,
so no process of the service ever starts elsewhere); the harness confines itself, and wrk and
redis-server inherit its affinity.

Checked, not trusted (`Watch`): during the load, a thread samples every thread of every watched
process (the service's and the load's: `Watch` says which they are). It reads each process's allowed CPUs (`Cpus_allowed_list` in /proc/PID/status): the kernel
never runs a thread outside them, so an allowed set inside the role's cores proves the placement
for as long as it holds, and it is read on every sample, so a process that widens its own
affinity is caught. It also reads each thread's `processor` (field 39 of /proc/PID/task/TID/stat),
the CPU the thread last ran on: a sample proves the thread ran on that CPU, and one outside its
role's cores is a violation. Only a thread that ran since its previous sample counts (its run time
in /proc/PID/task/TID/schedstat, in ns, grew): an idle thread's last CPU may date from before the
placement. Samples cannot prove that a short run between two of them stayed inside: the allowed
set proves that. The kernel keeps no per-process CPU time per core."""

from __future__ import annotations

import argparse
import os
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SHARED, SPLIT = "shared", "split"
LOAD_PROGRAMS = ("wrk", "redis-server")  # what the harness starts on the load's side
NAMES = (SHARED, SPLIT)
PROC = Path("/proc")


def parse_cpus(text: str) -> frozenset[int]:
    """A CPU list as taskset and /proc write it: "0", "1-3", "0,2-3"."""
    cpus: set[int] = set()
    for part in "".join(text.split()).split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ValueError(f"not a CPU list: {text!r}")
        cpus.update(range(int(low), int(high or low) + 1))
    if not cpus:
        raise ValueError(f"not a CPU list: {text!r}")
    return frozenset(cpus)


def cpu_list(cpus: Iterable[int]) -> str:
    return ",".join(map(str, sorted(cpus)))


@dataclass(frozen=True)
class Placement:
    name: str
    service: frozenset[int] | None = None  # None: wherever the kernel likes (shared)
    load: frozenset[int] | None = None

    @classmethod
    def choose(cls, name: str, service_cpus: str | None = None, load_cpus: str | None = None) -> Placement:
        """SPLIT's defaults: the first core of those this process may use for the service, the rest
        for the load."""
        if name == SHARED:
            return cls(SHARED)
        if name != SPLIT:
            raise ValueError(f"placement must be one of {', '.join(NAMES)}, got {name!r}")
        available = frozenset(os.sched_getaffinity(0))
        service = parse_cpus(service_cpus) if service_cpus else frozenset({min(available)})
        load = parse_cpus(load_cpus) if load_cpus else available - service
        if not load:
            raise ValueError(f"the split placement needs a core for the load besides the service's {cpu_list(service)}")
        if service & load:
            raise ValueError(f"SERVICE_CPUS {cpu_list(service)} and LOAD_CPUS {cpu_list(load)} overlap")
        if not (service | load) <= available:
            raise ValueError(f"this machine lets us use CPUs {cpu_list(available)} only")
        return cls(SPLIT, service, load)

    @property
    def split(self) -> bool:
        return self.service is not None

    def service_prefix(self) -> tuple[str, ...]:
        """What a service command runs inside: taskset with the service's cores, or nothing."""
        return ("taskset", "--cpu-list", cpu_list(self.service)) if self.service else ()

    def sidecar_prefix(self) -> tuple[str, ...]:
        """What a sidecar of the service (the prediction log's compactor) runs inside: taskset with
        the load's cores, or nothing."""
        return ("taskset", "--cpu-list", cpu_list(self.load)) if self.load else ()

    def confine_load(self) -> None:
        """This process, every thread of it (a thread pool started earlier, such as numpy's, keeps the
        affinity it had), and so wrk and redis-server, which it starts, on the load cores."""
        if self.load:
            for tid in os.listdir(PROC / "self" / "task"):
                os.sched_setaffinity(int(tid), self.load)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "service_cpus": sorted(self.service) if self.service else None,
            "load_cpus": sorted(self.load) if self.load else None,
        }


EVERYWHERE = Placement(SHARED)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--placement, --service-cpus, --load-cpus; defaults from PLACEMENT, SERVICE_CPUS, LOAD_CPUS."""
    parser.add_argument(
        "--placement",
        choices=NAMES,
        default=os.environ.get("PLACEMENT") or SHARED,
        help=f"{SHARED}: every process on every core (default); {SPLIT}: the service on --service-cpus, the "
        "load generator and the store on --load-cpus (perf/placement.py)",
    )
    parser.add_argument(
        "--service-cpus", default=os.environ.get("SERVICE_CPUS"), help="split: the service's cores (default: the first)"
    )
    parser.add_argument(
        "--load-cpus", default=os.environ.get("LOAD_CPUS"), help="split: the load's cores (default: the others)"
    )


def from_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Placement:
    try:
        return Placement.choose(args.placement, args.service_cpus, args.load_cpus)
    except ValueError as e:
        parser.error(str(e))


def allowed_cpus(pid: int) -> frozenset[int]:
    for line in (PROC / str(pid) / "status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return parse_cpus(line.split(":", 1)[1])
    raise ValueError(f"no Cpus_allowed_list for {pid}")


def last_cpu(stat: str) -> int:
    """Field 39 of a /proc stat line (`processor`); the command name may hold spaces and brackets."""
    return int(stat[stat.rindex(")") + 2 :].split()[36])


def children_map() -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        found.setdefault(ppid, []).append(int(entry.name))
    return found


def descendants(roots: Iterable[int], children: dict[int, list[int]]) -> set[int]:
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def command_name(pid: int) -> str:
    try:
        return (PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return "?"


@dataclass
class Watch:
    """Samples where the service's and the load's processes run, every `interval_s`, until stopped.

    The service is every process under a root added with `service()` (a stack's gunicorn and nginx,
    added once the stack answers); the load is the harness itself, the programs of LOAD_PROGRAMS it
    started (wrk, redis-server) and any root added with `load()`, with their children. Another child
    of the harness (a stack still starting, nginx's config test) is neither, and not checked."""

    placement: Placement
    interval_s: float = 0.02
    service_roots: set[int] = field(default_factory=set)
    load_roots: set[int] = field(default_factory=set)
    samples: dict[str, Counter] = field(default_factory=lambda: {"service": Counter(), "load": Counter()})
    violations: dict[tuple[str, int, str], str] = field(default_factory=dict)
    seen: dict[str, set[str]] = field(default_factory=lambda: {"service": set(), "load": set()})
    _ran_ns: dict[int, int] = field(default_factory=dict)  # each thread's run time at its last sample
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def service(self, *pids: int | None) -> None:
        self.service_roots.update(p for p in pids if p)

    def load(self, *pids: int) -> None:
        self.load_roots.update(pids)

    def __enter__(self) -> Watch:
        if self.placement.split:
            self._thread = threading.Thread(target=self._run, name="placement-watch", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        children = children_map()
        service = descendants(self.service_roots, children)
        harness = descendants([os.getpid()], children) - service
        programs = [pid for pid in harness if command_name(pid) in LOAD_PROGRAMS]
        # the harness itself, not its children: those are the programs' and the roots' subtrees
        load = ({os.getpid()} | descendants([*self.load_roots, *programs], children)) - service
        for role, pids, cores in (("service", service, self.placement.service), ("load", load, self.placement.load)):
            for pid in pids:
                self._sample(role, pid, cores or frozenset())

    def _sample(self, role: str, pid: int, cores: frozenset[int]) -> None:
        name = command_name(pid)
        try:
            allowed = allowed_cpus(pid)
            tasks = [int(t) for t in os.listdir(PROC / str(pid) / "task")]
        except (OSError, ValueError):
            return  # gone between the listing and the read
        self.seen[role].add(name)
        if not allowed <= cores:
            self.violations.setdefault(
                (role, pid, "allowed"), f"{role} process {pid} ({name}) may run on CPUs {cpu_list(allowed)}"
            )
        for tid in tasks:
            task = PROC / str(pid) / "task" / str(tid)
            try:
                cpu = last_cpu((task / "stat").read_text())
                ran_ns = int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            before, self._ran_ns[tid] = self._ran_ns.get(tid), ran_ns
            if before is None or ran_ns == before:
                continue  # first seen, or idle since: its last CPU may date from before
            self.samples[role][cpu] += 1
            if cpu not in cores:
                self.violations.setdefault(
                    (role, tid, "ran"), f"{role} thread {tid} of process {pid} ({name}) ran on CPU {cpu}"
                )

    def report(self) -> dict[str, Any]:
        """The placement, what was seen where, and every violation (empty: the placement held)."""
        return {
            **self.placement.describe(),
            "checked": self.placement.split,
            "samples_per_cpu": {role: {str(c): n for c, n in sorted(s.items())} for role, s in self.samples.items()},
            "processes": {role: sorted(names) for role, names in self.seen.items()},
            "violations": sorted(self.violations.values()),
        }


def failures(report: dict[str, Any]) -> list[str]:
    """A run fails when a service process ran (or could run) on a load core, or the reverse, or when
    a split run saw nothing to check."""
    if not report.get("checked"):
        return []
    found = [f"placement: {v}" for v in report["violations"]]
    for role in ("service", "load"):
        if not report["samples_per_cpu"][role]:
            found.append(f"placement: no {role} process was seen during the run, so none was checked")
    return found

"""`make perf PLACEMENT=split`: the placement is checked on real processes pinned by taskset, one
obeying it and one breaking it; and the service's default worker count follows the cores it may use."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perf import placement
from perf.placement import SPLIT, Placement, Watch

ROOT = Path(__file__).resolve().parent.parent
TWO_CPUS = len(os.sched_getaffinity(0)) >= 2
needs_two = pytest.mark.skipif(not TWO_CPUS, reason="a split placement needs two CPUs")
BUSY = "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end: pass\n"


def test_cpu_lists_read_as_taskset_and_proc_write_them():
    assert placement.parse_cpus("0") == placement.parse_cpus("\t0\n") == {0}
    assert placement.parse_cpus("0,2-4") == {0, 2, 3, 4}
    assert placement.cpu_list({3, 1}) == "1,3"
    with pytest.raises(ValueError):
        placement.parse_cpus("first")


def test_the_last_cpu_is_read_from_a_stat_line_whose_name_has_spaces():
    fields = ["S"] + [str(n) for n in range(4, 52)]  # field 3 on; field 39 is the 37th of these
    assert placement.last_cpu("42 (a (weird) name) " + " ".join(fields)) == 39


@needs_two
def test_the_split_placement_defaults_to_the_first_core_and_the_rest():
    available = sorted(os.sched_getaffinity(0))
    chosen = Placement.choose(SPLIT)
    assert chosen.service == {available[0]} and chosen.load == set(available[1:])
    with pytest.raises(ValueError, match="overlap"):
        Placement.choose(SPLIT, "0", "0")


def watched(service: subprocess.Popen, load: subprocess.Popen, split: Placement) -> dict:
    """What the watch reports on `service` (a service root) and `load` (a child of this process),
    after samples that saw both running. This process stands on the load's cores, every thread of it
    as make perf confines them: the watch counts the harness as load, and a pytest worker has threads
    of its own (xdist's channel, the timeout's) that wake now and then."""
    before = {int(tid): os.sched_getaffinity(int(tid)) for tid in os.listdir("/proc/self/task")}
    split.confine_load()
    try:
        watch = Watch(split)
        watch.service(service.pid)
        watch.load(load.pid)
        while not (watch.samples["service"] and watch.samples["load"]):  # bounded by the pytest timeout
            watch.sample()
        for _ in range(20):
            watch.sample()
        return watch.report()
    finally:
        for tid, cpus in before.items():
            with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
                os.sched_setaffinity(tid, cpus)


def pinned(cpus: frozenset[int]) -> subprocess.Popen:
    """A busy child under `taskset --cpu-list cpus`, once taskset has set its affinity: before that,
    for an instant, it may run where its parent may, which the watch would rightly report."""
    child = subprocess.Popen(["taskset", "--cpu-list", placement.cpu_list(cpus), sys.executable, "-c", BUSY])
    while placement.allowed_cpus(child.pid) != cpus:  # bounded by the pytest timeout
        time.sleep(0.001)
    return child


def watch_two(service_cpus: frozenset[int], load_cpus: frozenset[int], split: Placement) -> tuple[dict, int, int]:
    """The watch's report on a "service" pinned to `service_cpus` and a "load" pinned to `load_cpus`."""
    service, load = (pinned(cpus) for cpus in (service_cpus, load_cpus))
    try:
        return watched(service, load, split), service.pid, load.pid
    finally:
        for p in (service, load):
            p.kill()
            p.wait()


@needs_two
@pytest.mark.timeout(120)
def test_processes_that_keep_to_their_cores_pass_the_check():
    split = Placement.choose(SPLIT)
    # a child of the harness that is neither side's yet (a stack still starting) is not judged
    starting = subprocess.Popen(
        ["taskset", "--cpu-list", placement.cpu_list(split.service), sys.executable, "-c", BUSY]
    )
    try:
        found, _, _ = watch_two(split.service, split.load, split)
    finally:
        starting.kill()
        starting.wait()
    assert found["violations"] == []
    assert placement.failures(found) == []
    assert set(found["samples_per_cpu"]["service"]) == {str(min(split.service))}


@needs_two
@pytest.mark.timeout(120)
def test_a_service_process_on_a_load_core_fails_the_run():
    split = Placement.choose(SPLIT)
    # the "service" confined to a load core: allowed there, and seen running there
    found, service, load = watch_two(split.load, split.load, split)
    failures = placement.failures(found)
    assert any(f"service process {service}" in f and "may run on" in f for f in failures), failures
    assert any(f"of process {service}" in f and f"ran on CPU {min(split.load)}" in f for f in failures), failures
    assert not any(f"process {load}" in f for f in failures)


@needs_two
@pytest.mark.timeout(120)
def test_a_load_process_allowed_on_the_service_core_fails_the_run():
    split = Placement.choose(SPLIT)
    found, _, load = watch_two(split.service, split.service | split.load, split)
    assert any(f"load process {load}" in f for f in placement.failures(found))


def test_a_split_run_that_saw_nothing_fails():
    nothing = Watch(Placement(SPLIT, frozenset({0}), frozenset({1}))).report()
    assert len(placement.failures(nothing)) == 2
    assert placement.failures(Watch(Placement("shared")).report()) == []


@needs_two
def test_the_default_worker_count_is_the_cores_the_service_may_use():
    """Under taskset (a cpuset, the split placement) WORKERS defaults to the cores allowed, not the machine's."""
    code = "from service.core.settings import from_mapping; print(from_mapping({'API_KEY': 'k' * 32}).workers)"
    one = subprocess.run(
        ["taskset", "--cpu-list", "0", sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert one.stdout.strip() == "1"

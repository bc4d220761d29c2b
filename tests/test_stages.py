"""The stage timings' C pass (service/telemetry/_stages.c): the Server-Timing header it writes and
the histogram samples it adds equal what Python computes from the same stamps, for every shape of
request; it writes nothing until every stage it measures has its samples; it refuses bad arguments
with an exception, never a crash."""

from __future__ import annotations

import random
from array import array
from bisect import bisect_left

import pytest

from service.telemetry import metrics
from service.telemetry.stages import STAGES, Stages

pytestmark = pytest.mark.native  # the sanitizer run of `make test` repeats these

BOUNDS = metrics.STAGE.bounds
WIDTH = 1 + len(BOUNDS)  # a stage's slots: its sum, then a bucket per bound


def slots_for_every_stage() -> list[tuple[int, ...] | None]:
    return [tuple(range(i * WIDTH, (i + 1) * WIDTH)) for i in range(len(STAGES))]


def expected_header(timing: Stages, app_ms: str) -> str:
    """The header as the W3C form with Python's own formatting: milliseconds, three decimals."""
    parts = [f"{stage};dur={seconds * 1e3:.3f}" for stage, seconds in timing.durations]
    return ", ".join([*parts, f"app;dur={app_ms}"])


def expected_samples(timing: Stages) -> array:
    values = array("d", [0.0] * (len(STAGES) * WIDTH))
    for stage, seconds in timing.durations:
        first = STAGES.index(stage) * WIDTH
        values[first + 1 + bisect_left(BOUNDS, seconds)] += 1.0
        values[first] += seconds
    return values


def random_stages(rng: random.Random) -> Stages:
    timing = Stages(rng.randrange(10**15))
    at = timing.start
    if rng.random() < 0.9:
        timing.read = at = at + rng.choice([1, 999, 1_500, 10_000, rng.randrange(1, 10**10)])
        if rng.random() < 0.3:
            timing.fetched = at = at + rng.randrange(1, 10**9)
        if rng.random() < 0.9:
            challenger = rng.choice([0, 0, rng.randrange(1, 10**7)])
            timing.scored = at = at + rng.randrange(1, 10**8) + challenger
            timing.challenger = challenger
    timing.end = at + rng.randrange(0, 10**8)
    timing.queue = rng.choice([None, 0.0, 0.001, 0.0015, 0.15, rng.random() * 3])
    return timing


def test_header_and_samples_equal_pythons_for_thousands_of_requests():
    rng = random.Random(7)
    for _ in range(5_000):
        timing = random_stages(rng)
        values = array("d", [0.0] * (len(STAGES) * WIDTH))
        header = timing.report(memoryview(values), slots_for_every_stage(), "12.345")
        want = expected_header(timing, "12.345")
        # Python rounds the exact binary value, the C pass whole microseconds: they may differ on
        # a tie in the last digit only.
        assert header == want or _ties(header, want), (header, want)
        assert values == expected_samples(timing)


def _ties(header: str, want: str) -> bool:
    got = [float(p.split(";dur=")[1]) for p in header.split(", ")]
    expected = [float(p.split(";dur=")[1]) for p in want.split(", ")]
    return [p.split(";")[0] for p in header.split(", ")] == [p.split(";")[0] for p in want.split(", ")] and all(
        abs(a - b) <= 0.0010001 for a, b in zip(got, expected, strict=True)
    )


def test_a_request_refused_before_reading_records_its_queue_only():
    timing = Stages(1_000)
    timing.end, timing.queue = 5_000, 0.002
    values = array("d", [0.0] * (len(STAGES) * WIDTH))
    assert timing.report(memoryview(values), slots_for_every_stage(), "0.004") == "queue;dur=2.000, app;dur=0.004"
    assert values == expected_samples(timing)


def test_nothing_is_written_until_every_stage_measured_has_its_samples():
    timing = Stages(0)
    timing.read, timing.scored, timing.end, timing.queue = 1_000, 3_000, 4_000, 0.001
    values = array("d", [0.0] * (len(STAGES) * WIDTH))
    slots = slots_for_every_stage()
    slots[STAGES.index("write")] = None
    assert timing.report(memoryview(values), slots, "0.004") is None
    assert not any(values)


def test_the_metrics_make_a_routes_samples_on_its_first_request_and_reuse_them():
    timing = Stages(0)
    timing.read, timing.fetched, timing.scored, timing.end = 1_000, 2_000_000, 2_010_000, 2_020_000
    route = "/test/stages-first-request"
    first = metrics.record_stages(route, timing, "2.020")
    assert first == "read;dur=0.001, fetch;dur=1.999, score;dur=0.010, write;dur=0.010, app;dur=2.020"
    made = list(metrics._this_process().stages[route])
    assert [stage for stage, slots in zip(STAGES, made, strict=True) if slots is not None] == [
        "read",
        "fetch",
        "score",
        "write",
    ]
    assert metrics.record_stages(route, timing, "2.020") == first
    assert metrics._this_process().stages[route] == made


@pytest.mark.parametrize(
    "args, error",
    [
        ((), TypeError),
        ((array("d", [0.0] * 4), [None] * 6, "1", None, 0, 1, 0, 0, 0, 2), None),  # nothing measured but read: None
        ((array("i", [0] * 200), [tuple(range(WIDTH))] * 6, "1", None, 0, 1, 0, 0, 0, 2), TypeError),
        ((b"\0" * 800, [tuple(range(WIDTH))] * 6, "1", None, 0, 1, 0, 0, 0, 2), BufferError),
        ((array("d", [0.0] * 4), [tuple(range(WIDTH))] * 6, "1", None, 0, 10**10, 0, 0, 0, 2), IndexError),
        ((array("d", [0.0] * 200), [(1, 2)] * 6, "1", None, 0, 1, 0, 0, 0, 2), TypeError),
        ((array("d", [0.0] * 200), (None,) * 6, "1", None, 0, 1, 0, 0, 0, 2), TypeError),
        ((array("d", [0.0] * 200), [tuple(range(WIDTH))] * 6, "1" * 100, None, 0, 1, 0, 0, 0, 2), ValueError),
        ((array("d", [0.0] * 200), [tuple(range(WIDTH))] * 6, "1", "soon", 0, 1, 0, 0, 0, 2), TypeError),
        ((array("d", [0.0] * 200), [tuple(range(WIDTH))] * 6, "1", None, 0, 1.5, 0, 0, 0, 2), TypeError),
        ((array("d", [0.0] * 200), [tuple(range(WIDTH))] * 6, "1", None, 0, 2**70, 0, 0, 0, 2), OverflowError),
    ],
)
def test_bad_arguments_raise(args, error):
    from service.telemetry._stages import report

    if error is None:
        assert report(*args) is None
        return
    with pytest.raises(error):
        report(*args)


def test_a_queue_wait_beyond_any_clock_is_recorded_without_overflow():
    timing = Stages(0)
    timing.read, timing.end = 1_000, 2_000
    values = array("d", [0.0] * (len(STAGES) * WIDTH))
    for queue in (float("nan"), float("inf"), -1e300, 1e300):
        timing.queue = queue
        header = timing.report(memoryview(values), slots_for_every_stage(), "0.002")
        assert header.startswith("queue;dur=0.000, read;dur=0.001")

"""Where a request's time goes: the stages of a scoring request, timed with a few reads of one cheap
clock (time.perf_counter_ns) and reported three ways: the `Server-Timing` response header (W3C Server
Timing, milliseconds; nginx logs it), the histogram `fraud_request_stage_seconds{route,stage}`
(service/telemetry/metrics.py) and, for whoever exports spans, this object itself.

A request's `Stages` is made by the app's middleware when it takes the request and lives in
`req.context.stages`. The route's resource stamps the clock as each stage ends (`read`, `fetched`,
`scored`: perf_counter_ns values, 0 while not reached); the scoring engine adds the challenger's
time to `challenger` (nanoseconds, within scoring); the middleware's `finish` stamps the end and
keeps the queue wait the deadline guard measured from nginx's stamp. Then one C pass (`report`,
service/telemetry/_stages.c) puts the durations into the histogram's samples and returns the header;
`durations`, a list of (stage, seconds) in the order below, is what a span exporter reads and the
same durations in Python. A stage that was not reached (a 4xx before scoring, a route without a
feature store) is left out.

The stages, in order:
  queue       nginx's stamp to the worker taking the request (nginx's clock, millisecond steps)
  read        the key, the budget, reading, decoding and validating the body
  fetch       the feature store's round trip (by-id routes)
  score       the champion: scores, decisions, drift counts, the prediction log's record
  challenger  the challenger scoring the same rows
  write       the answer's serialisation, to the middleware's last clock read
and `app`, the app's whole time (X-Response-Time-Ms), in the header only: the stages but the queue
add up to no more than it."""

from __future__ import annotations

from time import perf_counter_ns
from typing import Any

from service.telemetry._stages import configure
from service.telemetry._stages import report as _report

clock = perf_counter_ns  # the stamps' clock: monotonic, nanoseconds, no allocation beyond an int
STAGES = ("queue", "read", "fetch", "score", "challenger", "write")
HEADER = "Server-Timing"


def use_histogram(bounds: tuple[float, ...]) -> None:
    """The stage histogram's upper bounds (+Inf last), once, in the master, before any report."""
    configure(STAGES, bounds)


class Stages:
    """One request's stage timings: clock stamps in nanoseconds (time.perf_counter_ns) while it runs;
    once finished, its durations."""

    __slots__ = ("start", "read", "fetched", "scored", "challenger", "end", "queue")

    def __init__(self, start: int) -> None:
        self.start = start
        self.read = self.fetched = self.scored = self.challenger = self.end = 0
        self.queue: float | None = None

    def finish(self, queue: float | None) -> int:
        """Stamps the end and keeps the queue wait (nginx's, measured by the deadline guard, in
        seconds, or None); returns the app's time in nanoseconds."""
        self.end = clock()
        self.queue = queue
        return self.end - self.start

    def report(self, values: Any, slots: list[tuple[int, ...] | None], app_ms: str) -> str | None:
        """The stages into a histogram's samples (`values`, the sample file's doubles; `slots`, per
        stage in STAGES order: (sum's slot, a slot per bucket), or None where not made yet) and the
        Server-Timing header's value: each stage measured, in milliseconds to the microsecond, then
        `app` (the app's whole time, already formatted as X-Response-Time-Ms gives it). None, with
        nothing written, when a stage measured has no slots yet."""
        return _report(
            values,
            slots,
            app_ms,
            self.queue,
            self.start,
            self.read,
            self.fetched,
            self.scored,
            self.challenger,
            self.end,
        )

    @property
    def durations(self) -> list[tuple[str, float]]:
        """[(stage, seconds)] for each stage measured, in STAGES order: what `report` records."""
        durations: list[tuple[str, float]] = []
        if self.queue is not None:
            durations.append(("queue", self.queue))
        read = self.read
        if read:
            durations.append(("read", (read - self.start) / 1e9))
            begun = read
            if self.fetched:
                durations.append(("fetch", (self.fetched - read) / 1e9))
                begun = self.fetched
            scored = self.scored
            if scored:
                challenger = self.challenger
                durations.append(("score", (scored - begun - challenger) / 1e9))
                if challenger:
                    durations.append(("challenger", challenger / 1e9))
                durations.append(("write", (self.end - scored) / 1e9))
        return durations

"""Where a request's time goes: the stages of a scoring request, timed with a few reads of one cheap
clock (time.perf_counter_ns) and reported three ways: the `Server-Timing` response header (W3C Server
Timing, milliseconds; nginx logs it), the histogram `fraud_request_stage_seconds{route,stage}`
(service/telemetry/metrics.py) and, for whoever exports spans, this object itself.

A request's `Stages` is made by the app's middleware when it takes the request and lives in
`req.context.stages`. The route's resource stamps the clock as each stage ends (`read`, `fetched`,
`scored`: perf_counter_ns values, 0 while not reached); the scoring engine adds the challenger's
time to `challenger` (nanoseconds, within scoring); the middleware stamps `end` and reads the queue
wait the deadline guard measured from nginx's stamp (`queue`, seconds, None without a stamp).
A stage that was not reached (a 4xx before scoring, a route without a feature store) is left out.

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

from collections.abc import Iterator
from time import perf_counter_ns

clock = perf_counter_ns  # the stamps' clock: monotonic, nanoseconds, no allocation beyond an int
STAGES = ("queue", "read", "fetch", "score", "challenger", "write")
HEADER = "Server-Timing"


class Stages:
    """One request's stage timings: clock stamps in nanoseconds (time.perf_counter_ns) and the queue
    wait in seconds. `durations()` gives what was measured as (stage, seconds)."""

    __slots__ = ("start", "read", "fetched", "scored", "challenger", "end", "queue")

    def __init__(self, start: int) -> None:
        self.start = start
        self.read = self.fetched = self.scored = self.challenger = self.end = 0
        self.queue: float | None = None

    def finish(self, queue: float | None) -> int:
        """Stamps the end (the queue wait is nginx's, from the deadline guard); the app's time in ns."""
        self.queue = queue
        self.end = end = clock()
        return end - self.start

    def durations(self) -> Iterator[tuple[str, float]]:
        """(stage, seconds) for each stage measured, in STAGES order."""
        if self.queue is not None:
            yield "queue", self.queue
        if not self.read:
            return
        yield "read", (self.read - self.start) / 1e9
        begun = self.read
        if self.fetched:
            yield "fetch", (self.fetched - self.read) / 1e9
            begun = self.fetched
        if self.scored:
            yield "score", (self.scored - begun - self.challenger) / 1e9
            if self.challenger:
                yield "challenger", self.challenger / 1e9
            yield "write", ((self.end or clock()) - self.scored) / 1e9

    def server_timing(self) -> str:
        """The Server-Timing header's value: each stage measured, then `app`, in milliseconds."""
        parts = [f"{stage};dur={seconds * 1e3:.3f}" for stage, seconds in self.durations()]
        parts.append(f"app;dur={((self.end or clock()) - self.start) / 1e6:.3f}")
        return ", ".join(parts)

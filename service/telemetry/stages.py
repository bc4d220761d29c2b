"""Where a request's time goes: the stages of a scoring request, timed with a few reads of one cheap
clock (time.perf_counter_ns) and reported three ways: the `Server-Timing` response header (W3C Server
Timing, milliseconds; nginx logs it), the histogram `fraud_request_stage_seconds{route,stage}`
(service/telemetry/metrics.py) and, for whoever exports spans, this object itself.

A request's `Stages` is made by the app's middleware when it takes the request and lives in
`req.context.stages`. The route's resource stamps the clock as each stage ends (`read`, `fetched`,
`scored`: perf_counter_ns values, 0 while not reached); the scoring engine adds the challenger's
time to `challenger` (nanoseconds, within scoring); the middleware's `finish`, with the queue wait
the deadline guard measured from nginx's stamp, turns them into `durations`, a list of
(stage, seconds) in the order below: what the header, the histogram and a span exporter read.
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

from time import perf_counter_ns

clock = perf_counter_ns  # the stamps' clock: monotonic, nanoseconds, no allocation beyond an int
STAGES = ("queue", "read", "fetch", "score", "challenger", "write")
HEADER = "Server-Timing"


class Stages:
    """One request's stage timings: clock stamps in nanoseconds (time.perf_counter_ns) while it runs;
    once finished, `durations`: [(stage, seconds)] for each stage measured, in STAGES order."""

    __slots__ = ("start", "read", "fetched", "scored", "challenger", "durations")

    def __init__(self, start: int) -> None:
        self.start = start
        self.read = self.fetched = self.scored = self.challenger = 0
        self.durations: list[tuple[str, float]] = []

    def finish(self, queue: float | None) -> int:
        """Stamps the end and works out `durations` (the queue wait is nginx's, measured by the
        deadline guard, in seconds, or None); returns the app's time in nanoseconds."""
        end = clock()
        durations = self.durations
        if queue is not None:
            durations.append(("queue", queue))
        read = self.read
        if read:  # a scoring route's resource took the request: straight-line, no generator, few objects
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
                durations.append(("write", (end - scored) / 1e9))
        return end - self.start

    def server_timing(self, app_ms: str) -> str:
        """The Server-Timing header's value: each stage measured, then `app` (the app's whole time,
        already formatted as X-Response-Time-Ms gives it), in milliseconds."""
        return ", ".join(
            [*[f"{stage};dur={seconds * 1e3:.3f}" for stage, seconds in self.durations], f"app;dur={app_ms}"]
        )

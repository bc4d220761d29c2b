"""Per-request deadlines: a request that waited too long in the queue is refused before any work.

nginx stamps every request it hands to gunicorn with `X-Request-Start: $msec` (seconds since the
epoch, millisecond resolution), taken when it builds the upstream request, after it has read the
whole body. The time from that stamp to a worker picking the request up is the queue wait: nginx's
connection to the socket, the socket's backlog, and the wait for a free sync worker. The budget is
the client's `X-Deadline-Ms` (clamped to DEADLINE_MIN_MS..DEADLINE_MAX_MS) or REQUEST_DEADLINE_MS,
counted from the stamp. With less than RESERVE_MS of it left, the answer is 503 deadline_exceeded,
given before the body is read or parsed, the key checked or the budget charged.

Without the stamp (a direct call to gunicorn, falcon's test client) nothing is shed: only nginx
sets the header, and it replaces one a client sends. docs/operations.md#deadlines has the regimes."""

from __future__ import annotations

import time
from typing import Any

import falcon

from service.errors import ApiError
from service.settings import DEADLINE_MAX_MS, DEADLINE_MIN_MS

# Room for the work itself: a single score is a fraction of a millisecond in the worker, and the
# answer still has to go back through nginx. A request with less left would be answered late.
RESERVE_MS = 2.0
RETRY_AFTER_SECONDS = "1"
# Only the API's routes are shed: health checks, metrics and the docs always answer.
SHED_PREFIXES = ("/v1/", "/v2/")


def budget_ms(header: str | None, default_ms: int) -> int:
    """The request's budget: the client's X-Deadline-Ms within the clamp, else the default."""
    if header is None:
        return default_ms
    try:
        asked = int(header)
    except ValueError:
        raise ApiError(
            falcon.HTTP_400,
            "invalid_deadline",
            f"X-Deadline-Ms must be a whole number of milliseconds ({DEADLINE_MIN_MS} to {DEADLINE_MAX_MS}), "
            f"got {header[:32]!r}",
        ) from None
    return min(max(asked, DEADLINE_MIN_MS), DEADLINE_MAX_MS)


class Deadlines:
    """Falcon middleware, the first to see a routed request (process_resource runs after routing
    and before the responder, which is what reads the body). Records the queue wait by route and
    sheds a request whose budget is spent. `observe_wait(route, seconds)` and `count_shed(route)`
    are the metrics' (service/metrics.py)."""

    def __init__(self, default_ms: int, observe_wait: Any, count_shed: Any, clock: Any = time.time) -> None:
        self._default_ms = default_ms
        self._observe_wait = observe_wait
        self._count_shed = count_shed
        self._clock = clock

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: Any, params: Any) -> None:
        stamp = req.get_header("X-Request-Start")
        route = req.uri_template
        if stamp is None or resource is None or not route.startswith(SHED_PREFIXES):
            return
        now = self._clock()
        try:
            waited_ms = max(0.0, (now - float(stamp)) * 1000.0)
        except ValueError:
            return  # only nginx sets it: an unreadable stamp is not the client's fault
        resp.set_header("X-Queue-Wait-Ms", f"{waited_ms:.0f}")
        self._observe_wait(route, waited_ms / 1000.0)
        budget = budget_ms(req.get_header("X-Deadline-Ms"), self._default_ms)
        left_ms = budget - waited_ms
        # For a store lookup: the wall-clock time by which the answer is due.
        req.context.due = now + left_ms / 1000.0
        if left_ms < RESERVE_MS:
            self._count_shed(route)
            raise ApiError(
                falcon.HTTP_503,
                "deadline_exceeded",
                f"the request waited {waited_ms:.0f} ms in the queue of its {budget} ms budget; "
                "retry after Retry-After, or fall back to your own rule",
                headers={"Retry-After": RETRY_AFTER_SECONDS},
            )


def time_left_s(req: falcon.Request, own_timeout_s: float) -> float:
    """A wait inside the request (a feature-store lookup) bounded by its own timeout and by what is
    left of the deadline; never below a millisecond, so the call fails fast rather than blocks."""
    due = getattr(req.context, "due", None)
    if due is None:
        return own_timeout_s
    return max(0.001, min(own_timeout_s, due - time.time()))

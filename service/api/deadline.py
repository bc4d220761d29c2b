"""Per-request deadlines: a request that waited too long in the queue is refused before any work.

nginx stamps every request it hands to gunicorn with `X-Request-Start: $msec` (seconds since the
epoch, millisecond resolution), taken when it builds the upstream request, after it has read the
whole body. The time from that stamp to a worker picking the request up is the queue wait: nginx's
connection to the socket, the socket's backlog, and the wait for a free sync worker. The budget is
the client's `X-Deadline-Ms` (clamped to DEADLINE_MIN_MS..DEADLINE_MAX_MS) or REQUEST_DEADLINE_MS,
counted from the stamp. With less than RESERVE_MS of it left, the answer is 503 deadline_exceeded,
given before Falcon sees the request: the body is not read, the key not checked, the budget not
charged.

A plain WSGI wrapper around the Falcon app rather than a Falcon middleware: a refusal costs a couple
of microseconds instead of a Falcon request, routing, the middleware chain and error handling
(`python -m perf.experiments.deadline_cost` compares the two). The routes it guards are the route
table's (service/api/routes.py): the API's, never a health check, /metrics or the docs.

Without the stamp (a direct call to gunicorn, falcon's test client) nothing is shed: only nginx
sets the header, and it replaces one a client sends. docs/operations.md#deadlines-and-overload."""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import falcon.inspect
import orjson

from service.api.errors import JSON, protocol_v2
from service.api.routes import DEADLINE_ROUTES, SHED_METHODS
from service.core.settings import DEADLINE_MAX_MS, DEADLINE_MIN_MS
from service.telemetry.trace_context import HEADER as TRACE_HEADER
from service.telemetry.trace_context import server_span, trace_id

# Room for the work itself: a single score is a fraction of a millisecond in the worker, and the
# answer still has to go back through nginx. A request with less left would be answered late.
RESERVE_MS = 2.0
DEADLINE_HEADER = "X-Deadline-Ms"
RETRY_AFTER_SECONDS = "1"
SPENT = (
    "the request waited {waited_ms:.0f} ms in the queue of its {budget} ms budget; "
    "retry after Retry-After, or fall back to your own rule"
)
ROUTES_REMEMBERED = 4096  # paths resolved to their route template; templated paths repeat
# Where the wall-clock time a request's answer is due is left for code that waits inside it.
DUE = "fraud.due"
# Where the queue wait (seconds) is left for the app's stage timings (service/telemetry/stages.py).
QUEUE_WAIT = "fraud.queue_wait"

StartResponse = Callable[..., Any]


class InvalidDeadline(ValueError):
    pass


def budget_ms(header: str | None, default_ms: int) -> int:
    """The request's budget: the client's X-Deadline-Ms within the clamp, else the default."""
    if header is None:
        return default_ms
    try:
        asked = int(header)
    except ValueError:
        raise InvalidDeadline(
            f"{DEADLINE_HEADER} must be a whole number of milliseconds ({DEADLINE_MIN_MS} to {DEADLINE_MAX_MS}), "
            f"got {header[:32]!r}"
        ) from None
    return min(max(asked, DEADLINE_MIN_MS), DEADLINE_MAX_MS)


def guarded_routes(app: falcon.App) -> frozenset[str]:
    """The route templates of the app that are guarded (what the tests walk)."""
    return frozenset(r.path for r in falcon.inspect.inspect_routes(app) if r.path in DEADLINE_ROUTES)


def route_of(app: falcon.App) -> Callable[[str], str | None]:
    """A request path's guarded route template, or None: resolved by the app's own router, so that
    templated paths (`/v2/models/fraud/infer`) are guarded as their template is, and remembered."""
    find = app._router.find

    @functools.lru_cache(maxsize=ROUTES_REMEMBERED)
    def route(path: str) -> str | None:
        found = find(path)
        template = found[3] if found else None
        return template if template in DEADLINE_ROUTES else None

    return route


class Deadlines:
    """WSGI middleware around the Falcon app. Records the queue wait of every guarded request by
    route and sheds those whose budget is spent. `observe_wait(route, seconds)` and
    `count_shed(route)` are the metrics' (service/telemetry/metrics.py)."""

    def __init__(
        self,
        app: falcon.App,
        default_ms: int,
        observe_wait: Callable[[str, float], None],
        count_shed: Callable[[str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._app = app
        self._route = route_of(app)
        self._default_ms = default_ms
        self._observe_wait = observe_wait
        self._count_shed = count_shed
        self._clock = clock

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        stamp = environ.get("HTTP_X_REQUEST_START")
        if stamp is None:
            return self._app(environ, start_response)
        route = self._route(environ.get("PATH_INFO") or "/")
        if route is None or environ.get("REQUEST_METHOD") not in SHED_METHODS[route]:
            return self._app(environ, start_response)
        now = self._clock()
        try:
            waited_ms = max(0.0, (now - float(stamp)) * 1000.0)  # a stamp ahead of this clock: no wait
        except ValueError:
            return self._app(environ, start_response)  # only nginx sets it: not the client's fault
        environ[QUEUE_WAIT] = waited = waited_ms / 1000.0
        self._observe_wait(route, waited)
        try:
            budget = budget_ms(environ.get("HTTP_X_DEADLINE_MS"), self._default_ms)
        except InvalidDeadline as e:
            return _answer(start_response, environ, "400 Bad Request", "invalid_deadline", str(e), waited_ms, now)
        left_ms = budget - waited_ms
        if left_ms < RESERVE_MS:
            self._count_shed(route)
            return _answer(
                start_response,
                environ,
                "503 Service Unavailable",
                "deadline_exceeded",
                SPENT.format(waited_ms=waited_ms, budget=budget),
                waited_ms,
                now,
                retry_after=True,
            )
        environ[DUE] = now + left_ms / 1000.0
        wait_header = ("X-Queue-Wait-Ms", f"{waited_ms:.0f}")

        def start_with_wait(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            headers.append(wait_header)
            return start_response(status, headers, exc_info)

        return self._app(environ, start_with_wait)


def _answer(
    start_response: StartResponse,
    environ: dict[str, Any],
    status: str,
    code: str,
    message: str,
    waited_ms: float,
    started: float,
    retry_after: bool = False,
) -> list[bytes]:
    """The app's error shape (the protocol's under /v2) and headers, without Falcon."""
    body = orjson.dumps(
        {"error": message} if protocol_v2(environ.get("PATH_INFO") or "") else {"error": code, "message": message}
    )
    headers = [
        ("Content-Type", JSON),
        ("Content-Length", str(len(body))),
        ("X-Request-ID", environ.get("HTTP_X_REQUEST_ID") or uuid.uuid4().hex),
        (TRACE_HEADER, server_span(trace_id(environ))),
        ("X-Queue-Wait-Ms", f"{waited_ms:.0f}"),
        ("X-Response-Time-Ms", f"{(time.time() - started) * 1000.0:.3f}"),
    ]
    if retry_after:
        headers.append(("Retry-After", RETRY_AFTER_SECONDS))
    start_response(status, headers)
    return [body]


def time_left_s(env: dict[str, Any], own_timeout_s: float) -> float:
    """A wait inside the request (a feature-store lookup) bounded by its own timeout and by what is
    left of the deadline; never below a millisecond, so the call fails fast rather than blocks.
    `env` is the WSGI environ (Falcon's req.env)."""
    due = env.get(DUE)
    if due is None:
        return own_timeout_s
    return max(0.001, min(own_timeout_s, due - time.time()))

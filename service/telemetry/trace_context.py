"""W3C Trace Context (https://www.w3.org/TR/trace-context/): which trace a request belongs to, for
the app's answers and log lines.

nginx decides a request's trace id (nginx/nginx.conf.template): the caller's, from a valid
`traceparent` (version 00, ids not all zeros), which it passes on unchanged; otherwise its own
random 128-bit `$request_id`, a fresh trace. It logs the id (`trace_id` in its access line) and
hands it to the app in `X-Trace-Id`, so the three agree: nginx's line, the app's log lines, the answer.

The answer carries `traceresponse: 00-<trace id>-<the app's span id>-00` (Trace Context Level 2's
response header), for a caller to link its span to the server's. Flags 00: the app records no span
of its own. The span id is 64 random bits from `random`, which reseeds itself in each forked
worker: no syscall and no lock on the request's path."""

from __future__ import annotations

import re
import uuid
from random import getrandbits
from typing import Any

HEADER = "traceresponse"
_TRACEPARENT = re.compile(r"00-(?!0{32})([0-9a-f]{32})-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")


def trace_id(environ: dict[str, Any]) -> str:
    """The request's trace id: nginx's X-Trace-Id; without nginx (a direct call to the app), the
    caller's traceparent's, else a fresh one."""
    given = environ.get("HTTP_X_TRACE_ID")
    if given:
        return given
    parent = _TRACEPARENT.fullmatch(environ.get("HTTP_TRACEPARENT", ""))
    return parent.group(1) if parent else uuid.uuid4().hex


def server_span(trace: str) -> str:
    """The traceresponse value naming a new span of the app in trace `trace`."""
    return f"00-{trace}-{getrandbits(64) or 1:016x}-00"

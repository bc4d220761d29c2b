"""The ceiling for `make perf`: a WSGI callable that reads the request body and answers a constant.

Started through the same Stack (same nginx config, same gunicorn.conf.py and workers) in place of the
service's app, it measures what nginx, gunicorn and the load generator cost by themselves; scoring's
throughput divided by this one's is the share the service's own work leaves."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

BODY = b'{"fraud-score":0,"is-fraud":false,"model-version":"bare"}'
HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    length = environ.get("CONTENT_LENGTH")
    if length:
        environ["wsgi.input"].read(int(length))
    start_response("200 OK", HEADERS)
    return [BODY]

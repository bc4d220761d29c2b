"""The ceilings for `make perf`: a WSGI callable that reads the request body and answers a constant, and
the same as a Falcon route.

Started through the same Stack (same nginx config, same gunicorn.conf.py and workers) in place of the
service's app, it measures what nginx, gunicorn and the load generator cost by themselves; scoring's
throughput divided by this one's is the share the service's own work leaves."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import falcon

BODY = b'{"fraud-score":0,"is-fraud":false,"model-version":"bare"}'
HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    length = environ.get("CONTENT_LENGTH")
    if length:
        environ["wsgi.input"].read(int(length))
    start_response("200 OK", HEADERS)
    return [BODY]


class _Constant:
    """Falcon's own cost, no more: the body read, a constant answer."""

    def on_get(self, req: Any, resp: Any) -> None:
        resp.data, resp.content_type = BODY, "application/json"

    def on_post(self, req: Any, resp: Any) -> None:
        req.bounded_stream.read()
        self.on_get(req, resp)


# The second ceiling: the same stack serving Falcon's trivial route (`perf.bare:falcon_application`).
falcon_application = falcon.App()
for _path in ("/health", "/v1/fraud-score"):
    falcon_application.add_route(_path, _Constant())

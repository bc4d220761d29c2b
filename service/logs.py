"""JSON log lines for the app and gunicorn, correlated with nginx's by request id.

API keys and feature values never reach a log line: the access line carries only the request's
method, path, status, size, latency and id."""

from __future__ import annotations

import logging
import sys
from typing import Any

from gunicorn.glogging import Logger as GunicornLogger
from pythonjsonlogger.orjson import OrjsonFormatter

FIELDS = "{levelname}{name}{process}{message}"


def json_formatter() -> logging.Formatter:
    return OrjsonFormatter(FIELDS, style="{", timestamp="ts", rename_fields={"levelname": "level", "name": "logger"},
                           static_fields={"source": "app"})


def configure(level: int = logging.INFO) -> None:
    """The app's own loggers (start-up, model loading, unexpected errors) write JSON to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(json_formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class JsonGunicornLogger(GunicornLogger):
    """gunicorn's error and access logs as JSON lines."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            for handler in logger.handlers:
                handler.setFormatter(json_formatter())

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.access_log_enabled:
            return
        self.access_log.info("request", extra={
            "request_id": environ.get("HTTP_X_REQUEST_ID"),
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),
            "status": resp.status_code,
            "bytes": getattr(resp, "sent", None),
            "duration_ms": round(request_time.total_seconds() * 1000.0, 3),
        })

"""JSON log lines for the app and gunicorn, correlated with nginx's by request id.

API keys and feature values never reach a log line: the access line carries only the request's
method, path, status, size, latency and id."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson
from gunicorn.glogging import Logger as GunicornLogger
from pythonjsonlogger.orjson import OrjsonFormatter

FIELDS = "{levelname}{name}{process}{message}"


def json_formatter() -> logging.Formatter:
    return OrjsonFormatter(
        FIELDS,
        style="{",
        timestamp="ts",
        rename_fields={"levelname": "level", "name": "logger"},
        static_fields={"source": "app"},
    )


def configure(level: int = logging.INFO) -> None:
    """The app's own loggers (start-up, model loading, unexpected errors) write JSON to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(json_formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class RenderedLine(logging.Formatter):
    """For access lines, which JsonGunicornLogger.access renders itself."""

    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()


class JsonGunicornLogger(GunicornLogger):
    """gunicorn's error and access logs as JSON lines."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(json_formatter())
        for handler in self.access_log.handlers:
            handler.setFormatter(RenderedLine())

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        """One line per request, with the same fields json_formatter() writes, rendered here
        because Logger.info and the generic formatter cost several times more per request (the
        figures: perf/README.md)."""
        if not self.access_log_enabled or not self.access_log.isEnabledFor(logging.INFO):
            return
        record = logging.LogRecord(self.access_log.name, logging.INFO, __file__, 0, "", None, None)
        record.msg = orjson.dumps(
            {
                "level": record.levelname,
                "logger": record.name,
                "process": record.process,
                "message": "request",
                "source": "app",
                "request_id": environ.get("HTTP_X_REQUEST_ID"),
                "method": environ.get("REQUEST_METHOD"),
                "path": environ.get("PATH_INFO"),
                "status": resp.status_code,
                "bytes": getattr(resp, "sent", None),
                "duration_ms": round(request_time.total_seconds() * 1000.0, 3),
                "ts": datetime.fromtimestamp(record.created, tz=UTC),
            }
        ).decode()
        self.access_log.handle(record)

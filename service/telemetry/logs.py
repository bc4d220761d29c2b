"""JSON log lines for the app and gunicorn, correlated with nginx's access log by request id
(the app's lines that concern a request carry it) and by process id (nginx logs which worker
answered). API keys and feature values never reach a log line."""

from __future__ import annotations

import logging
import sys
from typing import Any

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


class JsonGunicornLogger(GunicornLogger):
    """gunicorn's own messages (start, workers, errors) as JSON lines. It writes no access lines:
    nginx's access log is the only one (gunicorn.conf.py)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(json_formatter())

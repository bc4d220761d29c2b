"""gunicorn's access line, rendered by JsonGunicornLogger.access, has the fields and values the
generic JSON formatter gives every other log line."""

from __future__ import annotations

import datetime
import io
import json
import logging
from types import SimpleNamespace

from gunicorn.config import Config

from service.logs import JsonGunicornLogger, json_formatter


def access_line(resp: SimpleNamespace, environ: dict, took: datetime.timedelta) -> dict:
    config = Config()
    config.set("accesslog", "-")
    log = JsonGunicornLogger(config)
    stream = io.StringIO()
    log.access_log.handlers[0].stream = stream
    try:
        log.access(resp, None, environ, took)
    finally:
        log.access_log.handlers.clear()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def formatter_line(extra: dict) -> dict:
    record = logging.LogRecord("gunicorn.access", logging.INFO, __file__, 0, "request", None, None)
    record.__dict__.update(extra)
    return json.loads(json_formatter().format(record))


def test_access_line_matches_the_json_formatter():
    environ = {
        "HTTP_X_REQUEST_ID": "abc-1",
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/v1/fraud-score",
        "HTTP_X_API_KEY": "never-logged-0123456789",
    }
    line = access_line(SimpleNamespace(status_code=200, sent=70), environ, datetime.timedelta(microseconds=1234))
    expected = formatter_line(
        {
            "request_id": "abc-1",
            "method": "POST",
            "path": "/v1/fraud-score",
            "status": 200,
            "bytes": 70,
            "duration_ms": 1.234,
        }
    )
    assert list(line) == list(expected)
    assert {k: v for k, v in line.items() if k != "ts"} == {k: v for k, v in expected.items() if k != "ts"}
    assert datetime.datetime.fromisoformat(line["ts"]).utcoffset() == datetime.timedelta(0)
    assert "never-logged" not in json.dumps(line)


def test_missing_values_are_null():
    line = access_line(SimpleNamespace(status_code=404), {}, datetime.timedelta(seconds=1.5))
    assert line["request_id"] is None and line["bytes"] is None and line["duration_ms"] == 1500.0

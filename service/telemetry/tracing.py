"""Optional OpenTelemetry export: one server span per request, to an OTLP/HTTP collector.

Off unless OTEL_TRACES_EXPORTER=otlp, and free when off: the app is then built without the traced
middleware, and nothing imports opentelemetry (service/telemetry/otel.py holds every use of it).
Configured by OpenTelemetry's own variables, read by its SDK: OTEL_EXPORTER_OTLP_ENDPOINT (or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG, OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_* (the export queue) and OTEL_EXPORTER_OTLP_TIMEOUT.

`Tracing` is made once in the gunicorn master, where it only reads the environment (and imports the
SDK, so that each worker does not): the exporter's thread and queue are made by `start`, in each
worker after fork (gunicorn.conf.py's post_fork), never shared across a fork. A span's trace id is
the one nginx logged (X-Trace-Id: the caller's traceparent's, or its own fresh id) and its parent the
caller's span, so the collector's trace, nginx's access line and the app's log lines agree."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

EXPORTER_ENV = "OTEL_TRACES_EXPORTER"
EXPORTERS = ("none", "otlp")  # OTLP over HTTP (protobuf): the one exporter this service ships


class TracingConfigError(ValueError):
    pass


class Tracing:
    """The export of one process: `start` after fork, then its `exporter` per request, `stop` at exit."""

    def __init__(self, service_version: str, environ: Mapping[str, str]) -> None:
        from service.telemetry import otel  # the SDK, imported in the master: workers share its pages

        try:
            otel.queue_sizes(environ)
        except ValueError as e:
            raise TracingConfigError(str(e)) from None
        # The SDK reads its OTEL_* variables from the process environment: those set only in .env join it.
        os.environ.update({k: v for k, v in environ.items() if k.startswith("OTEL_") and k not in os.environ})
        self._otel = otel
        self._service_version = service_version
        self._environ = dict(environ)
        self._exporter: Any = None

    @classmethod
    def from_environ(cls, service_version: str, environ: Mapping[str, str] = os.environ) -> Tracing | None:
        """None (no tracing, nothing imported) unless OTEL_TRACES_EXPORTER=otlp."""
        exporter = environ.get(EXPORTER_ENV, "").strip().lower() or "none"
        if exporter not in EXPORTERS:
            raise TracingConfigError(
                f"{EXPORTER_ENV}={exporter!r}: this service exports traces with one of {EXPORTERS}"
            )
        return cls(service_version, environ) if exporter == "otlp" else None

    def start(self) -> None:
        """In a worker (after fork): the tracer, its bounded queue and its exporting thread."""
        if self._exporter is None:
            self._exporter = self._otel.Exporter(self._service_version, self._environ)

    @property
    def exporter(self) -> Any:
        """This worker's exporter (service/telemetry/otel.py's Exporter: `begin` a request's span,
        `end` it), started here if `start` was not called (outside gunicorn)."""
        if self._exporter is None:
            self.start()
        return self._exporter

    def stop(self) -> None:
        """At a worker's exit: what is queued is sent within a bounded time, else dropped and counted."""
        if self._exporter is not None:
            self._exporter.stop()
            self._exporter = None

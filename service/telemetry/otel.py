"""The OpenTelemetry SDK behind service/telemetry/tracing.py: imported only when tracing is on.

Bounded: spans wait in the BatchSpanProcessor's queue (OTEL_BSP_MAX_QUEUE_SIZE) for its thread to
export them. A span that finds the queue full is dropped at once, and a batch the collector does not
take (absent, refusing, slower than OTEL_EXPORTER_OTLP_TIMEOUT) is dropped: both are counted in
fraud_trace_spans_dropped_total by reason, and neither ever waits in a request."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.environment_variables import (
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE,
    OTEL_BSP_MAX_QUEUE_SIZE,
    OTEL_SERVICE_NAME,
)
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from service.telemetry import metrics

DEFAULT_SERVICE_NAME = "fraud-scoring"
# The SDK's own defaults for OTEL_BSP_MAX_QUEUE_SIZE and OTEL_BSP_MAX_EXPORT_BATCH_SIZE.
DEFAULT_QUEUE, DEFAULT_BATCH = 2048, 512
# At a worker's exit, the time its last spans get to reach the collector: well within gunicorn's
# graceful_timeout (20 s), so that a stuck collector never turns a stop into a kill.
STOP_FLUSH_SECONDS = 5.0
_PROPAGATOR = TraceContextTextMapPropagator()
# A stage's time (service/telemetry/stages.py) on the span, in seconds: fraud.request.stage_seconds.score
# is fraud_request_stage_seconds{stage="score"}'s observation for this request.
STAGE_ATTRIBUTE = "fraud.request.stage_seconds."


class _NginxTraceIds(RandomIdGenerator):
    """A root span's trace id is the one nginx chose and logged (its $request_id without a caller's
    traceparent), not a new one: set before each span starts (one request at a time per worker)."""

    next_trace_id = 0

    def generate_trace_id(self) -> int:
        return self.next_trace_id or super().generate_trace_id()


class _CountingExporter(SpanExporter):
    """The OTLP exporter, counting the spans it takes from the queue and those it fails to deliver."""

    def __init__(self, inner: SpanExporter) -> None:
        self._inner = inner
        self.taken = 0
        self._stopped = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.taken += len(spans)
        try:
            result = self._inner.export(spans)
        except Exception:
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            metrics.count_spans_dropped("export_failed", len(spans))
        return result

    def shutdown(self) -> None:
        if not self._stopped:  # once: from the deadline's timer or from the processor, whichever is first
            self._stopped = True
            self._inner.shutdown()


class _BoundedProcessor(BatchSpanProcessor):
    """The SDK's batch processor, refusing (and counting) a span that would not fit in the queue
    where the SDK's queue would silently evict its oldest span."""

    def __init__(self, exporter: _CountingExporter, max_queue_size: int, max_export_batch_size: int) -> None:
        super().__init__(exporter, max_queue_size=max_queue_size, max_export_batch_size=max_export_batch_size)
        self._exporter = exporter
        self._max_queue_size = max_queue_size
        self._queued = 0  # spans given to the queue; the exporter counts those taken out of it

    def on_end(self, span: ReadableSpan) -> None:
        if not (span.context and span.context.trace_flags.sampled):
            return
        if self._queued - self._exporter.taken >= self._max_queue_size:
            metrics.count_spans_dropped("queue_full", 1)
            return
        self._queued += 1
        super().on_end(span)


def queue_sizes(environ: Mapping[str, str]) -> tuple[int, int]:
    """(queue, batch) from OTEL_BSP_*, checked in the master: a bad value stops the service at start
    instead of failing every worker as it boots. ValueError says which."""
    sizes = []
    for name, default in ((OTEL_BSP_MAX_QUEUE_SIZE, DEFAULT_QUEUE), (OTEL_BSP_MAX_EXPORT_BATCH_SIZE, DEFAULT_BATCH)):
        raw = environ.get(name) or str(default)
        if not raw.isdigit() or int(raw) < 1:
            raise ValueError(f"{name}={raw!r} is not a positive integer")
        sizes.append(int(raw))
    queue, batch = sizes
    if batch > queue:
        raise ValueError(f"{OTEL_BSP_MAX_EXPORT_BATCH_SIZE}={batch} is larger than {OTEL_BSP_MAX_QUEUE_SIZE}={queue}")
    return queue, batch


class Exporter:
    """One worker's tracer provider, processor and OTLP/HTTP exporter."""

    def __init__(self, service_version: str, environ: Mapping[str, str]) -> None:
        attributes = {SERVICE_VERSION: service_version}
        if not environ.get(OTEL_SERVICE_NAME):
            attributes[SERVICE_NAME] = DEFAULT_SERVICE_NAME
        self._ids = _NginxTraceIds()
        # The sampler is the SDK's, from OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG (by default
        # the caller's sampled flag, else always on).
        self._provider = TracerProvider(resource=Resource.create(attributes), id_generator=self._ids)
        self._exporter = _CountingExporter(OTLPSpanExporter())
        self._provider.add_span_processor(_BoundedProcessor(self._exporter, *queue_sizes(environ)))
        self._tracer = self._provider.get_tracer("fraud-scoring")

    def begin(self, environ: dict[str, Any], trace_id: str, method: str) -> Any:
        """A server span for the request (WSGI environ), started now."""
        parent = _PROPAGATOR.extract(
            {"traceparent": environ.get("HTTP_TRACEPARENT", ""), "tracestate": environ.get("HTTP_TRACESTATE", "")}
        )
        # The caller's span is the parent only in the trace nginx logged (a traceparent nginx did
        # not take, another version's, starts a trace of nginx's id instead).
        if f"{trace.get_current_span(parent).get_span_context().trace_id:032x}" != trace_id:
            parent = None
        self._ids.next_trace_id = int(trace_id, 16) if len(trace_id) == 32 else 0
        return self._tracer.start_span(
            method, context=parent, kind=SpanKind.SERVER, attributes={"http.request.method": method}
        )

    def end(
        self,
        span: Any,
        method: str,
        route: str | None,
        status: int,
        attributes: dict[str, Any],
        stages: Iterable[tuple[str, float]],
    ) -> str:
        """Ends the span with the request's outcome and its stages' (stage, seconds), read only for
        a sampled span; returns the traceresponse header's value."""
        if span.is_recording():  # sampled: a span not sampled records nothing
            if route:
                span.update_name(f"{method} {route}")  # the semantic conventions' server span name
                span.set_attribute("http.route", route)
            span.set_attribute("http.response.status_code", status)
            span.set_attributes(attributes)
            span.set_attributes({STAGE_ATTRIBUTE + stage: seconds for stage, seconds in stages})
        span.end()
        context = span.get_span_context()
        return f"00-{context.trace_id:032x}-{context.span_id:016x}-{'01' if context.trace_flags.sampled else '00'}"

    def stop(self) -> None:
        timer = threading.Timer(STOP_FLUSH_SECONDS, self._exporter.shutdown)  # cuts a stuck export short
        timer.daemon = True
        timer.start()
        try:
            self._provider.shutdown()
        finally:
            timer.cancel()

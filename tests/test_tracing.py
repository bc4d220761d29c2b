"""The optional OpenTelemetry export (service/telemetry/tracing.py) from a real stack (nginx and
gunicorn) to a real OTLP/HTTP receiver in the test process, which decodes the protobuf
ExportTraceServiceRequest with opentelemetry-proto: one server span per request, in the caller's
trace under the caller's span, with the semantic conventions' HTTP attributes and the model's
version and the request's stages; sampled by OTEL_TRACES_SAMPLER; an absent collector drops and counts spans while every
request is answered; and with the export off, opentelemetry is never imported."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from service.api.app import MODEL_VERSION_ATTRIBUTE
from service.telemetry.otel import STAGE_ATTRIBUTE
from service.telemetry.tracing import Tracing, TracingConfigError
from tests.helpers import Client, free_port, sample_transaction, samples, value, wait_for

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
# Spans leave a worker a tenth of a second after they end, not the SDK's default 5 s.
FAST_EXPORT = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_BSP_SCHEDULE_DELAY": "100"}


class Receiver:
    """An OTLP/HTTP trace receiver on a free loopback port: every span it is sent, with its
    resource's attributes, in `spans`."""

    def __init__(self) -> None:
        self.spans: queue.Queue[tuple[dict, Span]] = queue.Queue()
        received = self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  (http.server's name)
                request = ExportTraceServiceRequest()
                request.ParseFromString(self.rfile.read(int(self.headers["Content-Length"])))
                for resource_spans in request.resource_spans:
                    resource = attributes(resource_spans.resource.attributes)
                    for scope_spans in resource_spans.scope_spans:
                        for span in scope_spans.spans:
                            received.put((resource, span))
                body = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def span_of_trace(self, trace_id: str, timeout: float = 30.0) -> tuple[dict, Span]:
        while True:
            resource, span = self.spans.get(timeout=timeout)
            if span.trace_id.hex() == trace_id:
                return resource, span

    def drained(self) -> list[Span]:
        found = []
        while not self.spans.empty():
            found.append(self.spans.get_nowait()[1])
        return found

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def attributes(pairs) -> dict:
    """OTLP's KeyValue list as a dict of plain values."""
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in pairs}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


def traceresponse(reply) -> tuple[str, str, str]:
    version, trace_id, span_id, flags = reply.headers["traceresponse"].split("-")
    assert version == "00"
    return trace_id, span_id, flags


def test_a_span_per_request_in_the_callers_trace(stack_factory, receiver, small_model):
    stack = stack_factory(**FAST_EXPORT, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_SERVICE_NAME="fraud-test")
    client = Client(stack.host, stack.port)
    reply = client.score(sample_transaction(), headers={"traceparent": f"00-{TRACE}-{CALLER_SPAN}-01"})
    assert reply.status == 200, reply.raw
    trace_id, span_id, flags = traceresponse(reply)
    assert (trace_id, flags) == (TRACE, "01")  # sampled, as the caller asked, and exported

    resource, span = receiver.span_of_trace(TRACE)
    assert span.span_id.hex() == span_id and span.parent_span_id.hex() == CALLER_SPAN
    assert span.kind == Span.SPAN_KIND_SERVER and span.name == "POST /v1/fraud-score"
    found = attributes(span.attributes)
    assert found["http.request.method"] == "POST" and found["http.route"] == "/v1/fraud-score"
    assert found["http.response.status_code"] == 200
    model_version = client.request("GET", "/v1/model-info").json["model-version"]
    assert found[MODEL_VERSION_ATTRIBUTE] == model_version
    assert span.end_time_unix_nano > span.start_time_unix_nano
    # The request's stages, as its Server-Timing header gives them (in ms, to the microsecond).
    timing = dict(part.split(";dur=") for part in reply.headers["Server-Timing"].split(", "))
    stages = {k.removeprefix(STAGE_ATTRIBUTE): v for k, v in found.items() if k.startswith(STAGE_ATTRIBUTE)}
    assert {"queue", "read", "score", "write"} <= set(stages) and set(stages) == set(timing) - {"app"}
    for stage, seconds in stages.items():
        assert abs(seconds * 1e3 - float(timing[stage])) < 0.001, (stage, seconds, timing)
    assert resource["service.name"] == "fraud-test" and resource["service.version"]

    # Without a traceparent: a root span in the trace nginx chose and logged.
    fresh = client.request("GET", "/health", key=None)
    trace_id, span_id, flags = traceresponse(fresh)
    assert trace_id != TRACE and flags == "01"
    _, root = receiver.span_of_trace(trace_id)
    assert root.span_id.hex() == span_id and root.parent_span_id == b""
    assert attributes(root.attributes)["http.route"] == "/health"
    assert not any(k.startswith(STAGE_ATTRIBUTE) for k in attributes(root.attributes))  # no stages there


def test_sampler_zero_exports_nothing(stack_factory, receiver):
    stack = stack_factory(
        **FAST_EXPORT,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_TRACES_SAMPLER="traceidratio",
        OTEL_TRACES_SAMPLER_ARG="0",
    )
    client = Client(stack.host, stack.port)
    for _ in range(20):
        reply = client.score(sample_transaction(), headers={"traceparent": f"00-{TRACE}-{CALLER_SPAN}-01"})
        assert reply.status == 200 and traceresponse(reply)[2] == "00"  # not sampled
    stack.stop()  # each worker flushes what it has queued as it exits
    assert receiver.drained() == []


def test_an_absent_collector_drops_and_counts_spans_and_every_request_is_answered(stack_factory):
    closed = free_port()  # nothing listens there
    stack = stack_factory(
        **FAST_EXPORT,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{closed}",
        OTEL_EXPORTER_OTLP_TIMEOUT="1",
        OTEL_BSP_MAX_QUEUE_SIZE="8",
        OTEL_BSP_MAX_EXPORT_BATCH_SIZE="8",
    )
    client = Client(stack.host, stack.port)
    statuses = [client.score(sample_transaction()).status for _ in range(100)]
    assert statuses == [200] * 100

    def dropped() -> float:
        found = samples(client)
        return sum(value(found, "fraud_trace_spans_dropped_total", reason=r) for r in ("queue_full", "export_failed"))

    assert wait_for(dropped) > 0


def test_off_by_default_and_opentelemetry_is_never_imported(small_model):
    """The app as the master builds it and a request through it, in a fresh interpreter: neither
    this service's export nor OpenTelemetry's tracing SDK or exporter is loaded. (redis-py loads
    OpenTelemetry's metrics API when it is installed, for an observability of its own that is off
    unless configured; the feature store's client, not on the single route.)"""
    code = f"""
import sys
TRACING_MODULES = ("service.telemetry.otel", "opentelemetry.sdk.trace", "opentelemetry.exporter")
from pathlib import Path
from falcon import testing
from service.api.app import create_app
from service.core.settings import Settings
from service.engine.loader import load_model
from service.telemetry.tracing import Tracing

assert Tracing.from_environ("1", {{}}) is None and Tracing.from_environ("1", {{"OTEL_TRACES_EXPORTER": "none"}}) is None
settings = Settings(api_keys=(b"k",), model_path=Path({str(small_model[0])!r}))
app = create_app(settings, load_model(settings))
reply = testing.TestClient(app).simulate_get("/health", headers={{"traceparent": "00-{TRACE}-{CALLER_SPAN}-01"}})
assert reply.status_code == 200 and reply.headers["traceresponse"].endswith("-00"), reply.headers
imported = sorted(m for m in sys.modules if m.startswith(TRACING_MODULES))
assert not imported, imported
"""
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr[-3000:]


def test_an_unknown_exporter_is_a_config_error():
    with pytest.raises(TracingConfigError, match="OTEL_TRACES_EXPORTER='jaeger'"):
        Tracing.from_environ("1", {"OTEL_TRACES_EXPORTER": "jaeger"})
    with pytest.raises(TracingConfigError, match="OTEL_BSP_MAX_EXPORT_BATCH_SIZE=512 is larger"):
        Tracing.from_environ("1", {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_BSP_MAX_QUEUE_SIZE": "8"})

"""The lean tracing's parts held against the official OpenTelemetry Python packages: the
samplers decide as the SDK's do on the same ids, traceparent is read as the SDK's
propagator reads it, the OTLP encoder writes what opentelemetry-proto decodes, and the
batch queue drops (and counts) rather than block a request when it is full."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Sequence

import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import sampling
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.span import TraceState
from pytest_aiohttp import AiohttpServer

from aigateway.usage.otlp import encode_head, encode_request, exporter_from
from aigateway.usage.spans import CLIENT, SERVER, Batcher, MemoryExporter, Span
from aigateway.usage.traceparent import (
    SAMPLERS,
    Parent,
    clean_tracestate,
    parse_traceparent,
    sampler_from,
)

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
HEAD = encode_head({"service.name": "gw", "deployment": "test"}, "aigateway", "1.2.3")


def _ids(count: int) -> list[int]:
    rng = random.Random(29)
    # the edges of the ratio rule too: the low 8 bytes at 0, just under and at a bound
    edges = [1, (1 << 64) - 1, 1 << 63, (1 << 63) - 1, (5 << 124) | (1 << 62)]
    return edges + [rng.getrandbits(128) or 1 for _ in range(count)]


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("argument", ["", "0", "0.1", "0.5", "1"])
def test_the_samplers_decide_as_the_sdk_s(
    monkeypatch: pytest.MonkeyPatch, name: str, argument: str
) -> None:
    environ = {"OTEL_TRACES_SAMPLER": name, "OTEL_TRACES_SAMPLER_ARG": argument}
    for variable, value in environ.items():
        monkeypatch.setenv(variable, value)
    theirs = sampling._get_from_env_or_default()
    ours = sampler_from(environ)
    for trace_id in _ids(2000):
        for parent in (None, Parent(trace_id, 7, True), Parent(trace_id, 7, False)):
            context = None
            if parent is not None:
                flags = trace.TraceFlags(1 if parent.sampled else 0)
                span = trace.SpanContext(trace_id, 7, is_remote=True, trace_flags=flags)
                context = trace.set_span_in_context(trace.NonRecordingSpan(span))
            decision = theirs.should_sample(context, trace_id, "x").decision
            sampled = decision is sampling.Decision.RECORD_AND_SAMPLE
            assert ours.sampled(trace_id, parent) == sampled, (trace_id, parent)


TRACEPARENTS = [
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
    "  00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03  ",
    "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
    "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
    "00-00000000000000000000000000000000-b7ad6b7169203331-01",
    "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g",
    "00-0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331-01",
    "00-0af7651916cd43dd8448eb211c8031-9cb7ad6b7169203331-01",
    "00-zz-yy-01",
    "x" * 5000,
    "",
]


@pytest.mark.parametrize("value", TRACEPARENTS)
def test_traceparent_is_read_as_the_sdk_s_propagator_reads_it(value: str) -> None:
    context = TraceContextTextMapPropagator().extract({"traceparent": value})
    theirs = trace.get_current_span(context).get_span_context()
    ours = parse_traceparent(value)
    if not theirs.is_valid:
        assert ours is None
    else:
        assert ours == Parent(theirs.trace_id, theirs.span_id, theirs.trace_flags.sampled)


TRACESTATES = [
    "vendor=client",
    "a=1, b@tenant=2,c=x y",
    "a=1,a=2",
    "A=1",
    "a=",
    "=1",
    "a=1,,b=2",
    "a=b=c",
    "a=\u00e9",
    ",".join(f"k{n}=v" for n in range(33)),
    "k=" + "v" * 600,
    "",
]


@pytest.mark.parametrize("value", TRACESTATES)
def test_tracestate_is_kept_or_dropped_as_the_sdk_does(value: str) -> None:
    theirs = TraceState.from_header([value])
    assert clean_tracestate(value) == ",".join(f"{k}={v}" for k, v in theirs.items())


def _span(name: str, span_id: int, parent_id: int = 0, kind: int = SERVER) -> Span:
    span = Span(name, TRACE_ID, span_id, parent_id, kind, 1_700_000_000_000_000_000, "v=1")
    span.end = span.start + 1234
    return span


def _decoded(body: bytes) -> ExportTraceServiceRequest:
    export = ExportTraceServiceRequest()
    export.ParseFromString(body)
    return export


def test_the_encoder_writes_what_opentelemetry_proto_reads() -> None:
    root = _span("POST /api/chat", 0xB7AD6B7169203331, 0x1122334455667788)
    root.attributes = {
        "s": "naïve ✓ " + "x" * 300,  # (a length past one varint byte)
        "i": 1234567,
        "negative": -5,
        "big": (1 << 63) - 1,
        "f": 0.000123,
        "yes": True,
        "no": False,
    }
    root.fail("cannot reach Ollama")
    child = _span("upstream", 0x0102030405060708, root.span_id, CLIENT)
    export = _decoded(encode_request(HEAD, [root, child]))
    [resource_spans] = export.resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource == {"service.name": "gw", "deployment": "test"}
    [scope_spans] = resource_spans.scope_spans
    assert (scope_spans.scope.name, scope_spans.scope.version) == ("aigateway", "1.2.3")
    decoded_root, decoded_child = scope_spans.spans
    assert decoded_root.trace_id == TRACE_ID.to_bytes(16, "big")
    assert decoded_root.span_id.hex() == "b7ad6b7169203331"
    assert decoded_root.parent_span_id.hex() == "1122334455667788"
    assert decoded_root.trace_state == "v=1"
    assert decoded_root.name == "POST /api/chat"
    assert decoded_root.kind == decoded_root.SPAN_KIND_SERVER
    assert decoded_root.start_time_unix_nano == root.start
    assert decoded_root.end_time_unix_nano == root.end
    values = {a.key: a.value for a in decoded_root.attributes}
    assert values["s"].string_value == root.attributes["s"]
    assert values["i"].int_value == 1234567
    assert values["negative"].int_value == -5
    assert values["big"].int_value == (1 << 63) - 1
    assert values["f"].double_value == 0.000123
    assert values["yes"].bool_value is True
    assert values["no"].HasField("bool_value") and values["no"].bool_value is False
    assert decoded_root.status.code == decoded_root.status.STATUS_CODE_ERROR
    assert decoded_root.status.message == "cannot reach Ollama"
    assert decoded_child.parent_span_id == decoded_root.span_id
    assert decoded_child.kind == decoded_child.SPAN_KIND_CLIENT
    assert decoded_child.status.code == decoded_child.status.STATUS_CODE_UNSET
    assert not decoded_child.attributes


async def test_the_exporter_posts_gzip_with_its_headers_and_retries_a_busy_collector(
    aiohttp_server: AiohttpServer,
) -> None:
    answers = [503, 200]
    received: list[tuple[dict[str, str], bytes]] = []

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        received.append((dict(request.headers), body))
        return web.Response(status=answers.pop(0), content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/custom/traces", traces)
    collector = await aiohttp_server(app)
    exporter = exporter_from(
        {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": str(collector.make_url("/custom/traces")),
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://elsewhere:4318",  # (the TRACES_ one wins)
            "OTEL_EXPORTER_OTLP_HEADERS": "api-key=s%3Dcret, x-team = ops",
            "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "5000",
        },
        HEAD,
    )
    await asyncio.to_thread(exporter.export, [_span("GET /api/tags", 5)])
    exporter.close()
    assert len(received) == 2  # (the 503, then again)
    headers, body = received[-1]
    assert headers["api-key"] == "s=cret" and headers["x-team"] == "ops"
    assert headers["Content-Encoding"] == "gzip"
    # (aiohttp has inflated the body as its Content-Encoding says: it was gzip)
    [span] = _decoded(body).resource_spans[0].scope_spans[0].spans
    assert span.name == "GET /api/tags"


class _Stuck:
    """An exporter that holds the batch thread until let go."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.got: list[Span] = []

    def export(self, spans: Sequence[Span]) -> None:
        self.go.wait(10)
        self.got.extend(spans)

    def close(self) -> None:
        pass


def test_a_full_queue_drops_and_counts_and_never_blocks(caplog: pytest.LogCaptureFixture) -> None:
    stuck = _Stuck()
    batcher = Batcher([stuck], max_queue=4, batch=2, delay=60)
    spans = [_span(str(n), n + 1) for n in range(12)]
    batcher.add(spans[0:2])  # a full batch: the thread takes it and is stuck exporting
    for _ in range(100):
        if not batcher._queue:
            break
        threading.Event().wait(0.01)
    for n in range(2, 12, 2):
        batcher.add(spans[n : n + 2])  # room for two pairs; the rest turned away at once
    assert batcher.dropped == 6
    stuck.go.set()
    batcher.close()
    assert [s.name for s in stuck.got] == ["0", "1", "2", "3", "4", "5"]
    assert "6 spans dropped: the export queue was full" in caplog.text


def test_flush_exports_what_is_queued_before_the_delay() -> None:
    memory = MemoryExporter()
    batcher = Batcher([memory], delay=60)
    batcher.add([_span("a", 1), _span("b", 2)])
    assert memory.spans == []
    batcher.flush()
    assert [s.name for s in memory.spans] == ["a", "b"]
    batcher.close()

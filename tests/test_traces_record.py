"""A request's trace as the event loop records it (usage/request_trace.py) and as the batch
thread makes it: the spans it makes (the console's and the tests') and its own OTLP
encoding must say the same, byte for byte, for every shape a request can take (queue
waits, failovers, refusals, errors, a client that left); and the batch thread posts
whole batches while requests keep coming."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import pytest
from multidict import CIMultiDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from aigateway.usage.otlp_wire import encode_export, encode_head, encode_spans
from aigateway.usage.request_trace import RequestTrace
from aigateway.usage.spans import CLIENT, ERROR, INTERNAL, SERVER, Batcher, Recorded, Span
from aigateway.usage.traceparent import Sampler
from aigateway.usage.traces import Tracing

from .helpers import eventually

HEAD = encode_head({"service.name": "gw"}, "aigateway", "1.2.3")
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Recorder:
    """Takes what requests recorded, as the OTLP exporter does."""

    def __init__(self) -> None:
        self.batches: list[list[Recorded]] = []

    def export(self, spans: Sequence[Span]) -> None:
        raise AssertionError("a recorded-taking exporter is given what was recorded")

    def export_recorded(self, batch: Sequence[Recorded]) -> None:
        self.batches.append(list(batch))

    def close(self) -> None:
        pass


def _trace(tracing: Tracing, headers: dict[str, str] | None = None) -> RequestTrace:
    return tracing.request(
        CIMultiDict(headers or {}), "POST", "/v1/chat/completions", "rid-1", "sk-abc", "alice"
    )


def _plain(trace: RequestTrace) -> None:
    trace.admitted()
    trace.upstream("ollama", "ollama", [], None)
    trace.settled(200, "llama3.2:latest", "ollama", 26, 298, False, 0, time.perf_counter(), None)
    trace.end(False)


def _priced_cut_short(trace: RequestTrace) -> None:
    trace.admitted()
    trace.upstream("gpu-2", "ollama", [], None)
    first_byte = time.perf_counter()
    trace.settled(200, "qwen3:8b", "gpu-2", 4000, 9, True, 1_234_567, first_byte, "idle stream")
    trace.end(False)


def _refused(trace: RequestTrace) -> None:
    trace.failed(429, "rate limit")
    trace.end(False)


def _queued_failed_over_client_left(trace: RequestTrace) -> None:
    trace.admitted()
    trace.queued()
    trace.dequeued()
    trace.upstream("a", "ollama", [], None)
    trace.queued()
    trace.dequeued()
    trace.upstream("b", "openai", [], None)
    trace.settled(200, "gpt-4o", "b", 1, 1, False, 5, time.perf_counter(), None)
    trace.end(True)


def _upstream_away(trace: RequestTrace) -> None:
    trace.admitted()
    trace.upstream("ollama", "ollama", [], None)
    trace.settled(502, "llama3.2:latest", "ollama", None, None, False, 0, None, None)
    trace.failed(502, "cannot reach Ollama")
    trace.end(False)


def _cut_while_queued(trace: RequestTrace) -> None:
    trace.admitted()
    trace.queued()
    trace.failed(503, "the gateway is shutting down")
    trace.end(False)


SHAPES: dict[str, Callable[[RequestTrace], None]] = {
    "plain": _plain,
    "priced, cut short": _priced_cut_short,
    "refused": _refused,
    "queued, failed over, client left": _queued_failed_over_client_left,
    "upstream away": _upstream_away,
    "cut while queued": _cut_while_queued,
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("continued", [False, True])
def test_a_request_s_otlp_encoding_is_that_of_its_spans(shape: str, continued: bool) -> None:
    recorder = Recorder()
    tracing = Tracing(Sampler(1.0, True), Batcher([recorder], delay=60))
    headers = {"traceparent": TRACEPARENT, "tracestate": "v=1"} if continued else {}
    SHAPES[shape](_trace(tracing, headers))
    tracing.close()
    [[recorded]] = recorder.batches
    spans = recorded.spans()
    again = recorded.spans()  # (for a second exporter: the same ids)
    assert [(s.name, s.span_id) for s in again] == [(s.name, s.span_id) for s in spans]
    own: list[bytes] = []
    assert recorded.encode_otlp(own)
    theirs: list[bytes] = []
    encode_spans(theirs, spans)
    assert b"".join(own) == b"".join(theirs)
    # and what a collector reads from it is those spans
    export = ExportTraceServiceRequest()
    export.ParseFromString(encode_export(HEAD, own))
    decoded = export.resource_spans[0].scope_spans[0].spans
    assert [s.name for s in decoded] == [s.name for s in spans]
    for got, span in zip(decoded, spans, strict=True):
        assert int.from_bytes(got.trace_id, "big") == span.trace_id
        assert int.from_bytes(got.span_id, "big") == span.span_id
        assert int.from_bytes(got.parent_span_id or b"\0", "big") == span.parent_id
        assert got.trace_state == span.trace_state
        assert (got.start_time_unix_nano, got.end_time_unix_nano) == (span.start, span.end)
        assert got.kind == span.kind
        values = {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in got.attributes}
        assert values == (span.attributes or {})
        assert got.status.code == span.status and got.status.message == span.message


def test_each_shape_makes_the_spans_its_steps_took() -> None:
    recorder = Recorder()
    tracing = Tracing(Sampler(1.0, True), Batcher([recorder], delay=60))
    for shape in SHAPES.values():
        shape(_trace(tracing))
    tracing.close()
    made = [r.spans() for batch in recorder.batches for r in batch]
    plain, cut, refused, failed_over, away, queued = made
    shapes = [[(s.name, s.kind) for s in spans] for spans in made]
    request = ("POST /v1/chat/completions", SERVER)
    steps = [("admission", INTERNAL), ("upstream", CLIENT), ("stream", INTERNAL)]
    assert shapes[0] == shapes[1] == [request, *steps]
    assert shapes[2] == [request, ("admission", INTERNAL)]
    assert [name for name, _ in shapes[3]] == [
        "POST /v1/chat/completions", "admission", "queue wait", "upstream", "queue wait",
        "upstream", "stream",
    ]  # fmt: skip
    assert shapes[4] == [request, ("admission", INTERNAL), ("upstream", CLIENT)]
    assert shapes[5] == [request, ("admission", INTERNAL), ("queue wait", INTERNAL)]
    for spans in made:
        root = spans[0]
        assert all(s.parent_id == root.span_id for s in spans[1:])
        assert all(root.start <= s.start <= s.end <= root.end for s in spans)
    assert (plain[0].attributes or {})["gen_ai.usage.output_tokens"] == 298
    assert "aigateway.end" not in (plain[0].attributes or {})
    assert (cut[0].attributes or {})["aigateway.cost"] == 0.001234567
    assert (cut[0].attributes or {})["aigateway.tokens_estimated"] is True
    assert (cut[-1].attributes or {}) == {"aigateway.end": "idle stream"}
    assert (refused[0].attributes or {})["http.response.status_code"] == 429
    assert refused[0].status != ERROR  # (a 4xx is the client's)
    first, second = [s for s in failed_over if s.name == "upstream"]
    assert (first.status, first.message, first.end) == (ERROR, "failed over", second.start)
    assert (second.attributes or {})["aigateway.upstream.kind"] == "openai"
    assert second.end == failed_over[-1].start  # (the first byte)
    assert (failed_over[-1].attributes or {}) == {"aigateway.end": "client left"}
    assert failed_over[0].status != ERROR  # (the client left: not our error)
    assert (away[0].status, away[0].message) == (ERROR, "cannot reach Ollama")
    assert away[2].end == away[0].end  # (no first byte: the upstream's span ended with it)
    assert queued[2].end == queued[0].end


def test_a_request_the_sampler_left_out_hands_nothing_over() -> None:
    recorder = Recorder()
    tracing = Tracing(Sampler(0.0, False), Batcher([recorder], delay=60))
    headers: list[tuple[str, str]] = [("traceparent", "theirs"), ("Accept", "*/*")]
    trace = _trace(tracing, {"traceparent": TRACEPARENT})
    trace.admitted()
    trace.upstream("ollama", "ollama", headers, None)
    trace.end(False)
    tracing.close()
    assert recorder.batches == []
    [value] = [value for name, value in headers if name == "traceparent"]
    assert value.startswith("00-0af7651916cd43dd8448eb211c80319c-") and value.endswith("-00")


async def test_woken_by_a_full_batch_the_thread_posts_only_full_batches() -> None:
    """Under load, a post carries a whole batch; what is left waits for the next batch
    (or the delay, or a flush), rather than going in a post of its own."""
    recorder = Recorder()
    batcher = Batcher([recorder], max_queue=10, batch=4, delay=60)
    for n in range(6):
        batcher.add([Span(str(n), 1, n + 1, 0, SERVER, 1, "")])
    await eventually(lambda: sum(len(batch) for batch in recorder.batches) >= 4)
    with batcher._exporting:  # (the thread's drain is over)
        assert [len(batch) for batch in recorder.batches] == [4]
    batcher.flush()
    assert [len(batch) for batch in recorder.batches] == [4, 2]
    batcher.close()

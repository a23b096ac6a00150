"""Traces (OpenTelemetry): one span a relayed request, with a child for each of its steps
(admission, a wait in an upstream's queue, the upstream until its first byte, the
stream), for operations teams that follow a slow request through their stack.

Off unless the environment asks for them with OpenTelemetry's own variables
(OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, or OTEL_TRACES_EXPORTER),
so that a gateway without traces pays one attribute check a request. No OpenTelemetry
package is used: the SDK's span machinery cost a traced request nearly its own CPU again,
so spans are plain objects (spans.py), traceparent and the samplers are read by hand
(traceparent.py), and the batch is encoded and posted by otlp.py, all as the OTEL_*
variables say (docs/traces.md names those honoured).

A span is a take: each request's spans are started and ended by its one RequestTrace,
and `end` (from the handler's `finally`) ends whatever is still open and hands the
spans to the batch thread, so no path can leave a span open. A client's W3C
`traceparent` is continued; the upstream span's goes to the upstream instead of the
client's, where the upstream may get client headers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from random import getrandbits

from ..setting_parsers import SettingsError
from .otlp import encode_head, exporter_from
from .spans import (
    CLIENT,
    INTERNAL,
    SERVER,
    AttributeValue,
    Batcher,
    ConsoleExporter,
    Span,
    SpanExporter,
    batcher_from,
)
from .traceparent import (
    Parent,
    Sampler,
    clean_tracestate,
    format_traceparent,
    parse_traceparent,
    sampler_from,
)

# The W3C Trace Context headers: a client's are continued, and replaced by ours upstream.
PROPAGATED = ("traceparent", "tracestate")
EXPORTERS = ("otlp", "console", "none")


def wanted(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The exporters the environment asks for (none: traces are off): OTEL_TRACES_EXPORTER's
    (otlp, console; none), else otlp when an OTLP endpoint is set; OTEL_SDK_DISABLED=true
    turns them off, as it does for every OpenTelemetry SDK."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ()
    named = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if named:
        exporters = tuple(dict.fromkeys(n.strip() for n in named.split(",") if n.strip()))
        unknown = [n for n in exporters if n not in EXPORTERS]
        if unknown:
            raise SettingsError(
                f"OTEL_TRACES_EXPORTER: expected otlp, console or none, got {unknown[0]!r}"
            )
        return tuple(n for n in exporters if n != "none")
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        if environ.get(variable, "").strip():
            return ("otlp",)
    return ()


def open_tracing(
    environ: Mapping[str, str] | None = None, exporter: SpanExporter | None = None
) -> Tracing | None:
    """The gateway's tracing as the environment (default os.environ) asks for it, or None
    when it is off. `exporter` (the tests' in-memory one) turns traces on whatever the
    environment says, with the sampler and batching it names: the same as a real
    exporter would get. A variable it cannot use stops start-up (SettingsError)."""
    environ = os.environ if environ is None else environ
    names = wanted(environ)
    if exporter is None and not names:
        return None
    protocol = environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    ).strip()
    if exporter is None and "otlp" in names and protocol not in ("", "http/protobuf"):
        raise SettingsError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL: expected http/protobuf, got {protocol!r}"
        )
    sampler = sampler_from(environ)
    if exporter is not None:
        exporters: list[SpanExporter] = [exporter]
    else:
        head = encode_head(resource_from(environ), "aigateway", _version())
        exporters = [
            exporter_from(environ, head) if name == "otlp" else ConsoleExporter() for name in names
        ]
    return Tracing(sampler, batcher_from(environ, exporters))


def _version() -> str:
    from .. import __version__

    return __version__


def resource_from(environ: Mapping[str, str]) -> dict[str, AttributeValue]:
    """The resource every span comes from: OTEL_RESOURCE_ATTRIBUTES (key=value pairs,
    comma-separated, values percent-encoded), its service.name replaced by
    OTEL_SERVICE_NAME, and named aigateway unless either names it."""
    from urllib.parse import unquote

    resource: dict[str, AttributeValue] = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "aigateway",
        "telemetry.sdk.version": _version(),
        "service.version": _version(),
    }
    for pair in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        if not pair.strip():
            continue
        key, equals, value = pair.partition("=")
        if not equals or not key.strip():
            raise SettingsError(
                f"OTEL_RESOURCE_ATTRIBUTES: expected key=value pairs, got {pair.strip()!r}"
            )
        resource[key.strip()] = unquote(value.strip())
    service = environ.get("OTEL_SERVICE_NAME", "").strip()
    if service:
        resource["service.name"] = service
    resource.setdefault("service.name", "aigateway")
    return resource


class Tracing:
    """The running gateway's tracing: the sampler and the batch thread its requests'
    spans go to; made at start-up and closed (its spans exported) when the gateway
    stops (app.py)."""

    __slots__ = ("batcher", "sampler")

    def __init__(self, sampler: Sampler, batcher: Batcher) -> None:
        self.sampler = sampler
        self.batcher = batcher

    def request(
        self,
        name: str,
        headers: Mapping[str, str],
        attributes: Mapping[str, str | int],
    ) -> RequestTrace:
        """The trace of one request that came in with `headers`: its span a child of the
        client's `traceparent` when it sent a valid one (its tracestate carried on);
        `attributes` start its span's."""
        parent, state = None, ""
        traceparent = headers.get("traceparent")
        if traceparent is not None:
            parent = parse_traceparent(traceparent)
            if parent is not None:
                state = clean_tracestate(headers.get("tracestate", ""))
        return RequestTrace(self, name, parent, state, attributes)

    def flush(self) -> bool:
        """Export every span ended so far (blocking)."""
        self.batcher.flush()
        return True

    def close(self) -> None:
        """Export what is left and stop (blocking: run it in a thread)."""
        self.batcher.close()


class RequestTrace:
    """One request's spans, each started and ended here. The request's span is open from
    the handler's start to its end; its children follow the relay's steps: admission
    (limits, body, reservations), a queue wait (only when it waited), each upstream
    tried (until its first byte) and the stream (from the first byte until the last is
    written or the client left). A request the sampler did not choose records nothing:
    it keeps only the ids that go upstream."""

    __slots__ = (
        "_admission", "_queue", "_root", "_span_id", "_spans", "_state", "_stream",
        "_trace_id", "_tracing", "_upstream", "cut_by", "error", "recording", "status",
    )  # fmt: skip

    def __init__(
        self,
        tracing: Tracing,
        name: str,
        parent: Parent | None,
        state: str,
        attributes: Mapping[str, str | int],
    ) -> None:
        trace_id = parent.trace_id if parent is not None else getrandbits(128) or 1
        self._tracing = tracing
        self._trace_id = trace_id
        self._span_id = getrandbits(64) or 1  # the request's span's (sent upstream unsampled)
        self._state = state
        self.recording = tracing.sampler.sampled(trace_id, parent)
        self._root: Span | None = None
        self._admission: Span | None = None
        self._queue: Span | None = None
        self._upstream: Span | None = None
        self._stream: Span | None = None
        self._spans: list[Span] = []
        if self.recording:
            now = time.time_ns()
            root = self._root = Span(
                name,
                trace_id,
                self._span_id,
                parent.span_id if parent is not None else 0,
                SERVER,
                now,
                state,
                dict(attributes),
            )
            self._admission = Span(
                "admission", trace_id, getrandbits(64) or 1, root.span_id, INTERNAL, now, state
            )
            self._spans += (root, self._admission)
        self.status = 0  # the answer's status, once known
        self.cut_by: str | None = None  # why its upstream's stream was cut short
        self.error = ""  # the gateway's own error it was answered with

    def _child(self, name: str, kind: int, start: int) -> Span:
        span = Span(
            name, self._trace_id, getrandbits(64) or 1, self._span_id, kind, start, self._state
        )
        self._spans.append(span)
        return span

    def admitted(self) -> None:
        """Admission is done: the request is about to be sent on."""
        span = self._admission
        if span is not None:
            span.end = time.time_ns()
            self._admission = None

    def queued(self) -> None:
        """The request waits for room on a busy upstream (MAX_CONCURRENT)."""
        if self.recording:
            self._queue = self._child("queue wait", INTERNAL, time.time_ns())

    def dequeued(self) -> None:
        span = self._queue
        if span is not None:
            span.end = time.time_ns()
            self._queue = None

    def upstream(
        self,
        name: str,
        kind: str,
        headers: list[tuple[str, str]],
        allowed: frozenset[str] | None,
    ) -> None:
        """An upstream is tried: its span starts (ending the one of an upstream tried
        before it, which failed), and `headers`, the request's to it, carry the span's
        traceparent and tracestate instead of the client's, where the upstream may get
        them (`allowed`: the client headers it gets; None: all)."""
        span_id = self._span_id
        if self.recording:
            now = time.time_ns()
            before = self._upstream
            if before is not None:
                before.fail("failed over")
                before.end = now
            span = self._upstream = self._child("upstream", CLIENT, now)
            span.attributes = {"aigateway.upstream": name, "aigateway.upstream.kind": kind}
            span_id = span.span_id
        headers[:] = [pair for pair in headers if pair[0].lower() not in PROPAGATED]
        if allowed is None or "traceparent" in allowed:
            headers.append(
                ("traceparent", format_traceparent(self._trace_id, span_id, self.recording))
            )
            if self._state and (allowed is None or "tracestate" in allowed):
                headers.append(("tracestate", self._state))

    def settled(
        self,
        status: int,
        model: str | None,
        upstream: str,
        prompt: int | None,
        completion: int | None,
        estimated: bool,
        cost: int,
        first_byte_at: float | None,
        cut_by: str | None,
    ) -> None:
        """What the request used and cost, from settle: the request span's attributes;
        the upstream's span ends at the first byte (`first_byte_at`, perf_counter), where
        the stream's span starts."""
        self.status, self.cut_by = status, cut_by
        root = self._root
        if root is None:
            return
        attributes = root.attributes
        assert attributes is not None
        attributes["aigateway.cost"] = cost / 1e9
        if model is not None:
            attributes["gen_ai.request.model"] = model
        if upstream:
            attributes["aigateway.upstream"] = upstream
        if prompt is not None:
            attributes["gen_ai.usage.input_tokens"] = prompt
        if completion is not None:
            attributes["gen_ai.usage.output_tokens"] = completion
        if estimated:
            attributes["aigateway.tokens_estimated"] = True
        span = self._upstream
        if first_byte_at is not None and span is not None:
            self._upstream = None
            at = time.time_ns() - int((time.perf_counter() - first_byte_at) * 1e9)
            span.end = at
            self._stream = self._child("stream", INTERNAL, at)

    def failed(self, status: int, message: str) -> None:
        """The request ended with the gateway's own error (a refusal, an upstream away)."""
        self.status, self.error = status, message

    def end(self, client_gone: bool) -> None:
        """End every span still open: the stream's, now that its last byte is written or
        the client left, and any that a failure left open; the request's last, and hand
        them to the batch thread. How it ended (complete, client left, or why its
        upstream cut it) is the stream's and the request's `aigateway.end`."""
        root = self._root
        if root is None:
            return
        self._root = None  # (ended once, whatever calls again)
        ended = "client left" if client_gone else self.cut_by or "complete"
        now = time.time_ns()
        stream = self._stream
        if stream is not None:
            stream.attributes = {"aigateway.end": ended}
        for span in self._spans:  # (the stream, and a step a failure or cancellation cut short)
            if not span.end:
                span.end = now
        attributes = root.attributes
        assert attributes is not None
        if ended != "complete":
            attributes["aigateway.end"] = ended
        status = self.status
        if status:
            attributes["http.response.status_code"] = status
            if status >= 500 and not client_gone:  # (a 4xx is the client's, not ours)
                root.fail(self.error)
        self._tracing.batcher.add(self._spans)

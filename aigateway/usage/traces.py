"""Traces (OpenTelemetry): one span a relayed request, with a child for each of its steps
(admission, a wait in an upstream's queue, the upstream until its first byte, the
stream), for operations teams that follow a slow request through their stack.

Off unless the environment asks for them with OpenTelemetry's own variables
(OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, or OTEL_TRACES_EXPORTER);
only then is opentelemetry imported (the `otel` extra), so that a gateway without traces
pays one attribute check a request. The SDK reads the rest of its variables itself
(the sampler, the exporter's headers and timeouts, the batch sizes, the resource).

A span is a take: each request's spans are started and ended by its one RequestTrace,
and `end` (from the handler's `finally`) ends whatever is still open, so no path can
leave a span open. A client's W3C `traceparent` is continued; the upstream span's goes
to the upstream instead of the client's, where the upstream may get client headers.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..setting_parsers import SettingsError

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger("aigateway.traces")

# The W3C Trace Context headers: a client's are continued, and replaced by ours upstream.
PROPAGATED = ("traceparent", "tracestate")
EXPORTERS = ("otlp", "console", "none")
INSTALL = "pip install 'aigateway[otel]'"


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
    when it is off or the SDK is not installed (said once, in the log). `exporter` (the
    tests' in-memory one) turns traces on whatever the environment says, with the
    sampler and resource it names: the same provider as a real exporter would get."""
    environ = os.environ if environ is None else environ
    names = wanted(environ)
    if exporter is None and not names:
        return None
    protocol = environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    ).strip()
    if exporter is None and "otlp" in names and protocol not in ("", "http/protobuf"):
        raise SettingsError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL: expected http/protobuf (the otel extra's exporter),"
            f" got {protocol!r}"
        )
    try:
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        log.warning("traces are asked for but opentelemetry-sdk is missing: %s", INSTALL)
        return None
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporters = [exporter] if exporter is not None else [_exporter(name) for name in names]
    if None in exporters:
        return None
    provider = TracerProvider(resource=_resource())  # (the sampler: OTEL_TRACES_SAMPLER)
    for chosen in exporters:
        assert chosen is not None
        provider.add_span_processor(BatchSpanProcessor(chosen))
    return Tracing(provider)


def _exporter(name: str) -> SpanExporter | None:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        log.warning("traces are asked for but the OTLP exporter is missing: %s", INSTALL)
        return None
    return OTLPSpanExporter()  # (its endpoint, headers, timeout: OTEL_EXPORTER_OTLP_*)


def _resource() -> Resource:
    """The SDK's resource (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES), named aigateway
    unless they name it."""
    from opentelemetry.sdk.resources import Resource

    from .. import __version__

    resource = Resource.create({"service.version": __version__})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "aigateway"}))
    return resource


class Tracing:
    """The running gateway's tracer, made at start-up and shut down (its spans flushed)
    when the gateway stops (app.py)."""

    __slots__ = ("propagator", "provider", "tracer")

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        from .. import __version__

        self.provider = provider
        self.tracer = provider.get_tracer("aigateway", __version__)
        self.propagator: TraceContextTextMapPropagator = TraceContextTextMapPropagator()

    def request(
        self,
        name: str,
        headers: Mapping[str, str],
        attributes: Mapping[str, str | int],
    ) -> RequestTrace:
        """The trace of one request that came in with `headers`: its span a child of the
        client's `traceparent` when it sent a valid one."""
        parent = self.propagator.extract(headers) if "traceparent" in headers else None
        return RequestTrace(self, name, parent, attributes)

    def flush(self) -> bool:
        return self.provider.force_flush()

    def close(self) -> None:
        """Export what is left and stop (blocking: run it in a thread)."""
        self.provider.shutdown()


class RequestTrace:
    """One request's spans, each started and ended here. The request's span is open from
    the handler's start to its end; its children follow the relay's steps: admission
    (limits, body, reservations), a queue wait (only when it waited), each upstream
    tried (until its first byte) and the stream (from the first byte until the last is
    written or the client left)."""

    __slots__ = (
        "_context", "_open", "_root", "_tracing", "_upstream",
        "cut_by", "error", "recording", "status",
    )  # fmt: skip

    def __init__(
        self,
        tracing: Tracing,
        name: str,
        parent: Context | None,
        attributes: Mapping[str, str | int],
    ) -> None:
        from opentelemetry.trace import SpanKind, set_span_in_context

        tracer = tracing.tracer
        self._tracing = tracing
        root = self._root = tracer.start_span(name, parent, SpanKind.SERVER, attributes)
        self._context = set_span_in_context(root)
        # Children only for a request the sampler chose: one it did not costs its own
        # span alone, and its trace (not sampled) still goes upstream with the root's id.
        self.recording = root.is_recording()
        # The children still open, by name; the upstream being tried, apart.
        self._open: dict[str, Span] = {}
        if self.recording:
            self._open["admission"] = tracer.start_span("admission", self._context)
        self._upstream: Span | None = None
        self.status = 0  # the answer's status, once known
        self.cut_by: str | None = None  # why its upstream's stream was cut short
        self.error = ""  # the gateway's own error it was answered with

    @property
    def tracer(self) -> Tracer:
        return self._tracing.tracer

    def admitted(self) -> None:
        """Admission is done: the request is about to be sent on."""
        self._end("admission")

    def queued(self) -> None:
        """The request waits for room on a busy upstream (MAX_CONCURRENT)."""
        if self.recording:
            self._open["queue wait"] = self.tracer.start_span("queue wait", self._context)

    def dequeued(self) -> None:
        self._end("queue wait")

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
        from opentelemetry.trace import SpanKind, StatusCode, set_span_in_context

        context = self._context
        if self.recording:
            before = self._upstream
            if before is not None:
                before.set_status(StatusCode.ERROR, "failed over")
                before.end()
            span = self._upstream = self.tracer.start_span(
                "upstream",
                context,
                SpanKind.CLIENT,
                {"aigateway.upstream": name, "aigateway.upstream.kind": kind},
            )
            context = set_span_in_context(span)
        headers[:] = [pair for pair in headers if pair[0].lower() not in PROPAGATED]
        if allowed is None or "traceparent" in allowed:
            carrier: dict[str, str] = {}
            self._tracing.propagator.inject(carrier, context)
            headers.extend(
                (name, value)
                for name, value in carrier.items()
                if allowed is None or name in allowed
            )

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
        if not self.recording:
            return
        attributes: dict[str, str | int | float | bool] = {"aigateway.cost": cost / 1e9}
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
        self._root.set_attributes(attributes)
        span = self._upstream
        if first_byte_at is not None and span is not None:
            self._upstream = None
            at = time.time_ns() - int((time.perf_counter() - first_byte_at) * 1e9)
            span.end(at)
            self._open["stream"] = self.tracer.start_span("stream", self._context, start_time=at)

    def failed(self, status: int, message: str) -> None:
        """The request ended with the gateway's own error (a refusal, an upstream away)."""
        self.status, self.error = status, message

    def end(self, client_gone: bool) -> None:
        """End every span still open: the stream's, now that its last byte is written or
        the client left, and any that a failure left open; the request's last. How it
        ended (complete, client left, or why its upstream cut it) is the stream's and the
        request's `aigateway.end`."""
        from opentelemetry.trace import StatusCode

        ended = "client left" if client_gone else self.cut_by or "complete"
        stream = self._open.pop("stream", None)
        if stream is not None:
            stream.set_attribute("aigateway.end", ended)
            stream.end()
        for span in self._open.values():  # (a step a failure or a cancellation cut short)
            span.end()
        self._open.clear()
        if self._upstream is not None:
            self._upstream.end()
            self._upstream = None
        root = self._root
        if ended != "complete":
            root.set_attribute("aigateway.end", ended)
        status = self.status
        if status:
            root.set_attribute("http.response.status_code", status)
            if status >= 500 and not client_gone:  # (a 4xx is the client's, not ours)
                root.set_status(StatusCode.ERROR, self.error or None)
        root.end()

    def _end(self, name: str) -> None:
        span = self._open.pop(name, None)
        if span is not None:
            span.end()

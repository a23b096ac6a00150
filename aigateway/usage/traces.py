"""Traces (OpenTelemetry): one span a relayed request, with a child for each of its steps
(admission, a wait in an upstream's queue, the upstream until its first byte, the
stream), for operations teams that follow a slow request through their stack.

Off unless the environment asks for them with OpenTelemetry's own variables
(OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, or OTEL_TRACES_EXPORTER),
so that a gateway without traces pays one attribute check a request. No OpenTelemetry
package is used: the SDK's span machinery cost a traced request nearly its own CPU again,
so a request records its steps' times on the event loop (request_trace.py), spans are
plain objects (spans.py) made from that record in the batch thread, or encoded from it
straight away (otlp_wire.py) and posted by otlp.py; traceparent and the samplers are read
by hand (traceparent.py); all as the OTEL_* variables say (docs/traces.md names those
honoured).

A client's W3C `traceparent` is continued; the upstream span's goes to the upstream
instead of the client's, where the upstream may get client headers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from random import getrandbits

from ..setting_parsers import SettingsError
from .otlp import encode_head, exporter_from
from .request_trace import RequestTrace
from .spans import AttributeValue, Batcher, ConsoleExporter, SpanExporter, batcher_from
from .traceparent import Sampler, clean_tracestate, parse_traceparent, sampler_from

__all__ = ["RequestTrace", "Tracing", "open_tracing", "wanted"]

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
        headers: Mapping[str, str],
        method: str,
        route: str,
        request_id: str,
        key_prefix: str,
        user: str,
    ) -> RequestTrace:
        """The trace of one request that came in with `headers`: its span a child of the
        client's `traceparent` when it sent a valid one (its tracestate carried on); the
        rest name the request's span and start its attributes."""
        parent, state = None, ""
        traceparent = headers.get("traceparent")
        if traceparent is not None:
            parent = parse_traceparent(traceparent)
            if parent is not None:
                state = clean_tracestate(headers.get("tracestate", ""))
            propagated = True
        else:
            propagated = "tracestate" in headers
        if parent is None:
            trace_id, parent_id = getrandbits(128) or 1, 0
        else:
            trace_id, parent_id = parent.trace_id, parent.span_id
        return RequestTrace(
            self.batcher,
            trace_id,
            parent_id,
            state,
            self.sampler.sampled(trace_id, parent),
            propagated,
            (method, route, request_id, key_prefix, user),
        )

    def flush(self) -> bool:
        """Export every span ended so far (blocking)."""
        self.batcher.flush()
        return True

    def close(self) -> None:
        """Export what is left and stop (blocking: run it in a thread)."""
        self.batcher.close()

"""Spans to an OpenTelemetry collector over OTLP/HTTP: encoded as protobuf by hand (the
few messages of opentelemetry/proto/trace/v1/trace.proto a span needs) and posted from
the batch thread (spans.py), as OTEL_EXPORTER_OTLP_* say.

Hand-written because the official SDK's encoding cost a traced request as much CPU again
as the request itself (docs/traces.md); tests/test_traces*.py decode what this writes
with the official opentelemetry-proto.
"""

from __future__ import annotations

import gzip
import http.client
import logging
import ssl
import struct
import time
from collections.abc import Mapping, Sequence
from urllib.parse import unquote, urlsplit

from ..setting_parsers import SettingsError
from .spans import ERROR, AttributeValue, Span

log = logging.getLogger("aigateway.traces")

_MASK_64 = (1 << 64) - 1
_TIMES = struct.Struct("<BQBQ")  # Span's start_time_unix_nano (7) and end (8): fixed64
_DOUBLE = struct.Struct("<Bd")  # AnyValue.double_value (4)
_SPAN_ATTRIBUTE = b"\x4a"  # Span.attributes (9)
# Spans' encoded attributes by (key, value): bounded, cleared when full.
_PAIRS: dict[tuple[str, AttributeValue], bytes] = {}
_PAIRS_MAX = 4096
_RETRY_STATUSES = frozenset((429, 502, 503, 504))
_ATTEMPTS = 3


def _varint(number: int) -> bytes:
    if number < 0x80:
        return bytes((number,))
    out = bytearray()
    while number > 0x7F:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def _delimited(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


def _any_value(value: AttributeValue) -> bytes:
    if isinstance(value, str):
        encoded = value.encode()
        return b"\x0a" + _varint(len(encoded)) + encoded
    if isinstance(value, bool):  # (before int: a bool is one)
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value & _MASK_64)  # (int64: a negative takes 10 bytes)
    return _DOUBLE.pack(0x21, value)


def _key_value(key: str, value: AttributeValue) -> bytes:
    """One KeyValue message, without its tag."""
    encoded_key = key.encode()
    any_value = _any_value(value)
    return (
        b"\x0a" + _varint(len(encoded_key)) + encoded_key
        + b"\x12" + _varint(len(any_value)) + any_value
    )  # fmt: skip


def _span_attributes(attributes: Mapping[str, AttributeValue]) -> bytes:
    """Span's repeated KeyValue attributes (field 9). A request's attributes
    mostly repeat (its route, user, model, status), so a pair's encoding is kept, as
    long as it is text or a whole number (a bool or float never looks: True == 1.0 == 1)."""
    cache, tag = _PAIRS, _SPAN_ATTRIBUTE
    parts = []
    for key, value in attributes.items():
        kind = type(value)
        if kind is str or kind is int:
            pair = (key, value)
            encoded = cache.get(pair)
            if encoded is None:
                if len(cache) >= _PAIRS_MAX:
                    cache.clear()  # (unique values, a request id, fill it at last)
                encoded = cache[pair] = _delimited(tag, _key_value(key, value))
            parts.append(encoded)
        else:
            parts.append(_delimited(tag, _key_value(key, value)))
    return b"".join(parts)


def encode_span(span: Span) -> bytes:
    """One Span message (trace.proto), without its tag."""
    parts = [
        b"\x0a\x10",
        span.trace_id.to_bytes(16, "big"),
        b"\x12\x08",
        span.span_id.to_bytes(8, "big"),
    ]
    if span.trace_state:
        parts.append(_delimited(b"\x1a", span.trace_state.encode()))
    if span.parent_id:
        parts += (b"\x22\x08", span.parent_id.to_bytes(8, "big"))
    parts += (
        _delimited(b"\x2a", span.name.encode()),
        bytes((0x30, span.kind)),
        _TIMES.pack(0x39, span.start, 0x41, span.end),
    )
    if span.attributes:
        parts.append(_span_attributes(span.attributes))
    if span.status == ERROR:
        message = _delimited(b"\x12", span.message.encode()) if span.message else b""
        parts.append(_delimited(b"\x7a", message + b"\x18\x02"))  # Status: message, code
    return b"".join(parts)


def encode_request(head: tuple[bytes, bytes], spans: Sequence[Span]) -> bytes:
    """An ExportTraceServiceRequest of one ResourceSpans with one ScopeSpans holding
    `spans`; `head` is encode_head's (the resource and scope, the same every batch)."""
    resource, scope = head
    body = b"".join([_delimited(b"\x12", encode_span(span)) for span in spans])
    return _delimited(b"\x0a", resource + _delimited(b"\x12", scope + body))


def encode_head(
    resource: Mapping[str, AttributeValue], scope: str, version: str
) -> tuple[bytes, bytes]:
    """ResourceSpans' resource (field 1) and ScopeSpans' scope (field 1), encoded."""
    attributes = b"".join(_delimited(b"\x0a", _key_value(k, v)) for k, v in resource.items())
    encoded_resource = _delimited(b"\x0a", attributes)  # (Resource.attributes: field 1)
    scope_body = _delimited(b"\x0a", scope.encode()) + _delimited(b"\x12", version.encode())
    return encoded_resource, _delimited(b"\x0a", scope_body)


class OtlpExporter:
    """Posts each batch to the collector's OTLP/HTTP traces endpoint on one kept-alive
    connection; a batch the collector cannot take now (429, 502, 503, 504, or no
    connection) is tried again twice after a pause, then dropped and said in the log."""

    def __init__(
        self,
        endpoint: str,
        headers: Mapping[str, str],
        timeout: float,
        head: tuple[bytes, bytes],
        *,
        compress: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(endpoint)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (443 if self._https else 80)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._headers = {
            **headers,
            "Content-Type": "application/x-protobuf",
            **({"Content-Encoding": "gzip"} if compress else {}),
        }
        self._timeout = timeout
        self._head = head
        self._compress = compress
        self._tls = tls
        self._connection: http.client.HTTPConnection | None = None
        self.endpoint = endpoint

    def export(self, spans: Sequence[Span]) -> None:
        body = encode_request(self._head, spans)
        if self._compress:
            body = gzip.compress(body)
        for attempt in range(_ATTEMPTS):
            if attempt:
                time.sleep(0.5 * 2**attempt)
            try:
                status, answer = self._post(body)
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                why = f"{type(exc).__name__}: {exc}"
                continue
            if 200 <= status < 300:
                return
            why = f"{status} {answer[:200]!r}"
            if status not in _RETRY_STATUSES:
                break
        log.warning("%d spans not exported to %s: %s", len(spans), self.endpoint, why)

    def _post(self, body: bytes) -> tuple[int, bytes]:
        connection = self._connection
        if connection is None:
            if self._https:
                connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=self._tls
                )
            else:
                connection = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout
                )
            self._connection = connection
        connection.request("POST", self._path, body, self._headers)
        response = connection.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _signal(environ: Mapping[str, str], suffix: str) -> str:
    """OTEL_EXPORTER_OTLP_TRACES_<suffix>, else OTEL_EXPORTER_OTLP_<suffix>."""
    value = environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{suffix}", "").strip()
    return value or environ.get(f"OTEL_EXPORTER_OTLP_{suffix}", "").strip()


def endpoint_from(environ: Mapping[str, str]) -> str:
    """The traces endpoint: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as it is, else
    OTEL_EXPORTER_OTLP_ENDPOINT with /v1/traces added, else the local collector's."""
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    variable = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    if not endpoint:
        base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or "http://localhost:4318"
        endpoint = base.rstrip("/") + "/v1/traces"
        variable = "OTEL_EXPORTER_OTLP_ENDPOINT"
    parts = urlsplit(endpoint)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # (a port that is not a number)
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise SettingsError(f"{variable}: expected an http:// or https:// URL, got {endpoint!r}")
    return endpoint


def headers_from(environ: Mapping[str, str]) -> dict[str, str]:
    """OTEL_EXPORTER_OTLP_(TRACES_)HEADERS: key=value pairs, comma-separated, values
    percent-encoded (an API key for a hosted collector)."""
    headers: dict[str, str] = {}
    raw = _signal(environ, "HEADERS")
    for pair in raw.split(","):
        if not pair.strip():
            continue
        name, equals, value = pair.partition("=")
        name, value = name.strip(), unquote(value.strip())
        if not equals or not name or not name.isascii() or not _token(name):
            raise SettingsError(
                f"OTEL_EXPORTER_OTLP_HEADERS: expected name=value pairs, got {pair!r}"
            )
        if any(c in value for c in "\r\n\0"):
            raise SettingsError(f"OTEL_EXPORTER_OTLP_HEADERS: {name}'s value holds a line break")
        headers[name] = value
    return headers


def _token(name: str) -> bool:
    return all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in name)


def exporter_from(environ: Mapping[str, str], head: tuple[bytes, bytes]) -> OtlpExporter:
    """The OTLP exporter OTEL_EXPORTER_OTLP_* describe: endpoint, headers, timeout
    (milliseconds, default 10 s), compression (gzip or none), certificate (a CA file for
    https) and client certificate and key."""
    timeout_ms = _signal(environ, "TIMEOUT") or "10000"
    try:
        timeout = float(timeout_ms) / 1000
    except ValueError:
        timeout = 0.0
    if not timeout > 0:
        raise SettingsError(
            f"OTEL_EXPORTER_OTLP_TIMEOUT: expected milliseconds above 0, got {timeout_ms!r}"
        )
    compression = _signal(environ, "COMPRESSION").lower() or "none"
    if compression not in ("gzip", "none"):
        raise SettingsError(
            f"OTEL_EXPORTER_OTLP_COMPRESSION: expected gzip or none, got {compression!r}"
        )
    endpoint = endpoint_from(environ)
    tls = None
    if endpoint.startswith("https:"):
        tls = ssl.create_default_context(cafile=_signal(environ, "CERTIFICATE") or None)
        client = _signal(environ, "CLIENT_CERTIFICATE")
        if client:
            tls.load_cert_chain(client, _signal(environ, "CLIENT_KEY") or None)
    return OtlpExporter(
        endpoint,
        headers_from(environ),
        timeout,
        head,
        compress=compression == "gzip",
        tls=tls,
    )

"""Spans as OTLP protobuf, encoded by hand: the few messages of
opentelemetry/proto/trace/v1/trace.proto a span needs (tests/test_traces*.py decode what
this writes with the official opentelemetry-proto).

Written for the batch thread's bulk work, where each Python operation counts (a traced
request's encoding cost more than the rest of its tracing, measured in docs/traces.md):
what the spans of a trace share (its id and tracestate, their parent) is encoded once for
all of them (trace_fields), a span's name and kind once for the process (name_kind), and
attributes that repeat together (a route and its method, a key and its user) once a
combination (AttributeGroup), in bounded caches; a span is then one join (span_message).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence

from .spans import ERROR, AttributeValue, Span

_MASK_64 = (1 << 64) - 1
# Span's start_time_unix_nano (7) and end (8): fixed64
_times = struct.Struct("<BQBQ").pack
_DOUBLE = struct.Struct("<Bd")  # AnyValue.double_value (4)
_ONE_BYTE = tuple(bytes((n,)) for n in range(128))  # the varints of 0 to 127
_KINDS = tuple(bytes((0x30, kind)) for kind in range(6))  # Span.kind (6), each SpanKind
_ERROR_CODE = b"\x18\x02"  # Status.code (3): ERROR
_CACHE_MAX = 4096  # entries a cache holds before it is cleared (unique values fill it)
_NAMES: dict[tuple[str, int], bytes] = {}  # Span's name (5) and kind (6), by both
_KEYS: dict[str, bytes] = {}  # KeyValue.key (1) and value's (2) tag, by key


def _varint(number: int) -> bytes:
    if number < 0x80:
        return _ONE_BYTE[number]
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


def _key_start(key: str) -> bytes:
    """A KeyValue's key (1) and its value's (2) tag: what precedes the value's length."""
    encoded = key.encode()
    return b"\x0a" + _varint(len(encoded)) + encoded + b"\x12"


def _attribute(start: bytes, value: AttributeValue) -> bytes:
    """One of Span's attributes (field 9), tag included, after its key's `start`. Text
    and small whole numbers, the usual values, take a short way."""
    one_byte = _ONE_BYTE
    kind = type(value)
    if kind is str:
        encoded = value.encode()  # type: ignore[union-attr]
        size = len(encoded)
        any_value = b"\x0a" + (one_byte[size] if size < 0x80 else _varint(size)) + encoded
    elif kind is int and 0 <= value < 0x4000:  # type: ignore[operator]
        any_value = (
            b"\x18" + one_byte[value]  # type: ignore[index]
            if value < 0x80  # type: ignore[operator]
            else bytes((0x18, value & 0x7F | 0x80, value >> 7))  # type: ignore[operator]
        )
    else:
        any_value = _any_value(value)
    size = len(any_value)
    key_value = start + (one_byte[size] if size < 0x80 else _varint(size)) + any_value
    size = len(key_value)
    return b"\x4a" + (one_byte[size] if size < 0x80 else _varint(size)) + key_value


def attribute(key: str, value: AttributeValue) -> bytes:
    """One of Span's attributes (field 9), tag included."""
    start = _KEYS.get(key)
    if start is None:
        if len(_KEYS) >= _CACHE_MAX:
            _KEYS.clear()
        start = _KEYS[key] = _key_start(key)
    return _attribute(start, value)


class AttributeGroup:
    """Attributes that come together, in their order: a route and its method, a key and
    its user. Cached (the default), each combination of values is encoded once (bounded:
    cleared when full); else each time (a request id: every value new). A value None
    leaves its attribute out; a position holds values of one type (as keys, True == 1 ==
    1.0)."""

    __slots__ = ("_cache", "_starts", "cached", "keys")

    def __init__(self, *keys: str, cached: bool = True) -> None:
        self.keys = keys
        self.cached = cached
        self._starts = tuple(_key_start(key) for key in keys)
        self._cache: dict[tuple[AttributeValue | None, ...], bytes] = {}

    def encode(self, values: tuple[AttributeValue | None, ...]) -> bytes:
        """The attributes (Span's field 9, each tagged) of these values."""
        if not self.cached:
            return self._encode(values)
        cache = self._cache
        encoded = cache.get(values)
        if encoded is None:
            if len(cache) >= _CACHE_MAX:
                cache.clear()
            encoded = cache[values] = self._encode(values)
        return encoded

    def encode_one(self, value: AttributeValue | None) -> bytes:
        """The one attribute of a group of one, not cached (a request id, a count)."""
        return b"" if value is None else _attribute(self._starts[0], value)

    def _encode(self, values: tuple[AttributeValue | None, ...]) -> bytes:
        pairs = zip(self._starts, values, strict=True)
        return b"".join([_attribute(start, v) for start, v in pairs if v is not None])

    def pairs(
        self, values: tuple[AttributeValue | None, ...]
    ) -> Iterator[tuple[str, AttributeValue]]:
        """The attributes as key and value, for a span object."""
        return ((k, v) for k, v in zip(self.keys, values, strict=True) if v is not None)


def trace_fields(
    trace_id: int, trace_state: str, parent_id: int, root_id: int
) -> tuple[bytes, bytes, bytes]:
    """What the spans of one request's trace share, encoded once: the trace id (Span's
    field 1) with the span id's tag and length (2), then what follows a span id: the
    tracestate (3) and the parent (4), for the request's span (`parent_id`, the
    client's span, 0: none) and for its children (`root_id`, the request's span)."""
    ids = b"\x0a\x10" + trace_id.to_bytes(16, "big") + b"\x12\x08"
    state = _delimited(b"\x1a", trace_state.encode()) if trace_state else b""
    root = state + b'"\x08' + parent_id.to_bytes(8, "big") if parent_id else state
    return ids, root, state + b'"\x08' + root_id.to_bytes(8, "big")


def name_kind(name: str, kind: int) -> bytes:
    """Span's name (5) and kind (6), encoded once a process (a handful: routes, steps)."""
    encoded = _NAMES.get((name, kind))
    if encoded is None:
        if len(_NAMES) >= _CACHE_MAX:
            _NAMES.clear()
        encoded = _NAMES[(name, kind)] = _delimited(b"\x2a", name.encode()) + _KINDS[kind]
    return encoded


def error_status(message: str) -> bytes:
    """Span's status (15): an error, with its message."""
    encoded = _delimited(b"\x12", message.encode()) if message else b""
    return _delimited(b"\x7a", encoded + _ERROR_CODE)  # Status: message (2), code (3)


def span_message(
    ids: bytes,
    span_id: int,
    after_id: bytes,
    name_and_kind: bytes,
    start: int,
    end: int,
    attributes: bytes,
    status: bytes,
) -> bytes:
    """One Span message, tagged as ScopeSpans.spans (2): from trace_fields' `ids` and
    `after_id`, name_kind's, the times (ns) and the encoded attributes and status."""
    span = b"".join(
        (
            ids, span_id.to_bytes(8, "big"), after_id, name_and_kind,
            _times(0x39, start, 0x41, end), attributes, status,
        )
    )  # fmt: skip
    size = len(span)
    return (b"\x12" + _ONE_BYTE[size] if size < 0x80 else b"\x12" + _varint(size)) + span


def encode_spans(out: list[bytes], spans: Sequence[Span]) -> None:
    """Appends to `out` the Span messages of `spans` (of any traces)."""
    for span in spans:
        ids, after_id, _ = trace_fields(span.trace_id, span.trace_state, span.parent_id, 0)
        attributes = span.attributes
        encoded_attributes = (
            b"".join([attribute(k, v) for k, v in attributes.items()]) if attributes else b""
        )
        status = error_status(span.message) if span.status == ERROR else b""
        name = name_kind(span.name, span.kind)
        start, end = span.start, span.end
        out.append(
            span_message(ids, span.span_id, after_id, name, start, end, encoded_attributes, status)
        )


def encode_export(head: tuple[bytes, bytes], encoded_spans: list[bytes]) -> bytes:
    """An ExportTraceServiceRequest of one ResourceSpans with one ScopeSpans holding
    the encoded spans; `head` is encode_head's (the resource and scope, the same every
    batch)."""
    resource, scope = head
    body = b"".join(encoded_spans)
    return _delimited(b"\x0a", resource + _delimited(b"\x12", scope + body))


def encode_request(head: tuple[bytes, bytes], spans: Sequence[Span]) -> bytes:
    """An ExportTraceServiceRequest holding `spans`."""
    out: list[bytes] = []
    encode_spans(out, spans)
    return encode_export(head, out)


def encode_head(
    resource: Mapping[str, AttributeValue], scope: str, version: str
) -> tuple[bytes, bytes]:
    """ResourceSpans' resource (field 1) and ScopeSpans' scope (field 1), encoded."""
    attributes = b"".join(_delimited(b"\x0a", _key_value(k, v)) for k, v in resource.items())
    encoded_resource = _delimited(b"\x0a", attributes)  # (Resource.attributes: field 1)
    scope_body = _delimited(b"\x0a", scope.encode()) + _delimited(b"\x12", version.encode())
    return encoded_resource, _delimited(b"\x0a", scope_body)

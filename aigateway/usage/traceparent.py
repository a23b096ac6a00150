"""W3C Trace Context (`traceparent`, `tracestate`) read and written by hand, and the
OpenTelemetry samplers that OTEL_TRACES_SAMPLER names, as the official SDKs decide them
(tests/test_traces.py compares the decisions with the Python SDK's on the same ids).

Both run once a traced request: a few string operations, no regular expression for a
header that is well formed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

from ..setting_parsers import SettingsError

_HEX = frozenset("0123456789abcdef")
# A tracestate member: key=value (W3C Trace Context, section 3.3.1), at most 32 of them.
_MEMBER = re.compile(
    r"^(?:[a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]$"
)
_TRACESTATE_MAX = 512  # (the spec lets a vendor cut it beyond this; we drop it)


class Parent(NamedTuple):
    """A client's span, from its valid traceparent."""

    trace_id: int
    span_id: int
    sampled: bool


def parse_traceparent(value: str) -> Parent | None:
    """The client's span, or None when `value` is not a valid traceparent (then the
    request starts a trace of its own): version-traceid-spanid-flags in lower-case hex,
    neither id all zeros, version ff invalid, and nothing after the flags in version 00."""
    value = value.strip()
    if len(value) < 55 or len(value) > 512:
        return None
    version, trace, span, flags = value[:2], value[3:35], value[36:52], value[53:55]
    if value[2] != "-" or value[35] != "-" or value[52] != "-" or version == "ff":
        return None
    if len(value) > 55 and (version == "00" or value[55] != "-"):
        return None
    if not _HEX.issuperset(version + trace + span + flags):
        return None
    trace_id, span_id = int(trace, 16), int(span, 16)
    if not trace_id or not span_id:
        return None
    return Parent(trace_id, span_id, bool(int(flags, 16) & 1))


def format_traceparent(trace_id: int, span_id: int, sampled: bool) -> str:
    # (bytes.hex: a third cheaper than formatting the ints as hex)
    trace, span = trace_id.to_bytes(16, "big").hex(), span_id.to_bytes(8, "big").hex()
    return f"00-{trace}-{span}-{'01' if sampled else '00'}"


def clean_tracestate(value: str) -> str:
    """The client's tracestate to carry on, or "" when it is not valid (as the SDK
    drops it): list members key=value, comma-separated, no key twice, at most 32."""
    if not value or len(value) > _TRACESTATE_MAX:
        return ""
    members = [member.strip() for member in value.split(",")]
    members = [member for member in members if member]
    if len(members) > 32 or not all(_MEMBER.match(member) for member in members):
        return ""
    keys = [member.partition("=")[0] for member in members]
    if len(set(keys)) != len(keys):
        return ""
    return ",".join(members)


# The SDK's TraceIdRatioBased: the trace id's low 8 bytes under rate * 2**64.
_LOW_64 = (1 << 64) - 1
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)


class Sampler:
    """Which traces are recorded: a root sampler (all, none, or a ratio of trace ids)
    that a parent-based one applies only when the client sent no traceparent, following
    the client's sampled flag when it did."""

    __slots__ = ("bound", "parent_based")

    def __init__(self, ratio: float, parent_based: bool) -> None:
        self.bound = round(ratio * (_LOW_64 + 1))
        self.parent_based = parent_based

    def sampled(self, trace_id: int, parent: Parent | None) -> bool:
        if parent is not None and self.parent_based:
            return parent.sampled
        return trace_id & _LOW_64 < self.bound


def sampler_from(environ: Mapping[str, str]) -> Sampler:
    """OTEL_TRACES_SAMPLER (default parentbased_always_on) and, for the ratio samplers,
    OTEL_TRACES_SAMPLER_ARG (default 1.0). A name or ratio it cannot use stops start-up
    (the SDK would warn and trace everything)."""
    name = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_always_on"
    if name not in SAMPLERS:
        raise SettingsError(
            f"OTEL_TRACES_SAMPLER: expected one of {', '.join(SAMPLERS)}, got {name!r}"
        )
    parent_based = name.startswith("parentbased_")
    root = name.removeprefix("parentbased_")
    if root != "traceidratio":
        return Sampler(1.0 if root == "always_on" else 0.0, parent_based)
    argument = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip() or "1.0"
    try:
        ratio = float(argument)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise SettingsError(
            f"OTEL_TRACES_SAMPLER_ARG: expected a ratio from 0 to 1, got {argument!r}"
        )
    return Sampler(ratio, parent_based)

"""Spans as the gateway records them (plain slotted objects, no SDK), and what takes them
off the request path: a bounded queue that a background thread drains in batches into
the exporters (OTLP/HTTP in otlp.py, the console, the tests' memory).

A request hands over what it recorded (a few times and values, not spans: see
traces.RequestTrace) in one call that never blocks; the thread makes the spans from it
while exporting, so that the event loop pays for no span object. When the queue is full
they are dropped and counted (said in the log by the thread), as OpenTelemetry's batch
span processor does.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Protocol, TextIO, runtime_checkable

from ..setting_parsers import SettingsError

log = logging.getLogger("aigateway.traces")

AttributeValue = str | int | float | bool
# OTLP's span kinds and status codes (trace.proto), as the encoder writes them.
INTERNAL, SERVER, CLIENT = 1, 2, 3
UNSET, ERROR = 0, 2
_KINDS = {INTERNAL: "INTERNAL", SERVER: "SERVER", CLIENT: "CLIENT"}


class Span:
    """One step of a request: its ids (ints; parent_id 0 for a trace's first span), its
    times (time.time_ns(); end 0 while open) and attributes."""

    __slots__ = (
        "attributes", "end", "kind", "message", "name", "parent_id", "span_id", "start",
        "status", "trace_id", "trace_state",
    )  # fmt: skip

    def __init__(
        self,
        name: str,
        trace_id: int,
        span_id: int,
        parent_id: int,
        kind: int,
        start: int,
        trace_state: str,
        attributes: dict[str, AttributeValue] | None = None,
    ) -> None:
        self.name = name
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.kind = kind
        self.start = start
        self.end = 0
        self.trace_state = trace_state
        self.attributes = attributes
        self.status = UNSET
        self.message = ""

    def fail(self, message: str) -> None:
        self.status, self.message = ERROR, message

    def __repr__(self) -> str:
        return f"Span({self.name!r}, {self.trace_id:032x}/{self.span_id:016x}, {self.attributes})"


class Recorded(Protocol):
    """What a request recorded, made into its spans only when exported (batch thread)."""

    def spans(self) -> list[Span]: ...

    def encode_otlp(self, out: list[bytes]) -> bool:
        """Append its spans to `out` as OTLP encodes them (otlp_wire.py), made straight
        from what it recorded; False: it cannot, encode its spans()."""
        ...


class _Made:
    """Spans made already (Batcher.add's)."""

    __slots__ = ("made",)

    def __init__(self, made: list[Span]) -> None:
        self.made = made

    def spans(self) -> list[Span]:
        return self.made

    def encode_otlp(self, out: list[bytes]) -> bool:
        return False


class SpanExporter(Protocol):
    """Where batches of finished spans go, from the exporting thread."""

    def export(self, spans: Sequence[Span]) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class RecordedExporter(SpanExporter, Protocol):
    """An exporter that takes what requests recorded rather than their spans (OTLP's:
    it encodes them without making a span object)."""

    def export_recorded(self, batch: Sequence[Recorded]) -> None: ...


class MemoryExporter:
    """Keeps every span it is given (the tests' exporter)."""

    def __init__(self) -> None:
        self.spans: list[Span] = []

    def export(self, spans: Sequence[Span]) -> None:
        self.spans.extend(spans)

    def close(self) -> None:
        pass


class ConsoleExporter:
    """One JSON line a span on standard output (OTEL_TRACES_EXPORTER=console): to see
    spans without a collector."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out

    def export(self, spans: Sequence[Span]) -> None:
        out = self._out or sys.stdout
        for span in spans:
            line = {
                "name": span.name,
                "trace_id": f"{span.trace_id:032x}",
                "span_id": f"{span.span_id:016x}",
                "parent_id": f"{span.parent_id:016x}" if span.parent_id else None,
                "kind": _KINDS[span.kind],
                "start_time_unix_nano": span.start,
                "end_time_unix_nano": span.end,
                "attributes": span.attributes or {},
                "status": {"code": "ERROR", "message": span.message}
                if span.status == ERROR
                else {"code": "UNSET"},
            }
            out.write(json.dumps(line) + "\n")
        out.flush()

    def close(self) -> None:
        pass


class Batcher:
    """The bounded queue between requests and the exporters, and the thread that drains
    it: every `delay` seconds, or as soon as a batch is full (OTEL_BSP_*)."""

    def __init__(
        self,
        exporters: Sequence[SpanExporter],
        *,
        max_queue: int = 2048,
        batch: int = 512,
        delay: float = 5.0,
    ) -> None:
        self._exporters = tuple(exporters)
        # What requests recorded, each with how many spans it makes. The spans queued are
        # those added less those taken: each count written by one thread (add: the event
        # loop's; take: the drain's, under _exporting), so that neither loses the other's.
        self._queue: deque[tuple[Recorded, int]] = deque()
        self._added = 0
        self._taken = 0
        self._max_queue = max_queue
        self._batch = min(batch, max_queue)
        self._delay = delay
        self.dropped = 0  # spans a full queue turned away
        self._told = 0  # of them, how many the log has said
        self._wake = threading.Event()
        self._exporting = threading.Lock()  # one drain at a time: the thread's or a flush
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="aigateway-traces", daemon=True)
        self._thread.start()

    def add(self, spans: list[Span]) -> None:
        """Finished spans (never blocks)."""
        self.add_recorded(_Made(spans), len(spans))

    def add_recorded(self, recorded: Recorded, count: int) -> None:
        """What a request recorded, making `count` spans (the event loop's thread: never
        blocks)."""
        queued = self._added - self._taken + count
        if queued > self._max_queue:
            self.dropped += count
            return
        self._queue.append((recorded, count))
        self._added += count
        if queued >= self._batch:
            self._wake.set()

    def flush(self) -> None:
        """Export every span queued so far, and wait for an export under way."""
        with self._exporting:
            self._drain()

    def close(self) -> None:
        """Export what is left and stop the thread (blocking: run it in a thread)."""
        self._closing = True
        self._wake.set()
        self._thread.join()
        for exporter in self._exporters:
            exporter.close()

    def _export(self, batch: list[Recorded]) -> None:
        """One batch to every exporter: what was recorded to those that take it, spans
        (made once) to the others. An exporter's failure loses its batch, not the thread."""
        spans: list[Span] | None = None
        for exporter in self._exporters:
            try:
                if isinstance(exporter, RecordedExporter):
                    exporter.export_recorded(batch)
                    continue
                if spans is None:
                    spans = [span for recorded in batch for span in recorded.spans()]
                exporter.export(spans)
            except Exception:
                log.exception("exporting %d requests' spans failed", len(batch))

    def _run(self) -> None:
        while not self._closing:
            woken = self._wake.wait(self._delay)
            self._wake.clear()
            with self._exporting:
                # Woken by a full batch, only full batches go: the rest waits for the next
                # (a post a few spans would cost more than the spans); at the delay's end,
                # everything.
                self._drain(whole=woken and not self._closing)
        with self._exporting:
            self._drain()

    def _drain(self, whole: bool = False) -> None:
        """Export what is queued, in batches (`whole`: only full ones)."""
        queue, size = self._queue, self._batch
        while queue and (not whole or self._added - self._taken >= size):
            batch: list[Recorded] = []
            taken = 0
            while queue and (not taken or taken + queue[0][1] <= size):
                recorded, count = queue.popleft()
                batch.append(recorded)
                taken += count
            self._taken += taken
            self._export(batch)
        dropped = self.dropped
        if dropped > self._told:
            log.warning("%d spans dropped: the export queue was full", dropped - self._told)
            self._told = dropped


def batcher_from(environ: Mapping[str, str], exporters: Sequence[SpanExporter]) -> Batcher:
    """A Batcher as the batch span processor's variables ask: OTEL_BSP_SCHEDULE_DELAY
    (milliseconds), OTEL_BSP_MAX_QUEUE_SIZE, OTEL_BSP_MAX_EXPORT_BATCH_SIZE."""

    def number(variable: str, default: int) -> int:
        value = environ.get(variable, "").strip()
        if not value:
            return default
        if not value.isdigit() or int(value) < 1:
            raise SettingsError(f"{variable}: expected a positive whole number, got {value!r}")
        return int(value)

    return Batcher(
        exporters,
        max_queue=number("OTEL_BSP_MAX_QUEUE_SIZE", 2048),
        batch=number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512),
        delay=number("OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000,
    )

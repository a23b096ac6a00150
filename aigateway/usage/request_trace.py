"""One request's trace (traces.py starts it): on the event loop it records only times
(time.time_ns()) and the few values its spans will carry; once it ends, the batch thread
makes its spans from them (`spans`, for the console and the tests), or encodes them for
OTLP straight away (`encode_otlp`), in bulk with the other requests of the batch.

So a traced request costs the event loop no span object, no attribute dict, a random id
a span whose id must be known there (the trace's, the request's, each upstream's, which
go upstream), and one small tuple a step.
"""

from __future__ import annotations

import time
from random import getrandbits

from .otlp_wire import AttributeGroup, error_status, name_kind, span_message, trace_fields
from .spans import CLIENT, INTERNAL, SERVER, AttributeValue, Batcher, Span
from .traceparent import format_traceparent

# The W3C Trace Context headers: a client's are continued, and replaced by ours upstream.
PROPAGATED = ("traceparent", "tracestate")

# The request span's attributes, in their order, in groups that repeat together (cached
# once encoded) and values of their own (encoded each time).
_ROUTE = AttributeGroup("http.request.method", "http.route")
_REQUEST_ID = AttributeGroup("aigateway.request_id", cached=False)
_CALLER = AttributeGroup("aigateway.key.prefix", "aigateway.user")  # (never the key)
_OUTCOME = AttributeGroup("aigateway.cost", "gen_ai.request.model", "aigateway.upstream")
_INPUT_TOKENS = AttributeGroup("gen_ai.usage.input_tokens", cached=False)
_OUTPUT_TOKENS = AttributeGroup("gen_ai.usage.output_tokens", cached=False)
_ENDING = AttributeGroup("aigateway.tokens_estimated", "aigateway.end", "http.response.status_code")
_UPSTREAM_NAME = AttributeGroup("aigateway.upstream", "aigateway.upstream.kind")
_STREAM_END = AttributeGroup("aigateway.end")
# The steps' spans' names and kinds, encoded.
_ADMISSION = name_kind("admission", INTERNAL)
_QUEUE_WAIT = name_kind("queue wait", INTERNAL)
_UPSTREAM = name_kind("upstream", CLIENT)
_STREAM = name_kind("stream", INTERNAL)
_FAILED_OVER = error_status("failed over")

# A step as recorded: (what, its start, its end (a queue wait's, once it ends), its span's
# id, the upstream's name and kind). An upstream's span ends where the next one starts
# (it failed), at the first byte, or with the request.
_QUEUED, _UPSTREAM_TRIED = 0, 1
Step = tuple[int, int, int, int, str, str]
Attributes = list[tuple[AttributeGroup, tuple[AttributeValue | None, ...]]]
_MASK_64 = (1 << 64) - 1
_now = time.time_ns


def _new_id() -> int:
    return getrandbits(64) or 1


class RequestTrace:
    """One request's spans: the request's span is open from the handler's start to its
    end; its children follow the relay's steps: admission (limits, body, reservations), a
    queue wait (only when it waited), each upstream tried (until its first byte) and the
    stream (from the first byte until the last is written or the client left). A request
    the sampler did not choose records nothing: it keeps only the ids that go upstream.

    A span is a take: `end` (from the handler's `finally`) ends whatever is still open and
    hands the request to the batch thread, so no path can leave a span open."""

    __slots__ = (
        "_admitted", "_batcher", "_child_bits", "_client_gone", "_count", "_end",
        "_first_byte", "_parent_id", "_propagated", "_span_id", "_start", "_state", "_steps",
        "_trace_id", "_upstream_id", "_usage", "_who", "cut_by", "error", "recording",
        "status",
    )  # fmt: skip

    def __init__(
        self,
        batcher: Batcher,
        trace_id: int,
        parent_id: int,
        state: str,
        recording: bool,
        propagated: bool,
        who: tuple[str, str, str, str, str],
    ) -> None:
        self._batcher = batcher
        self._trace_id = trace_id
        self._span_id = _new_id()  # the request's span's (sent upstream unsampled)
        self._parent_id = parent_id  # the client's span (0: none)
        self._state = state
        self._propagated = propagated  # the client sent traceparent or tracestate
        self._who = who  # method, route, request id, key prefix, user
        self.recording = recording
        self._start = _now() if recording else 0
        self._admitted = 0
        self._steps: list[Step] = []
        self._count = 2  # the spans it makes: the request's and admission's so far
        self._upstream_id = 0  # the span of the upstream tried last, until its first byte
        self._first_byte = 0
        self._usage: tuple[int, str | None, str, int | None, int | None, bool] | None = None
        self._end = 0
        self._client_gone = False
        self._child_bits = 0  # admission's and the stream's span ids (made by the thread)
        self.status = 0  # the answer's status, once known
        self.cut_by: str | None = None  # why its upstream's stream was cut short
        self.error = ""  # the gateway's own error it was answered with

    def admitted(self) -> None:
        """Admission is done: the request is about to be sent on."""
        if self.recording and not self._admitted:
            self._admitted = _now()

    def queued(self) -> None:
        """The request waits for room on a busy upstream (MAX_CONCURRENT)."""
        if self.recording:
            self._steps.append((_QUEUED, _now(), 0, _new_id(), "", ""))
            self._count += 1

    def dequeued(self) -> None:
        steps = self._steps
        if steps and steps[-1][0] == _QUEUED:  # (the wait that just ended)
            _, start, _, span_id, _, _ = steps[-1]
            steps[-1] = (_QUEUED, start, _now(), span_id, "", "")

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
            span_id = self._upstream_id = _new_id()
            self._steps.append((_UPSTREAM_TRIED, _now(), 0, span_id, name, kind))
            self._count += 1
        if self._propagated:  # (else the headers hold neither: nothing to take out)
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
        if not self.recording or self._end:
            return
        self._usage = (cost, model, upstream, prompt, completion, estimated)
        if first_byte_at is not None and self._upstream_id:
            self._upstream_id = 0
            self._first_byte = _now() - int((time.perf_counter() - first_byte_at) * 1e9)
            self._count += 1

    def failed(self, status: int, message: str) -> None:
        """The request ended with the gateway's own error (a refusal, an upstream away)."""
        self.status, self.error = status, message

    def end(self, client_gone: bool) -> None:
        """The request's last byte is written, or the client left, or it failed: every
        span still open ends now, and the request goes to the batch thread (once,
        whatever calls again)."""
        if not self.recording or self._end:
            return
        self._end = _now()
        self._client_gone = client_gone
        self._batcher.add_recorded(self, self._count)

    # What follows runs in the batch thread, once the request ended.

    def spans(self) -> list[Span]:
        """The request's spans, made from what it recorded (for the console and tests)."""
        trace_id, root_id, state, start, end = (
            self._trace_id, self._span_id, self._state, self._start, self._end
        )  # fmt: skip
        admission_id, stream_id = self._child_ids()
        method, route = self._who[:2]
        ended, error = self._ending()
        groups = self._root_attributes(ended)
        root = Span(
            f"{method} {route}", trace_id, root_id, self._parent_id, SERVER, start, state,
            {k: v for group, values in groups for k, v in group.pairs(values)},
        )  # fmt: skip
        root.end = end
        if error is not None:
            root.fail(error)
        admission = Span("admission", trace_id, admission_id, root_id, INTERNAL, start, state)
        admission.end = self._admitted or end
        made = [root, admission]
        for span_id, at, until, upstream, kind, failed in self._step_spans():
            if upstream:
                span = Span("upstream", trace_id, span_id, root_id, CLIENT, at, state)
                span.attributes = dict(_UPSTREAM_NAME.pairs((upstream, kind)))
                if failed:
                    span.fail("failed over")
            else:
                span = Span("queue wait", trace_id, span_id, root_id, INTERNAL, at, state)
            span.end = until
            made.append(span)
        first_byte = self._first_byte
        if first_byte:
            span = Span("stream", trace_id, stream_id, root_id, INTERNAL, first_byte, state)
            span.attributes = dict(_STREAM_END.pairs((ended,)))
            span.end = end
            made.append(span)
        return made

    def encode_otlp(self, out: list[bytes]) -> bool:
        """Appends the request's spans to `out` as OTLP encodes them, made straight from
        what it recorded, in the order spans() makes them."""
        root_id, start, end = self._span_id, self._start, self._end
        ids, root_after, after = trace_fields(self._trace_id, self._state, self._parent_id, root_id)
        admission_id, stream_id = self._child_ids()
        method, route = self._who[:2]
        ended, error = self._ending()
        attributes = self._encoded_root_attributes(ended)
        status = b"" if error is None else error_status(error)
        append = out.append
        name = name_kind(f"{method} {route}", SERVER)
        append(span_message(ids, root_id, root_after, name, start, end, attributes, status))
        admitted = self._admitted or end
        append(span_message(ids, admission_id, after, _ADMISSION, start, admitted, b"", b""))
        for span_id, at, until, upstream, kind, failed in self._step_spans():
            if upstream:
                attributes = _UPSTREAM_NAME.encode((upstream, kind))
                status = _FAILED_OVER if failed else b""
                append(span_message(ids, span_id, after, _UPSTREAM, at, until, attributes, status))
            else:
                append(span_message(ids, span_id, after, _QUEUE_WAIT, at, until, b"", b""))
        first_byte = self._first_byte
        if first_byte:
            attributes = _STREAM_END.encode((ended,))
            append(span_message(ids, stream_id, after, _STREAM, first_byte, end, attributes, b""))
        return True

    def _child_ids(self) -> tuple[int, int]:
        """Admission's span id and the stream's: made once, by the thread."""
        bits = self._child_bits
        if not bits:
            bits = self._child_bits = getrandbits(128) or 1
        return bits >> 64 or 1, bits & _MASK_64 or 1

    def _ending(self) -> tuple[str, str | None]:
        """How the request ended (complete, client left, or why its upstream cut it: the
        stream's and the request's `aigateway.end`), and the error its span reports (a
        5xx answered while the client was there; None: none)."""
        gone = self._client_gone
        ended = "client left" if gone else self.cut_by or "complete"
        return ended, self.error if self.status >= 500 and not gone else None

    def _root_attributes(self, ended: str) -> Attributes:
        """The request span's attributes, in their groups."""
        method, route, request_id, key_prefix, user = self._who
        attributes: Attributes = [
            (_ROUTE, (method, route)),
            (_REQUEST_ID, (request_id,)),
            (_CALLER, (key_prefix, user)),
        ]
        estimated = None
        usage = self._usage
        if usage is not None:
            cost, model, upstream, prompt, completion, estimated_or_not = usage
            attributes += (
                (_OUTCOME, (cost / 1e9, model, upstream or None)),
                (_INPUT_TOKENS, (prompt,)),
                (_OUTPUT_TOKENS, (completion,)),
            )
            estimated = True if estimated_or_not else None
        ending = None if ended == "complete" else ended
        attributes.append((_ENDING, (estimated, ending, self.status or None)))
        return attributes

    def _encoded_root_attributes(self, ended: str) -> bytes:
        """_root_attributes encoded, without making their list (the batch thread's busiest
        path; tests/test_traces_record.py holds the two equal)."""
        method, route, request_id, key_prefix, user = self._who
        parts = [
            _ROUTE.encode((method, route)),
            _REQUEST_ID.encode_one(request_id),
            _CALLER.encode((key_prefix, user)),
        ]
        estimated = None
        usage = self._usage
        if usage is not None:
            cost, model, upstream, prompt, completion, estimated_or_not = usage
            parts += (
                _OUTCOME.encode((cost / 1e9, model, upstream or None)),
                _INPUT_TOKENS.encode_one(prompt),
                _OUTPUT_TOKENS.encode_one(completion),
            )
            estimated = True if estimated_or_not else None
        ending = None if ended == "complete" else ended
        parts.append(_ENDING.encode((estimated, ending, self.status or None)))
        return b"".join(parts)

    def _step_spans(self) -> list[tuple[int, int, int, str, str, bool]]:
        """The spans of its steps, in the order they started: span id, start, end, the
        upstream and its kind ("": a queue wait), and whether it failed over. An upstream's
        span ends where the next one starts (it failed), at the first byte, or with the
        request."""
        steps, end = self._steps, self._end
        if len(steps) == 1 and steps[0][0] == _UPSTREAM_TRIED:  # (the usual: one try)
            _, at, _, span_id, name, kind = steps[0]
            return [(span_id, at, self._first_byte or end, name, kind, False)]
        spans = []
        for index, (what, at, until, span_id, name, kind) in enumerate(steps):
            if what == _QUEUED:
                spans.append((span_id, at, until or end, "", "", False))
                continue
            failed_over_at = 0
            for later in steps[index + 1 :]:
                if later[0] == _UPSTREAM_TRIED:
                    failed_over_at = later[1]
                    break
            until = failed_over_at or self._first_byte or end
            spans.append((span_id, at, until, name, kind, bool(failed_over_at)))
        return spans

"""The requests this gateway holds, as the dashboard's Now shows them: read off the
in-flight set when an admin asks (nothing is counted for it on the relay's path; the
tokens so far are the lines the usage tap counts in any case), and one found to stop."""

from __future__ import annotations

import time
from typing import Any

from ..protocol.streams import counted_tokens
from .inflight import InFlight, InFlightRequest


def state_of(request: InFlightRequest) -> str:
    """reading (its body), queued (for an upstream's slot), waiting (for the upstream's
    first byte), answering (the answer is on its way), stopping (an admin stopped it)."""
    if request.stopped_by is not None:
        return "stopping"
    exchange = request.exchange
    if exchange is None:
        return "reading"
    if request.queued:
        return "queued"
    return "waiting" if exchange.first_byte_at is None else "answering"


def request_rows(in_flight: InFlight) -> list[dict[str, Any]]:
    """Each request in flight here: its request id (X-Request-Id, the log's rid), who sent
    it, what for, where it went, since when, and its tokens so far
    (a stream's, counted from its lines; None before or without one)."""
    now_perf, now = time.perf_counter(), time.time()
    rows: list[dict[str, Any]] = []
    for request in list(in_flight.requests):
        if not isinstance(request, InFlightRequest):
            continue
        context, exchange = request.context, request.exchange
        principal = context.principal
        tokens = None
        upstream = None
        if exchange is not None:
            upstream = exchange.upstream_name or None
            response = exchange.response
            if response is not None and exchange.tap.lines:
                tokens = counted_tokens(
                    exchange.tap.newlines, response.content_type, request.route.dialect
                )
        elapsed = now_perf - context.started
        rows.append(
            {
                "request_id": context.request_id,
                "user": principal.user if principal is not None else "",
                "key": principal.name if principal is not None else "",
                "key_id": principal.id if principal is not None else None,
                "route": request.route.ollama_path,
                "model": context.model,
                "upstream": upstream,
                "state": state_of(request),
                "started_at": round(now - elapsed, 3),
                "elapsed_s": round(elapsed, 3),
                "tokens": tokens,
                "stopped_by": request.stopped_by,
            }
        )
    rows.sort(key=lambda row: row["started_at"])
    return rows


def find(in_flight: InFlight, request_id: str) -> InFlightRequest | None:
    """The request in flight here with this id, if any (an admin's Stop: a scan is fine)."""
    for request in in_flight.requests:
        if isinstance(request, InFlightRequest) and request.context.request_id == request_id:
            return request
    return None

"""What the gateway learns about one request on its way through, in one object.

The middleware makes it when a request comes in; auth, the relay and the usage record
fill it in; the access line reads it at the end. One object in the request's state
instead of a key each costs one lookup per layer on every request.
"""

from __future__ import annotations

from ..records import KeyRecord

# The attribute of a relay handler that names its route's dialect: whose error shape its
# callers parse (the middleware's errors, the relay's cut streams), decided once.
DIALECT = "aigateway_dialect"


class RequestContext:
    __slots__ = (
        "bytes_out",
        "client_gone",
        "continue_sent",
        "model",
        "model_sent",
        "principal",
        "request_id",
        "started",
        "upstream",
    )

    def __init__(self, request_id: str, started: float) -> None:
        self.request_id = request_id
        self.started = started  # time.perf_counter() when the request came in
        self.principal: KeyRecord | None = None  # the key's record, once authenticated
        # The model the body names, when it names one: its one identity (as Ollama
        # resolves it: protocol/names.py), and the name as sent.
        self.model: str | None = None
        self.model_sent: str | None = None
        self.bytes_out: int | None = None  # response body bytes, counted by the relay
        self.client_gone = False  # the client left before the response was complete
        self.continue_sent = False  # 100 Continue answered (expect.py)
        # the one that answered, with several, or the response cache (access line)
        self.upstream: str | None = None

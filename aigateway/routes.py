"""Which Ollama routes the gateway relays, with their methods, in one table.

Paths are relative to Ollama's `/api`; the gateway serves them under `BASE_PATH`.
Ollama's account and cloud routes (`/api/me`, `/api/signout`, `/api/experimental/*`)
are deliberately absent: they would let any key holder act with the GPU owner's
ollama.com account.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["inference", "read", "manage"]


@dataclass(frozen=True, slots=True)
class RelayRoute:
    methods: tuple[str, ...]
    path: str
    kind: Kind
    # Blob uploads are model files (gigabytes): stream them, never hold them in memory.
    stream_request_body: bool = False
    # Body fields naming the models a request uses (each must pass a key's allow-list);
    # Ollama still accepts the older "name" where "model" is now used.
    model_fields: tuple[str, ...] = ("model", "name")
    # Responses listing models (tags, ps), filtered down for keys with an allow-list.
    lists_models: bool = False


RELAY_ROUTES: tuple[RelayRoute, ...] = (
    RelayRoute(("POST",), "/generate", "inference"),
    RelayRoute(("POST",), "/chat", "inference"),
    RelayRoute(("POST",), "/embed", "inference"),
    RelayRoute(("POST",), "/embeddings", "inference"),
    RelayRoute(("GET", "HEAD"), "/tags", "read", model_fields=(), lists_models=True),
    RelayRoute(("POST",), "/show", "read"),
    RelayRoute(("GET",), "/ps", "read", model_fields=(), lists_models=True),
    RelayRoute(("GET", "HEAD"), "/version", "read", model_fields=()),
    RelayRoute(("GET",), "/status", "read", model_fields=()),
    RelayRoute(("POST",), "/pull", "manage"),
    RelayRoute(("POST",), "/push", "manage"),
    RelayRoute(("POST",), "/create", "manage"),
    RelayRoute(("POST",), "/copy", "manage", model_fields=("source", "destination")),
    RelayRoute(("DELETE",), "/delete", "manage"),
    RelayRoute(("POST",), "/blobs/{digest}", "manage", stream_request_body=True),
    RelayRoute(("HEAD",), "/blobs/{digest}", "manage"),
)

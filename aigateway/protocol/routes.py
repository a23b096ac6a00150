"""Which Ollama routes the gateway relays, with their methods, in one table.

Native paths are relative to Ollama's `/api` and served under `BASE_PATH`; the OpenAI-
and Anthropic-compatible ones are relative to Ollama's `/v1` and served beside it, the
way Ollama's sit beside `/api` (`/ollama/v1` for `BASE_PATH=/ollama/api`).
Ollama's account and cloud routes (`/api/me`, `/api/signout`, `/api/experimental/*`)
are deliberately absent: they would let any key holder act with the GPU owner's
ollama.com account.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["inference", "read", "manage"]
# Whose error shape a client of this route parses.
Dialect = Literal["ollama", "openai", "anthropic"]


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
    # Responses listing models (tags, ps, /v1/models), cut down for keys with an allow-list.
    lists_models: bool = False
    dialect: Dialect = "ollama"
    # /v1/models/{model}: a key with an allow-list sees only the models it may use.
    model_in_path: bool = False
    # Inference that generates tokens (not embeddings): its output is reserved against a
    # token quota, from the request's own cap or TOKEN_RESERVE.
    outputs_tokens: bool = True
    # OpenAI streams that count tokens only when asked (stream_options.include_usage):
    # the relay asks, and removes the answer before the client sees it.
    usage_on_request: bool = False
    # The body is JSON (else a multipart form: /v1/audio/transcriptions).
    json_body: bool = True
    # The one field Ollama reads the output cap from on this route: `num_predict` in
    # `options` on its own routes, `max_tokens` (OpenAI's chat and completions,
    # Anthropic's messages) or `max_output_tokens` (responses) on the others; a cap in any
    # other field is not Ollama's, so it lowers no reservation.
    cap_field: str = "num_predict"
    # Worked out once here rather than on every request:
    native: bool = field(init=False)  # Ollama's own /api, not a compatible dialect
    # Where Ollama serves it: /api or /v1, and that with the path (/api/chat).
    ollama_prefix: str = field(init=False)
    ollama_path: str = field(init=False)
    # Whether the path or the key's role needs a look before admission: path parameters,
    # a model in the path, model management.
    checks_path: bool = field(init=False)
    # Whether a model alias applies to the body's model: running a model or reading its
    # details, never managing models (pull, delete... would act on the target).
    takes_aliases: bool = field(init=False)
    # Model lists that show aliases beside their targets (tags, /v1/models; not ps: an
    # alias is never loaded as itself).
    lists_aliases: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "native", self.dialect == "ollama")
        object.__setattr__(self, "ollama_prefix", "/api" if self.native else "/v1")
        object.__setattr__(self, "ollama_path", self.ollama_prefix + self.path)
        checks = "{" in self.path or self.model_in_path or self.kind == "manage"
        object.__setattr__(self, "checks_path", checks)
        aliased = self.json_body and (self.kind == "inference" or self.path == "/show")
        object.__setattr__(self, "takes_aliases", aliased)
        object.__setattr__(self, "lists_aliases", self.lists_models and self.path != "/ps")


# The routes whose answers the response cache may keep (CACHE_ROUTES), by Ollama's path:
# embeddings, whose answer follows from the body alone, and generation, kept only when its
# request fixes the sampling (temperature 0 and a seed: protocol/body.py `fixed_sampling`).
# Anthropic's messages and OpenAI's responses have no seed, so they are never kept.
EMBEDDING_PATHS = ("/api/embed", "/api/embeddings", "/v1/embeddings")
GENERATION_PATHS = ("/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions")
CACHEABLE_PATHS = EMBEDDING_PATHS + GENERATION_PATHS

RELAY_ROUTES: tuple[RelayRoute, ...] = (
    RelayRoute(("POST",), "/generate", "inference"),
    RelayRoute(("POST",), "/chat", "inference"),
    RelayRoute(("POST",), "/embed", "inference", outputs_tokens=False),
    RelayRoute(("POST",), "/embeddings", "inference", outputs_tokens=False),
    RelayRoute(("GET", "HEAD"), "/tags", "read", model_fields=(), lists_models=True),
    RelayRoute(("POST",), "/show", "read"),
    RelayRoute(("GET",), "/ps", "read", model_fields=(), lists_models=True),
    RelayRoute(("GET", "HEAD"), "/version", "read", model_fields=()),
    RelayRoute(("GET",), "/status", "read", model_fields=()),
    RelayRoute(("POST",), "/pull", "manage"),
    RelayRoute(("POST",), "/push", "manage"),
    # "from" names the base model a new one is made of: it must be allowed too.
    RelayRoute(("POST",), "/create", "manage", model_fields=("model", "name", "from")),
    RelayRoute(("POST",), "/copy", "manage", model_fields=("source", "destination")),
    RelayRoute(("DELETE",), "/delete", "manage"),
    RelayRoute(("POST",), "/blobs/{digest}", "manage", stream_request_body=True),
    RelayRoute(("HEAD",), "/blobs/{digest}", "manage"),
    # Ollama's /v1 routes (middleware/openai.go, middleware/anthropic.go).
    RelayRoute(
        ("POST",),
        "/chat/completions",
        "inference",
        model_fields=("model",),
        dialect="openai",
        usage_on_request=True,
        cap_field="max_tokens",
    ),
    RelayRoute(
        ("POST",),
        "/completions",
        "inference",
        model_fields=("model",),
        dialect="openai",
        usage_on_request=True,
        cap_field="max_tokens",
    ),
    RelayRoute(
        ("POST",),
        "/embeddings",
        "inference",
        model_fields=("model",),
        dialect="openai",
        outputs_tokens=False,
    ),
    RelayRoute(
        ("POST",),
        "/responses",
        "inference",
        model_fields=("model",),
        dialect="openai",
        cap_field="max_output_tokens",
    ),
    # multipart/form-data: its model read from the form (protocol/form.py).
    RelayRoute(
        ("POST",),
        "/audio/transcriptions",
        "inference",
        model_fields=("model",),
        dialect="openai",
        json_body=False,
    ),
    RelayRoute(("GET",), "/models", "read", model_fields=(), lists_models=True, dialect="openai"),
    RelayRoute(
        ("GET",), "/models/{model}", "read", model_fields=(), dialect="openai", model_in_path=True
    ),
    RelayRoute(
        ("POST",),
        "/messages",
        "inference",
        model_fields=("model",),
        dialect="anthropic",
        cap_field="max_tokens",
    ),
)

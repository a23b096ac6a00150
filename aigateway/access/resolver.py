"""Which models a request names, resolved once at admission into the one identity that
allow-lists, prices, budgets, quotas, routing, metrics and usage records all use.

A body is read as Ollama will read it (protocol/body.py for JSON, protocol/form.py for the
transcription route's multipart form), each model it names resolved as Ollama resolves
it (protocol/names.py), and a name Ollama would refuse is refused here with Ollama's own
answer: such a request never reaches an upstream, nor a price of 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

from ..errors import BadRequest, GatewayError, NotFound, Refused
from ..protocol.body import BodyFields, UndecidableBody, read_body
from ..protocol.form import UndecidableForm, form_value
from ..protocol.names import InvalidModelName, ModelRef, go_quote, resolve, resolve_literal
from ..protocol.routes import RelayRoute
from .allowlist import check_cloud, require_allowed

if TYPE_CHECKING:
    from ..records import KeyRecord
    from .aliases import AliasTable

NO_FIELDS = BodyFields()
# Model management that names a new model: read field by field (_by_field).
_BY_FIELD = frozenset({"/create", "/copy"})
# Routes where Ollama answers a missing model 404 "model '' not found" (else 400).
_NOT_FOUND_WHEN_MISSING = frozenset({"/api/generate", "/api/embed"})


class Named(NamedTuple):
    """What admission learnt of a request's body: its fields, and every model it names,
    resolved (in the route's field order; the first is the one it runs)."""

    fields: BodyFields
    models: tuple[ModelRef, ...] = ()

    @property
    def model(self) -> ModelRef | None:
        return self.models[0] if self.models else None


NOTHING_NAMED = Named(NO_FIELDS)


def named_models(
    body: bytes,
    route: RelayRoute,
    caller: KeyRecord,
    cloud: bool,
    content_type: str,
    query: str,
    aliases: AliasTable,
) -> Named:
    """The models `body` names for `route`, resolved and checked: refused (400, in
    Ollama's words) when Ollama would refuse the name or the gateway cannot read the
    body as Ollama will; cloud models unless `cloud`; with an allow-list, every model
    the body names (403). A name that is one of `caller`'s aliases resolves to its
    target before any check (on the routes that take aliases)."""
    patterns = caller.models
    if not route.model_fields:
        return NOTHING_NAMED
    if not route.json_body:
        fields = _form_fields(body, content_type, query)
    elif not body and patterns is None and route.kind != "inference":
        return NOTHING_NAMED  # (Ollama answers an empty body itself; nothing runs)
    else:
        try:
            fields = read_body(body, route.model_fields, route.cap_field)
        except UndecidableBody as exc:
            raise _undecidable(str(exc)) from None
    if route.path in _BY_FIELD:  # (model management, admins only: read once per field)
        refs = tuple(_by_field(body, route))
    else:
        refs = tuple(_resolved(name, route) for name in fields.models)
        if route.takes_aliases and not aliases.empty:
            refs = tuple(aliases.apply(ref, caller) for ref in refs)
    if not refs and route.kind == "inference":
        raise _refused_name(InvalidModelName("model is required", "required"), "", route)
    if not cloud:
        check_cloud(refs)
    if patterns is not None:
        require_allowed(refs, route.model_fields, patterns)
    return Named(fields, refs)


def _form_fields(body: bytes, content_type: str, query: str) -> BodyFields:
    """/v1/audio/transcriptions: the model as Go's Request.FormValue reads it."""
    try:
        model = form_value(body, content_type, query, "model")
    except UndecidableForm as exc:
        raise _undecidable(f"failed to parse multipart form: {exc}") from None
    return BodyFields((model,), model) if model else NO_FIELDS


def _resolved(name: str, route: RelayRoute) -> ModelRef:
    try:
        return resolve_literal(name) if route.path == "/push" else resolve(name)
    except InvalidModelName as exc:
        raise _refused_name(exc, name, route) from None


def _by_field(body: bytes, route: RelayRoute) -> Iterator[ModelRef]:
    """/create and /copy, whose fields Ollama reads each its own way: the new model's
    name (create's model, copy's source and destination) with model.ParseName alone,
    create's base model (`from`) as a model to run."""
    for field in route.model_fields:
        name = read_body(body, (field,)).model
        if name is None:
            continue
        try:
            yield resolve(name) if field == "from" else resolve_literal(name)
        except InvalidModelName as exc:
            if route.path == "/copy":
                raise BadRequest(
                    f"{field} {go_quote(name)} is invalid", reason=Refused.INVALID_MODEL_NAME
                ) from None
            raise _refused_name(exc, name, route) from None


def _refused_name(exc: InvalidModelName, sent: str, route: RelayRoute) -> GatewayError:
    """Ollama's own answer to a name it refuses (the route decides a few words)."""
    if exc.reason == "required" and route.ollama_path in _NOT_FOUND_WHEN_MISSING:
        return NotFound(f"model '{sent}' not found", reason=Refused.INVALID_MODEL_NAME)
    message = exc.message
    if exc.reason == "invalid" and route.ollama_path == "/api/delete":
        message = f"name {go_quote(sent)} is invalid"
    return BadRequest(message, reason=Refused.INVALID_MODEL_NAME)


def _undecidable(why: str) -> BadRequest:
    return BadRequest(
        f"{why}; this gateway must read the model a request names before relaying it",
        reason=Refused.UNDECIDABLE_BODY,
    )

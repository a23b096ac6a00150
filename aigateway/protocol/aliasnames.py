"""What an alias may be called and point to: model names as Ollama reads them
(names.py), checked where an alias is written (the store, and the menu's prompts)."""

from __future__ import annotations

from ..records import InvalidInputError
from .names import GO_SPACE, InvalidModelName, resolve, resolve_literal


def alias_identity(name: str) -> tuple[str, str]:
    """An alias's name as written (trimmed) and its identity; InvalidInputError for a name
    Ollama would refuse, one with a source suffix (`:local`, `:cloud`) or a scheme, or a
    cloud model's name. (So every name kept is ASCII letters, digits and `_.:-/`: JSON,
    HTML and a terminal show it as it is.)"""
    written = name.strip(GO_SPACE) if isinstance(name, str) else ""
    if "://" in written:
        raise InvalidInputError(f"alias name: a model name, without a scheme: {name!r}")
    try:
        literal = resolve_literal(written)
        ref = resolve(written)
    except InvalidModelName:
        raise InvalidInputError(
            f"alias name: not a model name Ollama would take: {name!r}"
        ) from None
    if literal.cloud or ref.cloud or literal.canonical != ref.canonical:
        raise InvalidInputError(
            f"alias name: a plain model name, not a cloud model nor :local: {name!r}"
        )
    return written, ref.canonical


def target_identity(target: str) -> str:
    """The identity of the model an alias runs (a cloud model is allowed: ALLOW_CLOUD_MODELS
    decides at each request, as for the model named itself)."""
    try:
        return resolve(target if isinstance(target, str) else "").canonical
    except InvalidModelName:
        raise InvalidInputError(f"target: not a model name Ollama would take: {target!r}") from None

"""The gateway's own errors, answered as Ollama answers its errors: `{"error": "..."}`.

    GatewayError (status 500)
    ├── BadRequest (400)
    ├── Unauthorized (401, with WWW-Authenticate: Bearer)
    ├── BudgetExhausted (402; 429 insufficient_quota on /v1)
    ├── Forbidden (403)
    ├── NotFound (404)
    ├── RequestTimeout (408, and the connection is closed)
    ├── Conflict (409)
    ├── PayloadTooLarge (413)
    ├── UnsupportedMediaType (415)
    ├── TooManyRequests (429, with Retry-After and X-RateLimit-*)
    ├── UpstreamUnreachable (502)
    ├── ServiceUnavailable (503, with Retry-After)
    └── UpstreamTimeout (504)

aiohttp's own HTTP exceptions (404 unknown path, 405 wrong method, 413 from the body
limit) are rendered the same way by the gateway middleware.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, ClassVar

import orjson

if TYPE_CHECKING:
    from aiohttp import web


class Refused(StrEnum):
    """Why the gateway refused a request itself: the one list that error bodies (their
    `reason`), access lines (`reason=`) and /metrics (`aigateway_refusals_total`) use,
    so that every refusal can be counted by the same name wherever it is seen."""

    MISSING_KEY = "missing_key"
    MALFORMED_KEY = "malformed_key"
    UNKNOWN_KEY = "unknown_key"
    REVOKED_OR_EXPIRED = "revoked_or_expired"  # the key, or the dashboard session made with it
    USER_DISABLED = "user_disabled"
    ADMIN_ONLY = "admin_only"  # model management, /metrics=admin: needs an admin key
    MODEL_NOT_ALLOWED = "model_not_allowed"  # the key's allow-list (or a cloud upstream's)
    CLOUD_MODEL = "cloud_model"  # an Ollama cloud model, with ALLOW_CLOUD_MODELS off
    INVALID_MODEL_NAME = "invalid_model_name"  # a name Ollama would refuse, or none at all
    UNDECIDABLE_BODY = "undecidable_body"  # its model cannot be read as Ollama will read it
    RATE_LIMIT = "rate_limit"  # requests per minute or hour, or at once
    TOKEN_QUOTA = "token_quota"
    OVER_BUDGET = "over_budget"
    TOO_LARGE = "too_large"
    SLOW_BODY = "slow_body"  # a request body slower than BODY_MIN_RATE (408)
    BODY_MEMORY_FULL = "body_memory_full"  # MAX_BODY_MEMORY, or the key's share of it (503)
    STORAGE_FULL = "storage_full"  # usage records could not be kept anywhere (503)
    SIGN_IN_LIMIT = "sign_in_limit"  # dashboard sign-ins per key or address (429)
    EXPORT_LIMIT = "export_limit"  # exports one key runs at once (429)


class GatewayError(Exception):
    status: ClassVar[int] = 500
    default_headers: ClassVar[Mapping[str, str]] = {}
    billing: ClassVar[bool] = False  # a billing error: its own type in every dialect
    # Close the connection once the answer is sent (the rest of the request is not read).
    closes_connection: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        headers: Mapping[str, str] | None = None,
        reason: Refused | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = {**self.default_headers, **(headers or {})}
        # Why the gateway refused (None: an error that is no refusal, e.g. Ollama away).
        self.reason = reason

    def status_in(self, dialect: str) -> int:
        return self.status


class BudgetExhausted(GatewayError):
    """A budget has nothing left. What each dialect's SDKs surface as a billing error,
    not one to retry: 402 Payment Required (the Anthropic SDK's PaymentRequiredError with
    `billing_error`; the ollama clients' ResponseError), and on OpenAI's paths OpenAI's
    own answer to an exhausted quota, 429 `insufficient_quota`, with `x-should-retry:
    false` so that its SDKs (which retry a 429) do not."""

    status = 402
    billing = True
    default_headers: ClassVar[Mapping[str, str]] = {"x-should-retry": "false"}

    def status_in(self, dialect: str) -> int:
        return 429 if dialect == "openai" else 402


class BadRequest(GatewayError):
    status = 400


class Unauthorized(GatewayError):
    status = 401
    default_headers: ClassVar[Mapping[str, str]] = {"WWW-Authenticate": 'Bearer realm="aigateway"'}


class Forbidden(GatewayError):
    status = 403


class ModelNotAllowed(Forbidden):
    """A key's allow-list (or ALLOW_CLOUD_MODELS) refuses a model the request names."""


class NotFound(GatewayError):
    status = 404


class RequestTimeout(GatewayError):
    """The request's body came too slowly (BODY_MIN_RATE): what is left of it is not
    waited for, so the connection it is still coming on is closed."""

    status = 408
    closes_connection = True


class TooManyRequests(GatewayError):
    status = 429


class Conflict(GatewayError):
    status = 409


class PayloadTooLarge(GatewayError):
    status = 413


class UnsupportedMediaType(GatewayError):
    status = 415


class UpstreamUnreachable(GatewayError):
    status = 502


class ServiceUnavailable(GatewayError):
    status = 503


class UpstreamTimeout(GatewayError):
    status = 504


# What the OpenAI and Anthropic SDKs expect in `type` (and OpenAI in `code`) by status.
_OPENAI_TYPES = {
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("not_found_error", None),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def _openai_401(reason: str) -> str:
    """OpenAI's own wording, which tools that sort errors by their text (LiteLLM)
    recognise as an authentication error; the key itself is never repeated."""
    if reason.startswith("missing API key"):
        return (
            "You didn't provide an API key. You need to provide your API key in an"
            " Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
    return (
        f"Incorrect API key provided ({reason}). Ask the administrator of this gateway"
        " for a valid key."
    )


def error_document(
    dialect: str, status: int, message: str, billing: bool = False, reason: str | None = None
) -> dict[str, object]:
    """The error body a client of this dialect parses: Ollama's `{"error": "..."}`,
    OpenAI's `{"error": {"message", "type", "param", "code"}}`, or Anthropic's
    `{"type": "error", "error": {"type", "message"}}`; a refusal's `reason` (one of
    Refused) beside the message, a field each dialect's SDKs ignore and scripts can read."""
    document = _error_document(dialect, status, message, billing)
    if reason is not None:
        inner = document["error"]
        if isinstance(inner, dict):
            inner["reason"] = reason
        else:
            document["reason"] = reason
    return document


def _error_document(dialect: str, status: int, message: str, billing: bool) -> dict[str, object]:
    fallback = "invalid_request_error" if status < 500 else "api_error"
    if billing:
        fallback = "billing_error"
    if dialect == "openai":
        kind: str
        code: str | None
        if billing:
            kind = code = "insufficient_quota"
        else:
            kind, code = _OPENAI_TYPES.get(status, (fallback, None))
        if status == 401:
            message = _openai_401(message)
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}
    if dialect == "anthropic":
        return {
            "type": "error",
            "error": {
                "type": fallback if billing else _ANTHROPIC_TYPES.get(status, fallback),
                "message": message,
            },
        }
    return {"error": message}


def json_error(
    status: int,
    message: str,
    headers: Mapping[str, str] | None = None,
    dialect: str = "ollama",
    billing: bool = False,
    reason: str | None = None,
) -> web.Response:
    from aiohttp import web  # (here: the CLIs use the error tree without the server)

    return web.Response(
        status=status,
        body=orjson.dumps(error_document(dialect, status, message, billing, reason)),
        content_type="application/json",
        headers=headers,
    )

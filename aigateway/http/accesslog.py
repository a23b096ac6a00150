"""One access-log line per request: who (and from where), what, how it ended, how long
it took.

Never the key: the user and key name stand for it.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web

from .. import logs
from .clientaddress import client_address
from .context import RequestContext

access_log = logging.getLogger("aigateway.access")

CLIENT_CLOSED = 499  # nginx's status for "client closed the request"


def _safe(value: str) -> bool:
    """Only printable ASCII other than space, double quote and backslash: anything else
    could start a new line, colour a terminal, or pass for another field. (String
    methods, not a regex: this runs on every access line, where a regex cost more
    than the rest of the line.)"""
    return (
        value.isascii()
        and value.isprintable()
        and " " not in value
        and '"' not in value
        and "\\" not in value
    )


def _escaped(value: str, quoted: bool = False) -> str:
    """`value` with every character that could forge a line or a field escaped, as
    Python writes them (\\n, \\x1b, \\u2028); spaces stay inside a quoted value."""
    if _safe(value):
        return value
    text = value.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    return text if quoted else text.replace(" ", "\\x20")


def log_access(
    request: web.Request,
    context: RequestContext,
    status: int,
    nbytes: int,
    error: str,
    reason: str | None = None,
) -> None:
    """`reason`: why the gateway refused the request (errors.Refused), if it did."""
    sink = logs.access_sink
    if sink is None and not access_log.isEnabledFor(logging.INFO):
        return
    principal = context.principal
    user, key_name = (principal.user, principal.name) if principal else ("-", "-")
    model = context.model or "-"
    # The path as sent (percent-encoded, so %0a stays %0a), without the query string.
    path = request.rel_url.raw_path
    # Behind a proxy in TRUSTED_PROXIES, the client it names; else the socket's peer.
    client = client_address(request) or "-"
    if not _safe(f"{user}{key_name}{model}{path}{client}"):  # one check for the usual line
        user, key_name, model, path, client = (
            _escaped(v) for v in (user, key_name, model, path, client)
        )
    message = (
        f"rid={context.request_id} client={client} user={user} key={key_name}"
        f" method={request.method}"
        f" path={path} model={model} status={status}"
        f" bytes={nbytes} ms={(time.perf_counter() - context.started) * 1000:.1f}"
        + (f" upstream={_escaped(context.upstream)}" if context.upstream else "")
        + (f" reason={reason}" if reason else "")
        + (f' error="{_escaped(error, quoted=True)}"' if error else "")
    )
    if sink is not None:
        sink.write(message)
    else:
        access_log.info("%s", message)

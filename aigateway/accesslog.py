"""One access-log line per request: who, what, how it ended, how long it took.

Never the key: the user and key name stand for it.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web

from . import logs
from .context import RequestContext

access_log = logging.getLogger("aigateway.access")

CLIENT_CLOSED = 499  # nginx's status for "client closed the request"


def log_access(
    request: web.Request, context: RequestContext, status: int, nbytes: int, error: str
) -> None:
    sink = logs.access_sink
    if sink is None and not access_log.isEnabledFor(logging.INFO):
        return
    principal = context.principal
    user, key_name = (principal.user, principal.name) if principal else ("-", "-")
    message = (
        f"rid={context.request_id} user={user} key={key_name} method={request.method}"
        f" path={request.path} model={context.model or '-'} status={status}"
        f" bytes={nbytes} ms={(time.perf_counter() - context.started) * 1000:.1f}"
        + (f' error="{error}"' if error else "")
    )
    if sink is not None:
        sink.write(message)
    else:
        access_log.info("%s", message)

"""The address of the client a request comes from.

One function so that every room that names the client (the access log, the per-address
sign-in limit) names it the same way. Behind a proxy listed in TRUSTED_PROXIES this is
where forwarded headers are believed; elsewhere only the socket's peer counts.
"""

from __future__ import annotations

from aiohttp import web


def client_address(request: web.Request) -> str:
    """The client's address: the socket's peer ("" when aiohttp has none, e.g. a Unix socket)."""
    return request.remote or ""

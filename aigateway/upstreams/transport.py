"""The one way out to upstreams: every request the gateway sends to an Ollama or a cloud
API (a relayed request, a pull on every Ollama, a health check, a model list, a model
sync) goes through `Transport.send`, and nothing else in the package speaks aiohttp's
client.

`send` is an async context manager that gives the response (status, headers, and its
body as a stream read chunk by chunk, never buffered here) and turns the client's
failures into three kinds the callers decide on: `ConnectFailed` (no connection was
made: another upstream may be tried), `TimedOut`, and `Broken` (the exchange failed
after connecting). A failure while the caller reads
the body inside the block comes out the same way; the caller's own exceptions, and a
client's reset connection, pass through unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType

import aiohttp
from yarl import URL

# What `send` gives: the upstream's answer, its body still to be read.
Response = aiohttp.ClientResponse
# What reading a response's body can raise when the upstream fails midway, for a caller
# that reads it inside the block and must tell that from its own errors (the pump).
READ_FAILURES: tuple[type[BaseException], ...] = (aiohttp.ClientError, TimeoutError)


class UpstreamFailed(Exception):
    """An exchange with an upstream failed: the message is the client's own, and `cause`
    the name of the client's error (what messages and logs have always shown)."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


class ConnectFailed(UpstreamFailed):
    """No connection was made (refused, unreachable, a name that does not resolve, a
    failed TLS handshake): nothing was sent, so another upstream may be tried. Its
    message is the system's own words, which may name the address (for an admin and
    the log); `public` says the same without it (for anyone)."""

    def __init__(self, message: str, cause: str, public: str) -> None:
        super().__init__(message, cause)
        self.public = public


class TimedOut(UpstreamFailed):
    """The upstream did not connect, or did not answer, within its time."""


class Broken(UpstreamFailed):
    """The exchange failed after the connection was made (reset, a malformed answer)."""


def _translated(exc: BaseException) -> UpstreamFailed | None:
    if isinstance(exc, ConnectionResetError):
        return None  # the client's connection (a write to it), not the upstream's
    cause = type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error, kind = exc.os_error, type(exc.os_error).__name__
        public = os.strerror(os_error.errno) if os_error.errno else kind
        return ConnectFailed(os_error.strerror or str(exc), cause, public)
    if isinstance(exc, TimeoutError):  # (aiohttp's ServerTimeoutError is one too)
        return TimedOut(str(exc) or cause, cause)
    if isinstance(exc, aiohttp.ClientError):
        return Broken(str(exc) or cause, cause)
    return None


class Transport:
    """The HTTP client for upstreams: one connection pool with no limit (Ollama queues
    requests itself; a cap here would be a second queue), no cookies, bodies passed as
    they come (not decompressed, unless `decompress`), redirects never followed."""

    def __init__(
        self,
        *,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        total_timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        decompress: bool = False,
    ) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(
                total=total_timeout, sock_connect=connect_timeout, sock_read=read_timeout
            ),
            auto_decompress=decompress,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers=headers,
        )

    def send(
        self,
        method: str,
        url: str | URL,
        *,
        data: object = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        skip_auto_headers: Iterable[str] | None = None,
        timeout: float | None = None,
    ) -> Sending:
        """`async with transport.send(...) as response:` one request to an upstream;
        `timeout` (seconds, the whole exchange) on top of the transport's own."""
        if timeout is None:  # (the relay's case: no per-request timeout object to make)
            request = self._session.request(
                method,
                url,
                data=data,
                headers=headers,  # (pairs are taken too)
                skip_auto_headers=skip_auto_headers,
                allow_redirects=False,
            )
        else:
            request = self._session.request(
                method,
                url,
                data=data,
                headers=headers,
                skip_auto_headers=skip_auto_headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(timeout),
            )
        return Sending(request)

    async def close(self) -> None:
        await self._session.close()


class Sending:
    """One request in flight (a class, not a generator: the relay makes one a request)."""

    __slots__ = ("_request",)

    def __init__(self, request: AbstractAsyncContextManager[Response]) -> None:
        self._request = request

    async def __aenter__(self) -> Response:
        try:
            return await self._request.__aenter__()
        except BaseException as exc:
            failed = _translated(exc)
            if failed is None:
                raise
            raise failed from None

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._request.__aexit__(kind, exc, traceback)
        if exc is not None:
            failed = _translated(exc)
            if failed is not None:
                raise failed from None

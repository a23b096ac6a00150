"""Posting one alert: through aiohttp's client on a session of its own (not the upstream
transport: another trust boundary), to checked addresses only (guard.py), no redirect
followed, no proxy from the environment, short timeouts, the answer read to a bound."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping

import aiohttp
from yarl import URL

from .. import __version__
from .guard import guarded_socket

CONNECT_TIMEOUT_S = 5.0
TOTAL_TIMEOUT_S = 10.0
MOST_ANSWER_BYTES = 64 * 1024  # read (and dropped) so the connection ends cleanly


class SendFailed(Exception):
    """The webhook did not take the alert; the message says why, without the URL."""


class Poster:
    """Posts alerts; open with `async with Poster.open(...)`."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, allow_private: bool, total_timeout_s: float = TOTAL_TIMEOUT_S
    ) -> AsyncIterator[Poster]:
        connector = aiohttp.TCPConnector(
            use_dns_cache=False,  # every post resolves and checks again
            force_close=True,  # alerts are rare: no pooled connection to go stale
            limit=8,
            socket_factory=guarded_socket(allow_private),
        )
        timeout = aiohttp.ClientTimeout(total=total_timeout_s, connect=CONNECT_TIMEOUT_S)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, trust_env=False, auto_decompress=False
        ) as session:
            yield cls(session)

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> None:
        """Post `body`; SendFailed unless the answer is a 2xx."""
        sent = {
            "Content-Type": "application/json",
            "User-Agent": f"aigateway/{__version__}",
            **headers,
        }
        try:
            async with self._session.post(
                URL(url, encoded=True), data=body, headers=sent, allow_redirects=False
            ) as answer:
                await answer.content.read(MOST_ANSWER_BYTES)
                status = answer.status
        except aiohttp.ClientConnectorError as exc:
            raise SendFailed(f"cannot connect to {exc.host}: {exc.os_error}") from None
        except TimeoutError:
            raise SendFailed("no answer in time") from None
        except aiohttp.ClientError as exc:  # (its text may hold the URL, a secret)
            raise SendFailed(f"the connection failed ({type(exc).__name__})") from None
        if 300 <= status < 400:
            raise SendFailed(f"answered {status}, a redirect (not followed)")
        if not 200 <= status < 300:
            raise SendFailed(f"answered {status}")

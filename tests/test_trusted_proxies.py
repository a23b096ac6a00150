"""TRUSTED_PROXIES: whose X-Forwarded-* / Forwarded headers the gateway believes.

A real gateway on 127.0.0.1; the client connects from 127.0.0.1 (which is a trusted
proxy or not, as each test sets it) or from 127.0.0.2 (never trusted here). What the
gateway believed shows in the access line's client= field, in whether a sign-in from a
given Origin is let in, and in the session cookie's Secure flag.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass, replace

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from aigateway import Settings, create_app

from .conftest import make_key

Headers = dict[str, str]
SIGN_IN = {"X-Requested-With": "aigateway"}


@dataclass
class Answer:
    status: int
    cookie: str
    error: str
    client: str  # the access line's client= field


async def _serve(aiohttp_server: AiohttpServer, settings: Settings, trusted: str) -> TestServer:
    networks = tuple(ipaddress.ip_network(n) for n in trusted.split(",") if n)
    server: TestServer = await aiohttp_server(
        create_app(replace(settings, trusted_proxies=networks))
    )
    return server


async def _sign_in(
    server: TestServer,
    caplog: pytest.LogCaptureFixture,
    key: str,
    headers: Headers,
    source: str = "127.0.0.1",
) -> Answer:
    """POST {UI_PATH}/session from `source`, as a browser sends it, with `headers`."""
    caplog.clear()
    caplog.set_level(logging.INFO, logger="aigateway.access")
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(
            str(server.make_url("/ui/session")), json={"key": key}, headers=SIGN_IN | headers
        ) as resp,
    ):
        body = await resp.json()
        cookie = resp.headers.get("Set-Cookie", "")
    (line,) = [r.getMessage() for r in caplog.records if r.name == "aigateway.access"]
    found = re.search(r" client=(\S+) ", line)
    return Answer(resp.status, cookie, body.get("error", ""), found[1] if found else line)


def _own_origin(server: TestServer) -> str:
    return f"http://127.0.0.1:{server.port}"


async def test_an_untrusted_peers_forwarded_headers_are_ignored(
    aiohttp_server: AiohttpServer,
    settings: Settings,
    db_path: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before: the access line named no client at all, and the 403 did not say what to
    set. The peer (127.0.0.2) is not in TRUSTED_PROXIES: nothing it forwards counts."""
    key = await make_key(db_path, "ann", "pc")
    server = await _serve(aiohttp_server, settings, "127.0.0.1")
    forged = {
        "X-Forwarded-For": "203.0.113.9",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "gw.example",
        "Forwarded": "for=198.51.100.1;proto=https;host=gw.example",
    }
    # As a browser on https://gw.example sends it: refused, the peer cannot vouch for it.
    refused = await _sign_in(
        server, caplog, key, forged | {"Origin": "https://gw.example"}, "127.0.0.2"
    )
    assert refused.status == 403, refused
    assert "TRUSTED_PROXIES" in refused.error, refused
    assert refused.client == "127.0.0.2", refused
    # From the gateway's own origin: in, and the cookie is not Secure (plain HTTP).
    signed = await _sign_in(
        server, caplog, key, forged | {"Origin": _own_origin(server)}, "127.0.0.2"
    )
    assert signed.status == 200, signed
    assert signed.client == "127.0.0.2", signed
    assert "Secure" not in signed.cookie, signed


async def test_without_the_setting_a_tls_proxys_sign_in_is_refused_naming_it(
    aiohttp_server: AiohttpServer,
    settings: Settings,
    db_path: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before: refused as "from another site" with no word of what to do about it."""
    key = await make_key(db_path, "bob", "pc")
    server = await _serve(aiohttp_server, settings, "")
    proxied = {
        "Origin": "https://gw.example",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "gw.example",
        "X-Forwarded-For": "192.0.2.10",
    }
    answer = await _sign_in(server, caplog, key, proxied)
    assert answer.status == 403, answer
    assert "another site" in answer.error and "set TRUSTED_PROXIES" in answer.error, answer
    assert answer.client == "127.0.0.1", answer


async def test_a_trusted_proxys_forwarded_headers_are_believed(
    aiohttp_server: AiohttpServer,
    settings: Settings,
    db_path: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before: the sign-in through a TLS proxy was refused as from another site."""
    key = await make_key(db_path, "cat", "pc")
    server = await _serve(aiohttp_server, settings, "127.0.0.1")
    proxied = {
        "Origin": "https://gw.example:8443",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "gw.example:8443",
        # A client wrote the left one; the proxy appended its peer.
        "X-Forwarded-For": "198.51.100.7, 203.0.113.9",
    }
    answer = await _sign_in(server, caplog, key, proxied)
    assert answer.status == 200, answer
    assert "Secure" in answer.cookie, answer
    assert answer.client == "203.0.113.9", answer
    # The session works through the proxy for a state change from its origin ...
    session_id = answer.cookie.split(";")[0].split("=", 1)[1]
    cookies = {"aigateway_session": session_id}
    async with aiohttp.ClientSession(cookies=cookies) as session:
        url = str(server.make_url("/ui/session"))
        async with session.delete(url, headers=SIGN_IN | proxied) as resp:
            assert resp.status == 200, await resp.text()
    # ... and another site is still refused, without the hint (the setting is there).
    evil = await _sign_in(server, caplog, key, proxied | {"Origin": "https://evil.example"})
    assert evil.status == 403 and "TRUSTED_PROXIES" not in evil.error, evil


@pytest.mark.parametrize(
    ("trusted", "headers", "client"),
    [
        # The chain is walked from the right past every trusted hop.
        ("127.0.0.1,10.0.0.0/8", {"X-Forwarded-For": "6.6.6.6, 192.0.2.5, 10.1.2.3"}, "192.0.2.5"),
        ("127.0.0.1", {"X-Forwarded-For": "6.6.6.6"}, "6.6.6.6"),
        # Every hop trusted: the leftmost.
        ("127.0.0.0/8,10.0.0.0/8", {"X-Forwarded-For": "10.0.0.1, 10.0.0.2"}, "10.0.0.1"),
        # A hop that is no address stops the walk at the trusted hop that wrote it.
        ("127.0.0.1,10.0.0.0/8", {"X-Forwarded-For": "6.6.6.6, unknown, 10.0.0.2"}, "10.0.0.2"),
        ("127.0.0.1", {"X-Forwarded-For": "x y"}, "127.0.0.1"),
        # Ports and brackets, as some proxies write them.
        ("127.0.0.1", {"X-Forwarded-For": "[2001:db8::1]:4711"}, "2001:db8::1"),
        ("127.0.0.1", {"X-Forwarded-For": "192.0.2.8:5000"}, "192.0.2.8"),
        # RFC 7239 from a proxy that sends no X-Forwarded-*.
        ("127.0.0.1", {"Forwarded": 'for=6.6.6.6, for="[2001:db8::2]:80"'}, "2001:db8::2"),
        # ... but beside X-Forwarded-For a Forwarded header is a client's: ignored.
        ("127.0.0.1", {"X-Forwarded-For": "192.0.2.9", "Forwarded": "for=6.6.6.6"}, "192.0.2.9"),
        # No forwarded header at all: the peer.
        ("127.0.0.1", {}, "127.0.0.1"),
        # The peer is not trusted: nothing is read.
        ("10.0.0.0/8", {"X-Forwarded-For": "192.0.2.5"}, "127.0.0.1"),
        ("::1", {"X-Forwarded-For": "192.0.2.5"}, "127.0.0.1"),
    ],
)
async def test_the_client_address_behind_trusted_proxies(
    aiohttp_server: AiohttpServer,
    settings: Settings,
    db_path: str,
    caplog: pytest.LogCaptureFixture,
    trusted: str,
    headers: Headers,
    client: str,
) -> None:
    """Before: the access line named no client."""
    key = await make_key(db_path, "dan", "pc")
    server = await _serve(aiohttp_server, settings, trusted)
    answer = await _sign_in(server, caplog, key, headers)
    assert answer.client == client, answer


async def test_two_forwarded_for_headers_are_one_list(
    aiohttp_server: AiohttpServer,
    settings: Settings,
    db_path: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = await make_key(db_path, "eve", "pc")
    server = await _serve(aiohttp_server, settings, "127.0.0.1,10.0.0.0/8")
    caplog.set_level(logging.INFO, logger="aigateway.access")
    headers = [("X-Forwarded-For", "6.6.6.6, 192.0.2.1"), ("X-Forwarded-For", "10.0.0.3")]
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            str(server.make_url("/ui/session")),
            json={"key": key},
            headers=[*SIGN_IN.items(), *headers],
        ) as resp,
    ):
        assert resp.status == 200
    (line,) = [r.getMessage() for r in caplog.records if r.name == "aigateway.access"]
    assert " client=192.0.2.1 " in line, line


@pytest.mark.parametrize(
    ("headers", "origin", "other_site", "secure"),
    [
        # The scheme's default port is left out of a browser's Origin.
        ({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "gw.example:443"},
         "https://gw.example", "http://gw.example", True),
        # RFC 7239's proto and host, from a proxy that sends no X-Forwarded-*.
        ({"Forwarded": "for=192.0.2.1;proto=https;host=gw.example"},
         "https://gw.example", "https://evil.example", True),
        # A proxy that appends: its own (last) value counts, not the client's.
        ({"X-Forwarded-Proto": "https, http", "X-Forwarded-Host": "evil.example, gw.example"},
         "http://gw.example", "https://evil.example", False),
        # A scheme that is neither http nor https is not believed: the socket's counts.
        ({"X-Forwarded-Proto": "javascript", "X-Forwarded-Host": "gw.example"},
         "http://gw.example", "javascript://gw.example", False),
        # Nor a host that no browser's origin could hold.
        ({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "gw.example/x"},
         "https://127.0.0.1:{port}", "https://gw.example/x", True),
    ],
)  # fmt: skip
async def test_the_scheme_and_host_behind_a_trusted_proxy(
    aiohttp_server: AiohttpServer,
    settings: Settings,
    db_path: str,
    caplog: pytest.LogCaptureFixture,
    headers: Headers,
    origin: str,
    other_site: str,
    secure: bool,
) -> None:
    """Before: the sign-in from the origin the proxy names was refused (403)."""
    key = await make_key(db_path, "fay", "pc")
    server = await _serve(aiohttp_server, settings, "127.0.0.1")
    origin = origin.format(port=server.port)
    answer = await _sign_in(server, caplog, key, headers | {"Origin": origin})
    assert answer.status == 200, answer
    assert ("Secure" in answer.cookie) is secure, answer
    refused = await _sign_in(server, caplog, key, headers | {"Origin": other_site})
    assert refused.status == 403, refused

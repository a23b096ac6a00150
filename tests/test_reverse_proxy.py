"""The nginx block of docs/deploying.md, as it stands, in real nginx terminating TLS in
front of a real gateway process: the dashboard can be signed into through it.

The block is read out of docs/deploying.md; only its upstream port is replaced (the
gateway's free port for the page's 8000). Around it, what the page leaves to the reader's own
`server` block: a listening port, a self-signed certificate made here by openssl, and
paths in a temporary prefix. The client connects from 127.0.0.2 so that it is not the
trusted proxy (127.0.0.1) itself: what it writes in X-Forwarded-For is to the left of
what nginx appends, and must never be taken for its address.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from aigateway.testing.ports import free_port

from .helpers import eventually
from .test_server_process import Gateway, start_gateway

ROOT = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
OPENSSL = shutil.which("openssl")
PAGE = ROOT / "docs" / "deploying.md"
PAGE_UPSTREAM = "http://127.0.0.1:8000;"
CLIENT = "127.0.0.2"  # not a trusted proxy
FORGED = "203.0.113.66"  # what the client claims to be


def docs_nginx_block() -> str:
    """docs/deploying.md's one fenced ```nginx block, verbatim."""
    text = PAGE.read_text()
    blocks = re.findall(r"^```nginx\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, f"expected one ```nginx block in {PAGE.name}, found {len(blocks)}"
    block: str = blocks[0]
    return block


@pytest.fixture
def tools() -> tuple[str, str]:
    """nginx and openssl; skipped where missing, except under CI (.ci/run installs them),
    where a missing tool fails rather than passing unseen."""
    if NGINX and OPENSSL:
        return NGINX, OPENSSL
    why = "nginx and openssl are needed (apt-get install nginx openssl)"
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def _certificate(openssl: str, folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def _nginx_conf(prefix: Path, port: int, cert: Path, key: Path, upstream_port: int) -> str:
    block = docs_nginx_block()
    assert PAGE_UPSTREAM in block, f"the page's block no longer proxies to {PAGE_UPSTREAM}"
    block = block.replace(PAGE_UPSTREAM, f"http://127.0.0.1:{upstream_port};")
    # Run as root (CI), nginx's workers would become "nobody" and could not reach the
    # temporary prefix: keep them as the user that runs the test.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    temp = "".join(
        f"    {kind}_temp_path {prefix / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}daemon off;\nworker_processes 1;\n"
        f"error_log {prefix / 'error.log'} info;\npid {prefix / 'nginx.pid'};\n"
        "events { worker_connections 64; }\n"
        "http {\n"
        f"    access_log {prefix / 'access.log'};\n{temp}"
        "    server {\n"
        f"        listen 127.0.0.1:{port} ssl;\n"
        "        server_name localhost;\n"
        f"        ssl_certificate {cert};\n"
        f"        ssl_certificate_key {key};\n"
        "        # ---- docs/deploying.md's nginx block, verbatim but for its upstream port ----\n"
        f"{block}"
        "    }\n"
        "}\n"
    )


async def _took_its_port(process: subprocess.Popen[bytes], prefix: Path, log: Path) -> bool:
    """Whether nginx listens on its port (it writes its pid file once it does), or, False,
    exited because another process had taken the port."""
    deadline = time.monotonic() + 20
    while not (prefix / "nginx.pid").exists():
        if process.poll() is not None:
            said = log.read_text() if log.exists() else ""
            assert "Address already in use" in said, said or "nginx exited"
            return False
        assert time.monotonic() < deadline, "nginx did not start"
        await asyncio.sleep(0.05)
    return True


async def _listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        assert process.poll() is None, log.read_text() if log.exists() else "nginx exited"
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            assert time.monotonic() < deadline, "nginx did not start listening"
            await asyncio.sleep(0.05)


Nginx = Callable[[Gateway, Path], Awaitable[int]]


@pytest.fixture
async def nginx(tools: tuple[str, str]) -> AsyncIterator[Nginx]:
    """Starts nginx with the docs' block in front of a gateway; yields its port."""
    nginx_bin, openssl = tools
    started: list[subprocess.Popen[bytes]] = []

    async def start(gateway: Gateway, prefix: Path) -> int:
        prefix.mkdir(parents=True, exist_ok=True)
        cert, key = _certificate(openssl, prefix)
        upstream_port = int(gateway.url.rsplit(":", 1)[1])
        conf = prefix / "nginx.conf"
        log = prefix / "error.log"
        # nginx cannot be told to take any free port and say which: a port free a moment
        # ago is tried, and another if something took it meanwhile.
        for _ in range(5):
            port = free_port()
            conf.write_text(_nginx_conf(prefix, port, cert, key, upstream_port))
            with (prefix / "nginx.out").open("wb") as out:
                process = subprocess.Popen(
                    [nginx_bin, "-p", str(prefix), "-c", str(conf), "-e", str(log)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            started.append(process)
            if await _took_its_port(process, prefix, log):
                await _listening(port, process, log)
                return port
        raise AssertionError("nginx found its port taken five times")

    yield start
    for process in started:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, 10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
async def gateways() -> AsyncIterator[list[Gateway]]:
    running: list[Gateway] = []
    yield running
    for gateway in running:
        if gateway.process.poll() is None:
            gateway.process.kill()
        gateway.process.wait()


def _browser(prefix: Path) -> aiohttp.ClientSession:
    """A client that checks the certificate (made for localhost), from 127.0.0.2."""
    context = ssl.create_default_context(cafile=str(prefix / "cert.pem"))
    connector = aiohttp.TCPConnector(ssl=context, family=socket.AF_INET, local_addr=(CLIENT, 0))
    return aiohttp.ClientSession(connector=connector)


async def _access_lines(gateway: Gateway, count: int, *paths: str) -> list[str]:
    """The gateway's access lines for `paths`, once `count` of them are written (lines
    are written in batches)."""

    def lines() -> list[str]:
        text = gateway.log_file.read_text()
        return [
            line
            for line in text.splitlines()
            if "aigateway.access" in line and any(f" {path} " in line for path in paths)
        ]

    await eventually(lambda: len(lines()) >= count)
    found = lines()
    assert len(found) == count, found
    return found


def _as_the_page(port: int) -> dict[str, str]:
    """What the dashboard's page sends: its header, its origin, and a forgery."""
    return {
        "X-Requested-With": "aigateway",
        "Origin": f"https://localhost:{port}",
        "X-Forwarded-For": FORGED,
    }


async def test_the_docs_nginx_block_signs_into_the_dashboard_over_https(
    nginx: Nginx,
    gateways: list[Gateway],
    upstream: TestServer,
    db_path: str,
    key: str,
    tmp_path: Path,
) -> None:
    """Before: the sign-in through nginx was refused 403 "from another site" (the gateway
    compared https://localhost:PORT with http://127.0.0.1:PORT), and the README's block then
    sent no X-Forwarded-* at all."""
    block = docs_nginx_block()
    for line in (
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_set_header X-Forwarded-Host $host:$server_port;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
    ):
        assert line in block, f"the docs' nginx block lacks {line}"
    (tmp_path / "gateway").mkdir()
    gateway = await start_gateway(
        upstream, db_path, tmp_path / "gateway", TRUSTED_PROXIES="127.0.0.1"
    )
    gateways.append(gateway)
    port = await nginx(gateway, tmp_path / "nginx")
    base = f"https://localhost:{port}"
    page = _as_the_page(port)
    async with _browser(tmp_path / "nginx") as browser:
        async with browser.post(base + "/ui/session", json={"key": key}, headers=page) as resp:
            assert resp.status == 200, await resp.text()
            cookie = resp.headers["Set-Cookie"]
        assert "; Secure" in cookie and "HttpOnly" in cookie, cookie
        session = {"Cookie": cookie.split(";", 1)[0]}
        chat = {"model": "llama3.2", "messages": [], "stream": False}
        # A state change by the cookie alone, as the page's playground makes it.
        async with browser.post(base + "/api/chat", json=chat, headers=page | session) as resp:
            assert resp.status == 200, await resp.text()
        async with browser.delete(base + "/ui/session", headers=page | session) as resp:
            assert resp.status == 200, await resp.text()
    signed_in = await _access_lines(gateway, 3, "path=/ui/session", "path=/api/chat")
    for line in signed_in:
        # The address nginx saw (its rightmost X-Forwarded-For hop), never the forgery
        # and never nginx's own.
        assert f" client={CLIENT} " in line, line
        assert FORGED not in line, line
    assert " user=alice " in signed_in[1] and " status=200 " in signed_in[1], signed_in


async def test_without_trusted_proxies_the_same_sign_in_is_refused_naming_it(
    nginx: Nginx,
    gateways: list[Gateway],
    upstream: TestServer,
    db_path: str,
    key: str,
    tmp_path: Path,
) -> None:
    """Before: refused too, but as "from another site" with no word of the fix."""
    (tmp_path / "gateway").mkdir()
    gateway = await start_gateway(upstream, db_path, tmp_path / "gateway")
    gateways.append(gateway)
    port = await nginx(gateway, tmp_path / "nginx")
    async with (
        _browser(tmp_path / "nginx") as browser,
        browser.post(
            f"https://localhost:{port}/ui/session", json={"key": key}, headers=_as_the_page(port)
        ) as resp,
    ):
        assert resp.status == 403
        error = (await resp.json())["error"]
        assert "Set-Cookie" not in resp.headers
    assert "another site" in error and "set TRUSTED_PROXIES" in error, error
    (line,) = await _access_lines(gateway, 1, "path=/ui/session")
    # Nothing forwarded is believed: the address is nginx's own.
    assert " client=127.0.0.1 " in line and " status=403 " in line, line

"""TLS_CERT_FILE and TLS_KEY_FILE: the gateway serves HTTPS itself."""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import ollama
import pytest
from aiohttp.test_utils import TestServer


def _self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def _run(tmp_path: Path, upstream: TestServer, db_path: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "aigateway"],
        cwd=tmp_path,
        env={
            **os.environ,
            "OLLAMA_BASE_URL": str(upstream.make_url("")).rstrip("/"),
            "TOKEN_DB_PATH": db_path,
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


async def test_serves_https_to_clients_that_trust_its_certificate(
    upstream: TestServer, db_path: str, key: str, tmp_path: Path
) -> None:
    cert, private = _self_signed(tmp_path)
    tls_env = {"TLS_CERT_FILE": str(cert), "TLS_KEY_FILE": str(private)}
    process = _run(tmp_path, upstream, db_path, PORT="0", **tls_env)
    trust = ssl.create_default_context(cafile=str(cert))
    early = ""
    try:
        early, port = await _bound_port(process)
        tls_env["PORT"] = str(port)  # for the health check
        url = f"https://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None
                try:
                    async with session.get(url + "/health", ssl=trust) as resp:
                        assert resp.status == 200
                        break
                except aiohttp.ClientConnectionError:
                    assert time.monotonic() < deadline, "no HTTPS within 30 s"
                    await asyncio.sleep(0.1)
            # The dashboard's session cookie is HTTPS-only when the gateway speaks HTTPS.
            async with session.post(
                url + "/ui/session",
                json={"key": key},
                headers={"X-Requested-With": "aigateway"},
                ssl=trust,
            ) as resp:
                assert resp.status == 200
                assert "Secure" in resp.headers["Set-Cookie"]
            # Plain HTTP on the same port gets no answer from the gateway.
            with pytest.raises(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{port}/health") as resp:
                    await resp.read()
        # The official client, pointed at https and told to trust the certificate.
        client = ollama.AsyncClient(
            host=url, headers={"Authorization": f"Bearer {key}"}, verify=trust
        )
        try:
            chat = [{"role": "user", "content": "hi"}]
            answer = await client.chat(model="llama3.2", messages=chat)
        finally:
            await client.close()  # type: ignore[no-untyped-call]
        assert answer.message.content
        # The container's HEALTHCHECK, with the server's own settings.
        assert _healthcheck(tmp_path, tls_env).returncode == 0
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    output = early + output
    assert f"listening on https://127.0.0.1:{port}" in output
    assert (
        f"; dashboard https://127.0.0.1:{port}/ui/; API docs https://127.0.0.1:{port}/docs"
        in output
    )
    assert process.returncode == 0, output
    gone = _healthcheck(tmp_path, tls_env)
    assert gone.returncode == 1 and f"https://127.0.0.1:{port}/health" in gone.stdout


async def _bound_port(process: subprocess.Popen[str]) -> tuple[str, int]:
    """What a gateway started with PORT=0 wrote up to its "listening on" line, and the
    port that line names."""
    assert process.stdout is not None
    output = ""
    while True:
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 30)
        assert line, output  # it ended before listening
        output += line
        found = re.search(r" listening on https://127\.0\.0\.1:(\d+);", line)
        if found:
            return output, int(found[1])


def _healthcheck(folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aigateway.healthcheck"],
        cwd=folder,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("which", "expected"),
    [
        ("only-cert", "set both"),
        ("missing", "no such file"),
        ("not-pem", "not a PEM certificate chain"),
    ],
)
async def test_a_bad_tls_setting_is_one_line_and_exit_1(
    upstream: TestServer, db_path: str, tmp_path: Path, which: str, expected: str
) -> None:
    cert, private = _self_signed(tmp_path)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    env = {
        "only-cert": {"TLS_CERT_FILE": str(cert)},
        "missing": {"TLS_CERT_FILE": str(tmp_path / "gone.pem"), "TLS_KEY_FILE": str(private)},
        "not-pem": {"TLS_CERT_FILE": str(junk), "TLS_KEY_FILE": str(private)},
    }[which]
    process = _run(tmp_path, upstream, db_path, PORT="0", **env)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1
    assert expected in output and "Traceback" not in output
    assert len(output.strip().splitlines()) == 1, output

"""A fake Ollama: a real aiohttp server that answers like Ollama, for tests and the benchmark.

Responses are the fixtures in `fixtures/` (real Ollama shapes, see their README). It
checks Host and Origin the way Ollama does (403 for a foreign Host or an unknown browser
Origin), records every request it receives, and notes every request whose client went
away before it finished. The `model` in a request body picks a behaviour:

    llama9          404 "model not found", in Ollama's words for that route
    midway-error    a stream that ends with an {"error": ...} line
    slow            a stream with one line every `slow_interval` seconds
    silent          no byte at all for a minute (a long prompt evaluation)
    stall           one stream line, then nothing until the client leaves
    broken          one stream line, then the connection drops
    anything else   the fixture for the route, streamed unless "stream": false
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import ipaddress
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiohttp import web

FIXTURES = Path(__file__).with_name("fixtures")
NDJSON = "application/x-ndjson"
GIN_JSON = "application/json; charset=utf-8"
BODY = web.RequestKey("body", bytes)


def fixture(name: str) -> bytes:
    data = (FIXTURES / name).read_bytes()
    # gin's c.JSON writes no trailing newline; NDJSON and SSE keep theirs.
    return data.rstrip(b"\n") if name.endswith(".json") else data


@dataclass
class Recorded:
    method: str
    path_qs: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeOllama:
    slow_interval: float = 0.1
    requests: list[Recorded] = field(default_factory=list)
    # (path, seconds from arrival) for each request whose client left before the end
    abandoned: list[tuple[str, float]] = field(default_factory=list)
    blobs: set[str] = field(default_factory=set)
    record: bool = True  # the benchmark turns this off to keep its memory flat

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=1024**3)
        r = app.router
        for method in ("GET", "HEAD"):
            r.add_route(method, "/", self.root)
            r.add_route(method, "/api/version", self.static("version.json"))
            r.add_route(method, "/api/tags", self.static("tags.json"))
        r.add_get("/api/status", self.status, allow_head=False)
        r.add_get("/api/ps", self.static("ps.json"), allow_head=False)
        r.add_post("/api/show", self.show)
        r.add_post("/api/generate", self.generate)
        r.add_post("/api/chat", self.chat)
        r.add_post("/api/embed", self.embed)
        r.add_post("/api/embeddings", self.embed)
        r.add_post("/api/pull", self.pull)
        r.add_post("/api/push", self.pull)
        r.add_post("/api/create", self.create)
        r.add_post("/api/copy", self.empty_ok)
        r.add_delete("/api/delete", self.empty_ok)
        r.add_post("/api/blobs/{digest}", self.blob_upload)
        r.add_head("/api/blobs/{digest}", self.blob_exists)
        return app

    # --- Ollama's own checks, and recording -------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: object) -> web.StreamResponse:
        body = await request.read() if request.can_read_body else b""
        if self.record:
            self.requests.append(
                Recorded(request.method, request.raw_path, dict(request.headers), body)
            )
        request[BODY] = body
        if not _local_host(request.host):
            return web.Response(status=403)
        origin = request.headers.get("Origin")
        if origin and not _allowed_origin(origin, request.host):
            return web.Response(status=403)
        started = time.monotonic()
        try:
            assert callable(handler)
            response: web.StreamResponse = await handler(request)
            return response
        except (asyncio.CancelledError, ConnectionResetError):
            self.abandoned.append((request.path, time.monotonic() - started))
            raise

    # --- handlers -------------------------------------------------------------------------

    async def root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running", content_type="text/plain", charset="utf-8")

    def static(self, name: str):  # type: ignore[no-untyped-def]
        async def handler(request: web.Request) -> web.Response:
            return _json(fixture(name))

        return handler

    async def status(self, request: web.Request) -> web.Response:
        return _json(b'{"cloud":{"disabled":false,"source":"none"}}')

    async def show(self, request: web.Request) -> web.StreamResponse:
        doc = _body(request)
        if doc.get("model") == "llama9":
            return _error(404, "model 'llama9' not found")
        return _json(fixture("show.json"))

    async def generate(self, request: web.Request) -> web.StreamResponse:
        return await self._inference(request, "generate")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._inference(request, "chat")

    async def _inference(self, request: web.Request, kind: str) -> web.StreamResponse:
        doc = _body(request)
        model = doc.get("model")
        if model == "llama9":
            return _error(404, "model 'llama9' not found")
        if model == "silent":
            await asyncio.sleep(60)
        if doc.get("stream", True) is False:
            return _json(fixture(f"{kind}-nonstream.json"))
        lines = fixture(f"{kind}-stream.ndjson").splitlines(keepends=True)
        if model == "midway-error":
            lines = fixture("stream-error-midway.ndjson").splitlines(keepends=True)
        response = web.StreamResponse(headers={"Content-Type": NDJSON})
        await response.prepare(request)
        for number, line in enumerate(lines):
            await response.write(line)
            if model == "stall":
                await asyncio.sleep(3600)
            if model == "broken":
                assert request.transport is not None
                request.transport.abort()
                return response
            if model == "slow" and number < len(lines) - 1:
                await asyncio.sleep(self.slow_interval)
        await response.write_eof()
        return response

    async def embed(self, request: web.Request) -> web.StreamResponse:
        doc = _body(request)
        if doc.get("model") == "llama9":
            return _error(404, 'model "llama9" not found, try pulling it first')
        if doc.get("model") == "silent":
            await asyncio.sleep(60)
        name = "embed.json" if request.path.endswith("/embed") else "embeddings-legacy.json"
        return _json(fixture(name))

    async def pull(self, request: web.Request) -> web.StreamResponse:
        if _body(request).get("stream", True) is False:
            return _json(fixture("pull-nonstream.json"))
        return await _stream(request, fixture("pull-stream.ndjson"))

    async def create(self, request: web.Request) -> web.StreamResponse:
        return await _stream(request, fixture("create-stream.ndjson"))

    async def empty_ok(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def blob_upload(self, request: web.Request) -> web.Response:
        digest = request.match_info["digest"]
        actual = "sha256:" + hashlib.sha256(request[BODY]).hexdigest()
        if actual != digest:
            return _error(400, f'digest mismatch, expected "{digest}", got "{actual}"')
        if digest in self.blobs:
            return web.Response(status=200)
        self.blobs.add(digest)
        return web.Response(status=201)

    async def blob_exists(self, request: web.Request) -> web.Response:
        found = request.match_info["digest"] in self.blobs
        return web.Response(status=200 if found else 404)


def _body(request: web.Request) -> dict[str, object]:
    try:
        doc = orjson.loads(request[BODY] or b"{}")
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _json(body: bytes, status: int = 200) -> web.Response:
    return web.Response(status=status, body=body, headers={"Content-Type": GIN_JSON})


def _error(status: int, message: str) -> web.Response:
    return _json(orjson.dumps({"error": message}), status)


async def _stream(request: web.Request, body: bytes) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": NDJSON})
    await response.prepare(request)
    for line in body.splitlines(keepends=True):
        await response.write(line)
    await response.write_eof()
    return response


def _local_host(host: str) -> bool:
    """Ollama's allowedHostsMiddleware, for a server listening on loopback."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]").lower()
    if name in ("localhost", "") or name.endswith((".localhost", ".local", ".internal")):
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_unspecified or ip.is_link_local


def _allowed_origin(origin: str, host: str) -> bool:
    """Ollama's default CORS origins (no OLLAMA_ORIGINS set)."""
    if origin in (f"http://{host}", f"https://{host}"):
        return True
    for scheme in ("http://", "https://"):
        for local in ("localhost", "127.0.0.1", "0.0.0.0"):
            base = scheme + local
            if origin == base or origin.startswith(base + ":"):
                return True
    return origin.startswith(("app://", "file://", "tauri://", "vscode-webview://"))


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the fake Ollama on loopback.")
    parser.add_argument("--port", type=int, default=11434)
    args = parser.parse_args()
    fake = FakeOllama(record=False)
    web.run_app(
        fake.app(),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        handler_cancellation=True,
        print=None,
    )


if __name__ == "__main__":
    main()

"""The pipe: every route, byte for byte, streamed as it arrives, closed when the client leaves."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import io
import itertools
import socket
import time
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import Request
from pytest_aiohttp import AiohttpClient
from yarl import URL

from aigateway import Settings, create_app
from aigateway.protocol.routes import RELAY_ROUTES
from aigateway.relay.exchange import Exchange
from aigateway.relay.inflight import InFlightRequest
from aigateway.testing.fake_ollama import FakeOllama, fixture

from .helpers import eventually

BLOB = b"not really a model file"
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()

# A body that makes sense for each relayed POST/DELETE route.
BODIES: dict[str, bytes] = {
    "/generate": b'{"model":"llama3.2","prompt":"Why is the sky blue?"}',
    "/chat": b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}',
    "/embed": b'{"model":"all-minilm","input":["a","b"]}',
    "/embeddings": b'{"model":"all-minilm","prompt":"a"}',
    "/show": b'{"model":"llama3.2"}',
    "/pull": b'{"model":"llama3.2"}',
    "/push": b'{"model":"me/llama3.2"}',
    "/create": b'{"model":"mine","from":"llama3.2"}',
    "/copy": b'{"source":"llama3.2","destination":"mine"}',
    "/delete": b'{"model":"mine"}',
    "/blobs/{digest}": BLOB,
    "/chat/completions": b'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}',
    "/completions": b'{"model":"llama3.2","prompt":"hi","stream":true}',
    "/responses": b'{"model":"llama3.2","input":"hi"}',
    "/audio/transcriptions": b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\n'
    b"whisper\r\n--b--\r\n",
    "/messages": b'{"model":"qwen3-coder","max_tokens":10,"messages":[],"stream":true}',
}
# The transcription route's form: Ollama reads its model only with this Content-Type.
FORM = {"Content-Type": "multipart/form-data; boundary=b"}
# /v1/embeddings shares its tail with /api/embeddings but wants an OpenAI body.
V1_BODIES = {"/embeddings": b'{"model":"all-minilm","input":"a"}'}
ROUTE_CASES = [
    pytest.param(
        method,
        ("/api" if route.native else "/v1") + route.path,
        id=f"{method} {'/api' if route.native else '/v1'}{route.path}",
    )
    for route in RELAY_ROUTES
    for method in route.methods
]


async def _direct_and_relayed(
    upstream: TestServer,
    client: TestClient[Request, None],
    method: str,
    path: str,
    body: bytes | None,
    fake: FakeOllama | None = None,
) -> tuple[tuple[int, str | None, bytes], tuple[int, str | None, bytes]]:
    blobs_before = set(fake.blobs) if fake else set()
    if not path.startswith(("/api/", "/v1/")):
        path = "/api" + path
    headers = FORM if path.endswith("/transcriptions") else None
    async with (
        aiohttp.ClientSession() as direct,
        direct.request(method, upstream.make_url(path), data=body, headers=headers) as resp,
    ):
        want = (resp.status, resp.headers.get("Content-Type"), await resp.read())
    if fake:
        fake.blobs = blobs_before  # so a blob upload meets the same state twice
    async with client.request(method, path, data=body, headers=headers) as resp:
        got = (resp.status, resp.headers.get("Content-Type"), await resp.read())
    return want, got


@pytest.mark.parametrize(("method", "path"), ROUTE_CASES)
async def test_every_route_and_method_is_relayed_unchanged(
    admin: TestClient[Request, None], upstream: TestServer, fake: FakeOllama, method: str, path: str
) -> None:
    client = admin
    tail = path.removeprefix("/api").removeprefix("/v1")
    body = None
    if method in ("POST", "DELETE"):
        body = (V1_BODIES.get(tail) if path.startswith("/v1") else None) or BODIES[tail]
    concrete = path.replace("{digest}", BLOB_DIGEST).replace("{model}", "llama3.2")
    if method == "HEAD" and "blobs" in path:
        fake.blobs.add(BLOB_DIGEST)
    want, got = await _direct_and_relayed(upstream, client, method, concrete, body, fake)
    assert got == want
    assert want[0] in (200, 201)
    relayed = fake.requests[-1]
    assert (relayed.method, relayed.path_qs) == (method, concrete)
    if tail == "/completions":
        # An OpenAI stream without include_usage: the gateway asks for the counts (the
        # client's bytes, above, are the same as without it).
        assert body is not None
        assert relayed.body == body[:-1] + b',"stream_options":{"include_usage":true}}'
    else:
        assert relayed.body == (body or b"")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/generate", b'{"model":"llama3.2","prompt":"hi"}'),
        ("/chat", b'{"model":"llama3.2","messages":[]}'),
        ("/pull", b'{"model":"llama3.2"}'),
        ("/generate", b'{"model":"midway-error","prompt":"hi"}'),
        ("/chat", b'{"model":"llama9","messages":[]}'),
        ("/embed", b'{"model":"llama9","input":"x"}'),
        # (A body that is not JSON is the gateway's own 400: see test_policy.py.)
    ],
)
async def test_streams_and_errors_are_byte_identical(
    admin: TestClient[Request, None], upstream: TestServer, path: str, body: bytes
) -> None:
    client = admin
    want, got = await _direct_and_relayed(upstream, client, "POST", path, body)
    assert got == want


async def test_a_relayed_request_is_freed_as_it_ends_not_left_to_the_collector(
    client: TestClient[Request, None],
) -> None:
    """What a request made goes by reference counting once it ends: no cycle (its place
    in flight and its exchange point at each other) left for the garbage collector, whose
    passes over every request's objects cost about 2% of the relay's instructions."""
    await (await client.post("/api/chat", data=BODIES["/chat"])).read()
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            resp = await client.post("/api/chat", data=BODIES["/chat"])
            assert resp.status == 200
            await resp.read()
        for _ in range(5):  # (the handler's last steps after the client has the answer)
            await asyncio.sleep(0)
        left = [o for o in gc.get_objects() if isinstance(o, Exchange | InFlightRequest)]
    finally:
        gc.enable()
    assert left == []


async def test_ollama_error_bodies_pass_through(client: TestClient[Request, None]) -> None:
    resp = await client.post("/api/embed", data=b'{"model":"llama9","input":"x"}')
    assert resp.status == 404
    assert await resp.read() == b'{"error":"model \\"llama9\\" not found, try pulling it first"}'
    resp = await client.post("/api/generate", data=b'{"model":"midway-error"}')
    assert resp.status == 200
    assert await resp.read() == fixture("stream-error-midway.ndjson")


async def test_request_body_reaches_ollama_unchanged(
    client: TestClient[Request, None], fake: FakeOllama
) -> None:
    # Odd spacing, key order and unicode must survive: the gateway never re-encodes.
    body = '{ "prompt" : "caf\u00e9 \\u00e9 <>&",\n "model":"llama3.2", "stream":false }'.encode()
    resp = await client.post("/api/generate", data=body, headers={"Content-Type": "text/x-odd"})
    assert resp.status == 200
    assert fake.requests[-1].body == body
    assert fake.requests[-1].headers["Content-Type"] == "text/x-odd"


async def test_query_strings_pass_through(
    client: TestClient[Request, None], fake: FakeOllama
) -> None:
    # encoded=True so not even the test's own client re-quotes the query.
    url = URL(str(client.make_url("/api/tags")) + "?verbose=true&name=a%20b&x=%2F", encoded=True)
    resp = await client.session.get(url)
    assert resp.status == 200
    assert fake.requests[-1].path_qs == "/api/tags?verbose=true&name=a%20b&x=%2F"


async def test_root_answers_like_ollama(anon: TestClient[Request, None]) -> None:
    resp = await anon.get("/")
    assert (resp.status, await resp.text()) == (200, "Ollama is running")
    assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
    resp = await anon.head("/")
    assert resp.status == 200


async def test_base_path_maps_onto_ollamas_api(
    aiohttp_client: AiohttpClient, settings: Settings, key: str, fake: FakeOllama
) -> None:
    app = create_app(Settings(**{**_fields(settings), "base_path": "/ollama/api"}))
    client = await aiohttp_client(app, headers={"Authorization": f"Bearer {key}"})
    resp = await client.post("/ollama/api/chat", data=b'{"model":"llama3.2","stream":false}')
    assert resp.status == 200
    assert fake.requests[-1].path_qs == "/api/chat"
    assert await resp.read() == fixture("chat-nonstream.json")
    assert (await client.post("/api/chat", data=b"{}")).status == 404
    for probe in ("/", "/ollama", "/ollama/"):
        resp = await client.get(probe)
        assert await resp.text() == "Ollama is running", probe


async def test_hop_by_hop_and_credentials_never_reach_ollama(
    client: TestClient[Request, None], fake: FakeOllama, key: str
) -> None:
    resp = await client.post(
        "/api/show",
        data=b'{"model":"llama3.2"}',
        headers={
            "Connection": "keep-alive, X-Private-Hop",
            "X-Private-Hop": "1",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Authorization": "Basic eDp5",
            "Cookie": "session=abc",
            "X-Custom": "kept",
        },
    )
    assert resp.status == 200
    sent = {name.lower(): value for name, value in fake.requests[-1].headers.items()}
    for name in (
        "x-private-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "cookie",
        "authorization",
    ):
        assert name not in sent, name
    assert sent["x-custom"] == "kept"
    assert key not in repr(sent)


async def test_the_clients_own_user_agent_and_content_type_or_none_reach_ollama(
    aiohttp_client: AiohttpClient, gateway: TestServer, fake: FakeOllama, key: str
) -> None:
    auth = {"Authorization": f"Bearer {key}"}
    own = {"User-Agent": "my-app/1.0", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            gateway.make_url("/api/show"), data=b'{"model":"llama3.2"}', headers=auth | own
        ) as resp:
            assert resp.status == 200
        sent = fake.requests[-1].headers
        assert (sent["User-Agent"], sent["Content-Type"]) == ("my-app/1.0", "application/json")
        assert sent["Accept-Encoding"] == "identity"
        # A client that sends neither: Ollama gets neither, not aiohttp's own.
        async with session.post(
            gateway.make_url("/api/show"),
            data=b'{"model":"llama3.2"}',
            headers=auth,
            skip_auto_headers=("User-Agent", "Content-Type"),
        ) as resp:
            assert resp.status == 200
        sent = fake.requests[-1].headers
        assert "User-Agent" not in sent and "Content-Type" not in sent, dict(sent)
        # One but not the other.
        async with session.post(
            gateway.make_url("/api/show"),
            data=b'{"model":"llama3.2"}',
            headers=auth | {"User-Agent": "my-app/1.0"},
            skip_auto_headers=("Content-Type",),
        ) as resp:
            assert resp.status == 200
        sent = fake.requests[-1].headers
        assert sent["User-Agent"] == "my-app/1.0" and "Content-Type" not in sent, dict(sent)


async def test_upstream_key_option_is_sent_instead_of_the_clients(
    aiohttp_client: AiohttpClient, settings: Settings, key: str, fake: FakeOllama
) -> None:
    app = create_app(Settings(**{**_fields(settings), "upstream_api_key": "upstream-secret"}))
    client = await aiohttp_client(app, headers={"Authorization": f"Bearer {key}"})
    assert (await client.get("/api/tags")).status == 200
    assert fake.requests[-1].headers["Authorization"] == "Bearer upstream-secret"


async def test_foreign_host_and_browser_origin_still_work(
    client: TestClient[Request, None], upstream: TestServer, fake: FakeOllama
) -> None:
    foreign = {"Host": "gateway.example.com", "Origin": "https://app.example.com"}
    # The fake refuses them the way Ollama does...
    async with aiohttp.ClientSession() as direct:
        for header, value in foreign.items():
            async with direct.get(upstream.make_url("/api/tags"), headers={header: value}) as r:
                assert r.status == 403, header
    # ...and the gateway's request is accepted anyway.
    resp = await client.get("/api/tags", headers=foreign)
    assert resp.status == 200
    assert await resp.read() == fixture("tags.json")
    assert "Origin" not in fake.requests[-1].headers


async def test_each_chunk_is_written_as_it_arrives(
    client: TestClient[Request, None], fake: FakeOllama
) -> None:
    fake.slow_interval = 0.1
    resp = await client.post("/api/generate", data=b'{"model":"slow","prompt":"hi"}')
    assert resp.status == 200
    arrivals = []
    while await resp.content.readline():
        arrivals.append(time.monotonic())
    assert len(arrivals) == 5
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(0.07 < gap < 0.5 for gap in gaps), gaps


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"model":"stall","prompt":"hi"}', id="streaming"),
        pytest.param(b'{"model":"silent","prompt":"hi","stream":false}', id="silent-upstream"),
        pytest.param(b'{"model":"silent","input":"hi"}', id="silent-embed"),
    ],
)
async def test_client_leaving_closes_the_upstream_request(
    gateway: TestServer, key: str, fake: FakeOllama, body: bytes
) -> None:
    path = "/api/embed" if b"input" in body else "/api/generate"

    async def call() -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                gateway.make_url(path), data=body, headers={"Authorization": f"Bearer {key}"}
            ) as resp,
        ):
            await resp.content.readline()
            await asyncio.sleep(60)

    task = asyncio.create_task(call())
    await eventually(lambda: len(fake.requests) == 1)
    await asyncio.sleep(0.2)
    assert fake.abandoned == []
    left_at = time.monotonic()
    task.cancel()
    took = await eventually(lambda: len(fake.abandoned) == 1, timeout=3)
    assert fake.abandoned[0][0] == path
    assert took < 1.0, f"upstream still open {took:.2f} s after the client left"
    assert time.monotonic() - left_at < 1.5


async def test_unreachable_upstream_is_502_and_serving_goes_on(
    aiohttp_client: AiohttpClient,
    settings: Settings,
    key: str,
    admin_key: str,
    caplog: pytest.LogCaptureFixture,
    dead_port: int,
) -> None:
    """The 502 says where the upstream is to an admin (and the log), not to a user key
    (on 31b9ff2 any key holder read Ollama's internal URL)."""
    dead_url = f"http://127.0.0.1:{dead_port}"
    app = create_app(Settings(**{**_fields(settings), "ollama_base_url": dead_url}))
    client = await aiohttp_client(app, headers={"Authorization": f"Bearer {key}"})
    for _ in range(2):
        resp = await client.post("/api/chat", data=b'{"model":"llama3.2"}')
        assert resp.status == 502
        assert resp.headers["Content-Type"].startswith("application/json")
        error = (await resp.json())["error"]
        assert error.startswith("cannot reach Ollama: ") and str(dead_port) not in error
    assert any(dead_url in r.getMessage() for r in caplog.records)
    resp = await client.post(
        "/api/chat",
        data=b'{"model":"llama3.2"}',
        headers={"Authorization": f"Bearer {admin_key}"},
    )
    assert resp.status == 502 and dead_url in (await resp.json())["error"]
    assert (await client.get("/health")).status == 200


async def test_upstream_that_does_not_answer_in_time_is_504(
    aiohttp_client: AiohttpClient, settings: Settings, key: str
) -> None:
    app = create_app(Settings(**{**_fields(settings), "upstream_read_timeout": 0.3}))
    client = await aiohttp_client(app, headers={"Authorization": f"Bearer {key}"})
    started = time.monotonic()
    resp = await client.post("/api/generate", data=b'{"model":"silent","stream":false}')
    assert resp.status == 504
    assert "did not answer in time" in (await resp.json())["error"]
    assert time.monotonic() - started < 2


async def test_connect_timeout_is_504(
    aiohttp_client: AiohttpClient, settings: Settings, key: str
) -> None:
    # A listening socket that never accepts, its backlog full: new connects hang.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    try:
        app = create_app(
            Settings(
                **{
                    **_fields(settings),
                    "ollama_base_url": f"http://127.0.0.1:{port}",
                    "upstream_connect_timeout": 0.3,
                }
            )
        )
        client = await aiohttp_client(app, headers={"Authorization": f"Bearer {key}"})
        started = time.monotonic()
        resp = await client.get("/api/tags")
        assert resp.status == 504, await resp.text()
        assert time.monotonic() - started < 2
    finally:
        for sock in [*fillers, listener]:
            sock.close()


async def test_stream_broken_by_upstream_ends_with_an_error_line(
    client: TestClient[Request, None],
) -> None:
    resp = await client.post("/api/generate", data=b'{"model":"broken","prompt":"hi"}')
    lines = (await resp.read()).splitlines()
    assert lines[0] == fixture("generate-stream.ndjson").splitlines()[0]
    assert "error" in orjson.loads(lines[-1])


async def test_a_50_mb_embed_body_passes(
    client: TestClient[Request, None], fake: FakeOllama
) -> None:
    texts = ["x" * 1000] * 50_000
    body = orjson.dumps({"model": "all-minilm", "input": texts})
    assert len(body) > 50_000_000
    resp = await client.post(
        "/api/embed", data=io.BytesIO(body), headers={"Content-Type": "application/json"}
    )
    assert resp.status == 200
    assert await resp.read() == fixture("embed.json")
    assert fake.requests[-1].headers["Content-Type"] == "application/json"
    assert hashlib.sha256(fake.requests[-1].body).digest() == hashlib.sha256(body).digest()


async def test_body_over_the_limit_is_413(
    aiohttp_client: AiohttpClient, settings: Settings, key: str, fake: FakeOllama
) -> None:
    app = create_app(Settings(**{**_fields(settings), "max_body_bytes": 1024}))
    client = await aiohttp_client(app, headers={"Authorization": f"Bearer {key}"})
    resp = await client.post("/api/chat", data=b"{" + b" " * 2048 + b"}")
    assert resp.status == 413
    assert "MAX_BODY_SIZE" in (await resp.json())["error"]

    async def chunked() -> object:
        yield b"{" + b" " * 2048
        yield b"}"

    resp = await client.post("/api/chat", data=chunked())
    assert resp.status == 413
    assert fake.requests == []


async def test_unknown_path_and_wrong_method(
    client: TestClient[Request, None], fake: FakeOllama
) -> None:
    resp = await client.get("/api/nope")
    assert resp.status == 404
    assert "error" in await resp.json()
    resp = await client.get("/api/chat")
    assert resp.status == 405
    assert "error" in await resp.json()
    # Cloud/account routes are not relayed: they would act with the GPU owner's account.
    assert (await client.post("/api/me")).status == 404
    assert fake.requests == []


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/..%2F..%2Fapi%2Fps",
        "/v1/models/..",
        "/v1/models/a%2Fb",
        "/api/blobs/..%2Fpull",
        "/api/blobs/sha256:00%5C..",
    ],
)
async def test_a_path_parameter_cannot_reach_another_route(
    admin: TestClient[Request, None], fake: FakeOllama, path: str
) -> None:
    method = "HEAD" if "/blobs/" in path else "GET"
    resp = await admin.request(method, URL(path, encoded=True))
    assert resp.status == 404
    assert fake.requests == []


async def test_blob_upload_is_streamed(admin: TestClient[Request, None], fake: FakeOllama) -> None:
    client = admin

    async def chunks() -> object:
        for i in range(0, len(BLOB), 4):
            yield BLOB[i : i + 4]

    resp = await client.post(f"/api/blobs/{BLOB_DIGEST}", data=chunks())
    assert resp.status == 201
    assert (await client.head(f"/api/blobs/{BLOB_DIGEST}")).status == 200
    assert (await client.head("/api/blobs/sha256:00")).status == 404
    resp = await client.post("/api/blobs/sha256:aaa", data=BLOB)
    assert resp.status == 400
    assert "digest mismatch" in (await resp.json())["error"]


def _fields(settings: Settings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in Settings.__dataclass_fields__}

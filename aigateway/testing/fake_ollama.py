"""A fake Ollama: a real aiohttp server that answers like Ollama, for tests and the benchmark.

Responses are the fixtures in `fixtures/` (real Ollama shapes, see their README). It
checks Host and Origin the way Ollama does (403 for a foreign Host or an unknown browser
Origin), records every request it receives, and notes every request whose client went
away before it finished. The `model` in a request body picks a behaviour:

    llama9          404 "model not found", in Ollama's words for that route
    midway-error    a stream that ends with an {"error": ...} line
    slow            a stream (a generation's, a pull's) with one line every
                    `slow_interval` seconds
    silent          no byte at all for a minute (a long prompt evaluation)
    stall           one stream line, then nothing until the client leaves
    broken          one stream line or OpenAI event (Anthropic: three events), then the
                    connection drops
    short           a non-streamed answer whose Content-Length promises more than comes
    anything else   the fixture for the route, streamed unless "stream": false

Like Ollama, it generates at most `options.num_predict` tokens: the fixture's eval_count
is lowered to it. A non-streamed /v1/chat/completions that asks for JSON of a schema
(response_format json_schema) or for a named function's call (tool_choice) gets one,
filled in from the schema; one in JSON mode (json_object) gets {} (structured.py).

Given a `catalog` (fake_models.DEMO_MODELS), it has exactly those models and describes
each as Ollama would (/api/tags, /api/show, /api/ps with the models used in the last five
minutes, embeddings of each model's length); given a `pace`, it answers like a GPU: the
first token after `pace.first_token_s`, then `pace.tokens_per_s`, with final counts and
durations to match (the demo's; the tests' fake stays fast).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import ipaddress
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiohttp import web

from . import go_json
from .fake_models import (
    ModelCard,
    Pace,
    answer_tokens,
    embedding,
    estimated_prompt_tokens,
    final_counts,
    loaded_since,
    now_rfc3339,
)
from .structured import structured_answer

FIXTURES = Path(__file__).with_name("fixtures")
NDJSON = "application/x-ndjson"
GIN_JSON = "application/json; charset=utf-8"
BODY = web.RequestKey("body", bytes)
DECODED = web.RequestKey("decoded", dict)


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
    # The body as Ollama's Go structs see it (go_json.decode); None when it is not JSON
    # for a struct (Ollama then answers 400), or not meant to be (blobs, audio).
    decoded: dict[str, object] | None = None

    @property
    def model(self) -> object:
        """The model Ollama would use: model, else the older name."""
        doc = self.decoded or {}
        return doc.get("model") or doc.get("name")


@dataclass
class FakeOllama:
    slow_interval: float = 0.1
    requests: list[Recorded] = field(default_factory=list)
    # (path, seconds from arrival) for each request whose client left before the end
    abandoned: list[tuple[str, float]] = field(default_factory=list)
    blobs: set[str] = field(default_factory=set)
    record: bool = True  # the benchmark turns this off to keep its memory flat
    extra_models: list[str] = field(default_factory=list)  # listed besides the fixtures
    # Several-upstream tests: the only models it has (listed, and answered; others 404),
    # those /api/ps shows loaded, and a status every request gets instead (a busy server).
    models: list[str] | None = None
    loaded: list[str] | None = None
    fail_with: int | None = None
    # A model list's body exactly as given, by path (/api/tags, /api/ps, /v1/models).
    list_bodies: dict[str, bytes] = field(default_factory=dict)
    # The models it has, described (then `models` is their names), and how fast it answers.
    catalog: tuple[ModelCard, ...] = ()
    pace: Pace | None = None
    # When each catalog model last answered: /api/ps lists those still "loaded".
    used_at: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.catalog and self.models is None:
            self.models = [card.name for card in self.catalog]

    def card(self, model: object) -> ModelCard | None:
        """The catalog's model that `model` names (`llama3.2` is `llama3.2:latest`)."""
        if not isinstance(model, str):
            return None
        return next((c for c in self.catalog if c.name == _tagged(model)), None)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=1024**3)
        r = app.router
        for method in ("GET", "HEAD"):
            r.add_route(method, "/", self.root)
            r.add_route(method, "/api/version", self.static("version.json"))
            r.add_route(method, "/api/tags", self.tags)
        r.add_get("/api/status", self.status, allow_head=False)
        r.add_get("/api/ps", self.ps, allow_head=False)
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
        r.add_post("/v1/chat/completions", self.openai_chat)
        r.add_post("/v1/completions", self.openai_completions)
        r.add_post("/v1/embeddings", self.openai_embeddings)
        r.add_post("/v1/responses", self.openai_responses)
        r.add_post("/v1/audio/transcriptions", self.openai_transcription)
        r.add_get("/v1/models", self.openai_models, allow_head=False)
        r.add_get("/v1/models/{model}", self.openai_model, allow_head=False)
        r.add_post("/v1/messages", self.anthropic_messages)
        return app

    # --- Ollama's own checks, and recording -------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: object) -> web.StreamResponse:
        body = await request.read() if request.can_read_body else b""
        decoded, error = None, None
        if body and "/blobs/" not in request.path and "/audio/" not in request.path:
            try:
                # The benchmark (record off) measures the gateway, not this decoder.
                decoded = go_json.decode(body) if self.record else _plain(body)
            except go_json.GoDecodeError as exc:
                error = str(exc)
        if self.record:
            self.requests.append(
                Recorded(request.method, request.raw_path, dict(request.headers), body, decoded)
            )
        if error is not None:  # Ollama's handlers answer a failed decode with 400
            return _error(400, error)
        request[BODY] = body
        request[DECODED] = decoded or {}
        if self.fail_with is not None:
            return _error(self.fail_with, "server busy, please try again")
        named = (decoded or {}).get("model") or (decoded or {}).get("name")
        if (
            self.models is not None
            and isinstance(named, str)
            and request.method == "POST"
            and request.path.rsplit("/", 1)[-1] not in ("pull", "push", "create", "copy")
            and _tagged(named) not in {_tagged(m) for m in self.models}
        ):
            return _not_found(request.path, named)
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

    def static(self, name: str, content_type: str = GIN_JSON):  # type: ignore[no-untyped-def]
        async def handler(request: web.Request) -> web.Response:
            return _json(fixture(name), content_type=content_type)

        return handler

    async def tags(self, request: web.Request) -> web.Response:
        if request.path in self.list_bodies:
            return _json(self.list_bodies[request.path])
        if self.catalog:
            return _json(orjson.dumps({"models": [c.tags_entry() for c in self.catalog]}))
        doc = orjson.loads(fixture("tags.json"))
        if self.models is not None:
            doc["models"] = [{**doc["models"][0], "name": m, "model": m} for m in self.models]
            return _json(orjson.dumps(doc))
        for name in self.extra_models:
            doc["models"].append({**doc["models"][0], "name": name, "model": name})
        return _json(orjson.dumps(doc) if self.extra_models else fixture("tags.json"))

    async def ps(self, request: web.Request) -> web.Response:
        if request.path in self.list_bodies:
            return _json(self.list_bodies[request.path])
        if self.catalog:
            loaded = [(self.card(name), self.used_at[name]) for name in loaded_since(self.used_at)]
            models = [card.ps_entry(at) for card, at in loaded if card is not None]
            return _json(orjson.dumps({"models": models}))
        if self.loaded is None:
            return _json(fixture("ps.json"))
        doc = orjson.loads(fixture("ps.json"))
        doc["models"] = [{**doc["models"][0], "name": m, "model": m} for m in self.loaded]
        return _json(orjson.dumps(doc))

    async def openai_models(self, request: web.Request) -> web.Response:
        if request.path in self.list_bodies:
            return _json(self.list_bodies[request.path], content_type="application/json")
        doc = orjson.loads(fixture("openai-models.json"))
        if self.models is not None:
            doc["data"] = [{**doc["data"][0], "id": m} for m in self.models]
            return _json(orjson.dumps(doc), content_type="application/json")
        for name in self.extra_models:
            doc["data"].append({**doc["data"][0], "id": name})
        body = orjson.dumps(doc) if self.extra_models else fixture("openai-models.json")
        return _json(body, content_type="application/json")

    async def status(self, request: web.Request) -> web.Response:
        return _json(b'{"cloud":{"disabled":false,"source":"none"}}')

    async def show(self, request: web.Request) -> web.StreamResponse:
        doc = _body(request)
        if doc.get("model") == "llama9":
            return _error(404, "model 'llama9' not found")
        card = self.card(doc.get("model"))
        if card is not None:
            return _json(orjson.dumps(card.show()))
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
        if model == "short":
            return await _short_answer(request)
        card = self.card(model)
        if card is not None:
            self.used_at[card.name] = time.time()
            if self.pace is not None:
                return await _paced_answer(request, kind, doc, self.pace)
        plain: dict[str, object] = {}
        if kind == "generate":
            with contextlib.suppress(go_json.GoDecodeError):  # (Go read it; orjson may not)
                plain = _plain(request[BODY])
        if plain.get("prompt") == "":
            # Only the model loaded (or, with keep_alive 0, unloaded): one object, stream
            # or not. (An explicit empty prompt: tests that send none get an answer.)
            loaded = orjson.loads(fixture("generate-load.json"))
            if plain.get("keep_alive") in (0, "0", "0s"):
                loaded["done_reason"] = "unload"
            return _json(orjson.dumps(loaded))
        cap = _num_predict(doc)
        if doc.get("stream", True) is False:
            return _json(_capped(fixture(f"{kind}-nonstream.json"), cap))
        lines = _capped(fixture(f"{kind}-stream.ndjson"), cap).splitlines(keepends=True)
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
        card = self.card(doc.get("model"))
        if card is not None:
            self.used_at[card.name] = time.time()
            return _json(orjson.dumps(_embeddings(request, card)))
        name = "embed.json" if request.path.endswith("/embed") else "embeddings-legacy.json"
        return _json(fixture(name))

    async def pull(self, request: web.Request) -> web.StreamResponse:
        doc = _body(request)
        if doc.get("stream", True) is False:
            return _json(fixture("pull-nonstream.json"))
        interval = self.slow_interval if doc.get("model") == "slow" else 0.0
        return await _stream(request, fixture("pull-stream.ndjson"), interval)

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

    # --- OpenAI- and Anthropic-compatible routes (/v1) ----------------------------------

    async def openai_chat(self, request: web.Request) -> web.StreamResponse:
        return await self._openai(
            request, "openai-chat.json", "openai-chat-stream-include-usage.sse"
        )

    async def openai_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._openai(request, None, "openai-completions-stream-include-usage.sse")

    async def _openai(
        self, request: web.Request, whole: str | None, events: str
    ) -> web.StreamResponse:
        doc = _body(request)
        if doc.get("model") == "llama9":
            return _json(fixture("openai-error-404.json"), 404, "application/json")
        if not doc.get("stream"):
            await self._prompt_evaluation()
            body = fixture(whole) if whole else OPENAI_COMPLETION
            if whole == "openai-chat.json":
                body = _structured(body, request[BODY])
            return _json(body, content_type="application/json")
        chunks = fixture(events).split(b"\n\n")[:-1]
        options = doc.get("stream_options")
        if not (isinstance(options, dict) and options.get("include_usage")):
            # Without include_usage Ollama sends no usage chunk (and completions no usage).
            chunks = [c for c in chunks if b'"choices":[]' not in c]
            chunks = [re.sub(rb',"usage":\{[^}]*\}', b"", c) for c in chunks]
        return await self._sse(request, [c + b"\n\n" for c in chunks], doc.get("model"))

    async def openai_embeddings(self, request: web.Request) -> web.StreamResponse:
        return _json(fixture("openai-embeddings.json"), content_type="application/json")

    async def openai_responses(self, request: web.Request) -> web.StreamResponse:
        return _json(OPENAI_RESPONSE, content_type="application/json")

    async def openai_transcription(self, request: web.Request) -> web.StreamResponse:
        return _json(b'{"text":"hello there"}', content_type="application/json")

    async def openai_model(self, request: web.Request) -> web.StreamResponse:
        model = request.match_info["model"]
        known = [m["id"] for m in orjson.loads(fixture("openai-models.json"))["data"]]
        if self.models is not None:
            known = [_tagged(m) for m in self.models]
        if model not in known and f"{model}:latest" not in known:
            return _not_found(request.path, model)
        doc = orjson.loads(fixture("openai-model.json"))
        doc["id"] = model
        return _json(orjson.dumps(doc), content_type="application/json")

    async def anthropic_messages(self, request: web.Request) -> web.StreamResponse:
        doc = _body(request)
        if doc.get("model") == "llama9":
            return _json(fixture("anthropic-error-404.json"), 404, "application/json")
        if not doc.get("stream"):
            await self._prompt_evaluation()
            return _json(fixture("anthropic-messages.json"), content_type="application/json")
        events = fixture("anthropic-messages-stream.sse").split(b"\n\n")[:-1]
        # A broken Anthropic stream breaks after its first text delta.
        return await self._sse(request, [e + b"\n\n" for e in events], doc.get("model"), 3)

    async def _prompt_evaluation(self) -> None:
        """A paced fake's wait before a whole answer to a fixture (a short one: the
        first token's wait is most of it)."""
        if self.pace is not None:
            await asyncio.sleep(self.pace.first_token_s)

    async def _sse(
        self, request: web.Request, events: list[bytes], model: object, broken_after: int = 1
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        for number, event in enumerate(events):
            if self.pace is not None:
                await asyncio.sleep(
                    self.pace.first_token_s if number == 0 else 1 / self.pace.tokens_per_s
                )
            await response.write(event)
            if model == "stall":
                await asyncio.sleep(3600)
            if model == "broken" and number + 1 == broken_after:
                assert request.transport is not None
                request.transport.abort()
                return response
            if model == "slow" and number < len(events) - 1:
                await asyncio.sleep(self.slow_interval)
        await response.write_eof()
        return response


OPENAI_COMPLETION = (
    b'{"id":"cmpl-456","object":"text_completion","created":1761499000,"model":"llama3.2",'
    b'"system_fingerprint":"fp_ollama","choices":[{"text":"Hello","index":0,'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":11,"completion_tokens":1,'
    b'"total_tokens":12}}'
)
OPENAI_RESPONSE = (
    b'{"id":"resp_123","object":"response","created_at":1761499000,"status":"completed",'
    b'"model":"llama3.2","output":[{"type":"message","id":"msg_1","status":"completed",'
    b'"role":"assistant","content":[{"type":"output_text","text":"Hello!","annotations":[]}]}],'
    b'"usage":{"input_tokens":9,"output_tokens":2,"total_tokens":11}}'
)


def _structured(whole: bytes, request_body: bytes) -> bytes:
    """The chat fixture, its message JSON of the schema or the call of the function the
    request asked for, if it asked for one (testing/structured.py)."""
    message = structured_answer(request_body)
    if message is None:
        return whole
    doc = orjson.loads(whole)
    doc["choices"][0]["message"] = message
    doc["choices"][0]["finish_reason"] = "tool_calls" if "tool_calls" in message else "stop"
    return orjson.dumps(doc)


def _plain(body: bytes) -> dict[str, object]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise go_json.GoDecodeError(str(exc)) from None
    return doc if isinstance(doc, dict) else {}


def _body(request: web.Request) -> dict[str, object]:
    """The request's fields as Ollama's Go decoder fills them."""
    return request[DECODED]


def _num_predict(doc: dict[str, object]) -> int | None:
    options = doc.get("options")
    cap = options.get("num_predict") if isinstance(options, dict) else None
    return cap if isinstance(cap, int) and cap >= 0 else None


def _capped(body: bytes, cap: int | None) -> bytes:
    """The fixture with eval_count lowered to num_predict, as Ollama stops there."""
    if cap is None:
        return body
    return re.sub(rb'"eval_count":(\d+)', lambda m: b'"eval_count":%d' % min(int(m[1]), cap), body)


async def _paced_answer(
    request: web.Request, kind: str, doc: dict[str, object], pace: Pace
) -> web.StreamResponse:
    """A generated answer at a GPU's pace: streamed a token a line, or whole at the end."""
    tokens = answer_tokens(_num_predict(doc))
    final = final_counts(estimated_prompt_tokens(request[BODY]), len(tokens), pace)
    text_field = "message" if kind == "chat" else "response"

    def line(text: str, done: bool) -> dict[str, object]:
        part = {"role": "assistant", "content": text} if kind == "chat" else text
        return {
            "model": doc.get("model"),
            "created_at": now_rfc3339(),
            text_field: part,
            "done": done,
        }

    if doc.get("stream", True) is False:
        await asyncio.sleep(pace.first_token_s + len(tokens) / pace.tokens_per_s)
        return _json(orjson.dumps({**line("".join(tokens), True), **final}))
    response = web.StreamResponse(headers={"Content-Type": NDJSON})
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    began = loop.time()
    for number, token in enumerate(tokens):
        # On a schedule from the start, so that slow writes do not slow the pace further.
        due = began + pace.first_token_s + number / pace.tokens_per_s
        await asyncio.sleep(max(0.0, due - loop.time()))
        await response.write(orjson.dumps(line(token, False)) + b"\n")
    await response.write(orjson.dumps({**line("", True), **final}) + b"\n")
    await response.write_eof()
    return response


def _embeddings(request: web.Request, card: ModelCard) -> object:
    """/api/embed's answer (one vector per input), or the legacy /api/embeddings' one."""
    fields = _plain(request[BODY])  # (the Go decoder here keeps only the fields it knows)
    if not request.path.endswith("/embed"):
        return {"embedding": embedding(str(fields.get("prompt", "")), card.embedding_length)}
    given = fields.get("input", "")
    texts = [str(t) for t in given] if isinstance(given, list) else [str(given)]
    return {
        "model": fields.get("model"),
        "embeddings": [embedding(text, card.embedding_length) for text in texts],
        "total_duration": 14143917,
        "load_duration": 1019500,
        "prompt_eval_count": sum(estimated_prompt_tokens(t.encode()) for t in texts),
    }


async def _short_answer(request: web.Request) -> web.StreamResponse:
    """Headers that promise 1,000 bytes, 100 of them, then the connection closes."""
    response = web.StreamResponse(headers={"Content-Type": GIN_JSON})
    response.content_length = 1000
    await response.prepare(request)
    await response.write(b"{" + b" " * 99)
    assert request.transport is not None
    request.transport.abort()
    return response


def _json(body: bytes, status: int = 200, content_type: str = GIN_JSON) -> web.Response:
    return web.Response(status=status, body=body, headers={"Content-Type": content_type})


def _error(status: int, message: str) -> web.Response:
    return _json(orjson.dumps({"error": message}), status)


def _not_found(path: str, model: str) -> web.Response:
    """Ollama's 404 for a model it does not have, in the words and shape of the route."""
    if path.startswith("/v1/"):
        name = "anthropic-error-404.json" if path == "/v1/messages" else "openai-error-404.json"
        body = fixture(name).replace(b"llama9", orjson.dumps(model)[1:-1])
        return _json(body, 404, "application/json")
    if path in ("/api/embed", "/api/embeddings"):
        return _error(404, f'model "{model}" not found, try pulling it first')
    return _error(404, f"model '{model}' not found")


async def _stream(request: web.Request, body: bytes, interval: float = 0.0) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": NDJSON})
    await response.prepare(request)
    lines = body.splitlines(keepends=True)
    for number, line in enumerate(lines):
        await response.write(line)
        if interval and number < len(lines) - 1:
            await asyncio.sleep(interval)
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


def _tagged(name: str) -> str:
    return name if ":" in name else name + ":latest"


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the fake Ollama on loopback.")
    parser.add_argument(
        "--port",
        type=int,
        nargs="+",
        default=[11434],
        help="one or more ports, one process (0: any free one); each is printed once taken",
    )
    args = parser.parse_args()
    asyncio.run(_serve(args.port))


async def _serve(ports: list[int]) -> None:
    """One fake on several ports (the benchmark's several upstreams, in one process like
    its single one, so that only the gateway differs between the two)."""
    fake = FakeOllama(record=False)
    runner = web.AppRunner(fake.app(), access_log=None, handler_cancellation=True)
    await runner.setup()
    for port in ports:
        await web.TCPSite(runner, "127.0.0.1", port).start()
    # The ports taken, in order (what --port 0 left to the system), once all listen.
    print(" ".join(str(address[1]) for address in runner.addresses), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    main()

"""Traces (usage/traces.py): one span a relayed request and a child for each step, its
attributes, a client's traceparent continued and passed upstream, the OTEL_* sampler
honoured, spans exported over real OTLP/HTTP, and nothing of opentelemetry loaded while
traces are off."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from pytest_aiohttp import AiohttpClient, AiohttpServer

from aigateway import Settings, create_app
from aigateway.records import KeyLimits
from aigateway.relay.state import RELAY
from aigateway.setting_parsers import SettingsError
from aigateway.testing.fake_ollama import FakeOllama
from aigateway.upstreams.config import upstreams_from_file
from aigateway.usage.spans import CLIENT, ERROR, SERVER, UNSET, MemoryExporter, Span
from aigateway.usage.traces import open_tracing, wanted

from .conftest import make_key
from .helpers import eventually

ROOT = Path(__file__).resolve().parent.parent
CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
OTEL_VARIABLES = [name for name in os.environ if name.startswith("OTEL_")]

Client = TestClient[web.Request, web.Application]


@pytest.fixture(autouse=True)
def _no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets itself decides (a developer's OTEL_* would change them)."""
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name)


@pytest.fixture
def spans() -> MemoryExporter:
    return MemoryExporter()


async def _traced(
    aiohttp_client: AiohttpClient, settings: Settings, key: str, spans: MemoryExporter
) -> Client:
    app = create_app(settings, span_exporter=spans)
    return await aiohttp_client(app, headers={"Authorization": f"Bearer {key}"})


@pytest.fixture
async def traced(
    aiohttp_client: AiohttpClient, settings: Settings, key: str, spans: MemoryExporter
) -> Client:
    """A client of a gateway in front of the fake Ollama, its spans kept in `spans`."""
    return await _traced(aiohttp_client, settings, key, spans)


async def _requests(client: Client, spans: MemoryExporter, count: int) -> list[Span]:
    """The spans once `count` requests' spans have ended (a handler ends its request's
    span after its last byte went out: a moment after the client has it)."""
    tracing = client.app[RELAY].tracing
    assert tracing is not None

    def ended() -> bool:
        tracing.flush()
        return sum(s.kind == SERVER for s in spans.spans) >= count

    await eventually(ended)
    return list(spans.spans)


def _named(found: Sequence[Span], name: str) -> list[Span]:
    return [span for span in found if span.name == name]


def _children(found: Sequence[Span], parent: Span) -> dict[str, Span]:
    return {span.name: span for span in found if span.parent_id == parent.span_id}


async def test_a_streamed_chat_has_a_span_with_its_steps_and_figures(
    traced: Client, spans: MemoryExporter, key: str
) -> None:
    client = traced
    resp = await client.post("/api/chat", json=CHAT)
    assert resp.status == 200
    lines = (await resp.read()).splitlines()
    final = json.loads(lines[-1])
    found = await _requests(client, spans, 1)
    [root] = _named(found, "POST /api/chat")
    assert root.kind == SERVER and root.parent_id == 0
    attributes = root.attributes or {}
    assert attributes["http.request.method"] == "POST"
    assert attributes["http.route"] == "/api/chat"
    assert attributes["http.response.status_code"] == 200
    assert attributes["aigateway.key.prefix"] == key[:12]
    assert attributes["aigateway.user"] == "alice"
    assert attributes["gen_ai.request.model"] == "llama3.2:latest"
    assert attributes["gen_ai.usage.input_tokens"] == final["prompt_eval_count"]
    assert attributes["gen_ai.usage.output_tokens"] == final["eval_count"]
    assert attributes["aigateway.cost"] == 0.0
    assert attributes["aigateway.request_id"] == resp.headers["X-Request-Id"]
    assert root.status == UNSET
    children = _children(found, root)
    assert sorted(children) == ["admission", "stream", "upstream"]
    admission, upstream, stream = children["admission"], children["upstream"], children["stream"]
    assert upstream.kind == CLIENT
    assert (upstream.attributes or {})["aigateway.upstream"] == "ollama"
    assert (stream.attributes or {})["aigateway.end"] == "complete"
    # the steps in order, inside the request's span: the upstream's ends at the first
    # byte, where the stream's starts, which ends with the request
    assert root.start <= admission.start <= admission.end
    assert admission.end <= upstream.start <= upstream.end
    assert upstream.end == stream.start
    assert 0 < stream.end <= root.end
    assert len({span.trace_id for span in found}) == 1
    # never the key, in any span
    assert key not in repr([(s.name, (s.attributes or {})) for s in found])


async def test_a_client_s_traceparent_is_continued_and_passed_to_ollama(
    traced: Client,
    spans: MemoryExporter,
    fake: FakeOllama,
) -> None:
    client = traced
    headers = {"traceparent": TRACEPARENT, "tracestate": "vendor=client"}
    resp = await client.post("/api/chat", json=CHAT, headers=headers)
    assert resp.status == 200
    await resp.read()
    found = await _requests(client, spans, 1)
    [root] = _named(found, "POST /api/chat")
    assert f"{root.trace_id:032x}" == TRACE_ID
    assert f"{root.parent_id:016x}" == CLIENT_SPAN
    [upstream] = _named(found, "upstream")
    # Ollama gets the upstream span's traceparent (one, not the client's beside it)
    [sent] = [r for r in fake.requests if r.path_qs == "/api/chat"]
    passed = [value for name, value in sent.headers.items() if name.lower() == "traceparent"]
    assert passed == [f"00-{TRACE_ID}-{upstream.span_id:016x}-01"]
    assert sent.headers.get("tracestate") == "vendor=client"  # the client's state, carried


async def test_a_malformed_traceparent_starts_a_new_trace(
    traced: Client, spans: MemoryExporter
) -> None:
    client = traced
    for bad in ("00-zz-yy-01", "x" * 5000, f"00-{'0' * 32}-{CLIENT_SPAN}-01"):
        resp = await client.post("/api/chat", json=CHAT, headers={"traceparent": bad})
        assert resp.status == 200
        await resp.read()
    found = await _requests(client, spans, 3)
    roots = _named(found, "POST /api/chat")
    assert len(roots) == 3 and all(root.parent_id == 0 for root in roots)
    assert len({root.trace_id for root in roots}) == 3


async def test_a_cloud_upstream_gets_a_traceparent_only_when_pass_headers_names_it(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    db_path: str,
    spans: MemoryExporter,
) -> None:
    fakes = {name: FakeOllama() for name in ("named", "silent")}
    urls = {name: str((await aiohttp_server(f.app())).make_url("/v1")) for name, f in fakes.items()}
    path = Path(db_path).with_name("upstreams.toml")
    path.write_text(
        f'[[upstream]]\nname = "named"\nkind = "openai"\nurl = "{urls["named"]}"\n'
        'key_env = "K"\nmodels = ["gpt-4o*"]\nopen = true\npass_headers = ["traceparent"]\n'
        f'[[upstream]]\nname = "silent"\nkind = "openai"\nurl = "{urls["silent"]}"\n'
        'key_env = "K"\nmodels = ["gpt-5*"]\nopen = true\n'
    )
    settings = Settings(token_db_path=db_path, upstreams=upstreams_from_file(str(path), {"K": "s"}))
    client = await _traced(aiohttp_client, settings, await make_key(db_path), spans)
    headers = {"traceparent": TRACEPARENT, "tracestate": "vendor=client"}
    for model in ("gpt-4o-mini", "gpt-5"):
        body = {"model": model, "messages": CHAT["messages"]}
        resp = await client.post("/v1/chat/completions", json=body, headers=headers)
        assert resp.status == 200, await resp.text()
    found = await _requests(client, spans, 2)
    by_upstream = {(s.attributes or {})["aigateway.upstream"]: s for s in _named(found, "upstream")}
    named = {k.lower(): v for k, v in fakes["named"].requests[-1].headers.items()}
    silent = {k.lower(): v for k, v in fakes["silent"].requests[-1].headers.items()}
    assert named["traceparent"] == f"00-{TRACE_ID}-{by_upstream['named'].span_id:016x}-01"
    assert "tracestate" not in named  # (pass_headers names traceparent alone)
    assert "traceparent" not in silent and "tracestate" not in silent


async def test_a_refused_request_s_span_says_why(
    aiohttp_client: AiohttpClient, settings: Settings, db_path: str, spans: MemoryExporter
) -> None:
    key = await make_key(db_path, "bob", "k", limits=KeyLimits(rpm=1))
    client = await _traced(aiohttp_client, settings, key, spans)
    assert (await client.post("/api/chat", json=CHAT)).status == 200
    refused = await client.post("/api/chat", json=CHAT)
    assert refused.status == 429
    found = await _requests(client, spans, 2)
    second = max(_named(found, "POST /api/chat"), key=lambda s: s.start)
    assert (second.attributes or {})["http.response.status_code"] == 429
    assert second.status == UNSET  # (a 4xx is the client's)
    assert sorted(_children(found, second)) == ["admission"]  # ended, nothing sent on


async def test_an_upstream_away_is_an_error_span(
    aiohttp_client: AiohttpClient, db_path: str, dead_port: int, spans: MemoryExporter
) -> None:
    settings = Settings(ollama_base_url=f"http://127.0.0.1:{dead_port}", token_db_path=db_path)
    client = await _traced(aiohttp_client, settings, await make_key(db_path), spans)
    assert (await client.post("/api/chat", json=CHAT)).status == 502
    found = await _requests(client, spans, 1)
    [root] = _named(found, "POST /api/chat")
    assert (root.attributes or {})["http.response.status_code"] == 502
    assert root.status == ERROR
    assert "cannot reach Ollama" in root.message
    assert sorted(_children(found, root)) == ["admission", "upstream"]
    assert all(span.end >= span.start > 0 for span in found)


async def test_a_queued_request_has_a_queue_wait(
    aiohttp_server: AiohttpServer,
    aiohttp_client: AiohttpClient,
    db_path: str,
    spans: MemoryExporter,
) -> None:
    server = await aiohttp_server(FakeOllama(slow_interval=0.05).app())
    path = Path(db_path).with_name("upstreams.toml")
    url = str(server.make_url("")).rstrip("/")
    path.write_text(f'[[upstream]]\nname = "gpu"\nurl = "{url}"\nmax_concurrent = 1\n')
    settings = Settings(token_db_path=db_path, upstreams=upstreams_from_file(str(path), {}))
    client = await _traced(aiohttp_client, settings, await make_key(db_path), spans)
    slow = {**CHAT, "model": "slow"}

    async def chat() -> int:
        async with client.post("/api/chat", json=slow) as resp:
            await resp.read()
            return resp.status

    assert list(await asyncio.gather(chat(), chat())) == [200, 200]
    found = await _requests(client, spans, 2)
    [waited] = _named(found, "queue wait")
    assert waited.end - waited.start > 50_000_000  # (ns) it waited for the first


async def test_a_client_that_leaves_mid_stream_ends_the_stream_span(
    traced: Client,
    spans: MemoryExporter,
    fake: FakeOllama,
) -> None:
    fake.slow_interval = 0.5
    client = traced
    resp = await client.post("/api/chat", json={**CHAT, "model": "slow"})
    await resp.content.readline()  # the first line came: the stream is under way
    resp.close()
    found = await _requests(client, spans, 1)
    [root] = _named(found, "POST /api/chat")
    [stream] = _named(found, "stream")
    assert (stream.attributes or {})["aigateway.end"] == "client left"
    assert (root.attributes or {})["aigateway.end"] == "client left"


@pytest.mark.parametrize(
    ("sampler", "argument", "traceparent", "recorded"),
    [
        ("traceidratio", "0", None, False),
        ("traceidratio", "1", None, True),
        ("always_off", "", TRACEPARENT, False),
        ("parentbased_always_off", "", None, False),
        ("parentbased_always_off", "", TRACEPARENT, True),  # the client's trace is sampled
        ("parentbased_always_on", "", TRACEPARENT[:-2] + "00", False),  # ... is not
    ],
)
async def test_the_otel_sampler_is_honoured(
    aiohttp_client: AiohttpClient,
    settings: Settings,
    key: str,
    spans: MemoryExporter,
    fake: FakeOllama,
    monkeypatch: pytest.MonkeyPatch,
    sampler: str,
    argument: str,
    traceparent: str | None,
    recorded: bool,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
    if argument:
        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", argument)
    client = await _traced(aiohttp_client, settings, key, spans)  # (made as the SDK reads them)
    headers = {"traceparent": traceparent} if traceparent else {}
    for _ in range(3):
        resp = await client.post("/api/chat", json=CHAT, headers=headers)
        assert resp.status == 200
        await resp.read()
    if recorded:
        await _requests(client, spans, 3)
    else:
        tracing = client.app[RELAY].tracing
        assert tracing is not None and tracing.flush()
        assert spans.spans == []
    # Ollama learns the trace either way, sampled or not (the flags' last bit says which)
    sent = [r.headers["traceparent"] for r in fake.requests if r.path_qs == "/api/chat"]
    assert len(sent) == 3
    assert all(int(value.split("-")[3], 16) & 1 == recorded for value in sent)
    if traceparent:
        assert all(value.split("-")[1] == TRACE_ID for value in sent)


def test_the_environment_says_whether_traces_are_on() -> None:
    assert wanted({}) == ()
    assert wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}) == ("otlp",)
    assert wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}) == ("otlp",)
    assert wanted({"OTEL_TRACES_EXPORTER": "console"}) == ("console",)
    assert wanted({"OTEL_TRACES_EXPORTER": "otlp, console,otlp"}) == ("otlp", "console")
    on = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert wanted({**on, "OTEL_TRACES_EXPORTER": "none"}) == ()
    assert wanted({**on, "OTEL_SDK_DISABLED": "true"}) == ()
    with pytest.raises(SettingsError, match="OTEL_TRACES_EXPORTER: expected otlp"):
        wanted({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(SettingsError, match="OTEL_EXPORTER_OTLP_PROTOCOL: expected http/protobuf"):
        open_tracing({**on, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("OTEL_TRACES_SAMPLER", "sometimes", "OTEL_TRACES_SAMPLER: expected one of"),
        ("OTEL_TRACES_SAMPLER_ARG", "1.5", "OTEL_TRACES_SAMPLER_ARG: expected a ratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "nan", "OTEL_TRACES_SAMPLER_ARG: expected a ratio"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant", "OTEL_EXPORTER_OTLP_HEADERS: expected"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "a=b%0d%0aHost: evil", "holds a line break"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "-1", "OTEL_EXPORTER_OTLP_TIMEOUT: expected"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd", "OTEL_EXPORTER_OTLP_COMPRESSION"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "file:///etc/passwd", "expected an http://"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:port", "expected an http://"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "0", "OTEL_BSP_MAX_QUEUE_SIZE: expected a positive"),
        ("OTEL_RESOURCE_ATTRIBUTES", "team", "OTEL_RESOURCE_ATTRIBUTES: expected"),
    ],
)
def test_a_variable_it_cannot_use_stops_start_up(variable: str, value: str, message: str) -> None:
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", variable: value}
    if variable == "OTEL_TRACES_SAMPLER_ARG":
        environ["OTEL_TRACES_SAMPLER"] = "traceidratio"
    with pytest.raises(SettingsError, match=message):
        open_tracing(environ)


def test_traces_need_no_opentelemetry_package(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m.startswith("opentelemetry")] + ["opentelemetry"]:
        monkeypatch.setitem(sys.modules, name, None)  # (any import of it fails)
    exporter = MemoryExporter()
    tracing = open_tracing({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}, exporter)
    assert tracing is not None
    trace = tracing.request({"traceparent": TRACEPARENT}, "GET", "/api/tags", "r1", "k1", "u")
    trace.end(False)
    tracing.close()
    root, admission = exporter.spans  # (admission: ended with the request, never admitted)
    assert (root.name, admission.name) == ("GET /api/tags", "admission")
    assert f"{root.trace_id:032x}" == TRACE_ID
    assert root.attributes == {
        "http.request.method": "GET",
        "http.route": "/api/tags",
        "aigateway.request_id": "r1",
        "aigateway.key.prefix": "k1",
        "aigateway.user": "u",
    }
    assert admission.parent_id == root.span_id and admission.end == root.end


def _gateway_env(tmp_path: Path, ollama: str, **extra: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("OTEL_") and name not in ("UPSTREAMS_FILE", "DATABASE_URL")
    }
    env.update(
        PYTHONPATH=str(ROOT),
        TOKEN_DB_PATH=str(tmp_path / "tokens.db"),
        OLLAMA_BASE_URL=ollama,
        HOST="127.0.0.1",
        PORT="0",
        **extra,
    )
    return env


async def _serve_once(tmp_path: Path, ollama: str, key: str, script: str, **extra: str) -> str:
    """Run `script` (Python, given `env`) in a fresh interpreter with the gateway's
    environment; its output."""
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script, ollama, key],
        env=_gateway_env(tmp_path, ollama, **extra),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


# One gateway in this process, one streamed chat through it, then the modules loaded.
ONE_REQUEST = """
import asyncio, sys
from aiohttp import ClientSession, web
from aigateway import Settings, create_app

async def main():
    runner = web.AppRunner(create_app(Settings.from_env(env_file=None)))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with ClientSession() as session:
        async with session.post(
            f"http://127.0.0.1:{port}/api/chat",
            json={"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": "Bearer " + sys.argv[2], "traceparent": sys.argv[3]},
        ) as resp:
            assert resp.status == 200, resp.status
            await resp.read()
    await runner.cleanup()
    print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))

sys.argv.append(%r)
asyncio.run(main())
"""


async def test_off_loads_nothing_of_opentelemetry(upstream: TestServer, tmp_path: Path) -> None:
    key = await make_key(str(tmp_path / "tokens.db"))
    ollama = str(upstream.make_url("")).rstrip("/")
    out = await _serve_once(tmp_path, ollama, key, ONE_REQUEST % TRACEPARENT)
    assert out.strip() == "[]"


async def test_spans_reach_a_real_otlp_receiver(
    aiohttp_server: AiohttpServer, upstream: TestServer, tmp_path: Path
) -> None:
    """Through our own OTLP/HTTP exporter, as OTEL_EXPORTER_OTLP_ENDPOINT says, to a
    receiver on loopback that decodes what it gets with the official opentelemetry-proto,
    as a collector would: every span, its parent, kind, times, attributes and status."""
    received: list[ExportTraceServiceRequest] = []

    async def traces(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        assert request.headers.get("x-tenant") == "ops"  # OTEL_EXPORTER_OTLP_HEADERS
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        received.append(export)
        return web.Response(body=b"", content_type="application/x-protobuf")

    receiver = web.Application()
    receiver.router.add_post("/v1/traces", traces)
    collector = await aiohttp_server(receiver)
    key = await make_key(str(tmp_path / "tokens.db"))
    ollama = str(upstream.make_url("")).rstrip("/")
    out = await _serve_once(
        tmp_path,
        ollama,
        key,
        ONE_REQUEST % TRACEPARENT,
        OTEL_EXPORTER_OTLP_ENDPOINT=str(collector.make_url("")).rstrip("/"),
        OTEL_EXPORTER_OTLP_HEADERS="x-tenant=ops",
        OTEL_SERVICE_NAME="gateway-test",
    )
    assert out.strip() == "[]"  # (nothing of opentelemetry, traced or not)
    spans = [
        (resource.resource, span)
        for export in received
        for resource in export.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    names = sorted(span.name for _, span in spans)
    assert names == ["POST /api/chat", "admission", "stream", "upstream"]
    assert {span.trace_id.hex() for _, span in spans} == {TRACE_ID}
    by_name = {span.name: span for _, span in spans}
    root = by_name["POST /api/chat"]
    assert root.parent_span_id.hex() == CLIENT_SPAN and root.kind == root.SPAN_KIND_SERVER
    for name in ("admission", "upstream", "stream"):
        assert by_name[name].parent_span_id == root.span_id
    assert by_name["upstream"].kind == root.SPAN_KIND_CLIENT
    assert len({span.span_id for _, span in spans}) == 4
    assert all(
        root.start_time_unix_nano
        <= span.start_time_unix_nano
        <= span.end_time_unix_nano
        <= root.end_time_unix_nano
        for _, span in spans
    )
    assert by_name["upstream"].end_time_unix_nano == by_name["stream"].start_time_unix_nano
    assert all(span.status.code == span.status.STATUS_CODE_UNSET for _, span in spans)
    [scope] = received[0].resource_spans[0].scope_spans
    assert scope.scope.name == "aigateway"
    resource = spans[0][0]
    service = {a.key: a.value.string_value for a in resource.attributes}["service.name"]
    assert service == "gateway-test"
    attributes = {a.key: a.value for a in root.attributes}
    assert attributes["aigateway.key.prefix"].string_value == key[:12]
    assert attributes["aigateway.user"].string_value == "alice"
    assert attributes["gen_ai.request.model"].string_value == "llama3.2:latest"
    assert attributes["aigateway.cost"].double_value == 0.0
    assert attributes["gen_ai.usage.input_tokens"].int_value > 0
    stream = {a.key: a.value.string_value for a in by_name["stream"].attributes}
    assert stream == {"aigateway.end": "complete"}
    assert attributes["http.response.status_code"].int_value == 200
    assert attributes["gen_ai.usage.output_tokens"].int_value > 0
    assert key not in repr(received)

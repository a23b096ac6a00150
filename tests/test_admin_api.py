"""The admin HTTP API: keys and statistics for admins, /admin/me for everyone."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web import Request

from aigateway.db.keys import looks_like_key

from .helpers import minute_room


async def test_user_keys_get_403_on_admin_routes_but_may_see_themselves(
    client: TestClient[Request, None],
) -> None:
    for method, path in (
        ("GET", "/admin/keys"),
        ("POST", "/admin/keys"),
        ("GET", "/admin/keys/1"),
        ("PATCH", "/admin/keys/1"),
        ("DELETE", "/admin/keys/1"),
        ("GET", "/admin/stats"),
    ):
        resp = await client.request(method, path, json={})
        assert resp.status == 403, path
        assert "admin key" in (await resp.json())["error"]
    me = await (await client.get("/admin/me")).json()
    assert (me["key"]["user"], me["key"]["key_name"], me["key"]["role"]) == (
        "alice",
        "laptop",
        "user",
    )
    assert "key_hash" not in me["key"]


async def test_no_key_gets_401(anon: TestClient[Request, None]) -> None:
    assert (await anon.get("/admin/me")).status == 401


async def test_create_list_update_and_revoke(
    admin: TestClient[Request, None], anon: TestClient[Request, None]
) -> None:
    resp = await admin.post(
        "/admin/keys",
        json={
            "user": "zoe",
            "name": "notebook",
            "rpm": 1,
            "models": ["llama3*"],
            "expires_days": 30,
        },
    )
    assert resp.status == 201
    created = await resp.json()
    secret = created["key"]
    assert looks_like_key(secret)
    assert (created["rpm"], created["models"], created["role"]) == (1, ["llama3*"], "user")
    headers = {"Authorization": f"Bearer {secret}"}
    # Usable at once, with its limit and allow-list.
    assert (await anon.get("/api/tags", headers=headers)).status == 200
    assert (await anon.get("/api/tags", headers=headers)).status == 429
    listed = await (await admin.get("/admin/keys")).json()
    assert [k["user"] for k in listed["keys"]] == ["alice", "root", "zoe"]
    assert all("key" not in k and "key_hash" not in k for k in listed["keys"])
    key_id = created["id"]
    resp = await admin.patch(f"/admin/keys/{key_id}", json={"rpm": 0, "models": None})
    assert resp.status == 200
    assert (await resp.json())["rpm"] == 0
    assert (await anon.get("/api/tags", headers=headers)).status == 200
    one = await (await admin.get(f"/admin/keys/{key_id}")).json()
    assert one["models"] is None and one["rpm"] == 0
    resp = await admin.delete(f"/admin/keys/{key_id}")
    assert (await resp.json())["status"] == "revoked"
    assert (await anon.get("/api/tags", headers=headers)).status == 401


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"user": "a"}, "missing field(s): name"),
        ({"user": "a", "name": "b", "colour": "red"}, "unknown field(s): colour"),
        ({"user": 7, "name": "b"}, "user must be a string"),
        ({"user": "a", "name": "b", "rpm": -1}, "rpm must be 0 (no limit) or more"),
        ({"user": "a", "name": "b", "rph": "10"}, "rph must be a whole number"),
        ({"user": "a", "name": "b", "role": "root"}, "role must be one of"),
        ({"user": "a", "name": "b", "models": "llama3"}, "models must be a list"),
        ({"user": "a", "name": "b", "expires_days": 0}, "expires_days must be"),
        ({"user": "a", "name": "b", "expires_at": 1}, "expires_at must be"),
        ({"user": "", "name": "b"}, "user must not be empty"),
        ([1, 2], "JSON object"),
    ],
)
async def test_bad_input_is_400_with_a_clear_error(
    admin: TestClient[Request, None], body: object, message: str
) -> None:
    resp = await admin.post("/admin/keys", json=body)
    assert resp.status == 400
    assert message in (await resp.json())["error"]
    assert len((await (await admin.get("/admin/keys")).json())["keys"]) == 2


async def test_more_bad_requests(admin: TestClient[Request, None]) -> None:
    assert (await admin.post("/admin/keys", data=b"{nope")).status == 400
    resp = await admin.post("/admin/keys", json={"user": "alice", "name": "laptop"})
    assert resp.status == 409
    assert (await admin.get("/admin/keys/999")).status == 404
    assert (await admin.get("/admin/keys/abc")).status == 400
    resp = await admin.patch("/admin/keys/1", json={"max_concurrent": -5})
    assert resp.status == 400
    assert (await admin.patch("/admin/keys/1", json={"user": "eve"})).status == 400
    assert (await admin.get("/admin/stats?since=yesterday")).status == 400


async def test_stats_count_what_was_used(
    admin: TestClient[Request, None], client: TestClient[Request, None], gateway: TestServer
) -> None:
    await minute_room()  # alice's requests this minute are this hour's too
    for _ in range(3):
        assert (
            await client.post("/api/chat", data=b'{"model":"llama3.2","stream":false}')
        ).status == 200
    assert (
        await client.post("/api/embed", data=b'{"model":"all-minilm","input":"a"}')
    ).status == 200
    assert (await admin.get("/api/tags")).status == 200
    deadline = time.monotonic() + 5
    while True:  # usage is written in batches: wait for the writer
        stats = await (await admin.get("/admin/stats")).json()
        if stats["totals"]["requests"] == 5 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    totals = stats["totals"]
    assert totals["requests"] == 5
    assert totals["prompt_tokens"] == 3 * 26 + 16 and totals["completion_tokens"] == 3 * 6
    assert stats["last_24h"]["requests"] == 5 and stats["last_7d"]["requests"] == 5
    assert {u["user"]: u["requests"] for u in stats["per_user"]} == {"alice": 4, "root": 1}
    assert {m["model"]: m["requests"] for m in stats["per_model"]} == {
        None: 1,
        "all-minilm:latest": 1,  # (each model by its one identity)
        "llama3.2:latest": 3,
    }
    assert {r["route"]: r["requests"] for r in stats["per_route"]} == {
        "/chat": 3,
        "/embed": 1,
        "/tags": 1,
    }
    assert totals["avg_ms"] > 0 and totals["p95_ms"] >= totals["avg_ms"] * 0.5
    alice = next(k for k in stats["rate_limits"] if k["user"] == "alice")
    assert (alice["requests_this_minute"], alice["requests_this_hour"]) == (4, 4)
    me = await (await client.get("/admin/me")).json()
    assert me["usage"]["last_24h"]["requests"] == 4
    models = {m["model"] for m in me["usage"]["per_model_7d"]}
    assert models == {"llama3.2:latest", "all-minilm:latest"}


async def test_usage_records_filtered_paged_and_downloaded(
    admin: TestClient[Request, None], client: TestClient[Request, None], gateway: TestServer
) -> None:
    from aigateway.relay.state import RELAY

    chat = {"model": "llama3.2", "stream": False, "messages": []}
    # (what comes before :// in a name Ollama drops unread: a formula can hide there)
    formula = "=cmd|'/C calc'!A0://registry.ollama.ai/library/qwen3"
    for model in ("llama3.2", formula, "llama3.2"):
        assert (await client.post("/api/chat", json={**chat, "model": model})).status == 200
    await admin.get("/api/tags")
    assert await gateway.app[RELAY].usage.flush()
    everything = await (await admin.get("/admin/usage")).json()
    assert len(everything["records"]) == 4 and not everything["more"]
    page = await (await admin.get("/admin/usage?limit=2")).json()
    assert len(page["records"]) == 2 and page["more"]
    older = await (await admin.get("/admin/usage?limit=2&offset=2")).json()
    ids = [r["id"] for r in page["records"] + older["records"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 4  # newest first, no gaps
    mine = await (await client.get("/admin/usage?user=root")).json()
    assert {r["user"] for r in mine["records"]} == {"alice"}  # a user key sees its own only
    llama = await (await admin.get("/admin/usage?model=LLaMA3.2&status=200")).json()
    assert len(llama["records"]) == 2
    csv_resp = await admin.get("/admin/usage?format=csv&user=alice")
    assert csv_resp.headers["Content-Disposition"] == 'attachment; filename="usage.csv"'
    text = await csv_resp.text()
    assert text.splitlines()[0].startswith("time,ts,key_id,user")
    assert "'=cmd" in text and ",=cmd" not in text  # no formula for a spreadsheet
    assert len(text.strip().splitlines()) == 4
    for bad in ("limit=x", "limit=501", "status=-1", "since=nan", "format=xml", "key_id=1e3"):
        assert (await admin.get(f"/admin/usage?{bad}")).status == 400, bad


async def test_stats_computes_only_the_parts_asked_for(
    admin: TestClient[Request, None], client: TestClient[Request, None]
) -> None:
    await client.post("/api/chat", json={"model": "llama3.2", "stream": False, "messages": []})
    deadline = time.monotonic() + 5
    # Usage is written in batches: both reads below see the request's record.
    while (whole := await (await admin.get("/admin/stats")).json())["totals"]["requests"] != 1:
        assert time.monotonic() < deadline, whole["totals"]
        await asyncio.sleep(0.02)
    assert {"totals", "per_key", "rate_limits", "in_flight"} <= set(whole)
    some = await (await admin.get("/admin/stats?parts=per_model,last_24h")).json()
    assert set(some) == {"since", "until", "in_flight", "per_model", "last_24h"}
    assert some["per_model"] == whole["per_model"]
    for bad in ("parts=", "parts=per_nothing", "parts=per_model,oops"):
        assert (await admin.get(f"/admin/stats?{bad}")).status == 400, bad

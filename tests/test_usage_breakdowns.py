"""The Usage page's breakdowns answer exactly the filter its records answer, on both
databases: /admin/stats with the filter of /admin/usage (user, key_id, model, route,
status, since, until) sums what the records it lists say, per user, key, model and
route, whether the rollups or the records answer it."""

from __future__ import annotations

import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from aigateway import Settings, create_app
from aigateway.db.rollups import HOUR
from aigateway.db.store import Store
from aigateway.records import UsageRecord
from tests.test_rollups import HOURLY_DIMENSIONS

PARTS = "totals,per_user,per_key,per_model,per_route"
MEASURES = ("requests", "total_tokens", "errors", "cost")


def _records(keys: list[tuple[int, str, str]], now: float) -> list[UsageRecord]:
    """Records over the last ten days from three keys: several models (and none), routes
    and statuses, priced and not."""
    rng = random.Random(28)
    found = []
    for _ in range(1500):
        key_id, user, name = rng.choice(keys)
        found.append(
            UsageRecord(
                now - rng.random() * 10 * 86400, key_id, user, name, "POST",
                rng.choice(["/chat", "/generate", "/chat/completions"]),
                rng.choice(["llama3.2:latest", "qwen3:8b", None]),
                rng.choice([200, 200, 200, 400, 429, 502]),
                rng.choice([None, rng.randrange(1, 500)]), rng.randrange(0, 900),
                rng.lognormvariate(6, 1.5), rng.choice([None, 30.0]), 100, 1000,
                rng.random() < 0.1, False, rng.choice([None, 0, rng.randrange(1, 10**7)]),
                None, None,
            )
        )  # fmt: skip
    return found


async def _gateway(
    database: str, tmp_path: Path, aiohttp_client: AiohttpClient
) -> tuple[TestClient[Any, Any], dict[str, int]]:
    """A gateway over a database of records, an admin client, and the keys' ids."""
    now = time.time()
    store = await Store.open(database)
    try:
        _, admin = await store.create_key("root", "ops", "admin")
        made = [await store.create_key(u, n) for u, n in (("alice", "laptop"), ("alice", "ci"))]
        made.append(await store.create_key("bob", "phone"))
        keys = [(record.id, record.user, record.name) for record, _ in made]
        await store.insert_usage(_records(keys, now))
    finally:
        await store.close()
    where = {"database_url": database} if "://" in database else {"token_db_path": database}
    settings = Settings(usage_journal_dir=str(tmp_path / "journal"), **where)  # type: ignore[arg-type]
    client = await aiohttp_client(
        create_app(settings), headers={"Authorization": f"Bearer {admin}"}
    )
    return client, {f"{u}/{n}": kid for kid, u, n in keys}


async def _all_records(client: TestClient[Any, Any], filter_: dict[str, str]) -> list[Any]:
    """Every record /admin/usage lists for the filter, page after page."""
    found: list[Any] = []
    while True:
        query = urlencode({**filter_, "limit": 500, "offset": len(found)})
        page = await (await client.get(f"/admin/usage?{query}")).json()
        found += page["records"]
        if not page["more"]:
            return found


def _expected(records: list[Any], label: tuple[str, ...]) -> dict[tuple[Any, ...], list[Any]]:
    """MEASURES summed per `label` from the listed records (costs in micro-units: each
    record's, so a group's sum may differ from the group's one rounding by its count)."""
    groups: dict[tuple[Any, ...], list[Any]] = defaultdict(lambda: [0, 0, 0, None])
    for r in records:
        sums = groups[tuple(r[name] for name in label)]
        sums[0] += 1
        sums[1] += (r["prompt_tokens"] or 0) + (r["completion_tokens"] or 0)
        sums[2] += r["status"] >= 400
        if r["cost"] is not None:
            sums[3] = (sums[3] or 0) + r["cost"]
    return dict(groups)


def _shown(rows: list[Any], label: tuple[str, ...]) -> dict[tuple[Any, ...], list[Any]]:
    return {tuple(row[name] for name in label): [row[m] for m in MEASURES] for row in rows}


def _same(shown: dict[Any, list[Any]], expected: dict[Any, list[Any]], why: object) -> None:
    assert shown.keys() == expected.keys(), why
    for group, (requests, tokens, errors, cost) in expected.items():
        got = shown[group]
        assert got[:3] == [requests, tokens, errors], (why, group)
        if cost is None:
            assert got[3] is None, (why, group)
        else:  # each record's micro-units were rounded once, the group's sum once
            assert abs(got[3] - cost) <= requests, (why, group, got[3], cost)


async def test_breakdowns_follow_every_filter_of_the_records(
    database: str, tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    client, key_ids = await _gateway(database, tmp_path, aiohttp_client)
    now = time.time()
    hour = now // HOUR * HOUR
    filters: list[dict[str, str]] = [
        {},
        {"model": "qwen3:8b"},
        {"model": "llama3.2"},  # (another spelling of llama3.2:latest)
        {"status": "502"},
        {"status": "200", "since": str(now - 3 * 86400)},
        {"route": "/api/chat"},  # as a client calls it: recorded as /chat
        {"route": "/v1/chat/completions", "until": str(hour - 30 * HOUR + 17)},
        {"user": "alice", "model": "qwen3:8b"},
        {"key_id": str(key_ids["alice/ci"]), "status": "429"},
        {"user": "bob", "since": str(hour - 50 * HOUR), "until": str(hour - 2 * HOUR)},
        {"since": str(now - 7 * 86400)},
    ]
    for filter_ in filters:
        records = await _all_records(client, filter_)
        assert records or filter_ == {}, filter_
        for percentiles in ("true", "false"):  # (false: the Usage page's, none read)
            query = urlencode({**filter_, "parts": PARTS, "percentiles": percentiles})
            stats = await (await client.get(f"/admin/stats?{query}")).json()
            totals = _expected(records, ()) or {(): [0, 0, 0, None]}
            _same(_shown([stats["totals"]], ()), totals, filter_)
            for part, label in (
                ("per_user", ("user",)),
                ("per_key", ("user", "key_name", "key_id")),
                ("per_model", ("model",)),
                ("per_route", ("route",)),
            ):
                _same(_shown(stats[part], label), _expected(records, label), (filter_, part))
                # estimated from hourly latency buckets: where one dimension holds both
                named = {*label, *filter_} - {"since", "until"}
                estimated = any(named <= dim for dim in HOURLY_DIMENSIONS)
                p50s = {row["p50_ms"] is None for row in stats[part]}
                expected_none = percentiles == "false" or not estimated
                assert p50s <= {expected_none}, (filter_, part, percentiles)
    # The records' own checks answer for the breakdowns too.
    bad_values = ("status=abc", "key_id=-1", "since=yesterday", "status=1000", "until=nan")
    for bad in (*bad_values, "percentiles=no"):
        response = await client.get(f"/admin/stats?{bad}&parts=per_user")
        assert response.status == 400, bad
        assert set(await response.json()) == {"error"}, bad


async def test_refusals_follow_only_the_filters_they_have(
    database: str, tmp_path: Path, aiohttp_client: AiohttpClient
) -> None:
    """Refusals have no model, route or status: a filter by one matches none of them (as
    on /admin/usage), and a filter by user or key keeps them."""
    client, _ = await _gateway(database, tmp_path, aiohttp_client)
    for filter_, counted in (("model=qwen3:8b", False), ("status=200", False), ("user=bob", True)):
        stats = await (await client.get(f"/admin/stats?{filter_}&parts=refused")).json()
        usage = await (await client.get(f"/admin/usage?{filter_}&limit=1")).json()
        assert (stats["refused"] is not None) is counted, filter_
        assert stats["refused"] == usage["refused"], filter_

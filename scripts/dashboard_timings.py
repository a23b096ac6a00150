#!/usr/bin/env python3
"""How fast each dashboard view answers with a lot of history.

Fills a fresh database (SQLite, or PostgreSQL with --postgres or --database-url) with N
usage records spread evenly over the last 90 days (50 keys of 20 users, 10 models, 3
routes; nearly every hour has a record of each key and model, the worst case for the
hourly sums) and a realistic count of refusals (a few rows an hour); starts the gateway
in this process, in front of a fake Ollama on loopback, and times the admin API calls
each dashboard view makes (the median of five), printing one line per view.
Usage: .venv/bin/python scripts/dashboard_timings.py [--records 1000000] [--postgres]

The records are bulk-inserted (a million in well under a minute) with their hourly sums
made by SQL from the same records, then checked against them; the gateway's own writer
is not what is measured here.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from bisect import bisect_right
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from aigateway import Settings, create_app  # noqa: E402
from aigateway.db.daily import resum_sql  # noqa: E402
from aigateway.db.refusals import NO_KEY, RefusalRow  # noqa: E402
from aigateway.db.rollups import BOUNDS, BUCKETS, HOUR, SUM_COLUMNS  # noqa: E402
from aigateway.db.store import Store  # noqa: E402
from aigateway.errors import Refused  # noqa: E402
from aigateway.records import DAY, UsageQuery  # noqa: E402
from aigateway.testing.fake_ollama import FakeOllama  # noqa: E402
from aigateway.testing.pgserver import PostgresServer  # noqa: E402

KEYS, USERS, MODELS, DAYS = 50, 20, 10, 90
ROUTES = ("/chat", "/generate", "/chat/completions")
TARGET_MS = 200

# The admin API calls each dashboard view makes, as its page's script makes them (read
# aigateway/ui/static/<page>.js). Add a view, or a call to one, here: placeholders are
# {day_ago} and {week_ago} (Unix times), {admin_id} (the signed-in admin key), {key_id},
# {user} and {model} (one of the filled ones).
VIEWS: dict[str, list[str]] = {
    "Overview": [
        "/admin/stats?since={week_ago}&parts=last_24h,last_7d,per_user,per_model,refused",
        "/admin/series?range=24h&split=total&scope=gateway",
        "/admin/cache",
        "/admin/upstreams",
    ],
    # The charts' other ranges and splits, each one click on the Overview or My usage.
    "Chart, 7 days by user": ["/admin/series?range=7d&split=user&scope=gateway"],
    "Chart, 30 days": ["/admin/series?range=30d&split=total&scope=gateway"],
    "Chart, 30 days by model": ["/admin/series?range=30d&split=model&scope=gateway"],
    "Chart, 30 days by user": ["/admin/series?range=30d&split=user&scope=gateway"],
    "Now": ["/admin/now"],
    "Keys": ["/admin/keys", "/admin/stats?since={day_ago}&parts=per_key,rate_limits"],
    "Keys, one key's details": ["/admin/keys/{key_id}"],
    "Users": ["/admin/users"],
    "Users, one user's details": ["/admin/users/{user}/budget", "/admin/users/{user}"],
    "Models": ["/admin/models", "/admin/prices"],
    "My usage": ["/admin/me", "/admin/series?range=24h&split=total&scope=me"],
    "My usage, 30 days by model": ["/admin/series?range=30d&split=model&scope=me"],
}
# The Usage page: a page of records and its breakdowns (usage.js), for each filter it
# offers, alone and together (the page adds each filter to both calls).
USAGE_FILTERS: dict[str, str] = {
    "no filter": "",
    "user": "user={user}",
    "key": "key_id={key_id}",
    "model": "model={model}",
    "route": "route=/api/chat",
    "status": "status=500",
    "7 days": "since={week_ago}",
    "model, 7 days": "model={model}&since={week_ago}",
    "user and model": "user={user}&model={model}",
    "model and status": "model={model}&status=500",
    "cached only": "cached=true",
    "not cached": "cached=false",
}
for _name, _filter in USAGE_FILTERS.items():
    VIEWS[f"Usage, {_name}"] = [
        f"/admin/usage?{_filter}&limit=50&offset=0",
        f"/admin/stats?{_filter}&parts=per_user,per_model&percentiles=false",
    ]

# A realistic share of refusals an hour: made-up and missing keys, and some keys over
# their limits or budgets.
REFUSED_PER_HOUR = ((Refused.MISSING_KEY, 3), (Refused.UNKNOWN_KEY, 2))
REFUSED_BY_KEYS = (Refused.RATE_LIMIT, Refused.OVER_BUDGET, Refused.MODEL_NOT_ALLOWED)

_FILL_COLUMNS = (
    "ts", "hour", "key_id", "user", "key_name", "route", "model", "status",
    "prompt_tokens", "completion_tokens", "duration_ms", "ttfb_ms", "cost", "db", "tb",
)  # fmt: skip
_FILL_TYPES = (
    "double precision", "bigint", "bigint", "text", "text", "text", "text", "integer",
    "bigint", "bigint", "double precision", "double precision", "bigint", "integer", "integer",
)  # fmt: skip


def _generated(
    records: int, keys: list[tuple[int, str, str]], now: float
) -> Iterator[tuple[Any, ...]]:
    """The records, in time order as the gateway writes them, each with its hour and
    latency buckets."""
    start, step = now - DAYS * 86400, DAYS * 86400 / records
    rng = random.Random(7)
    for i in range(records):
        key_id, user, name = keys[rng.randrange(KEYS)]
        ts = start + (i + rng.random()) * step
        duration, ttfb = rng.uniform(50, 5000), rng.uniform(5, 500)
        yield (
            ts, int(ts // HOUR) * HOUR, key_id, user, name, rng.choice(ROUTES),
            f"model{rng.randrange(MODELS)}", 200 if rng.random() > 0.02 else 500,
            30, 200, duration, ttfb, rng.randrange(100, 5000) * 1000,
            bisect_right(BOUNDS, duration), bisect_right(BOUNDS, ttfb),
        )  # fmt: skip


def _rollup_sql() -> list[str]:
    """INSERT ... SELECT statements that sum the filled records into usage_hourly, one a
    dimension, as rollups.rollup_rows() sums a batch."""
    sums = [
        "COUNT(*)", "SUM(prompt_tokens)", "SUM(completion_tokens)",
        "SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END)", "0", "SUM(cost)", "COUNT(cost)",
        "SUM(duration_ms)",
        *(f"SUM(CASE WHEN db = {i} THEN 1 ELSE 0 END)" for i in range(BUCKETS)),
        *(f"SUM(CASE WHEN tb = {i} THEN 1 ELSE 0 END)" for i in range(BUCKETS)),
    ]  # fmt: skip
    assert len(sums) == len(SUM_COLUMNS)
    columns = ", ".join(
        f'"{c}"' for c in ("dim", "hour", "value", "user", "key_name", *SUM_COLUMNS)
    )
    statements = []
    key_model = "'key_model:' || CAST(key_id AS TEXT)"  # (rollups.key_model_dim)
    for dim, value, names in (
        ("'all'", "''", "NULL, NULL"),
        ("'user'", '"user"', "NULL, NULL"),
        ("'key'", "CAST(key_id AS TEXT)", 'MIN("user"), MIN(key_name)'),
        ("'model'", "model", "NULL, NULL"),
        ("'route'", "route", "NULL, NULL"),
        (key_model, "model", 'MIN("user"), MIN(key_name)'),  # (a key's charts by model)
    ):
        group = "hour" if dim == "'all'" else f"hour, {value}"
        if dim == key_model:
            group += ", key_id"
        statements.append(
            f"INSERT INTO usage_hourly ({columns}) SELECT {dim}, hour, {value}, {names},"
            f" {', '.join(sums)} FROM fill GROUP BY {group}"
        )
    return statements


_COPY_TO_USAGE = (
    'INSERT INTO usage (ts, key_id, "user", key_name, method, route, model, status,'
    " prompt_tokens, completion_tokens, duration_ms, ttfb_ms, bytes_in, bytes_out,"
    " client_gone, estimated, cost, model_sent)"
    " SELECT ts, key_id, \"user\", key_name, 'POST', route, model, status, prompt_tokens,"
    " completion_tokens, duration_ms, ttfb_ms, 200, 2000, 0, 0, cost, model FROM fill ORDER BY ts"
)


def _daily_sql(dialect: str) -> str:
    """Every filled record summed into the daily sums, as the migration that made them
    does."""
    return resum_sql(dialect).replace(":start", "0").replace(":end", str(10**12))


def _temp_table() -> str:
    columns = ", ".join(f'"{c}" {t}' for c, t in zip(_FILL_COLUMNS, _FILL_TYPES, strict=True))
    return f"CREATE TEMP TABLE fill ({columns})"


def _bulk_sqlite(path: str, rows: Iterator[tuple[Any, ...]]) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(_temp_table())
        places = ", ".join("?" * len(_FILL_COLUMNS))
        conn.executemany(f"INSERT INTO fill VALUES ({places})", rows)
        conn.execute(_COPY_TO_USAGE)
        for statement in _rollup_sql():
            conn.execute(statement)
        conn.execute(_daily_sql("sqlite"))
    conn.close()


async def _bulk_postgres(url: str, rows: Iterator[tuple[Any, ...]]) -> None:
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute(_temp_table())
            await conn.copy_records_to_table("fill", records=rows, columns=_FILL_COLUMNS)
            await conn.execute(_COPY_TO_USAGE)
            for statement in _rollup_sql():
                await conn.execute(statement)
            await conn.execute(_daily_sql("postgresql"))
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def _refusals(keys: list[tuple[int, str, str]], now: float) -> list[RefusalRow]:
    rng = random.Random(8)
    rows = []
    first = int((now - DAYS * 86400) // HOUR) * HOUR
    for hour in range(first, int(now), HOUR):
        for reason, most in REFUSED_PER_HOUR:
            rows.append(RefusalRow(hour, reason.value, NO_KEY, "", "", rng.randint(1, most)))
        for key_id, user, name in rng.sample(keys, 3):
            refused = rng.choice(REFUSED_BY_KEYS).value
            rows.append(RefusalRow(hour, refused, key_id, user, name, rng.randint(1, 20)))
    return rows


async def fill(database: str, records: int) -> dict[str, Any]:
    """Fill the database; the placeholders of VIEWS."""
    now = time.time()
    store = await Store.open(database)
    try:
        admin, secret = await store.create_key("root", "ops", "admin")
        keys = []
        for n in range(KEYS):
            record, _ = await store.create_key(f"user{n % USERS}", f"key{n}")
            keys.append((record.id, record.user, record.name))
    finally:
        await store.close()
    rows = _generated(records, keys, now)
    if "://" in database:
        await _bulk_postgres(database, rows)
    else:
        await asyncio.to_thread(_bulk_sqlite, database, rows)
    store = await Store.open(database)
    try:
        refusals = _refusals(keys, now)
        await store.add_refusals(refusals, "timings-fill")
        summed = await store.usage_summary(())  # (read from the sums)
        assert summed[0]["requests"] == records, (summed, records)
        ok = UsageQuery(status=200)  # (read from the daily sums)
        fields = ("model", "requests", "total_tokens", "errors", "cost")
        daily, exact = [
            [[row[f] for f in fields] for row in await store.usage_summary(("model",), ok, exact=e)]
            for e in (False, True)
        ]
        assert daily == exact, (daily, exact)
        # (a key's charts by model read its own rollup rows: they hold its records)
        month = (int(now) // DAY - 29) * DAY
        charted = await store.usage_chart(month, DAY, 30, "model", keys[7][0], top=MODELS)
        (key_sum,) = await store.usage_summary((), UsageQuery(key_id=keys[7][0], since=month))
        charted_requests = sum(sum(g.sums["requests"]) for g in charted)
        assert charted_requests == key_sum["requests"] and charted_requests > 0, key_sum
        print(f"  {len(refusals):,} refusal rows", file=sys.stderr)
    finally:
        await store.close()
    return {
        "secret": secret,
        "admin_id": admin.id,
        "key_id": keys[7][0],
        "user": "user7",
        "model": "model3",
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument(
        "--database-url", help="a PostgreSQL URL (default: a temporary SQLite file)"
    )
    parser.add_argument(
        "--postgres", action="store_true", help="start a PostgreSQL server of its own"
    )
    args = parser.parse_args()
    server = None
    if args.postgres:
        server = PostgresServer().start()
        server.sql("CREATE DATABASE timings")
        args.database_url = server.url("timings")
    try:
        await timings(args)
    finally:
        if server is not None:
            server.close()


async def timings(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        database = args.database_url or str(Path(tmp) / "tokens.db")
        started = time.perf_counter()
        names = await fill(database, args.records)
        print(f"filled {args.records:,} records in {time.perf_counter() - started:.0f} s")
        ollama = TestServer(FakeOllama().app())
        await ollama.start_server()
        settings = Settings(
            ollama_base_url=str(ollama.make_url("")).rstrip("/"),
            token_db_path=database if not args.database_url else str(Path(tmp) / "x.db"),
            database_url=args.database_url,
            usage_journal_dir=str(Path(tmp) / "journal"),
        )
        client = TestClient(TestServer(create_app(settings)))
        await client.start_server()
        slow = 0
        try:
            now = time.time()
            names.update(day_ago=now - 86400, week_ago=now - 7 * 86400)
            headers = {"Authorization": f"Bearer {names['secret']}"}
            for view, paths in VIEWS.items():
                took = []
                for _ in range(5):
                    begun = time.perf_counter()
                    for path in paths:
                        path = path.format(**names).replace("?&", "?")
                        resp = await client.get(path, headers=headers)
                        assert resp.status == 200, (path, resp.status, await resp.text())
                        await resp.read()
                    took.append((time.perf_counter() - begun) * 1000)
                middle = statistics.median(took)
                slow += middle >= TARGET_MS
                verdict = "ok" if middle < TARGET_MS else "SLOW"
                print(f"  {view:<28} {middle:8.1f} ms  ({verdict})", flush=True)
        finally:
            await client.close()
            await ollama.close()
        print(f"{len(VIEWS) - slow} of {len(VIEWS)} views under {TARGET_MS} ms")


if __name__ == "__main__":
    asyncio.run(main())

#!/usr/bin/env python3
"""How fast each dashboard view answers with a lot of history.

Fills a fresh database (SQLite, or PostgreSQL with --database-url) with N usage records
spread evenly over the last 90 days, 50 keys and 10 models, written in time order as the
gateway writes them; starts the gateway in this process and times the admin API calls
each dashboard page makes (the median of five), printing one line per view.
Usage: .venv/bin/python scripts/dashboard_timings.py [--records 1000000] [--postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from aigateway import Settings, create_app  # noqa: E402
from aigateway.db.store import Store  # noqa: E402
from aigateway.records import UsageRecord  # noqa: E402
from aigateway.testing.pgserver import PostgresServer  # noqa: E402

KEYS, MODELS, DAYS = 50, 10, 90
VIEWS = {
    "series, 7 days": ["/admin/series?hours=168"],
    "overview": [
        "/admin/stats?since={week_ago}&parts=last_24h,last_7d,per_user,per_model",
        "/admin/series?range=24h&split=total&scope=gateway",
    ],
    # the charts' other ranges and splits, each one click on the Overview
    "chart, 7 d by user": ["/admin/series?range=7d&split=user&scope=gateway"],
    "chart, 30 d total": ["/admin/series?range=30d&split=total&scope=gateway"],
    "chart, 30 d by model": ["/admin/series?range=30d&split=model&scope=gateway"],
    "chart, 30 d by user": ["/admin/series?range=30d&split=user&scope=gateway"],
    "keys": ["/admin/keys", "/admin/stats?since={day_ago}&parts=per_key,rate_limits"],
    "users": ["/admin/users"],
    "usage": ["/admin/usage?limit=50", "/admin/stats?since={week_ago}&parts=per_user,per_model"],
    "usage, one user": ["/admin/usage?limit=50&user=user7"],
    "usage, one model": ["/admin/usage?limit=50&model=model3"],
    "my usage": ["/admin/me", "/admin/series?range=24h&split=total&scope=me"],
    "my chart, 30 d by model": ["/admin/series?range=30d&split=model&scope=me"],
}


async def fill(database: str, records: int) -> str:
    store = await Store.open(database)
    try:
        _, admin = await store.create_key("root", "ops", "admin")
        ids = []
        for n in range(KEYS):
            record, _ = await store.create_key(f"user{n % 20}", f"key{n}")
            ids.append((record.id, record.user, record.name))
        now = time.time()
        start, step = now - DAYS * 86400, DAYS * 86400 / records
        rng = random.Random(7)
        batch: list[UsageRecord] = []
        for i in range(records):
            key_id, user, name = ids[rng.randrange(KEYS)]
            status = 200 if rng.random() > 0.02 else 500
            batch.append(
                UsageRecord(
                    # in time order, as the gateway writes them
                    start + (i + rng.random()) * step,
                    key_id,
                    user,
                    name,
                    "POST",
                    "/chat",
                    f"model{rng.randrange(MODELS)}",
                    status,
                    30,
                    200,
                    rng.uniform(50, 5000),
                    rng.uniform(5, 500),
                    200,
                    2000,
                    False,
                    False,
                    rng.randrange(100, 5000),
                    None,
                )
            )
            if len(batch) == 10_000:
                await store.insert_usage(batch)
                batch = []
                print(f"\r  {i + 1:,} records", end="", flush=True, file=sys.stderr)
        if batch:
            await store.insert_usage(batch)
        print(file=sys.stderr)
        return admin
    finally:
        await store.close()


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
        admin = await fill(database, args.records)
        print(f"filled {args.records:,} records in {time.perf_counter() - started:.0f} s")
        settings = Settings(
            token_db_path=database if not args.database_url else str(Path(tmp) / "x.db"),
            database_url=args.database_url,
        )
        client = TestClient(TestServer(create_app(settings)))
        await client.start_server()
        try:
            now = time.time()
            for view, paths in VIEWS.items():
                took = []
                for _ in range(5):
                    begun = time.perf_counter()
                    for path in paths:
                        path = path.format(day_ago=now - 86400, week_ago=now - 7 * 86400)
                        resp = await client.get(path, headers={"Authorization": f"Bearer {admin}"})
                        assert resp.status == 200, (path, resp.status, await resp.text())
                        await resp.read()
                    took.append((time.perf_counter() - begun) * 1000)
                middle = statistics.median(took)
                verdict = "ok" if middle < 200 else "SLOW"
                print(f"  {view:<18} {middle:8.1f} ms  (target < 200 ms: {verdict})")
        finally:
            await client.close()


if __name__ == "__main__":
    asyncio.run(main())

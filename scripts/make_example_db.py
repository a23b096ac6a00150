#!/usr/bin/env python3
"""Write tokens.db.example: a key database at the current schema with a few example
users and keys. Their secrets are generated and thrown away, never printed or saved,
so nobody can use them. Run it again whenever a migration is added:

    .venv/bin/python scripts/make_example_db.py [PATH]
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aigateway.db.store import Store
from aigateway.records import Role

EXAMPLES: list[tuple[str, str, Role, str | None, bool]] = [
    # user, key name, role, expires (UTC date or None), revoked
    ("ops", "admin-laptop", "admin", None, False),
    ("alice", "laptop", "user", None, False),
    ("alice", "notebook-server", "user", "2099-12-31", False),
    ("bob", "old-phone", "user", None, True),
    ("ci", "nightly", "user", "2099-06-30", False),
]


async def build(path: Path) -> None:
    store = await Store.open(str(path))
    try:
        for user, name, role, expires, revoked in EXAMPLES:
            expires_at = (
                dt.datetime.fromisoformat(expires).replace(tzinfo=dt.UTC).timestamp()
                if expires
                else None
            )
            await store.create_key(user, name, role, expires_at)
            if revoked:
                await store.revoke_key(user, name)
    finally:
        await store.close()


def main() -> None:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "tokens.db.example").resolve()
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        fresh = Path(tmp) / target.name
        asyncio.run(build(fresh))
        os.replace(fresh, target)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()

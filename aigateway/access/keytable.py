"""The in-memory key table the hot path reads, and the task that keeps it fresh.

Authentication is a SHA-256 and a dict lookup: no disk I/O per request. A background
task swaps in a freshly loaded table when the keys changed elsewhere (a CLI, the admin
API, another gateway): on PostgreSQL a notification wakes it at once; on SQLite it polls
`PRAGMA data_version`, cheap and changed only when another connection commits. So a key
made or revoked elsewhere works or stops working within a second. The same task writes
`last_used_at` in batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from ..db.keys import hash_key, looks_like_key
from ..db.notify import ChangeListener
from ..db.store import Store
from ..errors import Refused
from ..records import KeyRecord, StoreError
from .aliases import AliasTable
from .pricing import PriceList

log = logging.getLogger("aigateway.keys")

RELOAD_INTERVAL_S = 0.25
LISTENING_POLL_S = 5.0
FULL_RELOAD_S = 60.0
LAST_USED_FLUSH_S = 5.0
# A well-formed key the table does not know makes the gateway look in the database again
# (a key made a moment ago by a CLI); such looks start at most this often, however many
# unknown keys arrive, and each is one cheap PRAGMA unless the database changed.
LOOK_AGAIN_GAP_S = 0.02


class AuthError(Exception):
    """Why a presented key was refused; the message never contains the key."""

    def __init__(self, message: str, reason: Refused, key: KeyRecord | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.key = key  # a key the table holds that does not work now (its refusals count)


_MALFORMED = "malformed API key: expected aig_ followed by 43 characters"


class UnknownKeyError(AuthError):
    """A well-formed key the table does not (yet) hold."""


BOOTSTRAP_KEY_ID = 0  # usage of GATEWAY_ADMIN_KEY is recorded under this key id


def bootstrap_record(secret: str) -> KeyRecord:
    """GATEWAY_ADMIN_KEY as an admin key that lives only in memory (hashed at start-up)."""
    return KeyRecord(
        id=BOOTSTRAP_KEY_ID,
        user="admin",
        name="GATEWAY_ADMIN_KEY",
        key_hash=hash_key(secret),
        prefix="(settings)",
        role="admin",
        created_at=time.time(),
        expires_at=None,
        last_used_at=None,
        revoked=False,
        revoked_at=None,
    )


class KeyTable:
    def __init__(self, bootstrap_secret: str | None = None) -> None:
        self._by_hash: dict[str, KeyRecord] = {}
        self._by_id: dict[int, KeyRecord] = {}
        self._last_used: dict[int, float] = {}
        self._bootstrap = bootstrap_record(bootstrap_secret) if bootstrap_secret else None
        self._store: Store | None = None
        self._version: tuple[int, int] | None = None  # (store generation, data_version)
        self._looking = asyncio.Lock()
        self._last_look = 0.0
        self.looks = 0  # database looks made for unknown keys
        # The prices in force, loaded with the keys (a price change moves the same
        # version): what a request starting now will pay.
        self.prices = PriceList()
        # The model aliases in force, loaded with the keys as prices are.
        self.aliases = AliasTable()
        # Run with each loaded table before it is used (budgets load their spend).
        self.before_use: Callable[[list[KeyRecord]], Awaitable[None]] | None = None

    def __len__(self) -> int:
        return len(self._by_hash)

    def replace(self, records: list[KeyRecord]) -> None:
        table = {record.key_hash: record for record in records}
        if self._bootstrap is not None:
            table[self._bootstrap.key_hash] = self._bootstrap
        self._by_hash = table
        self._by_id = {record.id: record for record in table.values()}

    def authenticate(self, token: str) -> KeyRecord:
        try:
            digest = hash_key(token)
        except UnicodeEncodeError:  # bytes that are not text (a header is read as latin-1)
            raise AuthError(_MALFORMED, Refused.MALFORMED_KEY) from None
        record = self._by_hash.get(digest)
        if record is None:
            if not looks_like_key(token):
                raise AuthError(_MALFORMED, Refused.MALFORMED_KEY)
            raise UnknownKeyError("unknown API key", Refused.UNKNOWN_KEY)
        return self._working(record)

    def known_id(self, token: str) -> int | None:
        """The id of the key `token` is, working or not (revoked, expired, its user
        disabled); None for a key the table does not hold."""
        try:
            record = self._by_hash.get(hash_key(token))
        except UnicodeEncodeError:
            return None
        return None if record is None else record.id

    def by_id(self, key_id: int) -> KeyRecord:
        """The record of a key a dashboard session was made with, if it still works."""
        record = self._by_id.get(key_id)
        if record is None:
            raise AuthError("this session's API key no longer exists", Refused.UNKNOWN_KEY)
        return self._working(record, count_use=False)

    def _working(self, record: KeyRecord, count_use: bool = True) -> KeyRecord:
        """`record` if the key works now (not revoked, its user enabled, not expired)."""
        if record.revoked:
            raise AuthError("this API key has been revoked", Refused.REVOKED_OR_EXPIRED, record)
        if record.user_disabled:
            raise AuthError("this API key's user is disabled", Refused.USER_DISABLED, record)
        now = time.time()
        if record.expires_at is not None and record.expires_at <= now:
            raise AuthError("this API key has expired", Refused.REVOKED_OR_EXPIRED, record)
        if count_use and record.id != BOOTSTRAP_KEY_ID:
            self._last_used[record.id] = now
        return record

    async def refresh(self, store: Store, force: bool = False) -> bool:
        """Reload from `store` if it changed since the last load (or `force`); True if
        it did."""
        self._store = store
        version = (store.generation, await store.data_version())
        if version == self._version and not force:
            return False
        # Only after the load: a look that starts while it runs must not take the
        # version for loaded and return with the table still old.
        await self.load(store)
        self._version = version
        return True

    async def look_again(self) -> None:
        """After a miss on a well-formed key: make sure a look at the database *starts
        after* the miss. Misses that arrive together share one look; looks are at least
        LOOK_AGAIN_GAP_S apart."""
        asked = time.monotonic()
        async with self._looking:
            if self._last_look >= asked or self._store is None:
                return  # a look began after this miss, and has finished
            wait = self._last_look + LOOK_AGAIN_GAP_S - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._last_look = time.monotonic()
            self.looks += 1
            try:
                await self.refresh(self._store)
            except StoreError as exc:
                log.warning("could not look for a new key in the database: %s", exc)

    def records(self) -> list[KeyRecord]:
        return list(self._by_hash.values())

    async def load(self, store: Store) -> None:
        """Load every key, price and alias now (the admin API's own writes do not change
        data_version, so it loads after each)."""
        records, price_list = await store.list_keys(), await store.list_prices()
        aliases = await store.list_aliases()
        if self.before_use is not None:
            await self.before_use(records)
        self.replace(records)
        self.prices = PriceList(price_list)
        self.aliases = AliasTable(aliases)

    def take_last_used(self) -> dict[int, float]:
        used, self._last_used = self._last_used, {}
        return used

    def give_back_last_used(self, used: dict[int, float]) -> None:
        """Keep a batch that could not be written, for the next flush."""
        for key_id, when in used.items():
            self._last_used[key_id] = max(when, self._last_used.get(key_id, 0.0))


async def flush_last_used(store: Store, table: KeyTable) -> None:
    used = table.take_last_used()
    try:
        await store.record_last_used(used)
    except StoreError as exc:
        table.give_back_last_used(used)
        log.warning("could not record key use times yet: %s", exc)


async def keep_fresh(store: Store, table: KeyTable, listener: ChangeListener | None = None) -> None:
    """Run until cancelled: reload on outside changes, flush use times now and then.
    With a listener (PostgreSQL) a change wakes the table at once, the version is checked
    every LISTENING_POLL_S anyway and the whole table reloaded every FULL_RELOAD_S, in case
    a notification was lost or a row edited by hand; without one, or while it is down,
    the version is polled every RELOAD_INTERVAL_S."""
    await table.refresh(store)
    last_flush = last_full = time.monotonic()
    failing = False  # said once while the database refuses, not four times a second
    while True:
        if listener is not None and listener.listening:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(listener.changed.wait(), LISTENING_POLL_S)
            listener.changed.clear()  # before the reload: a change during it wakes us again
        else:
            await asyncio.sleep(RELOAD_INTERVAL_S)
        full = time.monotonic() - last_full >= FULL_RELOAD_S
        try:
            if await table.refresh(store, force=full):
                log.info("key table reloaded: %d keys", len(table))
            if full:
                last_full = time.monotonic()
            if failing:
                failing = False
                log.warning("keys are read from the database again")
        except StoreError as exc:
            if not failing:
                failing = True
                log.warning("could not reload keys (keeping the current table): %s", exc)
        if time.monotonic() - last_flush >= LAST_USED_FLUSH_S:
            last_flush = time.monotonic()
            await flush_last_used(store, table)

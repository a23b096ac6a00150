"""Refused requests counted in memory, per hour, reason and key, and written to the
database with the usage writer's batches (db/refusals.py): never on the request path.

Counting is one dict update per refusal. Memory is bounded: a request refused before
a key was known (no key, a malformed or unknown one) counts under one row per hour and
reason (db/refusals.NO_KEY), whatever key was sent, so made-up keys cannot add rows;
rows of known keys are at most the keys there are, and beyond MAX_ROWS (in memory, or in
a batch waiting for the database) a refusal counts under NO_KEY too (its reason still
counted, its key no longer).

What survives what: each flush (FLUSH_INTERVAL_S) writes the counts taken since the
last one, in one transaction with a batch name the database notes, so no batch is
added twice. While the database refuses, the counts wait in one batch, which is also
written to a file in the usage journal's folder (`refusals-RUN.json`, replaced whole
each time it grows, at most every SAVE_EVERY_S and at close); the next start writes
the files earlier runs left. A graceful stop loses nothing; a killed gateway loses at
most the counts since its last flush (database up) or since the file was last saved
(database away).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from ..db.refusals import NO_KEY, RefusalRow
from ..db.rollups import HOUR
from ..db.store import Store
from ..errors import Refused
from ..records import KeyRecord, StoreError

log = logging.getLogger("aigateway.usage")

MAX_ROWS = 50_000  # rows of known keys held in memory before they count under NO_KEY
SAVE_EVERY_S = 1.0  # how often the waiting batch's file is replaced while the database is away
# After the database refused a batch, the next try waits this long, doubling up to the
# most: on SQLite a try holds the one connection for its busy timeout, which reads (a
# look for a key made a moment ago) would otherwise wait behind four times a second.
RETRY_FIRST_S, RETRY_MOST_S = 1.0, 30.0
FILE_PREFIX, FILE_SUFFIX = "refusals-", ".json"

_Row = tuple[int, str, int]  # hour, reason, key id
RefusalWatcher = Callable[[Refused, KeyRecord], None]


class RefusalCounts:
    """The counts since the writer last took them: what the middleware adds to."""

    __slots__ = ("_counts", "_names", "_watch")

    def __init__(self, watch: RefusalWatcher | None = None) -> None:
        self._counts: dict[_Row, int] = {}
        self._names: dict[int, tuple[str, str]] = {}  # key id -> (user, key name)
        self._watch = watch  # also told of each refusal of a known key (alerts)

    def count(self, reason: Refused, key: KeyRecord | None) -> None:
        """One refusal; `key` is the key it is counted against (None: none known)."""
        if key is not None and self._watch is not None:
            self._watch(reason, key)
        row = (int(time.time()) // HOUR * HOUR, reason, NO_KEY if key is None else key.id)
        counts = self._counts
        n = counts.get(row)
        if n is not None:
            counts[row] = n + 1
            return
        if key is not None:
            if len(counts) >= MAX_ROWS:
                row = (row[0], reason, NO_KEY)
                counts[row] = counts.get(row, 0) + 1
                return
            self._names[key.id] = (key.user, key.name)
        counts[row] = 1

    def take(self) -> dict[_Row, int]:
        """The counts so far; counting starts again from nothing."""
        counts, self._counts = self._counts, {}
        return counts

    def rows(self, counts: dict[_Row, int]) -> list[RefusalRow]:
        names = self._names
        return [
            RefusalRow(hour, str(reason), key_id, *names.get(key_id, ("", "")), n)
            for (hour, reason, key_id), n in counts.items()
        ]


class _Batch:
    """Counts on their way to the database under one name."""

    def __init__(self, name: str, rows: dict[tuple[int, str, int], RefusalRow]) -> None:
        self.name = name
        self.rows = rows
        self.path: Path | None = None  # its file, once saved

    def merge(self, rows: list[RefusalRow]) -> None:
        """Add `rows`; past MAX_ROWS (a long outage) a known key's new row is added to
        its hour's NO_KEY row instead, so a waiting batch stays bounded too."""
        for row in rows:
            where = (row.hour, row.reason, row.key_id)
            held = self.rows.get(where)
            if held is None and row.key_id != NO_KEY and len(self.rows) >= MAX_ROWS:
                row = row._replace(key_id=NO_KEY, user="", key_name="")
                where = (row.hour, row.reason, NO_KEY)
                held = self.rows.get(where)
            self.rows[where] = (
                row if held is None else row._replace(requests=held.requests + row.requests)
            )


class RefusalWriter:
    """Takes the counts at each flush of the usage writer and writes them."""

    def __init__(self, counts: RefusalCounts, folder: Path, run: str) -> None:
        self.counts = counts
        self._folder = folder
        self._run = run
        self._numbers = 0
        self._waiting: _Batch | None = None  # this run's counts the database has not taken
        self._changed = False  # the waiting batch holds more than its file
        self._saved_at = 0.0
        self._leftovers: list[_Batch] = []  # earlier runs' files
        self._retry_at = 0.0  # (time.monotonic) no try before, after a refusal
        self._retry_s = 0.0

    def _new_batch(self) -> _Batch:
        self._numbers += 1
        return _Batch(f"{FILE_PREFIX}{self._run}-{self._numbers:06d}", {})

    async def replay(self, store: Store) -> None:
        """Write the files earlier runs left (those the database refuses wait)."""
        for part in self._folder.glob(f"{FILE_PREFIX}*{FILE_SUFFIX}.part"):
            part.unlink(missing_ok=True)  # a save cut short: its file holds the one before
        for path in sorted(self._folder.glob(f"{FILE_PREFIX}*{FILE_SUFFIX}")):
            if path.name == self._file_name():
                continue
            try:
                name, raw = orjson.loads(path.read_bytes())
                batch = _Batch(str(name), {})
                batch.merge([RefusalRow(*row) for row in raw])
            except (OSError, orjson.JSONDecodeError, TypeError, ValueError) as exc:
                log.warning("refusal counts in %s skipped: %s", path.name, exc)
                continue
            batch.path = path
            self._leftovers.append(batch)
        try:
            await self._write_leftovers(store)
        except StoreError as exc:
            log.warning("refusal counts of earlier runs wait: %s", exc)

    async def flush(self, store: Store, closing: bool = False) -> bool:
        """Write what was counted since the last flush (and what waits); False when the
        database refused (it waits, in its file)."""
        taken = self.counts.take()
        if taken:
            if self._waiting is None:
                self._waiting = self._new_batch()
            self._waiting.merge(self.counts.rows(taken))
            self._changed = True
        if self._waiting is None and not self._leftovers:
            return True
        if not closing and time.monotonic() < self._retry_at:
            await self._save(closing)
            return False
        try:
            await store.check_file()
            await self._write_leftovers(store)
            batch = self._waiting
            if batch is not None:
                await store.add_refusals(list(batch.rows.values()), batch.name)
        except StoreError as exc:
            self._retry_s = min(max(self._retry_s * 2, RETRY_FIRST_S), RETRY_MOST_S)
            self._retry_at = time.monotonic() + self._retry_s
            log.debug("refusal counts wait %.0f s: %s", self._retry_s, exc)
            await self._save(closing)
            if closing and self._waiting is not None:
                log.error("refusal counts wait in %s for the next start: %s", self._folder, exc)
            return False
        self._retry_s = 0.0
        if batch is None:
            return True
        self._waiting, self._changed = None, False
        if batch.path is not None:
            batch.path.unlink(missing_ok=True)
        return True

    async def _write_leftovers(self, store: Store) -> None:
        """Earlier runs' batches, oldest first; StoreError when the database refuses."""
        while self._leftovers:
            batch = self._leftovers[0]
            await store.add_refusals(list(batch.rows.values()), batch.name)
            if batch.path is not None:
                batch.path.unlink(missing_ok=True)
            self._leftovers.pop(0)

    def _file_name(self) -> str:
        return f"{FILE_PREFIX}{self._run}{FILE_SUFFIX}"

    async def _save(self, closing: bool) -> None:
        """The waiting batch into its file (replaced whole), now and then."""
        batch = self._waiting
        if batch is None or not self._changed:
            return
        now = time.monotonic()
        if not closing and now - self._saved_at < SAVE_EVERY_S:
            return
        self._saved_at = now
        path = self._folder / self._file_name()
        document = orjson.dumps([batch.name, [list(row) for row in batch.rows.values()]])
        try:
            await asyncio.to_thread(_replace, path, document)
        except OSError as exc:
            log.error("cannot save the refusal counts to %s: %s", path, exc)
            return
        batch.path, self._changed = path, False


def _replace(path: Path, document: bytes) -> None:
    """`path` holds `document`, on disk for good, or still its earlier content."""
    part = path.with_name(path.name + ".part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, document)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(part, path)

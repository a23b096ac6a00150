"""Usage: read token counts as the bytes pass, and write one record per relayed request
in batches, never on the request path.

The tap keeps only the first HEAD_BYTES and the last TAIL_BYTES of a response (references to
chunks already in memory, nothing copied while streaming). When the response ends it
finds the counts: Ollama's final `done: true` line (`prompt_eval_count`, `eval_count`),
`/api/embed`'s `prompt_eval_count`, an OpenAI `usage` object (the final usage chunk of a
stream too), or Anthropic's `usage` (input tokens from `message_start` when the final
`message_delta` lacks them).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from ..db.store import Store
from ..db.usage import UsageRejected
from ..records import StoreError, UsageRecord, clean_usage_record
from .journal import Journal, Segment, read_segment
from .refusals import RefusalCounts, RefusalWriter

log = logging.getLogger("aigateway.usage")

TAIL_BYTES = 64 * 1024
HEAD_BYTES = 4096
LONG_LINE_BYTES = 4096
FLUSH_INTERVAL_S = 0.25
PRUNE_EVERY_S = 3600.0
AWAY_SEGMENT_BYTES = 16 * 1024**2  # a journal file's size while the database is away
WAITING_REPORT_S = 60.0  # how often to say how much waits, while it waits
LOW_DISK_BYTES = 1024**3  # below this free on the journal's disk, the report is an error
# Fields searched for in bytes that could not be parsed (a line cut by the tail window, or
# a long final object). Patterns start with their literal so `re` can skip ahead fast;
# a match whose quote is escaped is inside a JSON string and is ignored.
_NATIVE_RE = {
    name: re.compile(b'"' + name.encode() + rb'":\s*(\d+)')
    for name in ("prompt_eval_count", "eval_count")
}
_USAGE_RE = re.compile(rb'"usage":\s*(\{[^{}]*\})')
_DURATION_RE = re.compile(rb'"total_duration":\s*(\d+)')


class UsageTap:
    __slots__ = ("_head", "_size", "_tail", "lines", "newlines", "total")

    def __init__(self) -> None:
        self._head: list[bytes] = []  # the first chunks, up to HEAD_BYTES
        self._tail: list[bytes] = []  # the last chunks: TAIL_BYTES and at most twice that
        self._size = 0  # bytes in _tail
        self.total = 0  # body bytes seen
        # Lines seen: what a stream cut before its final counts can still be charged by,
        # counted for streams only (bodies without a length; counting every body cost
        # more than the rest of the tap).
        self.lines = False
        self.newlines = 0

    def feed(self, chunk: bytes) -> None:
        if self.total < HEAD_BYTES:  # the network may cut message_start anywhere
            self._head.append(chunk)
        self.total += len(chunk)
        if self.lines:
            self.newlines += chunk.count(b"\n")
        self._tail.append(chunk)
        self._size += len(chunk)
        if self._size >= 2 * TAIL_BYTES:
            self._trim()

    def _trim(self) -> None:
        """Let go of the oldest chunks that the last TAIL_BYTES do not need (trimming
        only past twice that keeps feed() to a few additions per chunk)."""
        tail, drop = self._tail, 0
        while self._size - len(tail[drop]) >= TAIL_BYTES:
            self._size -= len(tail[drop])
            drop += 1
        del tail[:drop]

    def tail_contains(self, marker: bytes) -> bool:
        return any(marker in chunk for chunk in self._tail) or marker in b"".join(self._tail)

    def model_ns(self) -> int | None:
        """Ollama's total_duration (nanoseconds) from the end of the response, if it
        reported one (its native API does; its OpenAI and Anthropic dialects do not)."""
        tail = b"".join(self._tail)[-LONG_LINE_BYTES:]
        found = _unescaped(_DURATION_RE, tail)
        return _int(int(found[-1][:20])) if found else None

    def counts(self) -> tuple[int | None, int | None]:
        """(prompt tokens, completion tokens) as the upstream reported them, or Nones."""
        tail = self._tail[0] if len(self._tail) == 1 else b"".join(self._tail)
        if not tail:
            return None, None
        return token_counts(self._head, tail)


def token_counts(head: Sequence[bytes], tail: bytes) -> tuple[int | None, int | None]:
    """Counts from the last line that has them, parsing lines from the end (SSE `data:`
    lines too) and searching the bytes where a line is too long or cut; `head` (the
    first chunks) is read only for Anthropic streams whose final usage lacks the input
    tokens. Nearly always the last line holds them, so lines are cut off one at a time
    from the end rather than all split."""
    end = len(tail)
    while end > 0:
        start = tail.rfind(b"\n", 0, end) + 1
        line = tail[start:end].strip()
        end = start - 1
        if line.startswith(b"data:"):
            line = line[5:].strip()
        if not line.startswith(b"{"):
            continue
        if len(line) > LONG_LINE_BYTES:
            # Embeddings or a generate context: tens of KB to parse, while the counts
            # are the object's last fields. Search its end instead.
            found: tuple[int | None, int | None] | None = _search(line)
            if found == (None, None):
                continue
        else:
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                break  # a line cut by the tail window: fall back to searching the bytes
            if not isinstance(doc, dict):
                continue
            found = _from_document(doc)
        if found is not None:
            prompt, completion = found
            if prompt is None:
                prompt = _anthropic_input_tokens(head)
            return prompt, completion
    return _search(tail)


def _from_document(doc: dict[str, Any]) -> tuple[int | None, int | None] | None:
    if "prompt_eval_count" in doc or "eval_count" in doc:
        return _int(doc.get("prompt_eval_count")), _int(doc.get("eval_count"))
    usage = doc.get("usage")
    if isinstance(usage, dict):
        prompt = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
        completion = _int(usage.get("completion_tokens", usage.get("output_tokens")))
        if prompt is not None or completion is not None:
            return prompt, completion
    return None


def _anthropic_input_tokens(head: Sequence[bytes]) -> int | None:
    for line in b"".join(head).splitlines():
        line = line.strip()
        if line.startswith(b"data:") and b"message_start" in line:
            with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError):
                usage = orjson.loads(line[5:])["message"]["usage"]
                return _int(usage.get("input_tokens"))
    return None


def _search(tail: bytes) -> tuple[int | None, int | None]:
    window = tail[-4096:]
    native = {name: _unescaped(rx, window) for name, rx in _NATIVE_RE.items()}
    if native["prompt_eval_count"] or native["eval_count"]:
        prompt = native["prompt_eval_count"]
        completion = native["eval_count"]
        return (
            _int(int(prompt[-1][:20])) if prompt else None,
            _int(int(completion[-1][:20])) if completion else None,
        )
    usages = _unescaped(_USAGE_RE, window)
    if usages:
        with contextlib.suppress(orjson.JSONDecodeError):
            doc = orjson.loads(usages[-1])
            found = _from_document({"usage": doc})
            if found is not None:
                return found
    return None, None


def _unescaped(pattern: re.Pattern[bytes], window: bytes) -> list[bytes]:
    return [
        m.group(1)
        for m in pattern.finditer(window)
        if m.start() == 0 or window[m.start() - 1] != 0x5C  # a backslash
    ]


# Counts an upstream reports beyond this are not believed (and could not be stored).
MAX_COUNT = 2**53


def _int(value: object) -> int | None:
    if value.__class__ is int and 0 <= value <= MAX_COUNT:  # (not a bool, not a float)
        return value
    return None


class UsageWriter:
    """Journals each record at once (journal.py) and writes them to the database in
    batches from one task. The writer never dies: a database that refuses (locked, gone,
    replaced) leaves the records in the journal, retried every flush and at the next
    start; a record the database cannot take is logged, set aside in the journal
    folder's `rejected` file, and skipped.

    A record the journal cannot take (its disk is full) is held in memory, its only copy,
    until the journal or the database takes it: up to `memory_records` of them; at that
    bound `full` is set, and the relay refuses new requests rather than serve them
    unrecorded. Every record is in exactly one place at a time: a segment's file
    (and `_pending`/`_sealed`), or `_memory`, so each reaches the database once."""

    def __init__(
        self,
        store: Store,
        retention_days: int,
        journal: Journal,
        memory_records: int = 100_000,
        refusals: RefusalCounts | None = None,
    ) -> None:
        self._store = store
        self._journal = journal
        # Refused requests' counts, written at each flush beside the records.
        self.refusals = RefusalWriter(refusals or RefusalCounts(), journal.folder, journal.run)
        self._retention_s = retention_days * 86400
        self._pending: list[UsageRecord] = []  # the records of the current segment
        self._sealed: list[tuple[Segment, list[UsageRecord] | None]] = []  # to write
        self._memory: list[UsageRecord] = []  # records the journal could not take
        self._memory_writing = 0  # of them, in a batch on its way to the database
        self._memory_records = max(memory_records, 1)  # (0: refuse from the first one)
        self._memory_batches = itertools.count(1)
        self.full = False  # as many records wait in memory as may: refuse new requests
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._failing = ""  # why the database refuses, while it does (logged once)
        self._in_file_only = False  # records of the current segment not held in memory
        self._flushing = asyncio.Lock()
        self._next_report = time.monotonic() + WAITING_REPORT_S
        self.journal_failing = ""  # why the journal cannot take records, while it cannot
        self.written = 0

    @property
    def waiting_in_memory(self) -> int:
        """Records whose only copy is in memory (the journal could not take them)."""
        return len(self._memory) + self._memory_writing

    def record(self, record: UsageRecord) -> None:
        try:
            self._journal.append(record)
        except TypeError:  # a value JSON cannot hold (a count beyond 64 bits)
            try:
                record = clean_usage_record(record)
                self._journal.append(record)
            except (TypeError, ValueError) as exc:
                self._reject(record, exc)
                return
            except OSError as exc:
                self._keep_in_memory(record, exc)
                return
        except OSError as exc:  # a full disk must not cost the request, nor the record
            self._keep_in_memory(record, exc)
            return
        self._pending.append(record)

    def _keep_in_memory(self, record: UsageRecord, exc: OSError) -> None:
        if not self.journal_failing:
            log.error(
                "cannot write the usage journal (%s); records wait in memory, up to %d,"
                " then requests are refused",
                exc,
                self._memory_records,
            )
        self.journal_failing = str(exc)
        self._memory.append(record)
        if not self.full and self.waiting_in_memory >= self._memory_records:
            self._set_full(True)

    def _set_full(self, full: bool) -> None:
        self.full = full
        if full:
            log.error(
                "%d usage records wait in memory, the most USAGE_MEMORY_RECORDS allows:"
                " requests are refused (503) until the journal or the database takes them",
                self.waiting_in_memory,
            )
        else:
            log.warning("usage records can be kept again: requests are admitted")

    async def start(self) -> None:
        """Write what earlier runs left in the journal, then start the flushing task."""
        await self.replay()
        self.start_writing()

    async def replay(self) -> None:
        """Write what earlier runs left in the journal (what the database cannot take
        yet stays queued: `unwritten` lists it)."""
        for segment in self._journal.leftovers():
            try:
                written = await self._store.segment_written(segment.name)
            except StoreError:
                written = False  # tried again when it is written
            if written:  # killed between the database's commit and the file's removal
                segment.remove()
            else:
                self._sealed.append((segment, None))
        if self._sealed:
            log.info("usage journal: %d segment(s) left by an earlier run", len(self._sealed))
            await self._write_sealed()
        await self.refusals.replay(self._store)

    def start_writing(self) -> None:
        self._task = asyncio.create_task(self._run(), name="aigateway-usage")

    def unwritten(self) -> Iterator[UsageRecord]:
        """Every record not in the database yet (read back from the journal's files
        where they are not held in memory)."""
        for segment, held in self._sealed:
            yield from held if held is not None else read_segment(segment.path)
        yield from self._pending
        yield from self._memory

    async def close(self) -> None:
        # Ask the task to stop between writes rather than cancelling it inside one.
        self._stop.set()
        if self._task is not None:
            await self._task
        if not await self.flush(closing=True):
            waiting = len(self._sealed)
            log.error(
                "usage records of %d journal segment(s) could not be written (%s); they stay"
                " in %s and are written at the next start",
                waiting,
                self._failing,
                self._journal.folder,
            )
            for segment, _ in self._sealed:
                segment.close()
        if self._memory:
            log.error(
                "%d usage records are lost: neither the journal (%s) nor the database"
                " could take them",
                len(self._memory),
                self.journal_failing,
            )
        self._journal.close()

    async def flush(self, closing: bool = False) -> bool:
        """Seal the current segment and write every sealed one, oldest first, then the
        records held in memory, then the refusals counted since the last flush
        (refusals.py); False when the database refused records (they stay for the next
        try). While the database is away the current segment is not sealed each flush
        but grows (synced to disk each time) up to AWAY_SEGMENT_BYTES: a long outage
        makes a few files, not four a second, and holds no record in memory."""
        async with self._flushing:  # the task's flushes and close()'s never interleave
            written = await self._flush()
            await self.refusals.flush(self._store, closing)  # (what it cannot write waits)
            return written

    async def _flush(self) -> bool:
        self._journal_again()
        if self._pending or self._in_file_only:
            if self._failing and self._journal.current_size() < AWAY_SEGMENT_BYTES:
                self._pending, self._in_file_only = [], True
                try:
                    await asyncio.to_thread(self._journal.sync_current)
                except OSError as exc:
                    log.error("cannot sync the usage journal: %s", exc)
            else:
                self._seal()
        written = await self._write_sealed()
        if written and self._in_file_only:  # the database is back: the grown one now
            self._seal()
            written = await self._write_sealed()
        if written and self._memory:  # the journal is full but the database takes them
            written = await self._write_memory()
        if self.full and self.waiting_in_memory < self._memory_records:
            self._set_full(False)
        if not written:
            self._report_waiting()
        return written

    def _journal_again(self) -> None:
        """Move the records held in memory into the journal, as far as it takes them
        (a disk with room again); say when it takes every record again."""
        moved = 0
        for record in self._memory:
            try:
                self._journal.append(record)
            except OSError:
                break
            moved += 1
        if moved:
            self._pending.extend(self._memory[:moved])
            del self._memory[:moved]
        if self.journal_failing and not self._memory and self._pending:
            self.journal_failing = ""
            log.warning("the usage journal takes records again")

    def _seal(self) -> None:
        try:
            sealed = self._journal.seal()
        except OSError as exc:  # no room for a new file: the current one goes on
            log.error("cannot start a new usage journal segment: %s", exc)
            return
        if sealed is not None:
            held = None if self._in_file_only else self._pending
            self._sealed.append((sealed, held))
        self._pending, self._in_file_only = [], False

    async def _write_memory(self) -> bool:
        """Write the records held in memory to the database in one transaction (named,
        as a segment is, though no file holds them); False when it refused."""
        batch, self._memory = self._memory, []
        name = f"mem-{self._journal.run}-{next(self._memory_batches):06d}"
        self._memory_writing = len(batch)  # (still counted against the bound meanwhile)
        try:
            await self._insert(name, batch)
        except StoreError as exc:
            self._memory[:0] = batch  # before any that came meanwhile
            self._database_refused(exc)
            return False
        finally:
            self._memory_writing = 0
        self.written += len(batch)
        if self._failing:
            self._failing = ""
            log.warning("usage records are written to the database again")
        return True

    def _database_refused(self, exc: StoreError) -> None:
        """Said once an outage (an outage's errors vary in wording from try to try: a
        refused connection, a timeout, a server shutting down); its end is said too."""
        if not self._failing:
            log.error("usage records wait in the journal: %s", exc)
        elif str(exc) != self._failing:
            log.debug("the database still refuses usage records: %s", exc)
        self._failing = str(exc)

    def _report_waiting(self) -> None:
        """Now and then while the database is away: how much waits in the journal, and
        whether its disk can hold more (a full disk is the bound on what can wait)."""
        now = time.monotonic()
        if now < self._next_report:
            return
        self._next_report = now + WAITING_REPORT_S
        paths = [segment.path for segment, _ in self._sealed]
        if self._journal.current is not None:
            paths.append(self._journal.current.path)
        waiting = sum(p.stat().st_size for p in paths if p.exists())
        try:
            free = shutil.disk_usage(self._journal.folder).free
        except OSError:
            return
        level = logging.ERROR if free < LOW_DISK_BYTES else logging.WARNING
        log.log(
            level,
            "%.1f MB of usage records are waiting in the journal (%s) for the database;"
            " %.0f MB free on its disk%s",
            waiting / 1e6,
            self._journal.folder,
            free / 1e6,
            ": records will be lost when it is full" if level == logging.ERROR else "",
        )

    async def _write_sealed(self) -> bool:
        while self._sealed:
            segment, held = self._sealed[0]
            records = held if held is not None else read_segment(segment.path)
            try:
                await self._insert(segment.name, records)
            except StoreError as exc:
                # Keep the segment, on disk for good (a machine crash) now that it is the
                # only copy; let go of its records (re-read from the file later), so
                # memory stays flat however long the database is away. (A segment the
                # database takes at once needs no fsync: only the last flush interval's
                # records are ever in the page cache alone.)
                if held is not None:  # the first refusal of this segment
                    try:
                        await asyncio.to_thread(os.fsync, segment.fd)
                    except OSError as error:
                        log.error("cannot sync usage journal %s: %s", segment.name, error)
                self._sealed[0] = (segment, None)
                self._database_refused(exc)
                return False
            segment.remove()
            self._sealed.pop(0)
            self.written += len(records)
            if self._failing:
                self._failing = ""
                log.warning("usage records are written to the database again")
        return True

    async def _insert(self, name: str, records: list[UsageRecord]) -> None:
        await self._store.check_file()
        try:
            await self._store.insert_usage(records, name)
        except UsageRejected as exc:  # a value the database will not take: find it
            log.error("usage segment %s: %s; checking its records one by one", name, exc)
            good = []
            for record in records:
                try:
                    good.append(clean_usage_record(record))
                except (TypeError, ValueError) as bad:
                    self._reject(record, bad)
            await self._store.insert_usage(good, name)

    def _reject(self, record: UsageRecord, why: Exception) -> None:
        log.error("usage record set aside (in %s/rejected): %s", self._journal.folder, why)
        try:
            with (self._journal.folder / "rejected").open("ab") as out:
                out.write(orjson.dumps(list(record), default=repr) + b"\n")
        except OSError as exc:
            log.error("cannot set the usage record aside: %s", exc)

    async def _run(self) -> None:
        next_prune = time.monotonic()
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), FLUSH_INTERVAL_S)
            try:
                await self.flush()
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + PRUNE_EVERY_S
                    await self._prune()
            except Exception:  # never let the writer die: log, and try again next time
                log.exception("the usage writer hit an unexpected error; it goes on")

    async def _prune(self) -> None:
        try:
            await self._store.forget_segments(time.time() - 7 * 86400)
            if self._retention_s:
                pruned = await self._store.prune_usage(time.time() - self._retention_s)
                if pruned:
                    log.info("pruned %d usage records older than the retention", pruned)
        except StoreError as exc:
            log.warning("could not prune old usage records: %s", exc)

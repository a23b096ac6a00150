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
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

import orjson

from .store import Store, StoreError, UsageRecord

log = logging.getLogger("aigateway.usage")

TAIL_BYTES = 64 * 1024
HEAD_BYTES = 4096
LONG_LINE_BYTES = 4096
FLUSH_INTERVAL_S = 0.25
BATCH = 2000
PRUNE_EVERY_S = 3600.0
# Fields searched for in bytes that could not be parsed (a line cut by the tail window, or
# a long final object). Patterns start with their literal so `re` can skip ahead fast;
# a match whose quote is escaped is inside a JSON string and is ignored.
_NATIVE_RE = {
    name: re.compile(b'"' + name.encode() + rb'":\s*(\d+)')
    for name in ("prompt_eval_count", "eval_count")
}
_USAGE_RE = re.compile(rb'"usage":\s*(\{[^{}]*\})')


class UsageTap:
    __slots__ = ("_head", "_size", "_tail", "newlines", "total")

    def __init__(self) -> None:
        self._head: list[bytes] = []  # the first chunks, up to HEAD_BYTES
        self._tail: list[bytes] = []  # the last chunks: TAIL_BYTES and at most twice that
        self._size = 0  # bytes in _tail
        self.total = 0  # body bytes seen
        # Lines seen: what a stream cut before its final counts can still be charged by.
        self.newlines = 0

    def feed(self, chunk: bytes) -> None:
        if self.total < HEAD_BYTES:  # the network may cut message_start anywhere
            self._head.append(chunk)
        self.total += len(chunk)
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
        return (int(prompt[-1]) if prompt else None, int(completion[-1]) if completion else None)
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


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class UsageWriter:
    """Collects records in memory and writes them in batches from one task; `close()`
    writes everything still queued, so a graceful stop loses nothing."""

    def __init__(self, store: Store, retention_days: int) -> None:
        self._store = store
        self._retention_s = retention_days * 86400
        self._pending: list[UsageRecord] = []
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.written = 0

    def record(self, record: UsageRecord) -> None:
        self._pending.append(record)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="aigateway-usage")

    async def close(self) -> None:
        # Ask the task to stop between writes rather than cancelling it inside one.
        self._stop.set()
        if self._task is not None:
            await self._task
        while self._pending:
            if not await self.flush():
                log.error("could not write %d usage records at shutdown", len(self._pending))
                return

    async def flush(self) -> bool:
        """Write what is pending now, in batches; on a database error keep the rest for
        the next try. Records that arrive meanwhile wait for the next flush: looping until
        none were left kept the writer busy under load, in batches of a few rows."""
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), BATCH):
            batch = pending[start : start + BATCH]
            try:
                await self._store.insert_usage(batch)
            except StoreError as exc:
                self._pending[:0] = pending[start:]  # in order, before any newer ones
                log.warning(
                    "usage records not written yet (%d waiting): %s", len(self._pending), exc
                )
                return False
            self.written += len(batch)
        return True

    async def _run(self) -> None:
        next_prune = time.monotonic()
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), FLUSH_INTERVAL_S)
            await self.flush()
            if self._retention_s and time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_EVERY_S
                try:
                    pruned = await self._store.prune_usage(time.time() - self._retention_s)
                except StoreError as exc:
                    log.warning("could not prune old usage records: %s", exc)
                else:
                    if pruned:
                        log.info("pruned %d usage records older than the retention", pruned)

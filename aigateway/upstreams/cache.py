"""The response cache: complete 200 answers this gateway may repeat instead of asking an
upstream again (CACHE_SIZE, off by default; docs/cache.md).

It stands in for an upstream, so it lives beside them: a kept answer is what an upstream
sent (its headers but the date, each chunk as it came), found by a key the relay makes
(relay/cached.py: the scope, the route, the model's one identity and its digest, the
exact body). Bounded in bytes, the least recently used answer goes first; an answer older
than CACHE_TTL is never repeated. Each gateway keeps its own, in memory: sharing one
through the database would cost every lookup a round trip and every answer its bytes in
the database, for hits a second gateway would soon have of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from ..protocol.streams import ended_whole, loads_model_only
from .http import RESPONSE_DROP

# The answer's header that says it came from the cache (hit) or was looked for there
# (miss); absent when the request could not be answered from it.
CACHE_HEADER = "X-Aigateway-Cache"

# What keeping an answer costs beyond its bytes (the entry, its key, the list), and each
# chunk beyond its bytes: counted, so that many small answers cannot exceed the bound.
ENTRY_OVERHEAD = 400
CHUNK_OVERHEAD = 40
# No answer takes more than this share of the cache (one would empty it for itself).
LARGEST_SHARE = 8


class CachedAnswer:
    """A complete 200 answer as its upstream sent it: its headers (less the date and
    what is hop-by-hop) and its body's chunks, to be sent again as they came."""

    __slots__ = ("chunks", "expires", "headers", "length", "reason", "size")

    def __init__(
        self,
        headers: tuple[tuple[str, str], ...],
        reason: str,
        chunks: tuple[bytes, ...],
        length: int | None,
        expires: float,
    ) -> None:
        self.headers = headers
        self.reason = reason
        self.chunks = chunks
        self.length = length  # its Content-Length (None: it was chunked, a stream)
        self.expires = expires  # (monotonic)
        self.size = (
            ENTRY_OVERHEAD
            + sum(len(c) + CHUNK_OVERHEAD for c in chunks)
            + sum(len(k) + len(v) for k, v in headers)
        )


class ResponseCache:
    """Answers by key, at most `capacity` bytes of them, each repeated for `ttl` seconds;
    what it did since start (hits, misses, answers kept and evicted) for /metrics and
    the dashboard."""

    def __init__(
        self, capacity: int, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.capacity = capacity
        self.ttl = ttl
        self.largest = capacity // LARGEST_SHARE  # an answer's most, in bytes
        self._clock = clock
        self._answers: OrderedDict[bytes, CachedAnswer] = OrderedDict()
        self.size = 0  # bytes held, overheads counted
        self.pending = 0  # bytes held by answers on their way (Keeper), not yet kept
        self.hits = 0
        self.misses = 0
        self.stored = 0
        self.evicted = 0  # for room (an expired answer dropped is not counted)
        # How many times it was emptied: an answer on its way since before is not kept.
        self.clears = 0
        # The keys of answers on their way (a Keeper leading), each with what is set when
        # it came, so that identical requests meanwhile wait for it, not ask again.
        self._on_way: dict[bytes, asyncio.Event] = {}

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, key: bytes) -> CachedAnswer | None:
        """The answer kept under `key`, now the most recently used; None (a miss) when
        there is none, or it is older than the TTL (then dropped)."""
        answer = self._answers.get(key)
        if answer is not None:
            if answer.expires > self._clock():
                self._answers.move_to_end(key)
                self.hits += 1
                return answer
            self._drop(key)
        self.misses += 1
        return None

    def on_way(self, key: bytes) -> asyncio.Event | None:
        """What is set once the answer on its way under `key` came (kept or not); None
        when none is on its way."""
        return self._on_way.get(key)

    def after_waiting(self, key: bytes) -> CachedAnswer | None:
        """The answer a request that waited for an identical one on its way finds now: a
        hit after all (the miss it was first counted as becomes one), or None when that
        answer was not kept (then it asks the upstream itself)."""
        answer = self._answers.get(key)
        if answer is None or answer.expires <= self._clock():
            return None
        self._answers.move_to_end(key)
        self.misses -= 1
        self.hits += 1
        return answer

    def put(
        self,
        key: bytes,
        headers: tuple[tuple[str, str], ...],
        reason: str,
        chunks: tuple[bytes, ...],
        length: int | None,
    ) -> bool:
        """Keep an answer under `key` (replacing any), making room by dropping the least
        recently used; False when it is larger than an answer may be."""
        answer = CachedAnswer(headers, reason, chunks, length, self._clock() + self.ttl)
        if answer.size > self.largest:
            return False
        if key in self._answers:
            self._drop(key)
        answers = self._answers
        while answers and self.size + answer.size > self.capacity:
            _, oldest = answers.popitem(last=False)
            self.size -= oldest.size
            self.evicted += 1
        answers[key] = answer
        self.size += answer.size
        self.stored += 1
        return True

    def clear(self) -> int:
        """Drop every answer (an admin's choice: after replacing a model by hand, say);
        how many there were. Answers on their way, asked before, are not kept when they
        come: they may be the replaced model's."""
        dropped = len(self._answers)
        self._answers.clear()
        self.size = 0
        self.clears += 1
        return dropped

    def _drop(self, key: bytes) -> None:
        self.size -= self._answers.pop(key).size

    def stats(self) -> dict[str, int | float | None]:
        """What the cache holds and did since the gateway started."""
        lookups = self.hits + self.misses
        return {
            "capacity_bytes": self.capacity,
            "bytes": self.size,
            "entries": len(self._answers),
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": round(self.hits / lookups, 4) if lookups else None,
            "stored": self.stored,
            "evicted": self.evicted,
            "ttl_seconds": self.ttl,
        }


class Keeper:
    """A looked-for answer on its way from its upstream (a miss), its chunks kept as they
    pass, and handed to the cache once it came complete (a stream ended as its dialect
    ends a whole answer); a 200 only, and only while it is no larger than an answer may
    be. The bytes answers on their way hold, all together, are bounded by the cache's
    capacity (beyond it, an answer is not kept and holds nothing more). A take of the
    request's ledger: its release lets go of what it holds, however the request ended."""

    __slots__ = ("_cache", "_chunks", "_clears", "_key", "_leads", "_size")

    by_record = False  # (a ledger take's: never decided on a gateway's own reckoning)

    def __init__(self, cache: ResponseCache, key: bytes) -> None:
        self._cache = cache
        self._key = key
        self._chunks: list[bytes] | None = []
        self._size = 0  # bytes held, overheads counted, in the cache's `pending` too
        self._clears = cache.clears  # (emptied since: this answer is not kept)
        # The first on its way under its key: identical requests wait for it meanwhile.
        self._leads = key not in cache._on_way
        if self._leads:
            cache._on_way[key] = asyncio.Event()

    def add(self, chunk: bytes) -> None:
        chunks = self._chunks
        if chunks is not None:
            cache = self._cache
            size = len(chunk) + CHUNK_OVERHEAD  # (counted as the cache will count it)
            self._size += size
            cache.pending += size
            if self._size > cache.largest or cache.pending > cache.capacity:
                self._let_go()
            else:
                chunks.append(chunk)

    def complete(
        self, status: int, reason: str | None, headers: Mapping[str, str], length: int | None
    ) -> bool:
        """The answer came whole: keep it (its headers less the date, a repeat gets its
        own, and those no answer passes on); whether it was kept. A 200 stream that
        ended with Ollama's error instead of its last message is a failure: not kept."""
        chunks = self._chunks
        try:  # (kept before the requests waiting for it are woken)
            if chunks is None or status != 200 or self._clears != self._cache.clears:
                return False
            if not ended_whole(chunks, headers.get("Content-Type", "")):
                return False
            if loads_model_only(chunks):  # (a repeat would not load the model)
                return False
            kept = tuple(
                (name, value)
                for name, value in headers.items()
                if name.lower() not in RESPONSE_DROP and name.lower() != "date"
            )
            return self._cache.put(self._key, kept, reason or "OK", tuple(chunks), length)
        finally:
            self._let_go()

    def release(self, _outcome: object) -> None:
        self._let_go()

    def _let_go(self) -> None:
        """Hold nothing more; as the leader, wake the requests waiting for this answer
        (which find it kept, or ask the upstream themselves)."""
        self._chunks = None
        cache = self._cache
        cache.pending -= self._size
        self._size = 0
        if self._leads:
            self._leads = False
            cache._on_way.pop(self._key).set()

"""BODY_MIN_RATE: a request body must keep coming, or it is cut (408).

A body read into memory holds memory and a slot of its key while it comes; one that
trickles (a byte every few seconds, or nothing at all) would hold them for as long as
its client likes. So every body still arriving is watched: once it is GRACE_S old, it
must have brought at least BODY_MIN_RATE bytes a second over the last WINDOW_S, or it is
cut: its read fails with SlowBody, and the relay answers 408 and closes the connection.

The clock is one task for all bodies, ticking TICKS times a window and alive only while
some body is watched; a chunk's arrival costs nothing (the reader's own byte count is
sampled at each tick). A body that has fully arrived when its request is handled (the
usual small one) is never watched. Waiting for body memory is the gateway's doing, not
the client's: a body waiting so is not judged, and its window starts again after.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import StreamReader

from ..errors import Refused, RequestTimeout

WINDOW_S = 10.0  # the rate is measured over any window this long ...
GRACE_S = 10.0  # ... once the body is this old
TICKS = 10  # samples a window: the window slides by WINDOW_S / TICKS


class SlowBody(Exception):
    """Set into a body's reader when it comes slower than BODY_MIN_RATE."""


class Watched:
    __slots__ = ("at", "content", "paused", "samples", "since")

    def __init__(self, content: StreamReader, now: float) -> None:
        self.content = content
        self.paused = False  # waiting for body memory: not the client's fault
        self.start(now)

    def start(self, now: float) -> None:
        self.since = now
        self.samples = [self.content.total_bytes] * TICKS  # the count, a tick apart
        self.at = 0  # the oldest sample, to be replaced next


class BodyPace:
    def __init__(self, min_rate: int, window_s: float = WINDOW_S, grace_s: float = GRACE_S) -> None:
        self.min_rate = min_rate  # bytes a second; 0: no body is ever cut
        self.window_s = window_s  # (shorter in tests, so that a trickle is judged at once)
        self.grace_s = grace_s
        self._watched: set[Watched] = set()
        self._clock: asyncio.Task[None] | None = None

    def watch(self, content: StreamReader) -> Watched | None:
        """Watch a body that is still arriving, until unwatch()."""
        if not self.min_rate:
            return None
        watched = Watched(content, time.monotonic())
        self._watched.add(watched)
        if self._clock is None:
            self._clock = asyncio.get_running_loop().create_task(self._tick_while_watched())
        return watched

    def refusal(self) -> RequestTimeout:
        """What a body cut for its pace is answered (408)."""
        return RequestTimeout(
            "the request body came too slowly: this gateway wants at least"
            f" {self.min_rate} bytes a second over any {self.window_s:g} s (BODY_MIN_RATE)",
            reason=Refused.SLOW_BODY,
        )

    def unwatch(self, watched: Watched | None) -> None:
        if watched is not None:
            self._watched.discard(watched)

    async def close(self) -> None:
        clock, self._clock = self._clock, None
        if clock is not None:
            clock.cancel()
            await asyncio.gather(clock, return_exceptions=True)

    async def _tick_while_watched(self) -> None:
        try:
            while self._watched:
                await asyncio.sleep(self.window_s / TICKS)
                self.tick(time.monotonic())
        finally:
            self._clock = None

    def tick(self, now: float) -> None:
        """Sample every watched body, and cut those that came too slowly."""
        least = self.min_rate * self.window_s
        for watched in list(self._watched):
            if watched.paused:
                continue
            got = watched.content.total_bytes
            at = watched.at
            before = watched.samples[at]  # the count a window ago
            watched.samples[at] = got
            watched.at = (at + 1) % TICKS
            if now - watched.since >= self.grace_s and got - before < least:
                self._watched.discard(watched)
                watched.content.set_exception(SlowBody())

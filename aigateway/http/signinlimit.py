"""How often the dashboard may be signed into: per key and per client address.

Every attempt counts, failed ones included, so a wrong key guessed over and over costs
its address, and a known key's failed tries (revoked, its user disabled) cost that key.
An IPv6 client counts as its /64 (one host is commonly given a whole one). The windows
slide over the last minute and live in this process's memory: a table per
subject kind, bounded (idle entries are forgotten, and beyond the cap the least recently
seen goes), so a flood of addresses cannot grow it without end.
"""

from __future__ import annotations

import ipaddress
import math
from collections import deque
from collections.abc import Hashable

SIGN_INS_PER_KEY = 10
SIGN_INS_PER_ADDRESS = 30
WINDOW_S = 60.0
MAX_SUBJECTS = 10_000  # per table: keys, addresses


class SlidingWindow:
    """At most `limit` takes per subject in any `period` seconds."""

    def __init__(self, limit: int, period: float = WINDOW_S, capacity: int = MAX_SUBJECTS) -> None:
        self.limit = limit
        self.period = period
        self.capacity = capacity
        # subject -> its recent take times, oldest first; the dict in least recently
        # used order, so idle and evicted entries are always at its front.
        self._takes: dict[Hashable, deque[float]] = {}

    def __len__(self) -> int:
        return len(self._takes)

    def take(self, subject: Hashable, now: float) -> float:
        """Count an attempt of `subject` at `now` (monotonic seconds) and return 0; or,
        when it has had `limit` in the last `period`, count nothing and return the seconds
        until its oldest leaves the window."""
        times = self._takes.pop(subject, None)
        if times is None:
            times = deque(maxlen=self.limit)
        self._takes[subject] = times  # now the most recently used
        if len(times) == self.limit and now - times[0] < self.period:
            return times[0] + self.period - now
        times.append(now)
        self._forget(now)
        return 0.0

    def _forget(self, now: float) -> None:
        """Drop entries idle for a whole period, then the least recently used beyond the cap."""
        takes = self._takes
        while takes:
            oldest = next(iter(takes))
            if now - takes[oldest][-1] < self.period and len(takes) <= self.capacity:
                return
            del takes[oldest]


class SignInLimits:
    """The two windows a sign-in passes: its client address's, then its key's."""

    def __init__(
        self, per_key: int = SIGN_INS_PER_KEY, per_address: int = SIGN_INS_PER_ADDRESS
    ) -> None:
        self.keys = SlidingWindow(per_key)
        self.addresses = SlidingWindow(per_address)

    def take_address(self, address: str, now: float) -> int:
        """0, or the whole seconds to wait (Retry-After) before `address` may try again."""
        return _whole_seconds(self.addresses.take(_network(address), now))

    def take_key(self, key_id: int, now: float) -> int:
        """0, or the whole seconds to wait before the key `key_id` may be tried again."""
        return _whole_seconds(self.keys.take(key_id, now))


def _network(address: str) -> str:
    """What one client is: an IPv4 address (also written IPv4-mapped), or an IPv6 /64,
    since one host is commonly given a whole /64 and can take any address in it."""
    if ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address.split("%", 1)[0])
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((ip, 64), strict=False))


def _whole_seconds(wait: float) -> int:
    return max(1, math.ceil(wait)) if wait > 0 else 0

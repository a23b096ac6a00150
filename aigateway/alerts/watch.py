"""The alerts no other part of the gateway raises: a key refused N times within M
minutes (counted in memory as refusals happen) and keys about to expire (a look at the
key table now and then)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

from ..access.keytable import KeyTable
from ..errors import Refused
from ..records import DAY, Alert, AlertSink, KeyRecord

EXPIRY_LOOK_EVERY_S = 3600.0


class RefusalWatch:
    """`N` refusals of one key within `minutes` raise `key_refusals`, once per key and
    `minutes`-long window of the clock (so two gateways that both see it raise one).
    Counted by this gateway alone: behind a load balancer that spreads a key over k
    gateways, each sees about 1/k of its refusals. Memory: at most N times per key
    refused lately (the keys are the key table's, so bounded)."""

    def __init__(
        self, count: int, minutes: int, sink: AlertSink, clock: Callable[[], float] = time.time
    ) -> None:
        self._count = count
        self._window_s = minutes * 60.0
        self._minutes = minutes
        self._sink = sink
        self._clock = clock
        self._times: dict[int, deque[float]] = {}
        self._raised: dict[int, int] = {}  # key id -> the window it was last raised in

    def refused(self, reason: Refused, key: KeyRecord) -> None:
        now = self._clock()
        times = self._times.get(key.id)
        if times is None:
            times = self._times[key.id] = deque(maxlen=self._count)
        times.append(now)
        if len(times) < self._count or now - times[0] > self._window_s:
            return
        window = int(now // self._window_s)
        times.clear()
        if self._raised.get(key.id) == window:
            return
        self._raised[key.id] = window
        label = f"{key.user}/{key.name}"
        self._sink(
            Alert(
                "key_refusals",
                f"key:{key.id}",
                str(window),
                f"key {label} was refused {self._count} times within {self._minutes}"
                f" minutes (the last: {reason})",
                {
                    "key_id": key.id,
                    "user": key.user,
                    "key_name": key.name,
                    "key_prefix": key.prefix,
                    "refusals": self._count,
                    "minutes": self._minutes,
                    "last_reason": str(reason),
                },
            )
        )


def expiring_alerts(keys: list[KeyRecord], days: int, now: float) -> list[Alert]:
    """`key_expiring` for each working key that expires within `days` (once per key and
    expiry date: a key given a new date is raised again)."""
    found = []
    for key in keys:
        expires = key.expires_at
        if expires is None or key.status(now) != "active" or expires > now + days * DAY:
            continue
        when = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%d %H:%M UTC")
        label = f"{key.user}/{key.name}"
        found.append(
            Alert(
                "key_expiring",
                f"key:{key.id}",
                str(int(expires)),
                f"key {label} expires at {when}",
                {
                    "key_id": key.id,
                    "user": key.user,
                    "key_name": key.name,
                    "key_prefix": key.prefix,
                    "expires_at": expires,
                },
            )
        )
    return found


async def watch_expiring(
    table: KeyTable, days: int, sink: AlertSink, every_s: float = EXPIRY_LOOK_EVERY_S
) -> None:
    """Look at the key table now and every `every_s`, raising `key_expiring`."""
    while True:
        for alert in expiring_alerts(table.records(), days, time.time()):
            sink(alert)
        await asyncio.sleep(every_s)

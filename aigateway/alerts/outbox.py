"""Alerts on their way: raised in memory, kept in the database's outbox, posted by one
background task, each at most once per kind, subject and period.

Raising an alert (`raise_alert`, what budgets, the upstream pool and the watches are
given) appends it to a bounded list in memory and wakes the task: no await, no I/O, so it
is safe on the request path. The task adds what was raised to `alerts_outbox` in one
insert (an alert added before, here or by another gateway, is skipped by its unique
`dedupe`), then claims the rows that are due for a lease (PostgreSQL: `FOR UPDATE SKIP
LOCKED`, so two gateways never take the same row), posts them, and marks each sent, due
again after a backoff (doubling, with jitter), or given up after MOST_ATTEMPTS with a log
line. A gateway that stops with alerts in memory adds them at close; one that dies
mid-post leaves its rows to be taken again when their lease ends (a receiver may then see
an alert twice: the `X-Aigateway-Event` header is the same both times). While the
database is away, raised alerts wait in memory (at most MOST_WAITING).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping

from ..db.alerts import ClaimedAlert, OutboxRow
from ..db.store import Store
from ..records import Alert, StoreError
from .send import Poster, SendFailed
from .webhook import EVENT_HEADER, SIGNATURE_HEADER, signature, stored_body, webhook_body

log = logging.getLogger("aigateway.alerts")

MOST_WAITING = 10_000  # alerts raised but not yet in the outbox; beyond: dropped, logged
POLL_S = 5.0  # how often the outbox is looked at without a wake-up (retries, other gateways)
LEASE_S = 120.0  # a claimed alert is due again after this, if its sender did not mark it
BATCH = 10  # alerts claimed (and posted side by side) at a time
FIRST_RETRY_S, MOST_RETRY_S = 10.0, 3600.0
MOST_ATTEMPTS = 12  # about 11 hours of tries
KEEP_DONE_S = 400 * 86400  # sent alerts are kept this long: they de-duplicate
PRUNE_EVERY_S = 3600.0


class AlertOutbox:
    def __init__(
        self,
        store: Store,
        urls: Mapping[str, str],
        poster: Poster,
        *,
        form: str = "json",
        secret: str | None = None,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
        first_retry_s: float = FIRST_RETRY_S,
        most_retry_s: float = MOST_RETRY_S,
        most_attempts: int = MOST_ATTEMPTS,
        poll_s: float = POLL_S,
    ) -> None:
        self._store = store
        self._urls = dict(urls)  # kind -> URL; a kind not here is not raised
        self._poster = poster
        self._form = form
        self._secret = secret
        self._clock = clock
        self._jitter = jitter
        self._first_retry_s = first_retry_s
        self._most_retry_s = most_retry_s
        self._most_attempts = most_attempts
        self._poll_s = poll_s
        self._raised: deque[OutboxRow] = deque()
        self._dropped = 0
        self._wake = asyncio.Event()
        self._pruned_at = -PRUNE_EVERY_S
        self.sent = 0
        self.given_up = 0

    def wants(self, kind: str) -> bool:
        return kind in self._urls

    def raise_alert(self, alert: Alert) -> None:
        """Queue `alert` for the outbox (no I/O): what event sources are given."""
        if alert.kind not in self._urls:
            return
        if len(self._raised) >= MOST_WAITING:
            self._dropped += 1
            return
        now = self._clock()
        self._raised.append(OutboxRow(alert.dedupe, alert.kind, stored_body(alert, now), now))
        self._wake.set()

    async def state(self) -> dict[str, object]:
        """For an admin's /health: what this gateway sent and gave up since it started,
        what waits in its memory, and the outbox's alerts by state (all gateways')."""
        try:
            outbox: dict[str, int] | str = await self._store.alert_states()
        except StoreError as exc:
            outbox = str(exc)
        return {
            "sent": self.sent,
            "given_up": self.given_up,
            "waiting_in_memory": len(self._raised),
            "outbox": outbox,
        }

    async def run(self) -> None:
        """Post alerts until cancelled; never dies of a database or webhook failure."""
        while True:
            try:
                await self.round()
            except Exception:  # never let the alerts die
                log.exception("alerts: a round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_s)
            self._wake.clear()

    async def round(self) -> int:
        """Add what was raised, then post what is due: how many were posted."""
        if not await self.add_raised():
            return 0
        posted = 0
        while True:
            try:
                claimed = await self._store.claim_alerts(self._clock(), LEASE_S, BATCH)
            except StoreError as exc:
                log.warning("alerts: cannot read the outbox: %s", exc)
                return posted
            if not claimed:
                break
            await asyncio.gather(*(self._post(alert) for alert in claimed))
            posted += len(claimed)
        await self._prune()
        return posted

    async def add_raised(self) -> bool:
        """Move the alerts raised in memory into the outbox: False if the database
        refused (they stay for the next try)."""
        if self._dropped:
            log.warning(
                "alerts: %d alerts dropped, too many waited for the database", self._dropped
            )
            self._dropped = 0
        if not self._raised:
            return True
        rows = list(self._raised)
        try:
            await self._store.add_alerts(rows)
        except StoreError as exc:
            log.warning("alerts: %d wait for the database: %s", len(rows), exc)
            return False
        for _ in rows:
            self._raised.popleft()
        return True

    async def close(self) -> None:
        """At a stop: what was raised goes to the outbox, to be sent after the restart."""
        await self.add_raised()

    async def _post(self, alert: ClaimedAlert) -> None:
        url = self._urls.get(alert.kind)
        now = self._clock()
        try:
            if url is None:
                raise SendFailed("its kind has no URL now")
            body = webhook_body(alert.body, self._form)
            headers = {EVENT_HEADER: alert.dedupe}
            if self._secret is not None:
                headers[SIGNATURE_HEADER] = signature(self._secret, int(now), body)
            await self._poster.post(url, body, headers)
        except SendFailed as exc:
            await self._failed(alert, str(exc))
            return
        try:
            await self._store.alert_sent(alert.id, self._clock())
        except StoreError as exc:  # sent; posted again when its lease ends
            log.warning("alerts: %s was sent but cannot be marked: %s", alert.dedupe, exc)
        self.sent += 1

    async def _failed(self, alert: ClaimedAlert, why: str) -> None:
        now = self._clock()
        try:
            if alert.attempts >= self._most_attempts:
                await self._store.alert_dropped(alert.id, now, why)
                self.given_up += 1
                log.warning(
                    "alerts: gave up %s (%s) after %d tries: %s",
                    alert.dedupe,
                    alert.kind,
                    alert.attempts,
                    why,
                )
                return
            wait = self.backoff(alert.attempts)
            await self._store.alert_due_again(alert.id, now + wait, why)
        except StoreError as exc:
            log.warning("alerts: cannot note a failed try of %s: %s", alert.dedupe, exc)
            return
        log.info(
            "alerts: %s not sent (%s); try %d in %.0f s",
            alert.dedupe,
            why,
            alert.attempts + 1,
            wait,
        )

    def backoff(self, attempts: int) -> float:
        """Seconds before try `attempts + 1`: doubling from FIRST_RETRY_S up to
        MOST_RETRY_S, each between half and all of that (jitter: gateways that failed
        together do not all come back together)."""
        ceiling = min(self._most_retry_s, self._first_retry_s * 2.0 ** min(attempts - 1, 30))
        return ceiling * (0.5 + 0.5 * self._jitter())

    async def _prune(self) -> None:
        now = self._clock()
        if now - self._pruned_at < PRUNE_EVERY_S:
            return
        self._pruned_at = now
        with contextlib.suppress(StoreError):
            await self._store.prune_alerts(now - KEEP_DONE_S)

"""Alerts while the gateway runs, made from the settings: nothing at all when no alert
URL is set (alerts are then free), else the outbox's task, the expiry look, and the
hooks the budgets, the upstream pool and the refusal counts are given."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any

from ..access.keytable import KeyTable
from ..db.store import Store
from ..records import AlertSink
from ..settings import Settings
from ..usage.refusals import RefusalWatcher
from .outbox import AlertOutbox
from .send import Poster
from .watch import RefusalWatch, watch_expiring


@dataclass(frozen=True, slots=True)
class AlertHooks:
    """What event sources are given; None where alerts are off."""

    sink: AlertSink | None = None
    refused: RefusalWatcher | None = None
    outbox: AlertOutbox | None = None


@contextlib.asynccontextmanager
async def running_alerts(
    settings: Settings, store: Store, table: KeyTable
) -> AsyncIterator[AlertHooks]:
    urls = settings.alert_urls
    if not urls:
        yield AlertHooks()
        return
    async with Poster.open(settings.alert_allow_private_urls) as poster:
        outbox = AlertOutbox(
            store,
            urls,
            poster,
            form=settings.alert_webhook_format,
            secret=settings.alert_webhook_secret,
        )
        refused = None
        if outbox.wants("key_refusals") and settings.alert_refusals is not None:
            count, minutes = settings.alert_refusals
            refused = RefusalWatch(count, minutes, outbox.raise_alert).refused
        tasks = [_task(outbox.run(), "aigateway-alerts")]
        if outbox.wants("key_expiring"):
            days = settings.alert_key_expiry_days
            tasks.append(_task(watch_expiring(table, days, outbox.raise_alert), "aigateway-expiry"))
        try:
            yield AlertHooks(outbox.raise_alert, refused, outbox)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await outbox.close()


def _task(work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    return asyncio.create_task(work, name=name)

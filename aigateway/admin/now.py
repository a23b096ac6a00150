"""The dashboard's Now: the requests in flight on every gateway sharing the database, each
upstream's queue and loaded models, and Stop for any of those requests.

A request's id is its gateway's id (made when the app starts) and its request id, so that
a Stop finds the gateway holding it. On SQLite, the one gateway shows its own. On
PostgreSQL, an admin's view tells every gateway "someone watches" (a NOTIFY, at most one
every PUBLISH_S, however many watch); each gateway then publishes its requests in flight
to its row of `now_gateways` every PUBLISH_S until WATCHED_S pass without a viewer, so
that nothing is written while nobody looks. A Stop of another gateway's request is a
NOTIFY that the holding gateway acts on; the id is checked against that gateway's last
snapshot first (404 when it holds no such request). Upstreams are the pool's last check:
no upstream call per view.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from ..errors import NotFound
from ..http.auth import principal
from ..records import StoreError
from ..relay.inflight import InFlight
from ..relay.now import find, request_rows
from ..upstreams.pool import Pool

if TYPE_CHECKING:
    from ..db.store import Store

log = logging.getLogger("aigateway")

PUBLISH_S = 2.0  # how often a watched gateway publishes, and the dashboard refreshes
WATCHED_S = 10.0  # a gateway publishes until this long after the last view anywhere
FRESH_S = 3 * PUBLISH_S  # an older snapshot is of a gateway gone or no longer watched
READ_AGAIN_S = PUBLISH_S / 2  # views within this share one read of the others' snapshots
WATCH = "watch"
# A Now id: the gateway's id, a dot, the request id (middleware.py: prefix-counter).
NOW_ID = re.compile(r"([0-9a-f]{8})\.([0-9a-f]{6}-[0-9a-f]{1,16})")


class Now:
    """What Now shows and stops, for one gateway (`shared`: on PostgreSQL, with others)."""

    def __init__(
        self,
        store: Store,
        in_flight: InFlight,
        pool: Pool,
        shared: bool,
        gateway: str | None = None,
    ) -> None:
        self.store = store
        self.in_flight = in_flight
        self.pool = pool
        self.shared = shared
        self.gateway = gateway or secrets.token_hex(4)
        self.watched_until = 0.0  # (time.monotonic()) when this gateway stops publishing
        self._told_at = -PUBLISH_S  # when this gateway last said "someone watches"
        self._read: tuple[float, list[tuple[str, float, dict[str, Any]]]] | None = None
        self._wake = asyncio.Event()

    # --- this gateway's part -----------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """This gateway's requests in flight and what waits in its queue, per upstream."""
        requests = [
            {"id": f"{self.gateway}.{row['request_id']}", "gateway": self.gateway, **row}
            for row in request_rows(self.in_flight)
        ]
        return {"requests": requests, "queued": dict(self.pool.queue.waiting())}

    def heard(self, payload: str) -> None:
        """A NOTIFY on NOW_CHANNEL: someone watches (publish for WATCHED_S), or a Stop
        (acted on by the gateway holding the request)."""
        if payload == WATCH:
            self.watched_until = time.monotonic() + WATCHED_S
            self._wake.set()
            return
        stop = _stop_notice(payload)
        if stop is None:
            log.warning("a Now notification that is not one: %.100r", payload)
            return
        now_id, who = stop
        held = NOW_ID.fullmatch(now_id)
        if held is None or held[1] != self.gateway:
            return  # another gateway's
        request = find(self.in_flight, held[2])
        if request is not None:
            log.warning("rid=%s stopped by %s (from another gateway's Now)", held[2], who)
            request.stop_by(who)

    async def publishing(self) -> None:
        """While someone watches (PostgreSQL): this gateway's snapshot in its row, every
        PUBLISH_S; the row removed when nobody has watched for WATCHED_S."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while time.monotonic() < self.watched_until:
                snapshot = orjson.dumps(self.snapshot()).decode()
                try:
                    await self.store.publish_now(self.gateway, time.time(), snapshot)
                except StoreError as exc:
                    log.warning("cannot publish this gateway's requests for Now: %s", exc)
                await asyncio.sleep(PUBLISH_S)
            try:
                await self.store.forget_now(self.gateway)
            except StoreError as exc:
                log.warning("cannot remove this gateway's requests for Now: %s", exc)

    # --- what an admin asks --------------------------------------------------------------

    async def view(self) -> dict[str, Any]:
        """Every request in flight (each gateway's, on PostgreSQL, as it last published
        them), and each upstream by the pool's last check, with what waits for it on any
        gateway."""
        mine = self.snapshot()
        requests: list[dict[str, Any]] = mine["requests"]
        queued: Counter[str] = Counter(mine["queued"])
        gateways: list[dict[str, Any]] = [
            {"gateway": self.gateway, "this": True, "requests": len(requests)}
        ]
        if self.shared:
            for gateway, at, theirs in await self._others_lately():
                requests.extend(theirs["requests"])
                queued.update(theirs["queued"])
                count = len(theirs["requests"])
                gateways.append(
                    {"gateway": gateway, "this": False, "requests": count, "published_at": at}
                )
        upstreams = await self.pool.states()
        for upstream in upstreams:
            upstream["queued"] = queued.get(str(upstream["name"]), 0)
        requests.sort(key=lambda row: row["started_at"])
        return {
            "gateway": self.gateway,
            "gateways": gateways,
            "requests": requests,
            "upstreams": upstreams,
            "refresh_s": PUBLISH_S,
        }

    async def stop(self, now_id: str, who: str) -> dict[str, Any]:
        """Stop a request on whichever gateway holds it; NotFound when none does."""
        held = NOW_ID.fullmatch(now_id)
        if held is None:
            raise NotFound(f"no request in flight has the id {now_id[:100]!r}")
        gateway, request_id = held[1], held[2]
        if gateway == self.gateway:
            request = find(self.in_flight, request_id)
            if request is None:
                raise NotFound(f"no request {now_id} is in flight (it may have ended)")
            log.warning("rid=%s stopped by %s (Now)", request_id, who)
            request.stop_by(who)
            return {"stopping": now_id, "gateway": gateway}
        if self.shared:
            for other, _, theirs in await self._others():
                if other == gateway and any(r.get("id") == now_id for r in theirs["requests"]):
                    await self.store.notify_now(orjson.dumps({"stop": now_id, "by": who}).decode())
                    return {"stopping": now_id, "gateway": gateway}
        raise NotFound(f"no request {now_id} is in flight (it may have ended)")

    async def _others_lately(self) -> list[tuple[str, float, dict[str, Any]]]:
        """The other gateways' snapshots as read at most READ_AGAIN_S ago (they change
        every PUBLISH_S: several admins watching share one read), and, at most once a
        PUBLISH_S, every gateway told that someone watches (in the same round trip)."""
        now = time.monotonic()
        if self._read is not None and now - self._read[0] < READ_AGAIN_S:
            return self._read[1]
        tell = now - self._told_at >= PUBLISH_S
        try:
            others = await self._others(tell)
        except StoreError as exc:
            log.warning("cannot read the other gateways' requests for Now: %s", exc)
            return []
        if tell:
            self._told_at = now
        self._read = (now, others)
        return others

    async def _others(self, tell: bool = False) -> list[tuple[str, float, dict[str, Any]]]:
        """The other gateways' fresh snapshots, each checked for its shape; with `tell`,
        every gateway is told that someone watches."""
        found = []
        published = await self.store.published_now(time.time() - FRESH_S, WATCH if tell else None)
        for gateway, at, text in published:
            if gateway == self.gateway:
                continue
            try:
                doc = orjson.loads(text)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(doc, dict):
                continue
            rows, queued = doc.get("requests"), doc.get("queued")
            if not isinstance(rows, list) or not isinstance(queued, dict):
                continue
            rows = [r for r in rows if isinstance(r, dict) and isinstance(r.get("id"), str)]
            counts = {k: v for k, v in queued.items() if type(v) is int}
            found.append((gateway, at, {"requests": rows, "queued": counts}))
        return found


def _stop_notice(payload: str) -> tuple[str, str] | None:
    """A Stop's notification: the Now id and who stopped it; None if it is not one."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    now_id, who = doc.get("stop"), doc.get("by")
    if not isinstance(now_id, str) or not isinstance(who, str):
        return None
    return now_id, who


NOW = web.AppKey("now", Now)


def stopper(request: web.Request) -> str:
    """Who stops a request, as its usage record names them: the admin's user/key name."""
    admin = principal(request)
    return f"{admin.user}/{admin.name}"


async def now_view(request: web.Request) -> web.Response:
    """GET /admin/now: the requests in flight on every gateway, and the upstreams."""
    doc = await request.app[NOW].view()
    return web.Response(body=orjson.dumps(doc), content_type="application/json")


async def now_stop(request: web.Request) -> web.Response:
    """POST /admin/now/{id}/stop: end the request on whichever gateway holds it."""
    doc = await request.app[NOW].stop(request.match_info["id"], stopper(request))
    return web.Response(body=orjson.dumps(doc), content_type="application/json", status=202)
